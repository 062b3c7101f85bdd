"""The story demos' speed: the static page in headless Chromium and the Gradio app, against our generate() in Python.

    python benchmarks/bench_demo.py [--model DIR] [--dataset data/tinystories] [--repeats 3] [--threads 1]

Measured in one run, on this machine, each against the anchor measured beside it:
- the static Space (`convert.py space --sdk static`), served from 127.0.0.1 and opened in a fresh headless Chromium
  context each round (`?dtype=` names the graph it loads): time from navigation to the model being ready, and to the
  first token of a greedy story once clicked, and tokens/s of the float32 and the 8-bit graph (transformers.js 4,
  WebAssembly, one thread), with what a visitor downloads for each;
- the Gradio app (demo/app.py, in this process, Gradio's queue at concurrency 1) through gradio_client: latency to
  the first streamed token and tokens/s for 1 visitor, then for 8 at once (each one's, and all of them together);
- the anchor: our `model.generate(do_sample=False)` in Python, torch at `--threads` threads (one, as the page has).

Every story is greedy: the seed prompt, 100 new tokens. Without --model the model has the quickstart's shapes
(4 x 4 x 256, context 128, a 3,071-token BPE trained on the bundled data) and random weights, which cost the same time
as trained ones; but the Gradio page streams whole words, and random weights write few spaces, so its latency is
only meaningful for a trained model (`--model out/quickstart/best`). --dataset scores both graphs' bits per byte too.
Needs the node side environment (`bash .ci/side_envs.sh node`), Chromium at /usr/bin/chromium, and the `demo` and
`dev` extras.
"""

import argparse
import functools
import json
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import torch
from bench_exports import quickstart_folder
from gradio_client import Client
from machine import cpu_name
from playwright.sync_api import sync_playwright

from tinystories_gpt.demo import app
from tinystories_gpt.demo.space import write_static_space
from tinystories_gpt.evaluation.stories import SEED_PROMPT

REPO = Path(__file__).resolve().parents[1]
NEW_TOKENS = 100
VISITORS = 8
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def python_rate(writer: "app.StoryWriter") -> float:
    """The anchor: our generate(), greedy, in this process; new tokens per second."""
    inputs = writer.tokenizer(SEED_PROMPT, return_tensors="pt")
    started = time.perf_counter()
    with torch.no_grad():
        output = writer.model.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    return (output.shape[1] - inputs.input_ids.shape[1]) / (time.perf_counter() - started)


