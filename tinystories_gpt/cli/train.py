"""Train the TinyStories GPT: `tinystories-train --config configs/quickstart.yaml` (or `python train.py ...`).

Every flag is a field of the argument dataclasses (`--help` lists them); a YAML preset given with `--config`
sets defaults that flags override. Launch with `accelerate launch` or `torchrun` for several processes.
"""

import sys

from ..training import TrainingDiverged, parse_args, train


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, training_args = parse_args(argv)
        train(model_args, data_args, training_args)
    except (ValueError, FileNotFoundError) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2
    except TrainingDiverged as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
