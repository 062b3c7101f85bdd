"""What proving a token file by its contents costs at full TinyStories size, against what tokenizing it costs.

    python benchmarks/bench_checksum.py [--tokens 470000000] [--repeats 8]

Every reuse of a cached token file reads it once (SHA-256 and the largest id, `token_files._tokens_intact`). This
times that check on a file of `--tokens` GPT-2 ids (about the full TinyStories train split), and, in the same run,
the pipeline's tokenizing speed on the bundled sample repeated `--repeats` times (`tokenize_split`, GPT-2's
tokenizer, one process), from which the time to tokenize `--tokens` tokens is extrapolated. Prints the CPU.
"""

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_name

SAMPLE_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "tinystories"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=470_000_000)
    parser.add_argument("--repeats", type=int, default=8)
    args = parser.parse_args()

    from tinystories_gpt.data.sources import load_text_splits
    from tinystories_gpt.data.token_files import _tokens_intact, tokenize_split
    from tinystories_gpt.data.tokenization import load_gpt2_tokenizer

    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        corpus = work / "corpus"
        corpus.mkdir()
        for name in ("train.txt", "validation.txt"):
            (corpus / name).write_text((SAMPLE_DATA_DIR / name).read_text() * args.repeats)
        texts = load_text_splits(corpus)["train"]
        started = time.perf_counter()
        sample = tokenize_split(texts, load_gpt2_tokenizer(), work / "cache", "train")
        tokens_per_second = sample.num_tokens / (time.perf_counter() - started)

        # a file of the full size, its ids drawn from the sample's so the largest is a real one
        ids = np.fromfile(sample.path, dtype=np.uint16)
        big = work / "full.bin"
        with open(big, "wb") as file:
            written = 0
            while written < args.tokens:
                chunk = ids[: args.tokens - written]
                chunk.tofile(file)
                written += len(chunk)
        digest = hashlib.sha256()
        with open(big, "rb") as file:
            while block := file.read(1 << 24):
                digest.update(block)
        meta = {"dtype": "uint16", "sha256": digest.hexdigest(), "vocab_size": 50257}
        _tokens_intact(big, meta)  # once to warm the page cache, as a file just written or read before is
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            assert _tokens_intact(big, meta)
            timings.append(time.perf_counter() - started)
    check = sorted(timings)[1]
    tokenizing = args.tokens / tokens_per_second
    print(f"CPU: {cpu_name()}")
    print(f"tokenizing (GPT-2, 1 process, measured on {sample.num_tokens:,} tokens): {tokens_per_second:,.0f} tokens/s")
    print(f"check of a {args.tokens:,}-token file ({args.tokens * 2 / 1e9:.2f} GB): {check:.2f} s (median of 3)")
    print(f"tokenizing {args.tokens:,} tokens: {tokenizing:,.0f} s; the check is {100 * check / tokenizing:.2f}% of it")


if __name__ == "__main__":
    main()
