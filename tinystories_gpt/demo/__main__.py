"""`python -m tinystories_gpt.demo MODEL`: the story demo, the same command as `tinystories-demo MODEL`."""

import sys

from ..cli.demo import main

if __name__ == "__main__":
    sys.exit(main())
