"""The GPT-2 export in TransformerLens 4.x (TransformerBridge, its GPT-2 adapter): hooks see our residual stream
and the bridge's logits are ours."""

import numpy as np
import pytest
import torch
from exports import our_logits, run_side_python, side_env, validation_story

pytestmark = pytest.mark.slow  # every test here trains a model or runs a real tool

TOLERANCE = 1e-4  # float32 on both sides (the bridge forces eager attention); measured up to 5e-6


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe"])
def test_transformer_lens_hooks_see_our_residual_stream_and_logits(story_models, tokenizer, tmp_path):
    python = side_env("lens/bin/python", "the TransformerLens environment")
    model, text_tokenizer = story_models.ours(tokenizer)
    out = tmp_path / "seen.npz"
    run_side_python(
        python, "transformer_lens_probe.py", str(story_models.gpt2_export(tokenizer)), validation_story(), str(out)
    )
    seen = np.load(out)

    assert str(seen["version"]).startswith("4.")
    input_ids = seen["input_ids"].tolist()
    assert input_ids == text_tokenizer(validation_story())["input_ids"][: model.config.block_size]
    with torch.no_grad():  # (embeddings, block 0's output, ...): the residual stream before and after block 0
        hidden_states = model(torch.tensor([input_ids]), output_hidden_states=True).hidden_states
    assert np.abs(seen["resid_pre"] - hidden_states[0][0].numpy()).max() < TOLERANCE
    assert np.abs(seen["resid_post"] - hidden_states[1][0].numpy()).max() < TOLERANCE
    assert np.abs(seen["logits"] - our_logits(model, input_ids).numpy()).max() < TOLERANCE
