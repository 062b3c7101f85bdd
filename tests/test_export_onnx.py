"""ONNX (`convert.py onnx`) in ONNX Runtime and in transformers.js (Node, offline), against our model: the same
token ids, logits within 1e-3 with the cache in use, the same greedy story."""

import json
import subprocess

import numpy as np
import onnxruntime
import pytest
import torch
from exports import NEW_TOKENS, REPO, our_greedy, our_logits, prompt, side_env, up_to_eos, validation_story

from tinystories_gpt.export.onnx import empty_cache, run_step

pytestmark = pytest.mark.slow  # every test here trains a model or runs a real tool

LOGITS_TOLERANCE = 1e-3  # what the issue asks; measured up to 7e-6 (both float32)


def test_onnx_folder_is_a_gpt2_folder_with_optimum_io_names(story_models):
    folder = story_models.onnx_folder("bpe")
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "gpt2" and config["n_ctx"] == config["n_positions"]
    session = onnxruntime.InferenceSession(folder / "onnx" / "model.onnx")
    layers = range(config["n_layer"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask", "position_ids"] + [
        f"past_key_values.{layer}.{kind}" for layer in layers for kind in ("key", "value")
    ]
    assert [o.name for o in session.get_outputs()] == ["logits"] + [
        f"present.{layer}.{kind}" for layer in layers for kind in ("key", "value")
    ]


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe"])
def test_onnx_runtime_with_the_cache_matches_our_logits_and_greedy_story(story_models, tokenizer):
    model, text_tokenizer = story_models.ours(tokenizer)
    session = onnxruntime.InferenceSession(story_models.onnx_folder(tokenizer) / "onnx" / "model.onnx")
    input_ids = text_tokenizer(validation_story())["input_ids"][: model.config.block_size]

    # the story in two steps, the second one reading the first one's cache
    first = run_step(session, torch.tensor([input_ids[:20]]), empty_cache(model.config, 1))
    second = run_step(session, torch.tensor([input_ids[20:]]), first)
    logits = np.concatenate([first["logits"][0], second["logits"][0]])
    assert np.abs(logits - our_logits(model, input_ids).numpy()).max() < LOGITS_TOLERANCE

    # greedy decoding, one token a step from the cache
    prompt_ids = text_tokenizer(prompt())["input_ids"]
    step, greedy = run_step(session, torch.tensor([prompt_ids]), empty_cache(model.config, 1)), []
    while len(greedy) < NEW_TOKENS:
        token = int(step["logits"][0, -1].argmax())
        if token == model.config.eos_token_id:
            break
        greedy.append(token)
        step = run_step(session, torch.tensor([[token]]), step)
    assert greedy == our_greedy(model, prompt_ids)


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe"])
def test_transformers_js_generates_our_greedy_story_offline(story_models, tokenizer):
    node_modules = side_env("node/node_modules/@huggingface/transformers", "transformers.js").parents[1]
    model, text_tokenizer = story_models.ours(tokenizer)
    script = REPO / "tests" / "side" / "transformers_js_generate.cjs"
    result = subprocess.run(
        ["node", str(script), str(node_modules), str(story_models.onnx_folder(tokenizer)), prompt(), str(NEW_TOKENS)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    prompt_ids = text_tokenizer(prompt())["input_ids"]
    assert seen["version"].startswith("4.")
    assert seen["prompt_ids"] == prompt_ids
    continuation = up_to_eos(seen["output_ids"][len(prompt_ids) :], model.config.eos_token_id)
    assert continuation == our_greedy(model, prompt_ids)


def test_quantize_adds_a_checked_8bit_graph_that_onnx_runtime_runs(story_models, tmp_path, capsys):
    from tinystories_gpt.cli import convert

    model, text_tokenizer = story_models.ours("bpe")
    folder = tmp_path / "onnx-q8"
    assert convert.main(["onnx", str(story_models.hub_folder("bpe")), str(folder), "--quantize"]) == 0
    assert "logits match" in capsys.readouterr().out
    fp32, q8 = (folder / "onnx" / name for name in ("model.onnx", "model_quantized.onnx"))
    assert q8.stat().st_size < fp32.stat().st_size / 2
    session = onnxruntime.InferenceSession(q8)
    prompt_ids = text_tokenizer(prompt())["input_ids"]
    step = run_step(session, torch.tensor([prompt_ids]), empty_cache(model.config, 1))
    first_token = int(step["logits"][0, -1].argmax())
    assert 0 <= first_token < model.config.vocab_size and np.isfinite(step["logits"]).all()
