"""GGUF for llama.cpp: a TinyStoriesGPT folder, or its GPT-2 export, as llama.cpp's `gpt2` architecture.

The file is written with the `gguf` package (the library llama.cpp publishes for its own converters), the way
llama.cpp's convert_hf_to_gguf.py writes a GPT2LMHeadModel: tensors named by `gguf.get_tensor_name_map`, 1-D
tensors and the position embedding kept in F32, the tied output head left out (llama.cpp reuses the embedding),
and the tokenizer as a byte-level BPE with its merges. Two things differ on purpose:

- The pre-tokenizer is declared, not guessed. llama.cpp's converter recognises a BPE pre-tokenizer only by a hash
  of the ids it gives a test string, so it refuses every BPE trained here (`bpe:N`), although those split text
  exactly like GPT-2 (the same byte-level regex). We check the split itself and declare `gpt-2`.
- A quantisation whose blocks do not divide the rows is refused, not silently written as F16.

Like every conversion, the file is read back before it takes its name: its tensors, dequantised, must give the
source model's float64 logits within the outtype's tolerance.
"""

import json
from pathlib import Path

import gguf
import numpy as np
import torch
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from ..data.tokenization import STORY_CHAT_TEMPLATE
from ..files import check_output
from ..modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .checks import check_logits, float64_logits, probe_input_ids, reference_logits, save_checked
from .gpt2 import load_as_ours, to_gpt2, transpose_conv1d
from .hub import load_config

ARCHITECTURE = gguf.MODEL_ARCH.GPT2
OUTTYPES = {
    "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (gguf.GGMLQuantizationType.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
}
# Largest logit difference the read-back check allows, relative to the largest logit: f32 is exact; the others
# are measured on trained models (f16 ~2e-4; q8_0 from ~5e-3 up to 6.1e-2, the tests' 2 x 64 BPE model as trained on
# an AMD EPYC, on the check's random-token probe) with room to spare, while a misplaced tensor is off by O(1).
LOGITS_TOLERANCE = {"f32": 1e-6, "f16": 5e-3, "q8_0": 1.5e-1}
GELU_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh")  # llama.cpp's gpt2 graph computes a GELU
HEAD = "lm_head.weight"


def export_gguf(
    model_dir: str | Path, output_path: str | Path, *, outtype: str = "f32", overwrite: bool = False
) -> Path:
    """Write the model in `model_dir` (ours or a GPT-2 export) as a GGUF file llama.cpp runs; returns its path.

    `outtype` is f32, f16 or q8_0 (q8_0 needs n_embd divisible by 32). The file is checked by reading it back
    before it replaces anything at `output_path`.
    """
    output_path = check_output(output_path, overwrite, folder=False)
    tensor_type, file_type = check_outtype(outtype)
    check_model_fits(load_config(model_dir), tensor_type, outtype)  # before the weights load: a refusal is instant
    model, tokenizer = load_as_ours(model_dir)
    tensors = gguf_tensors(model)
    names = gguf_names(tensors, model.config.n_layer)

    def write(partial: Path) -> None:
        writer = gguf.GGUFWriter(partial, gguf.MODEL_ARCH_NAMES[ARCHITECTURE])
        add_hyperparameters(writer, model, file_type)
        add_vocabulary(writer, tokenizer, model_dir, model.config.vocab_size)
        for name, array in tensors.items():
            add_tensor(writer, names[name], array, tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    our_names = {gguf_name: name for name, gguf_name in names.items()}
    return save_checked(
        output_path,
        overwrite,
        write=write,
        check=lambda partial: check_gguf_logits(partial, our_names, model, outtype),
        folder=False,
    )


# 1. Refusing what llama.cpp would not run --------------------------------------------------------------------


def check_outtype(outtype: str) -> tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]:
    if outtype not in OUTTYPES:
        raise ValueError(f"unknown outtype {outtype!r}; pick one of {', '.join(OUTTYPES)} (--outtype f16, say)")
    return OUTTYPES[outtype]


def check_model_fits(config: PretrainedConfig, tensor_type: gguf.GGMLQuantizationType, outtype: str) -> None:
    """Refuse a model llama.cpp's gpt2 graph cannot compute, or whose rows the quantisation's blocks do not divide.

    `config` is ours or GPT-2's: both name the width `n_embd` and the MLP's non-linearity `activation_function`.
    """
    if config.activation_function not in GELU_ACTIVATIONS:
        raise ValueError(
            f"llama.cpp's gpt2 architecture computes a GELU MLP, but this model uses activation_function="
            f"{config.activation_function!r}; only GELU models ({', '.join(GELU_ACTIVATIONS)}) export to GGUF"
        )
    block_size = gguf.GGML_QUANT_SIZES[tensor_type][0]
    if config.n_embd % block_size:  # every quantised matrix has rows of n_embd (or 4 x n_embd) values
        raise ValueError(
            f"{outtype} quantises rows in blocks of {block_size} values, but this model's rows are n_embd="
            f"{config.n_embd} wide; use --outtype f16 or f32, or a model whose n_embd is a multiple of {block_size}"
        )


# 2. Tensors, hyperparameters and vocabulary -------------------------------------------------------------------


