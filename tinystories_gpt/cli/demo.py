"""Serve the story demo in the browser: `tinystories-demo MODEL [--port 7860]` (or `python -m tinystories_gpt.demo`).

MODEL is a saved folder or a Hub id (ours, or an exported GPT-2). The page (demo/app.py) streams a story for a
prompt, with the sampling settings, a seed, a greedy switch and a Stop button, and shows the tokens/s. It is
served on 127.0.0.1 unless --host says otherwise, and needs the `demo` extra (Gradio).
"""

import argparse
import importlib
import sys
from pathlib import Path

from ..export.hub import check_model_folder
from .exit_status import run_command

DEMO_EXTRA = "pip install 'tinystories-gpt[demo]'"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tinystories-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a saved model folder or a Hub repo id")
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    parser.add_argument("--port", type=int, default=None, help="default: GRADIO_SERVER_PORT, else 7860")
    parser.add_argument("--concurrency", type=int, default=None, help="stories written at once (default 1)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--trust_remote_code", action="store_true")
    return parser.parse_args(argv)


def demo_app():
    """demo/app.py, imported only here: it needs Gradio, which `import tinystories_gpt` and the other commands don't."""
    try:
        return importlib.import_module("tinystories_gpt.demo.app")
    except ModuleNotFoundError as error:
        if error.name != "gradio":
            raise
        raise ValueError(f"tinystories-demo needs Gradio: {DEMO_EXTRA}") from None


def serve(args: argparse.Namespace) -> None:
    """Load the model (refusing a bad one before anything is served), then serve the page until stopped."""
    app = demo_app()
    concurrency = app.CONCURRENCY if args.concurrency is None else args.concurrency
    if concurrency < 1:
        raise ValueError(f"--concurrency must be at least 1 (stories written at once), got {concurrency}")
    if Path(args.model).is_dir():
        check_model_folder(Path(args.model))  # a damaged folder is named as such, not as a Transformers error
    writer = app.StoryWriter.load(args.model, trust_remote_code=args.trust_remote_code, device=args.device)
    demo = app.build_demo(args.model, writer=writer)
    app.launch(demo, host=args.host, port=args.port, concurrency=concurrency)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command("tinystories-demo", lambda: serve(args))


if __name__ == "__main__":
    sys.exit(main())
