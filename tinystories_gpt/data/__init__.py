"""The data's path up to the model: text -> tokens -> windows.

    sources.py       stories from the Hub or local files, as `datasets` splits with a `text` column
    tokenization.py  the tokenizer: the bundled GPT-2 one (gpt2_tokenizer/), or a byte-level BPE trained here
    token_files.py   each split tokenized once into a cached flat token file
    batches.py       windows of those tokens: training batches, fixed evaluation batches, the full pass

Nothing is imported here: the Hub side of the package reads the tokenizer without loading `datasets`.
"""