def gguf_tensors(model: TinyStoriesGPTForCausalLM) -> dict[str, np.ndarray]:
    """The tensors llama.cpp's gpt2 architecture reads, float32, in (out, in) layout, under our names."""
    # GPT-2's view of the model has every bias llama.cpp requires (zeros where ours has none); transposing its
    # Conv1D weights back gives nn.Linear's (out, in), which GGUF stores as llama.cpp's (in, out) dimensions.
    state_dict = transpose_conv1d(to_gpt2(model).state_dict())
    if model.config.tie_word_embeddings:
        state_dict.pop(HEAD)  # llama.cpp uses the token embedding when the file has no output.weight
    return {name: tensor.detach().float().numpy() for name, tensor in state_dict.items()}


def gguf_names(tensors: dict[str, np.ndarray], n_layer: int) -> dict[str, str]:
    """llama.cpp's name for each of our (GPT-2's) tensor names, as its converter maps them."""
    name_map = gguf.get_tensor_name_map(ARCHITECTURE, n_layer)
    names = {name: name_map.get_name(name, try_suffixes=(".weight", ".bias")) for name in tensors}
    unplaced = [name for name, gguf_name in names.items() if gguf_name is None]
    if unplaced:
        raise ValueError(f"tensors {', '.join(unplaced)} have no place in llama.cpp's gpt2 architecture")
    return names


def add_tensor(writer: gguf.GGUFWriter, name: str, array: np.ndarray, tensor_type: gguf.GGMLQuantizationType) -> None:
    # As llama.cpp's converter does: norms, biases and the position embedding stay F32 whatever the outtype.
    if array.ndim == 1 or name.startswith(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.POS_EMBD]):
        tensor_type = gguf.GGMLQuantizationType.F32
    writer.add_tensor(name, gguf.quants.quantize(array, tensor_type), raw_dtype=tensor_type)


def add_hyperparameters(writer: gguf.GGUFWriter, model: TinyStoriesGPTForCausalLM, file_type: gguf.LlamaFileType):
    config = model.config
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    writer.add_file_type(file_type)


def add_vocabulary(
    writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, tokenizer_dir: str | Path, vocab_size: int
) -> None:
    """The byte-level BPE as llama.cpp's `gpt2` tokenizer model with the `gpt-2` pre-tokenizer."""
    check_gpt2_split(tokenizer)
    tokens, token_types = token_list(tokenizer, vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(token_types)
    special_vocab = gguf.SpecialVocab(tokenizer_dir, load_merges=True, n_vocab=vocab_size)
    # Ours never prepend a BOS (stories are separated by end-of-text, prompts start without one); llama.cpp would
    # otherwise guess from the pre-tokenizer.
    special_vocab.add_special_token.setdefault("bos", False)
    if special_vocab.chat_template is None:  # a folder saved before tokenizers carried one: chat clients need it
        special_vocab.chat_template = STORY_CHAT_TEMPLATE
    special_vocab.add_to_gguf(writer, quiet=True)


def check_gpt2_split(tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a tokenizer that does not split text as GPT-2 does, since the file declares that it does."""
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    pre_tokenizer, model = spec.get("pre_tokenizer") or {}, spec["model"]
    gpt2_split = (
        model["type"] == "BPE"
        and spec.get("normalizer") is None
        and pre_tokenizer.get("type") == "ByteLevel"
        and pre_tokenizer.get("use_regex", True)
        and not pre_tokenizer.get("add_prefix_space", False)
    )
    if not gpt2_split:
        raise ValueError(
            "the tokenizer is not a byte-level BPE that splits text like GPT-2 (its pre_tokenizer is "
            f"{pre_tokenizer.get('type')!r}, model {model['type']!r}), so llama.cpp's gpt-2 pre-tokenizer would "
            "tokenize differently; train the model with --tokenizer gpt2 or bpe:N"
        )


def token_list(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> tuple[list[str], list[gguf.TokenType]]:
    """Every id's token text and type, as llama.cpp's converter lists them; ids past the tokenizer are padding."""
    by_id = {token_id: token for token, token_id in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, token_types = [], []
    for token_id in range(vocab_size):
        if token_id not in by_id:
            tokens.append(f"[PAD{token_id}]")
            token_types.append(gguf.TokenType.UNUSED)
        elif token_id in added:
            tokens.append(by_id[token_id])
            token_types.append(gguf.TokenType.CONTROL if added[token_id].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[token_id])
            token_types.append(gguf.TokenType.NORMAL)
    return tokens, token_types


# 3. The read-back check ---------------------------------------------------------------------------------------


def check_gguf_logits(
    path: str | Path, our_names: dict[str, str], model: TinyStoriesGPTForCausalLM, outtype: str
) -> float:
    """Dequantise the file's tensors and compare their float64 forward with the model's; returns the difference."""
    tensors = {
        our_names[tensor.name]: torch.tensor(
            gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(tuple(reversed(tensor.shape.tolist())))
        )
        for tensor in gguf.GGUFReader(path).tensors
    }
    input_ids = probe_input_ids(model.config.vocab_size, model.config.block_size)
    return check_logits(
        reference_logits(tensors, model.config, input_ids),
        float64_logits(model, input_ids),
        f"the {outtype} GGUF file",
        relative_tolerance=LOGITS_TOLERANCE[outtype],
        hint="the GGUF writer misplaced a tensor; please report it",
    )


__all__ = ["export_gguf"]