def serve_folder(folder: Path) -> ThreadingHTTPServer:
    """A static file server for `folder` on 127.0.0.1, quiet, in a thread (shut down by the caller)."""

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def browser_round(browser, url: str, dtype: str) -> dict:
    """A fresh visitor (no cache): load the page, write a greedy story as soon as it is ready; its timings."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{url}?dtype={dtype}")  # the page loads that graph alone
        page.wait_for_function("document.getElementById('status').dataset.state === 'ready'", timeout=300_000)
        page.fill("#prompt", SEED_PROMPT)
        page.fill("#new-tokens", str(NEW_TOKENS))
        page.check("#greedy")
        page.click("#write")
        page.wait_for_function(
            "['done', 'error'].includes(document.getElementById('status').dataset.state)", timeout=300_000
        )
        status = page.evaluate("({...document.getElementById('status').dataset})")
        if status["state"] != "done":
            raise RuntimeError(page.inner_text("#status"))
        tokens, seconds = int(status["newTokens"]), float(status["seconds"])
        return {
            "ready_s": float(status["readyMs"]) / 1000,
            "first_token_s": float(status["firstTokenMs"]) / 1000,
            "tokens_per_s": tokens / seconds,
        }
    finally:
        context.close()


def visit(url: str) -> dict:
    """One visitor of the Gradio app: the latency to the first streamed words (queue included), and tokens/s from
    then on."""
    client = Client(url, verbose=False)
    started = time.perf_counter()
    job = client.submit(SEED_PROMPT, NEW_TOKENS, 0.8, 200, 1.0, 0, True, api_name="/story")
    first = None
    for story, _ in job:
        if first is None and len(story) > len(SEED_PROMPT):
            first = time.perf_counter() - started
    ended = time.perf_counter() - started
    story, speed = job.result()
    tokens = int(speed.split(": ")[1].split(" new tokens")[0])
    return {"first_token_s": first, "seconds": ended, "tokens": tokens, "tokens_per_s": tokens / (ended - first)}


def median(rounds: list[dict], key: str) -> float:
    return statistics.median(round_[key] for round_ in rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: quickstart shapes)")
    parser.add_argument("--dataset", default=None, help="score the graphs' bits per byte on its validation split")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch's threads for generate() and the app")
    parser.add_argument("--node_modules", type=Path, default=REPO / ".side-envs" / "node" / "node_modules")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = args.model or quickstart_folder(scratch / "model")
        folder = write_static_space(model_dir, scratch / "space", node_modules=args.node_modules, dataset=args.dataset)
        graphs = json.loads((folder / "demo.json").read_text())["graphs"]
        writer = app.StoryWriter.load(str(model_dir))
        python_rate(writer)  # warm-up
        anchors, pages = [], {dtype: [] for dtype in graphs}
        server = serve_folder(folder)
        url = f"http://127.0.0.1:{server.server_port}/"
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                try:
                    for _ in range(args.repeats):  # interleaved, so machine load affects all alike
                        anchors.append(python_rate(writer))
                        for dtype in graphs:
                            pages[dtype].append(browser_round(browser, url, dtype))
                finally:
                    browser.close()
        finally:
            server.shutdown()
            server.server_close()

        demo = app.build_demo(str(model_dir), writer=writer)
        gradio_url = app.launch(demo, host="127.0.0.1", port=None, block=False)
        try:
            visit(gradio_url)  # warm-up
            alone = [visit(gradio_url) for _ in range(args.repeats)]
            anchors.append(python_rate(writer))
            started = time.perf_counter()
            with ThreadPoolExecutor(VISITORS) as pool:
                crowd = list(pool.map(lambda _: visit(gradio_url), range(VISITORS)))
            crowd_seconds = time.perf_counter() - started
            anchors.append(python_rate(writer))
        finally:
            demo.close()

    anchor = statistics.median(anchors)
    shapes = "quickstart shapes, random weights" if args.model is None else str(args.model)
    print(
        f"{cpu_name()}; {shapes}; greedy, {NEW_TOKENS} new tokens after the seed prompt; torch {args.threads} thread(s)"
    )
    print(f"anchor: our generate() in Python, {anchor:,.0f} tokens/s (median of {len(anchors)})\n")
    print(f"{'static page (Chromium)':<26} {'download':>9} {'bits/byte':>9} {'ready':>7} {'1st token':>9} "
          f"{'tokens/s':>9} {'x ours':>7}")  # fmt: skip
    for dtype, rounds in pages.items():
        graph, rate = graphs[dtype], median(rounds, "tokens_per_s")
        score = "-" if graph["bits_per_byte"] is None else f"{graph['bits_per_byte']:.4f}"
        print(
            f"{graph['label']:<26} {graph['download_bytes'] / 1e6:>6.1f} MB {score:>9} "
            f"{median(rounds, 'ready_s'):>6.2f}s {median(rounds, 'first_token_s'):>8.2f}s "
            f"{rate:>9,.0f} {rate / anchor:>7.2f}"
        )
    print(
        f"\n{'Gradio app (gradio_client)':<26} {'1st token':>9} {'worst':>7} {'tokens/s':>9} {'x ours':>7} {'all':>9}"
    )
    for name, rounds, total in (
        ("1 visitor", alone, None),
        (f"{VISITORS} at once", crowd, sum(r["tokens"] for r in crowd) / crowd_seconds),
    ):
        rate = median(rounds, "tokens_per_s")
        worst = max(r["first_token_s"] for r in rounds)
        print(
            f"{name:<26} {median(rounds, 'first_token_s'):>8.2f}s {worst:>6.2f}s {rate:>9,.0f} {rate / anchor:>7.2f} "
            f"{'' if total is None else f'{total:,.0f}':>9}"
        )


if __name__ == "__main__":
    main()
