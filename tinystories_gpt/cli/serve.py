"""`tinystories-serve MODEL [transformers serve's options]`: Transformers' OpenAI-compatible server for our folders.

It is `transformers serve`, with every option, endpoint and behaviour of Transformers' own command, and one thing
added. That server finds a model's class by the name its config.json gives (`getattr(transformers,
config.architectures[0])` in Transformers 5.25), so it loads only classes Transformers ships: no model with code of
its own loads under it, with `--trust-remote-code` or without ("module transformers has no attribute
TinyStoriesGPTForCausalLM"). This command makes our classes known under their names, then hands over. The server
runs the model in a process it spawns, which imports this module again as its main module, so the names are known
there too.

A GPT-2 export (`convert.py gpt2`) needs none of this: plain `transformers serve FOLDER` serves it.
"""

import sys
from pathlib import Path

import transformers
from transformers.utils import is_serve_available

from ..export.hub import check_model_folder

# the package, imported first, registers the Auto classes: AutoConfig and AutoModelForCausalLM know our model_type
from ..modeling_tinystories_gpt import TinyStoriesGPTForCausalLM, TinyStoriesGPTModel
from .exit_status import report, run_command

SERVE_EXTRA = "pip install 'tinystories-gpt[serve]' (or 'transformers[serving]')"

for model_class in (TinyStoriesGPTModel, TinyStoriesGPTForCausalLM):
    setattr(transformers, model_class.__name__, model_class)


def main(argv: list[str] | None = None) -> int:
    """Run `transformers serve` with `argv` (default: the command line's arguments)."""
    arguments = sys.argv[1:] if argv is None else argv
    if not is_serve_available():
        return report(f"tinystories-serve: error: Transformers' server is not installed: {SERVE_EXTRA}", 2)
    if arguments and Path(arguments[0]).is_dir():  # a damaged folder is named as such before anything is served
        status = run_command("tinystories-serve", lambda: check_model_folder(Path(arguments[0])))
        if status:
            return status
    from transformers.cli.transformers import app  # the `transformers` command line, its `serve` among them

    return app(args=["serve", *arguments], prog_name="tinystories-serve")


if __name__ == "__main__":
    sys.exit(main())
