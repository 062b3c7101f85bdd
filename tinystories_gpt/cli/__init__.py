"""The command lines, thin layers over the library; each is a console script and a `python -m` module.

    tinystories-train     python -m tinystories_gpt.cli.train      (python train.py in a checkout)
    tinystories-evaluate  python -m tinystories_gpt.cli.evaluate
    tinystories-generate  python -m tinystories_gpt.cli.generate
    tinystories-convert   python -m tinystories_gpt.cli.convert    (python convert.py in a checkout)
    tinystories-demo      python -m tinystories_gpt.demo
    tinystories-serve     python -m tinystories_gpt.cli.serve      (transformers serve, for our folders)

Each `main(argv)` returns the exit status that exit_status.py lists.
"""
