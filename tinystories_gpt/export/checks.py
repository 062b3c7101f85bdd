"""How every conversion proves itself before it replaces anything: fixed probe tokens, an independent float64
forward of the source weights, a logits comparison, and the one way a converter writes (`save_checked`).

`save_checked` writes into a staging folder (or a partial file), runs the converter's check on what was written,
and only then lets it take the output's name: a conversion that fails its check leaves nothing behind and
replaces nothing.
"""

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.activations import ACT2FN

from ..configuration_tinystories_gpt import TinyStoriesGPTConfig
from ..files import check_output, replacing_file, replacing_folder, write_manifest

HEAD, EMBEDDING = "lm_head.weight", "transformer.wte.weight"
PROBE_BATCH, PROBE_MAX_LENGTH = 2, 128
RELATIVE_TOLERANCE = 1e-6  # float64 on both sides: a faithful conversion agrees to ~1e-12
CHECKPOINT_HINT = (
    "Check that the checkpoint is a nanoGPT-style GPT (pre-LayerNorm blocks, exact GELU, fused QKV, learned positions)"
)


def save_checked(
    output: str | Path,
    overwrite: bool,
    write: Callable[[Path], object],
    check: Callable[[Path], object],
    *,
    folder: bool = True,
) -> Path:
    """`write(staging)` then `check(staging)`; only when the check passes does the staging folder (or file, with
    `folder=False`) take `output`'s place. Returns `output`."""
    path = check_output(output, overwrite, folder=folder)
    replacing = replacing_folder if folder else replacing_file
    with replacing(path, f"the {'folder' if folder else 'file'} {path.name}") as staging:
        write(staging)
        check(staging)
        if folder:
            write_manifest(staging)  # last: a reader can tell the folder is whole and unchanged
    return Path(output)


def reloads_with_logits(
    model_class: type[PreTrainedModel], input_ids: torch.Tensor, expected: torch.Tensor, what: str
) -> Callable[[Path], float]:
    """A `save_checked` check: the written folder, reloaded as `model_class` in float64, gives `expected`."""

    def check(folder: Path) -> float:
        reloaded = model_class.from_pretrained(folder, dtype=torch.float64)
        return check_logits(float64_logits(reloaded, input_ids), expected, what)

    return check


def probe_input_ids(vocab_size: int, block_size: int) -> torch.Tensor:
    """Fixed pseudo-random token ids over the whole vocabulary and (up to 128) positions."""
    generator = torch.Generator().manual_seed(0)
    return torch.randint(vocab_size, (PROBE_BATCH, min(block_size, PROBE_MAX_LENGTH)), generator=generator)


def reference_logits(
    state_dict: dict[str, torch.Tensor], config: TinyStoriesGPTConfig, input_ids: torch.Tensor
) -> torch.Tensor:
    """nanoGPT's forward pass written out over the raw tensors, in float64, sharing no code with the model."""
    weights = {name: tensor.double() for name, tensor in state_dict.items()}
    batch, length = input_ids.shape
    width, heads = config.n_embd, config.n_head
    activation = ACT2FN[config.activation_function]

    def norm(x, prefix):
        return F.layer_norm(
            x, (width,), weights[prefix + ".weight"], weights.get(prefix + ".bias"), config.layer_norm_epsilon
        )

    def linear(x, prefix):
        return F.linear(x, weights[prefix + ".weight"], weights.get(prefix + ".bias"))

    causal = torch.ones(length, length, dtype=torch.bool).tril()
    x = weights[EMBEDDING][input_ids] + weights["transformer.wpe.weight"][:length]
    for layer in range(config.n_layer):
        block = f"transformer.h.{layer}"
        q, k, v = linear(norm(x, f"{block}.ln_1"), f"{block}.attn.c_attn").split(width, dim=2)
        q, k, v = (t.view(batch, length, heads, width // heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        scores = (q @ k.transpose(-2, -1)) / (width // heads) ** 0.5
        attention = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1) @ v
        x = x + linear(attention.transpose(1, 2).reshape(batch, length, width), f"{block}.attn.c_proj")
        x = x + linear(activation(linear(norm(x, f"{block}.ln_2"), f"{block}.mlp.c_fc")), f"{block}.mlp.c_proj")
    return F.linear(norm(x, "transformer.ln_f"), weights.get(HEAD, weights[EMBEDDING]))


def float64_logits(model: PreTrainedModel, input_ids: torch.Tensor) -> torch.Tensor:
    """A model's logits in float64 and eval mode (dropout off)."""
    with torch.no_grad():
        return model.double().eval()(input_ids).logits


def check_logits(
    actual: torch.Tensor,
    expected: torch.Tensor,
    what: str,
    *,
    relative_tolerance: float = RELATIVE_TOLERANCE,
    hint: str = CHECKPOINT_HINT,
) -> float:
    """Refuse a conversion whose logits differ from the source's; returns the largest difference.

    The tolerance is relative to the largest source logit (at least 1); `hint` ends the error message.
    """
    difference = (actual - expected).abs().max().item()
    tolerance = relative_tolerance * max(1.0, expected.abs().max().item())
    if not difference <= tolerance:  # also catches NaN
        raise ValueError(
            f"logits check failed: {what} differs from the source by up to {difference:.3g} (tolerance "
            f"{tolerance:.3g}), so the weights were not mapped faithfully; nothing was written. {hint}"
        )
    return difference
