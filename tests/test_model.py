"""The model as a Transformers user meets it: config, forward, generate, save/load, Auto classes, pipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, pipeline
from transformers.modeling_outputs import CausalLMOutputWithPast

import tinystories_gpt
from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM, TinyStoriesGPTModel

GPT2_TOKENIZER_DIR = Path(tinystories_gpt.__file__).parent / "data" / "gpt2_tokenizer"
TINY = dict(vocab_size=101, block_size=32, n_layer=2, n_head=2, n_embd=32, bos_token_id=0, eos_token_id=0)


def tiny_model(seed: int = 0, **overrides) -> TinyStoriesGPTForCausalLM:
    torch.manual_seed(seed)
    config = TinyStoriesGPTConfig(**{**TINY, "dropout": 0.0, **overrides})
    return TinyStoriesGPTForCausalLM(config).eval()


def test_seed_config_matches_the_seed_table_and_has_about_30m_parameters():
    config = TinyStoriesGPTConfig()
    assert (config.vocab_size, config.block_size, config.n_layer, config.n_head, config.n_embd) == (
        50257,
        128,
        6,
        6,
        384,
    )
    assert config.dropout == 0.1 and config.bias and config.tie_word_embeddings
    assert config.bos_token_id == config.eos_token_id == 50256
    # the standard names generic tooling reads
    assert config.hidden_size == 384 and config.num_hidden_layers == 6 and config.num_attention_heads == 6
    assert config.max_position_embeddings == config.n_positions == 128
    with torch.device("meta"):
        model = TinyStoriesGPTForCausalLM(config)
    n_params = sum(p.numel() for p in model.parameters())  # tied head counted once
    assert abs(n_params / 1e6 - 30.0) < 0.05


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(n_embd=384, n_head=5), "n_head"),
        (dict(n_layer=0), "n_layer"),
        (dict(n_head=-1), "n_head"),
        (dict(vocab_size=0), "vocab_size"),
        (dict(block_size=0), "block_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout=-0.1), "dropout"),
    ],
)
def test_impossible_configs_raise_a_value_error_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        TinyStoriesGPTConfig(**overrides)


def test_forward_returns_causal_lm_output_with_shifted_loss_ignoring_minus_100():
    model = tiny_model()
    input_ids = torch.randint(0, 101, (2, 12))
    labels = input_ids.clone()
    labels[:, :4] = -100
    out = model(input_ids, labels=labels)
    assert isinstance(out, CausalLMOutputWithPast)
    assert out.logits.shape == (2, 12, 101)
    expected = torch.nn.functional.cross_entropy(
        out.logits[:, :-1].reshape(-1, 101), labels[:, 1:].reshape(-1), ignore_index=-100
    )
    torch.testing.assert_close(out.loss, expected)
    assert model(input_ids, logits_to_keep=1).logits.shape == (2, 1, 101)
    assert isinstance(model(input_ids, return_dict=False), tuple)


def test_hidden_states_and_attentions_can_be_returned():
    model = tiny_model(attn_implementation="eager")
    out = model(torch.randint(0, 101, (1, 7)), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == TINY["n_layer"] + 1
    assert len(out.attentions) == TINY["n_layer"] and out.attentions[0].shape == (1, 2, 7, 7)


def test_gpt2_initialisation_scales_residual_projections():
    model = tiny_model(n_layer=4, n_embd=256, n_head=4, vocab_size=2000)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert abs(model.transformer.wte.weight.std().item() - 0.02) < 0.002
    residual_std = 0.02 / (2 * 4) ** 0.5
    block = model.transformer.h[0]
    assert abs(block.attn.c_proj.weight.std().item() - residual_std) < 0.001
    assert abs(block.mlp.c_proj.weight.std().item() - residual_std) < 0.001
    assert abs(block.attn.c_attn.weight.std().item() - 0.02) < 0.001
    assert torch.all(block.attn.c_attn.bias == 0) and torch.all(block.ln_1.weight == 1)


@pytest.mark.slow
def test_attention_backends_agree():
    model = tiny_model()
    input_ids = torch.randint(0, 101, (2, 16))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, :5] = 0  # left padding: compare real positions only
    logits = {}
    with torch.no_grad():
        for implementation in ("eager", "sdpa", "flex_attention"):
            model.set_attn_implementation(implementation)
            logits[implementation] = model(input_ids, attention_mask=attention_mask).logits[attention_mask.bool()]
    torch.testing.assert_close(logits["sdpa"], logits["eager"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits["flex_attention"], logits["eager"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache_implementation", [None, "static"])
def test_greedy_generation_with_cache_equals_without(cache_implementation):
    model = tiny_model()
    prompt = torch.randint(1, 101, (2, 5))
    kwargs = dict(max_new_tokens=20, do_sample=False, min_new_tokens=20)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    cached = model.generate(prompt, cache_implementation=cache_implementation, **kwargs)
    assert cached.shape == (2, 25)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("module", ["causal_lm", "bare_model"])
def test_past_key_values_is_a_deprecated_alias_of_cache(module):
    # What PEFT, older notebooks and other generation loops pass: it must extend the cache, not start a new one.
    model = tiny_model() if module == "causal_lm" else tiny_model().transformer
    input_ids = torch.randint(0, 101, (1, 10))
    with torch.no_grad():
        full = model(input_ids)
        prefix = model(input_ids[:, :7], use_cache=True)
        with pytest.warns(FutureWarning, match="past_key_values"):
            step = model(input_ids[:, 7:], past_key_values=prefix.cache, use_cache=True)
    output = "logits" if module == "causal_lm" else "last_hidden_state"
    torch.testing.assert_close(step[output], full[output][:, 7:])
    assert step.cache.get_seq_length() == 10


def test_left_padded_batch_generates_what_each_prompt_generates_alone():
    model = tiny_model()
    prompts = [torch.randint(1, 101, (n,)) for n in (3, 8, 5)]
    width = max(len(p) for p in prompts)
    input_ids = torch.zeros(len(prompts), width, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for row, prompt in enumerate(prompts):
        input_ids[row, width - len(prompt) :] = prompt
        attention_mask[row, width - len(prompt) :] = 1
    kwargs = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    batched = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
    for row, prompt in enumerate(prompts):
        alone = model.generate(prompt[None], **kwargs)
        assert torch.equal(batched[row, width:], alone[0, len(prompt) :])


def test_over_long_input_raises_a_value_error_naming_block_size():
    model = tiny_model()
    with pytest.raises(ValueError, match="block_size=32"):
        model(torch.randint(0, 101, (1, 33)))
    with pytest.raises(ValueError, match="block_size=32 tokens, prompt and story; shorten the prompt to at most 31"):
        model.generate(torch.randint(0, 101, (1, 32)), max_new_tokens=1)
    with pytest.raises(ValueError, match="block_size=32"):
        model.generate(torch.randint(0, 101, (1, 40)), max_new_tokens=1)
    # exactly the context is fine
    assert model.generate(torch.randint(1, 101, (1, 30)), max_new_tokens=2, min_new_tokens=2).shape == (1, 32)


def test_generation_stops_at_the_end_of_the_context():
    """More new tokens than the context holds (a server's default of 1024) write up to the context, like the default
    max_length, and the tokens written are those a request that fits writes."""
    model = tiny_model()
    prompt = torch.randint(1, 101, (1, 20))
    kwargs = dict(do_sample=False, pad_token_id=0, eos_token_id=None)
    fitting = model.generate(prompt, max_new_tokens=12, **kwargs)
    assert torch.equal(model.generate(prompt, max_new_tokens=1024, **kwargs), fitting)
    assert fitting.shape == (1, 32)


def test_gradient_checkpointing_gives_the_same_gradients():
    input_ids = torch.randint(0, 101, (2, 16))

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = tiny_model(dropout=0.0).train()
        if checkpointing:
            model.activation_checkpointing_enable()  # the v5 name of gradient_checkpointing_enable
        model(input_ids, labels=input_ids).loss.backward()
        return {name: p.grad for name, p in model.named_parameters()}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_run_and_generate(dtype):
    model = tiny_model().to(dtype)
    out = model(torch.randint(0, 101, (1, 8)))
    assert out.logits.dtype == dtype and torch.isfinite(out.logits).all()
    assert model.generate(torch.randint(1, 101, (1, 4)), max_new_tokens=4, do_sample=False).shape == (1, 8)


def test_save_and_load_round_trip_stores_one_tied_tensor(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path)
    with safe_open(tmp_path / "model.safetensors", "pt") as weights:
        keys = set(weights.keys())
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "tinystories_gpt"
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_tinystories_gpt.TinyStoriesGPTForCausalLM"
    assert (tmp_path / "modeling_tinystories_gpt.py").exists()
    assert (tmp_path / "configuration_tinystories_gpt.py").exists()

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(reloaded, TinyStoriesGPTForCausalLM)
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight
    input_ids = torch.randint(0, 101, (1, 10))
    torch.testing.assert_close(reloaded(input_ids).logits, model(input_ids).logits)
    assert isinstance(AutoModel.from_pretrained(tmp_path), TinyStoriesGPTModel)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), TinyStoriesGPTConfig)


def test_bf16_weights_reload_in_bf16(tmp_path):
    tiny_model().to(torch.bfloat16).save_pretrained(tmp_path)
    assert AutoModelForCausalLM.from_pretrained(tmp_path).dtype == torch.bfloat16


@pytest.mark.slow
def test_remote_code_loads_where_the_package_cannot_be_imported(tmp_path):
    model = tiny_model(**{"vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256})
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR).save_pretrained(tmp_path / "model")
    expected = model.generate(torch.tensor([[7454, 2402, 257, 640]]), max_new_tokens=6, do_sample=False)
    script = f"""
import sys
sys.modules["tinystories_gpt"] = None  # importing our package now fails: only the saved code can run
import torch
from transformers import AutoModelForCausalLM, pipeline
model = AutoModelForCausalLM.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
print(model.generate(torch.tensor([[7454, 2402, 257, 640]]), max_new_tokens=6, do_sample=False).tolist())
generator = pipeline("text-generation", model={str(tmp_path / "model")!r}, trust_remote_code=True)
print(generator("Once upon a time", max_new_tokens=5, do_sample=False)[0]["generated_text"])
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == str(expected.tolist())
    assert lines[1].startswith("Once upon a time")


@pytest.mark.slow
def test_text_generation_pipeline_with_the_gpt2_tokenizer(tmp_path):
    model = tiny_model(**{"vocab_size": 50257, "bos_token_id": 50256, "eos_token_id": 50256})
    model.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR).save_pretrained(tmp_path)
    generator = pipeline("text-generation", model=str(tmp_path))
    assert isinstance(generator.model, TinyStoriesGPTForCausalLM)
    prompt = "Once upon a time there was a pumpkin."
    text = generator(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert text.startswith(prompt) and len(text) > len(prompt)
