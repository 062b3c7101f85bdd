"""Train the TinyStories GPT: `tinystories-train --config configs/quickstart.yaml` (or `python train.py ...`).

Every flag is a field of the argument dataclasses (`--help` lists them); a YAML preset given with `--config`
sets defaults that flags override. Launch with `accelerate launch` or `torchrun` for several processes.
"""

import sys

from ..training.loop import TrainingDiverged, parse_args, train
from .exit_status import run_command


def main(argv: list[str] | None = None) -> int:
    return run_command("train.py", lambda: train(*parse_args(argv)), failures=(TrainingDiverged,))


if __name__ == "__main__":
    sys.exit(main())
