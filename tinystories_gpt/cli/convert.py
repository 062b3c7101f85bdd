"""Convert checkpoints to Hub-ready folders, to and from GPT-2, and push them to the Hub (`tinystories-convert`).

    python convert.py nanogpt out/ckpt.pt hf/                       # nanoGPT checkpoint (model_args inside)
    python convert.py nanogpt best_model_params.pt hf/ --n_head 6   # bare state dict: give the head count
    python convert.py checkpoint out/checkpoints/step_1000 hf/      # Accelerate training checkpoint
    python convert.py gpt2 hf/ hf-gpt2/                             # plain GPT2LMHeadModel, no custom code
    python convert.py from-gpt2 hf-gpt2/ hf/
    python convert.py gguf hf/ model.gguf [--outtype f32|f16|q8_0]   # for llama.cpp (hf/ or hf-gpt2/)
    python convert.py onnx hf/ hf-onnx/ [--quantize]                # for ONNX Runtime, transformers.js, optimum
    python convert.py space hf/ space/ --sdk static [--dataset D]    # a Space running the model in the browser
    python convert.py space user/tinystories-gpt space/ --sdk gradio  # a Space serving the Gradio demo
    python convert.py push hf/ user/tinystories-gpt [--private] [--revision R]
    python convert.py push space/ user/tinystories-stories --space

Every conversion checks the written model's logits against its source before it reports success (GGUF by
reading the file back, ONNX by running it in ONNX Runtime). Bad input is reported as one line on stderr with
exit status 2.
"""

import argparse
import importlib
import sys

from ..export.gpt2 import export_gpt2, import_gpt2
from ..export.hub import push_space, push_to_hub
from ..export.nanogpt import convert_nanogpt, convert_training_checkpoint
from ..signals import stop_on_signal
from .exit_status import run_command

SHAPE_OPTIONS = ("n_head", "block_size", "vocab_size", "n_layer", "n_embd")
SPACE_DEFAULTS = {"node_modules": "node_modules", "dataset": None}


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
    onnx.add_argument("--quantize", action="store_true", help="also onnx/model_quantized.onnx, 8-bit weights")
    onnx.add_argument("--overwrite", action="store_true")

    space = commands.add_parser("space", help="model folder or Hub id -> a Hub Space folder for the story demo")
    space.add_argument("model", help="--sdk static: a model folder; --sdk gradio: the model's Hub id")
    space.add_argument("output_dir")
    space.add_argument("--sdk", required=True, help="static (the model runs in the browser) or gradio (on the Space)")
    space.add_argument("--node_modules", default=SPACE_DEFAULTS["node_modules"], help="--sdk static: transformers.js")
    space.add_argument("--dataset", default=None, help="--sdk static: score both graphs on its validation split")
    space.add_argument("--title", default=None)
    space.add_argument("--overwrite", action="store_true")

    push = commands.add_parser("push", help="upload a Hub-ready folder to a Hub model repo (or a Space folder)")
    push.add_argument("model_dir")
    push.add_argument("repo_id", help="user/name or org/name")
    push.add_argument("--space", action="store_true", help="the folder is a convert.py space folder: a Space repo")
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
        out = export_function("export_onnx")(
            args.model_dir, args.output_dir, overwrite=args.overwrite, quantize=args.quantize
        )
    elif args.command == "space":
        out = write_space(args)
        return f"wrote {out}, {space_module().describe_space(out)}"
    elif args.space:
        if args.revision is not None:
            raise ValueError("a Space serves its main branch: drop --revision, or push to another Space")
        url = push_space(args.model_dir, args.repo_id, private=args.private)
        return f"pushed {args.model_dir} to the Space {args.repo_id}: {url}"
    else:
        url = push_to_hub(args.model_dir, args.repo_id, private=args.private, revision=args.revision)
        return f"pushed {args.model_dir} to {args.repo_id}: {url}"
    return f"wrote {out} (logits match the source weights)"


def write_space(args: argparse.Namespace):
    """The Space folder of `--sdk`; the library refuses the rest of the bad input."""
    if args.sdk == "static":
        return space_module().write_static_space(
            args.model, args.output_dir, node_modules=args.node_modules, dataset=args.dataset, title=args.title,
            overwrite=args.overwrite,
        )  # fmt: skip
    if args.sdk == "gradio":
        for flag in ("node_modules", "dataset"):
            if getattr(args, flag) != SPACE_DEFAULTS[flag]:
                raise ValueError(f"--{flag} is for --sdk static (the model runs on the Space): drop it")
        return space_module().write_gradio_space(
            args.model, args.output_dir, title=args.title, overwrite=args.overwrite
        )
    raise ValueError(f"--sdk must be static or gradio, got {args.sdk!r}")


def space_module():
    """demo/space.py, imported only when asked for: its static Space is an ONNX export (the `export` extra)."""
    try:
        return importlib.import_module("tinystories_gpt.demo.space")
    except ModuleNotFoundError as error:
        raise ValueError(f"convert.py space needs {error.name!r}: pip install 'tinystories-gpt[demo]'") from None


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
