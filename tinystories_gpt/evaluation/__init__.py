"""Scoring a model while it trains and once it is trained.

losses.py        the loss of a batch, of fixed windows, and a full pass with bits per byte
bits_per_byte/   the `evaluate` metric behind it, loaded from disk (no Hub at run time)
stories.py       the seed prompt, the sampling defaults saved with every model, sample stories
"""
