"""Run in the Transformers 4.x side environment: load a GPT-2 export as a user of 4.x would, without our package
and without trust_remote_code, and save what it computes for tests/test_export_transformers4.py to compare.

    python transformers4_probe.py EXPORT_DIR TEXT PROMPT NEW_TOKENS OUT.npz
"""

import sys

import numpy as np
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

export_dir, text, prompt, new_tokens, out = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(export_dir)
model = AutoModelForCausalLM.from_pretrained(export_dir).eval()
input_ids = tokenizer(text)["input_ids"]
# as users call them: everything the tokenizer returns goes in, truncated to the tokenizer's model_max_length
context = tokenizer(text, return_tensors="pt", truncation=True)
prompt_ids = tokenizer(prompt, return_tensors="pt")
with torch.no_grad():
    logits = model(**context).logits[0]
    greedy = model.generate(**prompt_ids, max_new_tokens=int(new_tokens), do_sample=False)
np.savez(
    out,
    version=transformers.__version__,
    tokenizer_class=type(tokenizer).__name__,
    model_class=type(model).__name__,
    model_max_length=tokenizer.model_max_length,
    model_input_names=tokenizer.model_input_names,
    input_ids=np.array(input_ids),
    logits=logits.numpy(),
    greedy=greedy[0, prompt_ids["input_ids"].shape[1] :].numpy(),
)
