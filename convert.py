"""Convert checkpoints and models: `python convert.py {nanogpt,checkpoint,gpt2,from-gpt2,gguf,onnx,space,push} ...`.

The same command as `tinystories-convert`; the code lives in tinystories_gpt/cli/convert.py.
"""

import sys

from tinystories_gpt.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
