"""The command lines, thin layers over the library; each is a console script and a `python -m` module.

    tinystories-train     python -m tinystories_gpt.cli.train      (python train.py in a checkout)
    tinystories-evaluate  python -m tinystories_gpt.cli.evaluate   (also python -m tinystories_gpt.evaluate)
    tinystories-generate  python -m tinystories_gpt.cli.generate   (also python -m tinystories_gpt.generate)
    tinystories-convert   python -m tinystories_gpt.cli.convert    (python convert.py in a checkout)

Each `main(argv)` returns the exit status (faults.run_command): 0, 2 for bad input (one line on stderr naming the
fix), 1 for a run that failed on the way (a diverged loss, a full disk), 130 or 143 when SIGINT or SIGTERM stopped
it where it could not checkpoint first (one line saying what was kept). Training stopped by a signal in its loop
checkpoints first and exits 0.
"""
