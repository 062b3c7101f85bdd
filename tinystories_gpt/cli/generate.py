"""Write stories: `tinystories-generate MODEL --prompt "Once upon a time"`.

MODEL is a saved folder or a Hub id (ours, or an exported GPT-2). Tokens are printed as they come; sampling
defaults come from the model's generation_config.json and every flag overrides them.
"""

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from transformers import TextStreamer

from ..export.hub import load_model_and_tokenizer
from ..signals import stop_on_signal
from .exit_status import run_command

SAMPLING_FLAGS = ("temperature", "top_k", "top_p")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinystories-generate", description=__doc__)
    parser.add_argument("model", help="a saved model folder or a Hub repo id")
    parser.add_argument("--prompt", required=True, help="the story's opening")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="default: fill the model's context")
    parser.add_argument("--temperature", type=float, default=None, help="> 0; higher gives more varied stories")
    parser.add_argument("--top_k", type=int, default=None, help="sample from the k likeliest tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=None, help="sample from this much probability, in (0, 1]")
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--num_return_sequences", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None, help="fix the sampling for reproducible stories")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    return run_command("generate", lambda: print_stories(args), stop_on_signal("while generating"))


def print_stories(args: argparse.Namespace) -> None:
    stories = generate(args)
    if args.num_return_sequences > 1:  # one story streams as it comes; several are printed when done
        for number, story in enumerate(stories, start=1):
            print(f"--- story {number} ---\n{story}\n")


def check_flags(args: argparse.Namespace) -> None:
    """Refuse what `generate` would reject only after streaming the prompt, or silently ignore."""
    if not args.prompt.strip():
        raise ValueError("the prompt is empty; pass the story's opening, e.g. --prompt 'Once upon a time'")
    if args.num_return_sequences < 1:
        raise ValueError(f"--num_return_sequences must be at least 1, got {args.num_return_sequences}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise ValueError(f"--max_new_tokens must be at least 1, got {args.max_new_tokens}")
    if args.greedy and any(getattr(args, name) is not None for name in SAMPLING_FLAGS):
        raise ValueError(
            "--greedy always takes the most likely token, so it would ignore --temperature, --top_k and --top_p: "
            "drop them, or drop --greedy to sample"
        )
    if args.greedy and args.num_return_sequences > 1:
        raise ValueError("--greedy writes the same story every time: drop --num_return_sequences, or --greedy")
    if args.temperature == 0:
        raise ValueError("--temperature 0 means always the most likely token: pass --greedy instead")
    if args.temperature is not None and args.temperature < 0:
        raise ValueError(f"--temperature must be positive (higher gives more varied stories), got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top_p is the probability mass to sample from, in (0, 1]; got {args.top_p}")
    if args.top_k is not None and args.top_k < 0:
        raise ValueError(f"--top_k must be 0 (no limit) or more, got {args.top_k}")


def generate(args: argparse.Namespace) -> list[str]:
    check_flags(args)
    model, tokenizer = load_model_and_tokenizer(args.model, args.trust_remote_code, args.device)
    inputs = tokenizer(args.prompt, return_tensors="pt").to(args.device)
    context = model.config.max_position_embeddings
    room = context - inputs.input_ids.shape[1]
    max_new_tokens = room if args.max_new_tokens is None else args.max_new_tokens
    if room <= 0 or max_new_tokens > room:
        raise ValueError(
            f"the prompt is {inputs.input_ids.shape[1]} tokens and the model's context is {context}: "
            f"{'shorten the prompt' if room <= 0 else f'ask for at most --max_new_tokens {room}'}."
        )
    if args.seed is not None:
        torch.manual_seed(args.seed)
    sampling = {name: value for name in SAMPLING_FLAGS if (value := getattr(args, name)) is not None}
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if args.num_return_sequences == 1 else None
    with torch.no_grad(), ending_the_streamed_line(streamer):
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=not args.greedy,
            num_return_sequences=args.num_return_sequences,
            streamer=streamer,
            # 0 is a valid pad id (it is "!" in GPT-2's vocabulary), so test for None, not falsiness
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
            **sampling,
        )
    return tokenizer.batch_decode(output, skip_special_tokens=True)


@contextmanager
def ending_the_streamed_line(streamer: TextStreamer | None) -> Iterator[None]:
    """If generation fails once the prompt is streamed, end that line, so the error starts a line of its own."""
    try:
        yield
    except BaseException:
        if streamer is not None:
            print(flush=True)
        raise


if __name__ == "__main__":
    sys.exit(main())
