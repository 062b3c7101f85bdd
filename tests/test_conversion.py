"""Conversion: nanoGPT checkpoints, training checkpoints and GPT-2 folders, each checked against a float64 forward.

The checkpoints are built here from random tensors under nanoGPT's names, and `nanogpt_logits` below is written
from nanoGPT's model.py, sharing no code with the package, so a converter that maps one tensor wrongly fails.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from tinystories_gpt.data.tokenization import GPT2_TOKENIZER_DIR
from tinystories_gpt.export import nanogpt
from tinystories_gpt.export.gpt2 import export_gpt2, import_gpt2
from tinystories_gpt.export.nanogpt import convert_nanogpt, convert_training_checkpoint

REPO = Path(__file__).resolve().parents[1]
N_LAYER, N_HEAD, N_EMBD, BLOCK_SIZE = 2, 2, 32, 16
VOCAB_SIZE = 50304  # nanoGPT pads GPT-2's 50257 tokens up to a multiple of 64


# A nanoGPT-format checkpoint from random tensors ---------------------------------------------------------------


def nanogpt_state_dict(bias: bool = True, seed: int = 0) -> dict[str, torch.Tensor]:
    """nanoGPT's `model.state_dict()`: the head shares the embedding, and each block keeps its causal-mask buffer."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=0.2):
        return torch.randn(*shape, generator=generator) * scale

    state = {"transformer.wte.weight": rand(VOCAB_SIZE, N_EMBD), "transformer.wpe.weight": rand(BLOCK_SIZE, N_EMBD)}
    linears = {"attn.c_attn": 3 * N_EMBD, "attn.c_proj": N_EMBD, "mlp.c_fc": 4 * N_EMBD, "mlp.c_proj": N_EMBD}
    for layer in range(N_LAYER):
        block = f"transformer.h.{layer}"
        for norm in ("ln_1", "ln_2"):
            state[f"{block}.{norm}.weight"] = 1 + rand(N_EMBD)
        for name, width_out in linears.items():
            width_in = 4 * N_EMBD if name == "mlp.c_proj" else N_EMBD
            state[f"{block}.{name}.weight"] = rand(width_out, width_in)
            if bias:
                state[f"{block}.{name}.bias"] = rand(width_out)
        if bias:
            state[f"{block}.ln_1.bias"], state[f"{block}.ln_2.bias"] = rand(N_EMBD), rand(N_EMBD)
        state[f"{block}.attn.bias"] = torch.ones(BLOCK_SIZE, BLOCK_SIZE).tril().view(1, 1, BLOCK_SIZE, BLOCK_SIZE)
    state["transformer.ln_f.weight"] = 1 + rand(N_EMBD)
    if bias:
        state["transformer.ln_f.bias"] = rand(N_EMBD)
    state["lm_head.weight"] = state["transformer.wte.weight"]
    return state


def nanogpt_checkpoint(state_dict: dict, bias: bool = True) -> dict:
    """What nanoGPT's train.py saves as ckpt.pt."""
    model_args = dict(
        n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD, block_size=BLOCK_SIZE, bias=bias, vocab_size=VOCAB_SIZE
    )
    return {
        "model": state_dict,
        "optimizer": {"state": {}, "param_groups": [{"lr": 6e-4, "params": [0, 1]}]},
        "model_args": model_args | {"dropout": 0.0},
        "iter_num": 5000,
        "best_val_loss": torch.tensor(1.25),
        "config": {"dataset": "tinystories", "learning_rate": 6e-4, "compile": True},
    }


def nanogpt_logits(state_dict: dict[str, torch.Tensor], input_ids: torch.Tensor) -> torch.Tensor:
    """nanoGPT's GPT.forward in float64 over raw nanoGPT-named tensors."""
    w = {name: tensor.double() for name, tensor in state_dict.items()}
    batch, length = input_ids.shape
    head_size = N_EMBD // N_HEAD

    def layer_norm(x, prefix):
        bias = w.get(f"{prefix}.bias", torch.zeros(N_EMBD, dtype=torch.float64))
        centred = x - x.mean(-1, keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + 1e-5) * w[f"{prefix}.weight"] + bias

    def linear(x, prefix):
        return x @ w[f"{prefix}.weight"].T + w.get(f"{prefix}.bias", 0.0)

    def gelu(x):
        return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))

    x = w["transformer.wte.weight"][input_ids] + w["transformer.wpe.weight"][:length]
    for layer in range(N_LAYER):
        block = f"transformer.h.{layer}"
        q, k, v = linear(layer_norm(x, f"{block}.ln_1"), f"{block}.attn.c_attn").split(N_EMBD, dim=2)
        q, k, v = (t.view(batch, length, N_HEAD, head_size).transpose(1, 2) for t in (q, k, v))
        att = q @ k.transpose(-2, -1) / math.sqrt(head_size)
        att = att.masked_fill(torch.ones(length, length).tril() == 0, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).reshape(batch, length, N_EMBD)
        x = x + linear(y, f"{block}.attn.c_proj")
        x = x + linear(gelu(linear(layer_norm(x, f"{block}.ln_2"), f"{block}.mlp.c_fc")), f"{block}.mlp.c_proj")
    return layer_norm(x, "transformer.ln_f") @ w["transformer.wte.weight"].T


