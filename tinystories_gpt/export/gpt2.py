"""Our model as a plain GPT2LMHeadModel and back: the same network, GPT-2's names and Conv1D layout, each way
proved by logits (checks.py) before the folder takes the output's name.

The GPT-2 export needs no custom code anywhere GPT-2 runs (Transformers 4.x and 5.x, llama.cpp's converter,
TransformerLens); the GGUF and ONNX writers start from it too (`load_as_ours` reads either kind of folder).
"""

import json
from pathlib import Path

import torch
from transformers import GenerationConfig, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerBase
from transformers.activations import ACT2FN

from ..configuration_tinystories_gpt import TinyStoriesGPTConfig
from ..data.tokenization import with_story_chat_template
from ..files import check_output
from ..modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .checks import HEAD, float64_logits, probe_input_ids, reloads_with_logits, save_checked
from .hub import load_config, load_pretrained, write_hub_folder
from .nanogpt import model_from_state_dict

# Conv1D stores (in, out) where nn.Linear stores (out, in): these weights are transposed to and from GPT-2.
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")


def gpt2_config_from(config: TinyStoriesGPTConfig) -> GPT2Config:
    """The GPT-2 config of the same network: GPT-2 always has biases (ours without are exported as zeros)."""
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        # GPT-2's original name for the context, which older GPT-2 tooling still reads (llama.cpp's
        # convert_hf_to_gguf.py stops with KeyError: 'n_ctx' without it)
        n_ctx=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        activation_function=config.activation_function,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        layer_norm_epsilon=config.layer_norm_epsilon,
        initializer_range=config.initializer_range,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
    )


