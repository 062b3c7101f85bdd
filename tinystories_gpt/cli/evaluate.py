"""Score a model on a whole split: `tinystories-evaluate MODEL --dataset D [--json]`.

MODEL is a saved folder or a Hub id (ours, or an exported GPT-2). Prints validation loss, perplexity and bits
per UTF-8 byte over every token of the split, end-of-story tokens included.
"""

import argparse
import json
import sys
import tempfile

import torch

from ..data.sources import load_text_splits
from ..data.token_files import tokenize_split
from ..data.tokenization import check_vocab_fits
from ..evaluation.losses import evaluate_split
from ..evaluation.story_figures import describe, stories_of
from ..export.hub import load_model_and_tokenizer
from ..signals import stop_on_signal
from .exit_status import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinystories-evaluate", description=__doc__)
    parser.add_argument("model", help="a saved model folder or a Hub repo id")
    parser.add_argument(
        "--dataset", required=True, help="a Hub dataset name or a local path, e.g. data/tinystories in a checkout"
    )
    parser.add_argument("--split", default="validation", choices=("train", "validation", "dev"))
    parser.add_argument("--validation_split_percentage", type=float, default=5.0)
    parser.add_argument(
        "--dev_stories", type=int, default=0, help="with --split dev: the last N train stories, as train.py holds out"
    )
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument(
        "--stories",
        type=int,
        default=0,
        help="also write N stories (the seed prompt and the openings of N stories of the split, fixed seeds, the "
        "model's sampling defaults) and report their figures: how many end, repeated 4-grams, distinct-1/2, length, "
        "made-up words",
    )
    parser.add_argument("--cache_dir", default=None, help="where token files are cached")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args(argv)
    return run_command(
        "evaluate", lambda: evaluate(args), stop_on_signal("while evaluating", "nothing was left half-written")
    )


def evaluate(args: argparse.Namespace) -> None:
    """Score the model on the split and print the figures."""
    if args.batch_size < 1:
        raise ValueError(f"--batch_size must be a positive integer, got {args.batch_size}")
    if args.stories < 0:
        raise ValueError(f"--stories must be 0 (none) or more, got {args.stories}")
    if args.split == "dev" and args.dev_stories <= 0:
        raise ValueError("--split dev needs --dev_stories N, the number of stories the training run held out")
    model, tokenizer = load_model_and_tokenizer(args.model, args.trust_remote_code, args.device)
    check_vocab_fits(tokenizer, model.config.vocab_size)
    wanted = (args.split, "train") if args.stories and args.split != "train" else (args.split,)
    splits = load_text_splits(args.dataset, args.validation_split_percentage, args.dev_stories, splits=wanted)
    with tempfile.TemporaryDirectory() as scratch:
        split = tokenize_split(splits[args.split], tokenizer, args.cache_dir or scratch, args.split)
        figures = evaluate_split(model, split, batch_size=args.batch_size, progress=not args.json)
    figures = {"model": args.model, "dataset": args.dataset, "split": args.split, **figures}
    if args.stories:
        figures["stories"] = stories_of(model, tokenizer, splits[args.split]["text"][: args.stories], splits["train"])
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"{args.model} on {args.dataset} [{args.split}]: loss {figures['loss']:.4f}, perplexity "
            f"{figures['perplexity']:.2f}, bits per byte {figures['bits_per_byte']:.4f} "
            f"({figures['tokens']:,} tokens, {figures['bytes']:,} bytes)"
            + (f"\n{describe(figures['stories'])}" if args.stories else "")
        )


if __name__ == "__main__":
    sys.exit(main())