def probe_ids(seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB_SIZE, (2, BLOCK_SIZE), generator=torch.Generator().manual_seed(seed))


def assert_logits_match(model, state_dict: dict[str, torch.Tensor]) -> None:
    input_ids = probe_ids()
    with torch.no_grad():
        logits = model.double().eval()(input_ids).logits
    torch.testing.assert_close(logits, nanogpt_logits(state_dict, input_ids), rtol=1e-9, atol=1e-9)


def save(obj, path: Path) -> Path:
    torch.save(obj, path)
    return path


# nanoGPT checkpoints -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_nanogpt_checkpoint_converts_to_a_hub_ready_folder_with_the_same_logits(tmp_path):
    state_dict = nanogpt_state_dict()
    out = convert_nanogpt(save(nanogpt_checkpoint(state_dict), tmp_path / "ckpt.pt"), tmp_path / "hf")

    names = {path.name for path in out.iterdir()}
    assert {"model.safetensors", "config.json", "modeling_tinystories_gpt.py", "tokenizer.json", "README.md"} <= names
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForCausalLM"] == "modeling_tinystories_gpt.TinyStoriesGPTForCausalLM"
    assert (config["vocab_size"], config["block_size"], config["n_head"], config["bias"]) == (VOCAB_SIZE, 16, 2, True)
    assert config["tie_word_embeddings"] and config["dropout"] == 0.0
    assert config["eos_token_id"] == AutoTokenizer.from_pretrained(out).eos_token_id == 50256
    assert_logits_match(AutoModelForCausalLM.from_pretrained(out), state_dict)


def compiled(state_dict):
    return {f"_orig_mod.{name}": tensor for name, tensor in state_dict.items()}


def ddp_compiled(state_dict):
    return {f"module._orig_mod.{name}": tensor for name, tensor in state_dict.items()}


def ln1_names(state_dict):
    return {name.replace(".ln_1.", ".ln1.").replace(".ln_2.", ".ln2."): t for name, t in state_dict.items()}


def without_head_and_masks(state_dict):
    return {name: t for name, t in state_dict.items() if name != "lm_head.weight" and not name.endswith(".attn.bias")}


@pytest.mark.parametrize("variant", [compiled, ddp_compiled, ln1_names, without_head_and_masks])
@pytest.mark.parametrize("bias", [True, False])
def test_bare_state_dict_variants_convert_with_n_head_given(tmp_path, variant, bias):
    state_dict = nanogpt_state_dict(bias=bias)
    checkpoint = save(variant(state_dict), tmp_path / "best_model_params.pt")
    out = convert_nanogpt(checkpoint, tmp_path / "hf", n_head=N_HEAD)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.bias is bias and model.config.n_layer == N_LAYER
    assert_logits_match(model, state_dict)


