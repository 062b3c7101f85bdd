"""Train the TinyStories GPT: `python train.py --config configs/quickstart.yaml` or `accelerate launch train.py ...`."""

import sys

from tinystories_gpt.training import TrainingDiverged, parse_args, train


def main(argv: list[str] | None = None) -> int:
    try:
        model_args, data_args, training_args = parse_args(argv)
        train(model_args, data_args, training_args)
    except (ValueError, FileNotFoundError, TrainingDiverged) as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        return 2 if not isinstance(error, TrainingDiverged) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
