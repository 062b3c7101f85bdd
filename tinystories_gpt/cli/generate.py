"""Write stories: `tinystories-generate MODEL --prompt "Once upon a time"`.

MODEL is a saved folder or a Hub id (ours, or an exported GPT-2). Tokens are printed as they come; sampling
defaults come from the model's generation_config.json and every flag overrides them.
"""

import argparse
import sys

import torch
from transformers import TextStreamer

from ..hub import load_model_and_tokenizer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tinystories-generate", description=__doc__)
    parser.add_argument("model", help="a saved model folder or a Hub repo id")
    parser.add_argument("--prompt", required=True, help="the story's opening")
    parser.add_argument("--max_new_tokens", type=int, default=None, help="default: fill the model's context")
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--top_k", type=int, default=None)
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--greedy", action="store_true", help="always take the most likely token")
    parser.add_argument("--num_return_sequences", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None, help="fix the sampling for reproducible stories")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)
    try:
        stories = generate(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"generate: error: {error}", file=sys.stderr)
        return 2
    if args.num_return_sequences > 1:  # one story streams as it comes; several are printed when done
        for number, story in enumerate(stories, start=1):
            print(f"--- story {number} ---\n{story}\n")
    return 0


def generate(args: argparse.Namespace) -> list[str]:
    if not args.prompt.strip():
        raise ValueError("the prompt is empty; pass the story's opening, e.g. --prompt 'Once upon a time'")
    if args.num_return_sequences < 1:
        raise ValueError(f"--num_return_sequences must be at least 1, got {args.num_return_sequences}")
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
    sampling = {name: value for name in ("temperature", "top_k", "top_p") if (value := getattr(args, name)) is not None}
    streamer = TextStreamer(tokenizer, skip_special_tokens=True) if args.num_return_sequences == 1 else None
    with torch.no_grad():
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


if __name__ == "__main__":
    sys.exit(main())
