"""`python -m tinystories_gpt.generate`: kept so the documented command keeps working; see cli/generate.py."""

import sys

from .cli.generate import main

if __name__ == "__main__":
    sys.exit(main())