def transpose_conv1d(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Swap the Linear (out, in) and Conv1D (in, out) layouts of the four projection weights (its own inverse)."""
    return {
        name: tensor.t().contiguous() if name.endswith(CONV1D_WEIGHTS) else tensor
        for name, tensor in state_dict.items()
    }


def to_gpt2(model: TinyStoriesGPTForCausalLM) -> GPT2LMHeadModel:
    """The same network as a GPT2LMHeadModel, weights copied into GPT-2's Conv1D layout."""
    gpt2 = GPT2LMHeadModel(gpt2_config_from(model.config)).eval()
    weights = transpose_conv1d(model.state_dict())
    for name, tensor in gpt2.state_dict().items():
        if name.endswith(".bias") and name not in weights:
            weights[name] = torch.zeros_like(tensor)  # a bias-free layer is the same layer with zero bias
    gpt2.load_state_dict(weights, strict=True)
    return gpt2


def export_gpt2(model_dir: str | Path, output_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Export a saved TinyStoriesGPT folder as a native GPT2LMHeadModel folder (no custom code); returns it."""
    check_output(output_dir, overwrite)
    model, tokenizer = load_pretrained(model_dir, TinyStoriesGPTForCausalLM, "tinystories_gpt")
    gpt2 = to_gpt2(model)
    input_ids = probe_input_ids(model.config.vocab_size, model.config.block_size)
    expected = float64_logits(model, input_ids)
    return save_checked(
        output_dir,
        overwrite,
        write=lambda folder: write_gpt2_folder(gpt2, tokenizer, folder, source_dir=model_dir),
        check=reloads_with_logits(GPT2LMHeadModel, input_ids, expected, "the exported GPT-2 model"),
    )


def write_gpt2_folder(
    gpt2: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerBase, folder: str | Path, source_dir: str | Path
) -> None:
    """Write a GPT-2 folder that Transformers 4.x and 5.x load without custom code, with `source_dir`'s sampling
    defaults."""
    gpt2.save_pretrained(folder)
    save_portable_tokenizer(tokenizer, folder, gpt2.config.n_positions)
    if (Path(source_dir) / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(source_dir).save_pretrained(folder)


def save_portable_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | Path, context_length: int) -> None:
    """Save `tokenizer` so that Transformers 4.x loads it too, truncating at the model's context.

    Transformers 5 records a tokenizer built from a `tokenizers` object (our trained `bpe:N`) as
    "TokenizersBackend", a class 4.x does not have ("Tokenizer class TokenizersBackend does not exist");
    "PreTrainedTokenizerFast" names the same tokenizer.json in both. That class also returns `token_type_ids`
    unless told otherwise, and 4.x's GPT-2 adds the token embedding of each such id to every position: a silent
    shift of every logit. GPT-2's own tokenizer class keeps its name and its inputs.
    """
    tokenizer.model_max_length = context_length
    with_story_chat_template(tokenizer).save_pretrained(folder)
    config_file = Path(folder) / "tokenizer_config.json"
    tokenizer_config = json.loads(config_file.read_text())
    if tokenizer_config["tokenizer_class"] == "TokenizersBackend":
        tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
        tokenizer_config["model_input_names"] = ["input_ids", "attention_mask"]
        config_file.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def tinystories_config_from_gpt2(config: GPT2Config) -> dict:
    """Our config fields for a GPT-2 config, refusing the GPT-2 variants our blocks do not compute.

    Any activation in ACT2FN is kept (our MLP looks it up the same way GPT-2's does); the three GPT-2 dropouts
    become one (resid_pdrop); layer-index attention scaling, unscaled attention, cross-attention and a
    non-4x MLP are refused, since our blocks have no such options.
    """
    unsupported = {
        "scale_attn_weights": (config.scale_attn_weights, True),
        "scale_attn_by_inverse_layer_idx": (config.scale_attn_by_inverse_layer_idx, False),
        "add_cross_attention": (config.add_cross_attention, False),
        "n_inner": (config.n_inner, None if config.n_inner is None else 4 * config.n_embd),
    }
    for name, (value, supported) in unsupported.items():
        if value != supported:
            raise ValueError(
                f"this GPT-2 config has {name}={value}, which TinyStoriesGPT cannot represent (it needs "
                f"{name}={supported}); keep this model as GPT2LMHeadModel"
            )
    if config.activation_function not in ACT2FN:
        raise ValueError(f"unknown activation_function {config.activation_function!r}; pick a key of ACT2FN")
    return {
        "vocab_size": config.vocab_size,
        "block_size": config.n_positions,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_embd": config.n_embd,
        "dropout": config.resid_pdrop,
        "bias": True,
        "activation_function": config.activation_function,
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "initializer_range": config.initializer_range,
        "tie_word_embeddings": config.tie_word_embeddings,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
    }


def from_gpt2(gpt2: GPT2LMHeadModel) -> TinyStoriesGPTForCausalLM:
    """The same network as a TinyStoriesGPTForCausalLM (refusing GPT-2 variants ours cannot compute)."""
    config = TinyStoriesGPTConfig(**tinystories_config_from_gpt2(gpt2.config))
    state_dict = transpose_conv1d(gpt2.state_dict())
    if config.tie_word_embeddings:
        state_dict.pop(HEAD)
    return model_from_state_dict(state_dict, config)


def import_gpt2(gpt2_dir: str | Path, output_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Convert a GPT2LMHeadModel folder (e.g. one `export_gpt2` wrote) to a Hub-ready TinyStoriesGPT folder."""
    check_output(output_dir, overwrite)
    gpt2, tokenizer = load_pretrained(gpt2_dir, GPT2LMHeadModel, "gpt2")
    model = from_gpt2(gpt2)
    input_ids = probe_input_ids(model.config.vocab_size, model.config.block_size)
    expected = float64_logits(gpt2, input_ids)
    training = {"converted from": f"GPT-2 folder {Path(gpt2_dir).name}"}
    return save_checked(
        output_dir,
        overwrite,
        write=lambda folder: write_hub_folder(model, tokenizer, folder, training=training),
        check=reloads_with_logits(TinyStoriesGPTForCausalLM, input_ids, expected, "the converted model"),
    )


def load_as_ours(model_dir: str | Path) -> tuple[TinyStoriesGPTForCausalLM, PreTrainedTokenizerBase]:
    """(our model in float32, tokenizer) from a TinyStoriesGPT folder or a GPT-2 folder, such as `export_gpt2`'s:
    what the GGUF and ONNX writers start from."""
    model_type = load_config(model_dir).model_type
    if model_type == "gpt2":
        gpt2, tokenizer = load_pretrained(model_dir, GPT2LMHeadModel, "gpt2")
        return from_gpt2(gpt2), tokenizer
    if model_type != "tinystories_gpt":
        raise ValueError(f"{model_dir} holds a {model_type!r} model; pass a TinyStoriesGPT folder or its GPT-2 export")
    return load_pretrained(model_dir, TinyStoriesGPTForCausalLM, "tinystories_gpt")


__all__ = ["export_gpt2", "from_gpt2", "import_gpt2", "load_as_ours", "to_gpt2"]
