"""Greedy generation of the exports against our own generate(): llama.cpp (GGUF) and ONNX Runtime, same run.

    python benchmarks/bench_exports.py [--model DIR] [--outtype f32] [--repeats 5] [--threads N]

Batch 1, a 28-token prompt, 100 new tokens, KV cache everywhere: our `model.generate(do_sample=False)`, the
`convert.py gguf` file in llama-cpp-python (`Llama.generate` with top_k=1) and the `convert.py onnx` graph in ONNX
Runtime (a greedy loop feeding `present.*` back as `past_key_values.*`). Every engine gets the same number of
threads. The rounds are interleaved, so machine load affects all alike; the figure is the median. Without --model,
the model has the quickstart's shapes (4 x 4 x 256, context 128, vocabulary 3,072; random weights, which cost the
same time as trained ones) and a byte-level BPE trained on the bundled data. llama-cpp-python comes from the side
environment `.ci/side_envs.sh` builds (.side-envs/llama-cpp).
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.data.tokenization import train_tokenizer
from tinystories_gpt.export.gguf import export_gguf
from tinystories_gpt.export.hub import save_hub_folder
from tinystories_gpt.export.onnx import empty_cache, export_onnx, run_step

REPO = Path(__file__).resolve().parents[1]
PROMPT_TOKENS, NEW_TOKENS = 28, 100
QUICKSTART = dict(vocab_size=3072, block_size=128, n_layer=4, n_head=4, n_embd=256, dropout=0.0)


def quickstart_folder(folder: Path) -> Path:
    """A Hub folder with the quickstart's shapes: random weights, a 3,071-token BPE trained on the bundled data."""
    stories = (REPO / "data" / "tinystories" / "train.txt").read_text().split("<|endoftext|>")
    tokenizer = train_tokenizer(stories, 3071)
    torch.manual_seed(0)
    config = TinyStoriesGPTConfig(
        **QUICKSTART, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id
    )
    return save_hub_folder(TinyStoriesGPTForCausalLM(config), tokenizer, folder)


def ours_generate(model: TinyStoriesGPTForCausalLM, prompt: list[int]) -> None:
    with torch.no_grad():
        model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False)


def llama_generate(llm, prompt: list[int]) -> None:
    for count, _ in enumerate(llm.generate(prompt, top_k=1, temp=0.0, reset=True), start=1):
        if count == NEW_TOKENS:
            break


def onnx_generate(session: onnxruntime.InferenceSession, config: TinyStoriesGPTConfig, prompt: list[int]) -> None:
    step = run_step(session, torch.tensor([prompt]), empty_cache(config, 1))
    for _ in range(NEW_TOKENS - 1):
        step = run_step(session, torch.tensor([[int(np.argmax(step["logits"][0, -1]))]]), step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a Hub folder (default: quickstart shapes)")
    parser.add_argument("--outtype", default="f32", help="the GGUF's outtype: f32, f16 or q8_0")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="threads for every engine (default: torch's)")
    parser.add_argument("--llama-cpp", type=Path, default=REPO / ".side-envs" / "llama-cpp")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    sys.path.insert(0, str(args.llama_cpp))
    import llama_cpp

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model_dir = args.model or quickstart_folder(scratch / "model")
        gguf_file = export_gguf(model_dir, scratch / "model.gguf", outtype=args.outtype)
        onnx_dir = export_onnx(model_dir, scratch / "onnx")
        model = TinyStoriesGPTForCausalLM.from_pretrained(model_dir).eval()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(onnx_dir / "onnx" / "model.onnx", options)
        llm = llama_cpp.Llama(str(gguf_file), n_ctx=model.config.block_size, n_threads=threads, verbose=False)
        prompt = torch.randint(model.config.vocab_size, (PROMPT_TOKENS,), generator=torch.Generator().manual_seed(0))
        engines = {
            "ours: generate()": lambda: ours_generate(model, prompt.tolist()),
            f"llama.cpp {llama_cpp.__version__} ({args.outtype} GGUF)": lambda: llama_generate(llm, prompt.tolist()),
            f"ONNX Runtime {onnxruntime.__version__}": lambda: onnx_generate(session, model.config, prompt.tolist()),
        }
        seconds = {name: [] for name in engines}
        for repeat in range(args.repeats + 1):  # the first round warms up
            for name, generate in sorted(engines.items(), reverse=repeat % 2 == 1):
                started = time.perf_counter()
                generate()
                if repeat:
                    seconds[name].append(time.perf_counter() - started)

    rates = {name: NEW_TOKENS / statistics.median(times) for name, times in seconds.items()}
    anchor = rates["ours: generate()"]
    shapes = "quickstart shapes" if args.model is None else str(args.model)
    print(f"{shapes}, greedy batch 1, {NEW_TOKENS} new tokens, {threads} threads, median of {args.repeats}")
    print(f"{'engine':<36} {'tokens/s':>10} {'x ours':>8}")
    for name, rate in rates.items():
        print(f"{name:<36} {rate:>10,.0f} {rate / anchor:>8.2f}")


if __name__ == "__main__":
    main()