def test_untied_head_is_kept(tmp_path):
    state_dict = nanogpt_state_dict()
    state_dict["lm_head.weight"] = torch.randn(VOCAB_SIZE, N_EMBD)
    out = convert_nanogpt(save(nanogpt_checkpoint(state_dict), tmp_path / "ckpt.pt"), tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(out)
    assert not model.config.tie_word_embeddings
    torch.testing.assert_close(model.lm_head.weight, state_dict["lm_head.weight"])


def test_bare_state_dict_without_n_head_asks_for_it(tmp_path):
    checkpoint = save(nanogpt_state_dict(), tmp_path / "best_model_params.pt")
    with pytest.raises(ValueError, match=r"pass --n_head N with N dividing n_embd=32"):
        convert_nanogpt(checkpoint, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def write_marker(path: str) -> None:
    Path(path).write_text("unpickled")


class WritesMarker:
    """Unpickling this calls write_marker: a file on disk is the proof that a checkpoint ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return write_marker, (str(self.marker),)


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran.txt"
    checkpoint = save(nanogpt_checkpoint(nanogpt_state_dict()) | {"hook": WritesMarker(marker)}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match=r"refusing to load .*ckpt.pt: it pickles \S*write_marker, .*arbitrary code"):
        convert_nanogpt(checkpoint, tmp_path / "hf")
    assert not marker.exists() and not (tmp_path / "hf").exists()

    torch.load(checkpoint, weights_only=False)  # what an unsafe loader would have done
    assert marker.exists()


def test_missing_and_unreadable_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt does not exist"):
        convert_nanogpt(tmp_path / "nope.pt", tmp_path / "hf")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="could not read .*junk.pt as a PyTorch checkpoint"):
        convert_nanogpt(tmp_path / "junk.pt", tmp_path / "hf")
    with pytest.raises(ValueError, match="neither a nanoGPT checkpoint .* top-level keys are steps"):
        convert_nanogpt(save({"steps": 3}, tmp_path / "other.pt"), tmp_path / "hf")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state_dict = nanogpt_state_dict()
    del state_dict["transformer.h.1.mlp.c_fc.weight"]
    state_dict["transformer.h.0.attn.rotary.weight"] = torch.zeros(4)
    checkpoint = save(nanogpt_checkpoint(state_dict), tmp_path / "ckpt.pt")
    with pytest.raises(ValueError) as error:
        convert_nanogpt(checkpoint, tmp_path / "hf")
    assert "missing keys: transformer.h.1.mlp.c_fc.weight" in str(error.value)
    assert "unexpected keys: transformer.h.0.attn.rotary.weight" in str(error.value)


@pytest.mark.slow
def test_shapes_that_disagree_are_refused(tmp_path):
    state_dict = nanogpt_state_dict()
    checkpoint = save(nanogpt_checkpoint(state_dict), tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="you passed block_size=64, but the weights have block_size=16"):
        convert_nanogpt(checkpoint, tmp_path / "hf", block_size=64)

    wrong_args = nanogpt_checkpoint(state_dict)
    wrong_args["model_args"]["n_layer"] = 6
    with pytest.raises(ValueError, match="model_args says n_layer=6, but the weights have n_layer=2"):
        convert_nanogpt(save(wrong_args, tmp_path / "wrong.pt"), tmp_path / "hf")

    state_dict["transformer.h.0.mlp.c_fc.weight"] = torch.zeros(100, N_EMBD)
    with pytest.raises(ValueError, match=r"transformer.h.0.mlp.c_fc.weight \(100, 32\) \(expected \(128, 32\)\)"):
        convert_nanogpt(save(nanogpt_checkpoint(state_dict), tmp_path / "bad.pt"), tmp_path / "hf")


def test_existing_output_folder_is_refused_unless_overwrite(tmp_path):
    checkpoint = save(nanogpt_checkpoint(nanogpt_state_dict()), tmp_path / "ckpt.pt")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="hf already exists; pass overwrite=True"):
        convert_nanogpt(checkpoint, tmp_path / "hf")
    assert (tmp_path / "hf" / "keep.txt").exists()

    convert_nanogpt(checkpoint, tmp_path / "hf", overwrite=True)
    assert not (tmp_path / "hf" / "keep.txt").exists() and (tmp_path / "hf" / "model.safetensors").exists()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt.pt", "hf"]  # no staging left behind


def test_failed_logits_check_writes_nothing(tmp_path, monkeypatch):
    checkpoint = save(nanogpt_checkpoint(nanogpt_state_dict()), tmp_path / "ckpt.pt")
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "good.txt").write_text("the previous model")
    real_reference = nanogpt.reference_logits
    monkeypatch.setattr(nanogpt, "reference_logits", lambda *args: real_reference(*args) + 1e-3)
    with pytest.raises(ValueError, match="logits check failed: the converted model differs .* by up to 0.001"):
        convert_nanogpt(checkpoint, tmp_path / "hf", overwrite=True)
    assert [path.name for path in (tmp_path / "hf").iterdir()] == ["good.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ckpt.pt", "hf"]


# Training checkpoints ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_accelerate_training_checkpoint_converts(tmp_path):
    """The layout training.save_checkpoint writes: save_state's model.safetensors, config.json, tokenizer/."""
    from accelerate import Accelerator

    from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
    from tinystories_gpt.export.nanogpt import normalize_state_dict

    config = TinyStoriesGPTConfig(
        vocab_size=VOCAB_SIZE, block_size=BLOCK_SIZE, n_layer=N_LAYER, n_head=N_HEAD, n_embd=N_EMBD
    )
    model = TinyStoriesGPTForCausalLM(config)
    model.load_state_dict(normalize_state_dict(nanogpt_state_dict())[0] | {"lm_head.weight": model.lm_head.weight})
    accelerator = Accelerator(cpu=True)
    prepared = accelerator.prepare(model)
    state_dir = tmp_path / "checkpoints" / "step_8"
    accelerator.save_state(str(state_dir), safe_serialization=True)
    config.save_pretrained(state_dir)
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR).save_pretrained(state_dir / "tokenizer")
    del prepared

    out = convert_training_checkpoint(state_dir, tmp_path / "hf")
    assert_logits_match(AutoModelForCausalLM.from_pretrained(out), nanogpt_state_dict())
    assert AutoTokenizer.from_pretrained(out).eos_token == "<|endoftext|>"


def test_training_checkpoint_without_config_or_tokenizer(tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no model.safetensors"):
        convert_training_checkpoint(state_dir, tmp_path / "hf")
    save_file(without_head_and_masks(nanogpt_state_dict()), state_dir / "model.safetensors")
    with pytest.raises(FileNotFoundError, match="no tokenizer/ folder; pass --tokenizer gpt2"):
        convert_training_checkpoint(state_dir, tmp_path / "hf")
    with pytest.raises(ValueError, match="does not record n_head"):
        convert_training_checkpoint(state_dir, tmp_path / "hf", tokenizer="gpt2")
    out = convert_training_checkpoint(state_dir, tmp_path / "hf", tokenizer="gpt2", n_head=N_HEAD)
    assert_logits_match(AutoModelForCausalLM.from_pretrained(out), nanogpt_state_dict())


# GPT-2 ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("bias", [True, False])
def test_gpt2_export_and_back_keep_the_logits(tmp_path, bias):
    state_dict = nanogpt_state_dict(bias=bias)
    ours = convert_nanogpt(save(nanogpt_checkpoint(state_dict, bias), tmp_path / "ckpt.pt"), tmp_path / "ours")

    gpt2_dir = export_gpt2(ours, tmp_path / "gpt2")
    config = json.loads((gpt2_dir / "config.json").read_text())
    assert config["model_type"] == "gpt2" and "auto_map" not in config
    assert (config["n_positions"], config["n_ctx"], config["activation_function"]) == (BLOCK_SIZE, BLOCK_SIZE, "gelu")
    assert not list(gpt2_dir.glob("*.py"))
    gpt2 = AutoModelForCausalLM.from_pretrained(gpt2_dir)  # no trust_remote_code: a plain GPT-2
    assert isinstance(gpt2, GPT2LMHeadModel)
    assert_logits_match(gpt2, state_dict)
    assert json.loads((gpt2_dir / "generation_config.json").read_text())["top_k"] == 200

    back = import_gpt2(gpt2_dir, tmp_path / "back")
    model = AutoModelForCausalLM.from_pretrained(back)
    assert model.config.model_type == "tinystories_gpt" and model.config.bias is True
    assert_logits_match(model, state_dict)


def test_gpt2_variants_ours_cannot_represent_are_refused(tmp_path):
    config = GPT2Config(
        vocab_size=64, n_positions=16, n_embd=32, n_layer=1, n_head=2, scale_attn_by_inverse_layer_idx=True
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2")
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx=True, which TinyStoriesGPT cannot represent"):
        import_gpt2(tmp_path / "gpt2", tmp_path / "out")
    with pytest.raises(ValueError, match="holds a 'gpt2' model, not 'tinystories_gpt'; pick the other conversion"):
        export_gpt2(tmp_path / "gpt2", tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="model folder .*missing does not exist"):
        export_gpt2(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty has no config.json, so it is not a saved model"):
        export_gpt2(tmp_path / "empty", tmp_path / "out")


# The command line ----------------------------------------------------------------------------------------------


def run_convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "convert.py"), *args], capture_output=True, text=True)


@pytest.mark.slow
def test_cli_converts_and_reports_bad_input_in_one_line(tmp_path):
    checkpoint = save(nanogpt_state_dict(), tmp_path / "best_model_params.pt")
    result = run_convert("nanogpt", str(checkpoint), str(tmp_path / "hf"), "--n_head", "2")
    assert result.returncode == 0, result.stderr
    assert "logits match" in result.stdout and (tmp_path / "hf" / "README.md").exists()

    result = run_convert("nanogpt", str(checkpoint), str(tmp_path / "hf"), "--n_head", "2")
    assert result.returncode == 2
    assert (
        result.stderr.strip() == f"convert.py: error: output folder {tmp_path / 'hf'} already exists; pass "
        "overwrite=True (--overwrite) to replace it"
    )

    result = run_convert("gpt2", str(tmp_path / "nowhere"), str(tmp_path / "gpt2"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"convert.py: error: model folder {tmp_path / 'nowhere'} does not exist; pass a folder train.py or "
        "convert.py wrote"
    ]
