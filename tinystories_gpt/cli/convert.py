"""Convert checkpoints to Hub-ready folders, to and from GPT-2, and push them to the Hub (`tinystories-convert`).

    python convert.py nanogpt out/ckpt.pt hf/                       # nanoGPT checkpoint (model_args inside)
    python convert.py nanogpt best_model_params.pt hf/ --n_head 6   # bare state dict: give the head count
    python convert.py checkpoint out/checkpoints/step_1000 hf/      # Accelerate training checkpoint
    python convert.py gpt2 hf/ hf-gpt2/                             # plain GPT2LMHeadModel, no custom code
    python convert.py from-gpt2 hf-gpt2/ hf/
    python convert.py gguf hf/ model.gguf [--outtype f32|f16|q8_0]   # for llama.cpp (hf/ or hf-gpt2/)
    python convert.py onnx hf/ hf-onnx/                             # for ONNX Runtime, transformers.js, optimum
    python convert.py push hf/ user/tinystories-gpt [--private] [--revision R]

Every conversion checks the written model's logits against its source before it reports success (GGUF by
reading the file back, ONNX by running it in ONNX Runtime). Bad input is reported as one line on stderr with
exit status 2.
"""

import argparse
import importlib
import sys

from ..export.gpt2 import export_gpt2, import_gpt2
from ..export.hub import push_to_hub
from ..export.nanogpt import convert_nanogpt, convert_training_checkpoint
from ..signals import stop_on_signal
from .exit_status import run_command

SHAPE_OPTIONS = ("n_head", "block_size", "vocab_size", "n_layer", "n_embd")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="convert.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    nanogpt = commands.add_parser("nanogpt", help="nanoGPT ckpt.pt or a bare state dict .pt -> Hub-ready folder")
    nanogpt.add_argument("checkpoint")
    nanogpt.add_argument("output_dir")
    nanogpt.add_argument("--tokenizer", default="gpt2", help="gpt2 (bundled), a tokenizer folder or a Hub id")
    add_config_options(nanogpt)

    checkpoint = commands.add_parser("checkpoint", help="Accelerate training checkpoint -> Hub-ready folder")
    checkpoint.add_argument("state_dir")
    checkpoint.add_argument("output_dir")
    checkpoint.add_argument("--tokenizer", default=None, help="when the checkpoint has no tokenizer/ folder")
    add_config_options(checkpoint)

    gpt2 = commands.add_parser("gpt2", help="TinyStoriesGPT folder -> native GPT2LMHeadModel folder")
    gpt2.add_argument("model_dir")
    gpt2.add_argument("output_dir")
    gpt2.add_argument("--overwrite", action="store_true")

    from_gpt2 = commands.add_parser("from-gpt2", help="GPT2LMHeadModel folder -> Hub-ready TinyStoriesGPT folder")
    from_gpt2.add_argument("gpt2_dir")
    from_gpt2.add_argument("output_dir")
    from_gpt2.add_argument("--overwrite", action="store_true")

    gguf = commands.add_parser("gguf", help="TinyStoriesGPT or GPT-2 folder -> GGUF file for llama.cpp")
    gguf.add_argument("model_dir")
    gguf.add_argument("output_file")
    # no argparse `choices`: the library's refusal names the fix in one line, as for every other bad input
    gguf.add_argument("--outtype", default="f32", help="f32, f16 or q8_0 (q8_0 needs n_embd divisible by 32)")
    gguf.add_argument("--overwrite", action="store_true")

    onnx = commands.add_parser("onnx", help="TinyStoriesGPT or GPT-2 folder -> GPT-2 folder with onnx/model.onnx")
    onnx.add_argument("model_dir")
    onnx.add_argument("output_dir")
    onnx.add_argument("--overwrite", action="store_true")

    push = commands.add_parser("push", help="upload a Hub-ready folder to a Hub model repo")
    push.add_argument("model_dir")
    push.add_argument("repo_id", help="user/name or org/name")
    push.add_argument("--private", action="store_true", default=None, help="create the repo private")
    push.add_argument("--revision", default=None, help="branch to commit to (created if needed)")
    return parser.parse_args(argv)


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """Shapes a checkpoint may not record; any given must agree with the tensors."""
    for name in SHAPE_OPTIONS:
        parser.add_argument(f"--{name}", type=int, default=None)
    parser.add_argument("--dropout", type=float, default=None, help="for fine-tuning the converted model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def config_fields(args: argparse.Namespace) -> dict:
    return {name: getattr(args, name) for name in (*SHAPE_OPTIONS, "dropout")}


def run(args: argparse.Namespace) -> str:
    """Do the command; returns the line to print."""
    if args.command == "nanogpt":
        out = convert_nanogpt(
            args.checkpoint, args.output_dir, tokenizer=args.tokenizer, overwrite=args.overwrite, **config_fields(args)
        )
    elif args.command == "checkpoint":
        out = convert_training_checkpoint(
            args.state_dir, args.output_dir, tokenizer=args.tokenizer, overwrite=args.overwrite, **config_fields(args)
        )
    elif args.command == "gpt2":
        out = export_gpt2(args.model_dir, args.output_dir, overwrite=args.overwrite)
    elif args.command == "from-gpt2":
        out = import_gpt2(args.gpt2_dir, args.output_dir, overwrite=args.overwrite)
    elif args.command == "gguf":
        export_gguf = export_function("export_gguf")
        out = export_gguf(args.model_dir, args.output_file, outtype=args.outtype, overwrite=args.overwrite)
    elif args.command == "onnx":
        out = export_function("export_onnx")(args.model_dir, args.output_dir, overwrite=args.overwrite)
    else:
        url = push_to_hub(args.model_dir, args.repo_id, private=args.private, revision=args.revision)
        return f"pushed {args.model_dir} to {args.repo_id}: {url}"
    return f"wrote {out} (logits match the source weights)"


def export_function(name: str):
    """`export_gguf` or `export_onnx`, imported only when asked for: they need the `export` extra's libraries."""
    try:
        return getattr(importlib.import_module(f"tinystories_gpt.export.{name.removeprefix('export_')}"), name)
    except ModuleNotFoundError as error:
        raise ValueError(
            f"convert.py {name.removeprefix('export_')} needs {error.name!r}: pip install 'tinystories-gpt[export]'"
        ) from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stop = stop_on_signal("while converting", "the output folder was left as it was")
    return run_command("convert.py", lambda: print(run(args)), stop)


if __name__ == "__main__":
    sys.exit(main())
