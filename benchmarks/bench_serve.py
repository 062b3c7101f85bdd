"""The OpenAI-compatible servers' speed under concurrent clients, against our generate() in Python.

    python benchmarks/bench_serve.py [--model out/quickstart/best] [--rounds 2] [--new_tokens 100]

Started one after another on 127.0.0.1, each measured at 1, 4 and 16 concurrent clients:
- `tinystories-serve MODEL` (Transformers' `transformers serve`: one request at a time, through `generate()`);
- `tinystories-serve MODEL --continuous-batching` (paged attention, requests join and leave one running batch);
- `python -m llama_cpp.server` on the f16 GGUF file of the model (`convert.py gguf --outtype f16`), `--n_ctx 0
  --interrupt_requests False` (one request at a time; by default a new request cuts a streaming one short).

Every client sends `--rounds` streamed completions in a row, greedy, `--new_tokens` after the seed prompt, through
the openai client. Reported per server and number of clients: tokens/s of all clients together, and the p50/p95 time
to the first token and to the last. The anchor is our `model.generate(do_sample=False)` in this process, measured
between the servers (its tokens/s, one request at a time). Without --model the model has the quickstart's shapes and
random weights (the same cost per token as trained ones, but a greedy story never ends early). llama.cpp's server
needs the side environments (`bash .ci/side_envs.sh llama llama_server`); it is left out, saying so, without them.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import openai
import torch
from bench_exports import quickstart_folder
from machine import cpu_name
from transformers import AutoModelForCausalLM, AutoTokenizer

import tinystories_gpt  # noqa: F401  (registers the Auto classes)
from tinystories_gpt.evaluation.stories import SEED_PROMPT
from tinystories_gpt.export.gguf import export_gguf

REPO = Path(__file__).resolve().parents[1]
SIDE_ENVS = REPO / ".side-envs"
CLIENTS = (1, 4, 16)
READY_SECONDS = 120


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def server(command: list[str], port: int, env: dict):
    """The server, up (its /v1/models answers) until the block ends; stopped then, also on failure."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited with {process.returncode} before serving")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{command[0]} did not answer within {READY_SECONDS} s") from None
                time.sleep(0.2)
        yield openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=600, max_retries=0)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def one_story(client: openai.OpenAI, model: str, new_tokens: int, greedy: dict) -> dict:
    """A streamed greedy completion: seconds to its first token and to its last, and its tokens."""
    started = time.perf_counter()
    first, tokens = None, 0
    stream = client.completions.create(
        model=model, prompt=SEED_PROMPT, max_tokens=new_tokens, temperature=0, stream=True,
        stream_options={"include_usage": True}, **greedy,
    )  # fmt: skip
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - started
        if chunk.choices and chunk.choices[0].text:
            tokens += 1
        if getattr(chunk, "usage", None) is not None:
            tokens = chunk.usage.completion_tokens  # exact, where the server reports it
    return {"first": first, "last": time.perf_counter() - started, "tokens": tokens}


def load(client: openai.OpenAI, model: str, clients: int, rounds: int, new_tokens: int, greedy: dict) -> dict:
    """`clients` clients at once, each writing `rounds` stories in a row."""
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        runs = pool.map(lambda _: [one_story(client, model, new_tokens, greedy) for _ in range(rounds)], range(clients))
        stories = [story for run in runs for story in run]
    seconds = time.perf_counter() - started

    def percentile(key: str, share: float) -> float:
        values = sorted(story[key] for story in stories)
        return values[min(len(values) - 1, round(share * (len(values) - 1)))]

    return {
        "tokens_per_s": sum(story["tokens"] for story in stories) / seconds,
        "first_p50": percentile("first", 0.5),
        "first_p95": percentile("first", 0.95),
        "last_p50": percentile("last", 0.5),
        "last_p95": percentile("last", 0.95),
    }


def anchor_rate(model, tokenizer, new_tokens: int) -> float:
    """Our generate(), greedy, one request, in this process: new tokens per second."""
    inputs = tokenizer(SEED_PROMPT, return_tensors="pt")
    started = time.perf_counter()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return (output.shape[1] - inputs.input_ids.shape[1]) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: quickstart shapes)")
    parser.add_argument("--rounds", type=int, default=2, help="stories each client writes in a row")
    parser.add_argument("--new_tokens", type=int, default=100)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder = args.model or quickstart_folder(scratch / "model")
        model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
        if len(tokenizer(SEED_PROMPT).input_ids) + args.new_tokens > model.config.block_size:
            parser.error(f"--new_tokens {args.new_tokens} and the seed prompt do not fit the model's context")
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        serve = str(Path(sys.executable).with_name("tinystories-serve"))
        servers = [
            ("transformers serve", [serve, str(folder)], env, {}),
            ("transformers serve --continuous-batching", [serve, str(folder), "--continuous-batching"], env, {}),
        ]
        llama_paths = [SIDE_ENVS / "llama-cpp", SIDE_ENVS / "llama-server"]
        if all(path.is_dir() for path in llama_paths):
            gguf_file = export_gguf(folder, scratch / "model-f16.gguf", outtype="f16")
            command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file), "--n_ctx", "0"]
            llama_env = {**env, "PYTHONPATH": os.pathsep.join(str(path) for path in llama_paths)}
            # --interrupt_requests False: by default a new request cuts a streaming one short after a token
            options = ["--n_threads", "2", "--interrupt_requests", "False"]
            # greedy there is temperature 0 without its default repeat_penalty of 1.1
            greedy = {"extra_body": {"repeat_penalty": 1.0}}
            servers.append(("llama.cpp server, f16 GGUF", [*command, *options], llama_env, greedy))
        else:
            print("llama.cpp's server left out: run `bash .ci/side_envs.sh llama llama_server` first\n")

        anchors, results = [anchor_rate(model, tokenizer, args.new_tokens)], {}  # the first warms up
        for name, command, server_env, greedy in servers:
            port = free_port()
            address = ["--host", "127.0.0.1", "--port", str(port)]
            with server([*command, *address], port, server_env) as client:
                one_story(client, str(folder), args.new_tokens, greedy)  # warm-up
                for clients in CLIENTS:
                    results[name, clients] = load(client, str(folder), clients, args.rounds, args.new_tokens, greedy)
            anchors.append(anchor_rate(model, tokenizer, args.new_tokens))

    anchor = statistics.median(anchors[1:])
    shapes = "quickstart shapes, random weights" if args.model is None else str(args.model)
    print(f"{cpu_name()}, {os.cpu_count()} cores; {shapes}; greedy, {args.new_tokens} new tokens after the seed prompt")
    print(f"anchor: our generate() in Python, one request: {anchor:,.0f} tokens/s (median of {len(anchors) - 1})\n")
    print(f"{'server':<42} {'clients':>7} {'tokens/s':>9} {'x ours':>7} {'1st token p50/p95':>18} "
          f"{'last token p50/p95':>19}")  # fmt: skip
    for (name, clients), figures in results.items():
        print(
            f"{name:<42} {clients:>7} {figures['tokens_per_s']:>9,.0f} {figures['tokens_per_s'] / anchor:>7.2f} "
            f"{figures['first_p50']:>8.2f}s/{figures['first_p95']:.2f}s {figures['last_p50']:>9.2f}s/"
            f"{figures['last_p95']:.2f}s"
        )


if __name__ == "__main__":
    main()
