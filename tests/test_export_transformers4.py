"""The GPT-2 export in Transformers 4.x (4.57.6, the release llama.cpp's converter and optimum-onnx pin), which
loads it as a plain GPT2LMHeadModel: no trust_remote_code, no tinystories_gpt installed in that environment."""

import numpy as np
import pytest
import torch
from exports import (
    NEW_TOKENS,
    our_greedy,
    our_logits,
    prompt,
    run_side_python,
    side_env,
    up_to_eos,
    validation_story,
)

pytestmark = pytest.mark.slow  # every test here trains a model or runs a real tool

LOGITS_TOLERANCE = 1e-4  # both sides float32 through the same operations; measured 0 (bit-identical)


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe"])
def test_transformers4_loads_the_gpt2_export_with_our_ids_logits_and_greedy_story(story_models, tokenizer, tmp_path):
    python = side_env("tf457/bin/python", "the Transformers 4.57 environment")
    model, text_tokenizer = story_models.ours(tokenizer)
    export = story_models.gpt2_export(tokenizer)
    text = validation_story()
    out = tmp_path / "seen.npz"
    run_side_python(python, "transformers4_probe.py", str(export), text, prompt(), str(NEW_TOKENS), str(out))
    seen = np.load(out)

    assert str(seen["version"]).startswith("4.")
    assert str(seen["model_class"]) == "GPT2LMHeadModel"
    # the trained BPE comes back as PreTrainedTokenizerFast, GPT-2's vocabulary as GPT2TokenizerFast
    assert str(seen["tokenizer_class"]).endswith("TokenizerFast")
    assert int(seen["model_max_length"]) == model.config.block_size
    assert seen["model_input_names"].tolist() == ["input_ids", "attention_mask"]  # no token_type_ids for GPT-2
    input_ids = text_tokenizer(text)["input_ids"]
    assert seen["input_ids"].tolist() == input_ids
    context = input_ids[: model.config.block_size]
    difference = (torch.from_numpy(seen["logits"]) - our_logits(model, context)).abs().max().item()
    assert difference < LOGITS_TOLERANCE
    greedy = up_to_eos(seen["greedy"].tolist(), model.config.eos_token_id)
    assert greedy == our_greedy(model, text_tokenizer(prompt())["input_ids"])
