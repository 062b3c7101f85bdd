"""Run in the TransformerLens side environment: boot a TransformerBridge on a GPT-2 export, read the residual
stream through its hooks, and save it with the logits for tests/test_export_transformer_lens.py to compare.

    python transformer_lens_probe.py EXPORT_DIR TEXT OUT.npz
"""

import sys
from importlib.metadata import version

import numpy as np
from transformer_lens.model_bridge import TransformerBridge
from transformers import AutoModelForCausalLM, AutoTokenizer

export_dir, text, out = sys.argv[1:]
tokenizer = AutoTokenizer.from_pretrained(export_dir)
hf_model = AutoModelForCausalLM.from_pretrained(export_dir)
bridge = TransformerBridge.boot_transformers(export_dir, hf_model=hf_model, tokenizer=tokenizer, device="cpu")
input_ids = tokenizer(text, return_tensors="pt")["input_ids"][:, : hf_model.config.n_positions]
logits, cache = bridge.run_with_cache(input_ids)
np.savez(
    out,
    version=version("transformer-lens"),  # the package has no __version__
    input_ids=input_ids[0].numpy(),
    logits=logits[0].detach().numpy(),
    resid_pre=cache["blocks.0.hook_resid_pre"][0].detach().numpy(),
    resid_post=cache["blocks.0.hook_resid_post"][0].detach().numpy(),
)
