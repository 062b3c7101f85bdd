"""`python -m tinystories_gpt.evaluate`: kept so the documented command keeps working; see cli/evaluate.py."""

import sys

from .cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
