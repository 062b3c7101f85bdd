"""The model leaves the training side: as a Hub-ready folder, and in every other format a user runs it in.

hub.py       the Hub-ready folder (weights, config with auto_map, code, tokenizer, card), loading, the upload
checks.py    how each conversion proves itself by logits before it replaces anything (`save_checked`)
nanogpt.py   nanoGPT checkpoints, bare state dicts and training checkpoints -> a Hub-ready folder
gpt2.py      to and from a plain GPT2LMHeadModel folder
gguf.py      a GGUF file for llama.cpp        (the `export` extra)
onnx.py      an ONNX folder for ONNX Runtime and transformers.js   (the `export` extra)
"""
