"""Train the TinyStories GPT: `python train.py --config configs/quickstart.yaml` or `accelerate launch train.py ...`.

The same command as `tinystories-train`; the code lives in tinystories_gpt/cli/train.py.
"""

import sys

from tinystories_gpt.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
