"""Tokenize-and-write speed and peak memory of the data pipeline, against the plain approach, in one run.

    python benchmarks/bench_data.py [--repeats 8] [--num-proc 2]

Speed: `tokenize_split` (batched fast-tokenizer encoding through `Dataset.map`, streamed into the flat token file)
against encoding each story in a Python loop, collecting the ids in a list and writing them at the end, on the
bundled corpus repeated `--repeats` times. Both write the same tokens (checked).

Memory: `prepare_data` from scratch (text → arrow → tokens, GPT-2 tokenizer) on the corpus once and repeated
`--repeats` times, each in a fresh subprocess, and the plain approach the same way; peak RSS is ru_maxrss of the
process (and of its largest worker, with --num-proc; mostly pages shared with the parent it forked from).
A pipeline that streams peaks at about the same RSS for both sizes (the bar: under 50 MB of growth).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLE_DATA_DIR = Path(__file__).resolve().parent.parent / "data" / "tinystories"  # not imported: see main()


def write_corpus(folder: Path, repeats: int) -> Path:
    """The bundled sample with each split repeated `repeats` times (stories are whole, so counts scale exactly)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train.txt", "validation.txt"):
        (folder / name).write_text((SAMPLE_DATA_DIR / name).read_text(encoding="utf-8") * repeats, encoding="utf-8")
    return folder


def plain_tokenize(stories: list[str], tokenizer, path: Path) -> int:
    """The approach the pipeline replaces: one `encode` per story, ids collected in a Python list."""
    ids: list[int] = []
    for story in stories:
        ids.extend(tokenizer.encode(story))
        ids.append(tokenizer.eos_token_id)
    np.array(ids, dtype=np.uint16).tofile(path)
    return len(ids)


def bench_speed(corpus: Path, work: Path, num_proc: int | None) -> list[tuple[str, int, float]]:
    from tinystories_gpt.data.sources import load_text_splits
    from tinystories_gpt.data.token_files import tokenize_split
    from tinystories_gpt.data.tokenization import load_gpt2_tokenizer

    tokenizer = load_gpt2_tokenizer()
    texts = load_text_splits(corpus)["train"]
    rows = []
    for label, procs in (("pipeline, 1 process", None), (f"pipeline, num_proc={num_proc}", num_proc)):
        start = time.perf_counter()
        token_file = tokenize_split(texts, tokenizer, work / f"cache-{procs}", "train", num_proc=procs)
        rows.append((label, token_file.num_tokens, time.perf_counter() - start))
    stories = texts["text"]
    start = time.perf_counter()
    num_tokens = plain_tokenize(stories, tokenizer, work / "plain.bin")
    rows.append(("plain loop + list", num_tokens, time.perf_counter() - start))
    assert np.array_equal(np.fromfile(work / "plain.bin", dtype=np.uint16), token_file.tokens()), "outputs differ"
    return rows


def build_and_report(method: str, corpus: str, cache: str, num_proc: int | None) -> None:
    """Subprocess entry: build the token files from scratch with `method`, print peak RSS (MB) as JSON."""
    from tinystories_gpt.data.sources import load_text_splits
    from tinystories_gpt.data.token_files import prepare_data
    from tinystories_gpt.data.tokenization import load_gpt2_tokenizer

    imports_mb = current_rss_mb()
    if method == "pipeline":
        prepared = prepare_data(corpus, "gpt2", cache_dir=cache, num_proc=num_proc)
        num_tokens = prepared.train.num_tokens + prepared.validation.num_tokens
    else:
        tokenizer, splits = load_gpt2_tokenizer(), load_text_splits(corpus)
        Path(cache).mkdir(parents=True)
        num_tokens = sum(plain_tokenize(splits[s]["text"], tokenizer, Path(cache) / f"{s}.bin") for s in splits)
    self_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"tokens": num_tokens, "imports_mb": imports_mb, "self_mb": self_mb, "children_mb": children_mb}))


def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def peak_rss(method: str, corpus: Path, work: Path, num_proc: int | None) -> dict:
    env_cache = work / f"hf-{method}-{corpus.name}-{num_proc}"
    command = [sys.executable, __file__, "--build", method, str(corpus), str(env_cache / "tokens")]
    if num_proc:
        command += ["--num-proc", str(num_proc)]
    env = {**os.environ, "HF_HOME": str(env_cache), "HF_DATASETS_CACHE": str(env_cache / "datasets")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--build", nargs=3, metavar=("METHOD", "CORPUS", "CACHE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        return build_and_report(*args.build, num_proc=args.num_proc if args.num_proc > 1 else None)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        once, repeated = write_corpus(work / "x1", 1), write_corpus(work / f"x{args.repeats}", args.repeats)

        print("## Peak RSS building the token files from scratch (fresh subprocess each)\n")
        # Run first, while this process is small: a child's ru_maxrss starts from its parent's RSS at spawn.
        print("| method | corpus | tokens | RSS after imports (MB) | peak RSS (MB) | peak RSS, largest worker (MB) |")
        print("| --- | --- | ---: | ---: | ---: | ---: |")
        methods = (("pipeline", None), ("pipeline", args.num_proc), ("plain", None))
        for method, num_proc in methods:
            peaks = []
            for corpus in (once, repeated):
                peak = peak_rss(method, corpus, work, num_proc)
                peaks.append(peak)
                label = f"{method}, num_proc={num_proc}" if num_proc else method
                worker = f"{peak['children_mb']:.0f}" if num_proc else "-"
                print(
                    f"| {label} | {corpus.name} | {peak['tokens']:,} | {peak['imports_mb']:.0f} "
                    f"| {peak['self_mb']:.0f} | {worker} |"
                )
            growth = {key: peaks[1][key] - peaks[0][key] for key in ("self_mb", "children_mb")}
            worker_growth = f"{growth['children_mb']:+.1f}" if num_proc else "-"
            print(f"| **growth x1 → x{args.repeats}** | | | | **{growth['self_mb']:+.1f}** | {worker_growth} |")

        print(f"\n## Tokenize + write, GPT-2 tokenizer, train split of the sample x{args.repeats}\n")
        print("| method | tokens | seconds | tokens/s | vs plain |\n| --- | ---: | ---: | ---: | ---: |")
        rows = bench_speed(repeated, work, args.num_proc)
        plain_rate = rows[-1][1] / rows[-1][2]
        for label, tokens, seconds in rows:
            rate = tokens / seconds
            print(f"| {label} | {tokens:,} | {seconds:.2f} | {rate / 1e6:.2f} M | {rate / plain_rate:.1f}x |")


if __name__ == "__main__":
    main()
