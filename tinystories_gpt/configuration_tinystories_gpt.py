"""Configuration of the TinyStories GPT: the seed table's fields, validated once at the edge."""

from huggingface_hub.dataclasses import strict
from transformers import PretrainedConfig


@strict
class TinyStoriesGPTConfig(PretrainedConfig):
    r"""
    Configuration of a decoder-only GPT with learned positions, pre-LayerNorm blocks and a GELU MLP.

    The field names follow the seed table (and nanoGPT); `attribute_map` exposes the standard
    Transformers names, so `config.hidden_size`, `config.max_position_embeddings` and friends work.

    Args:
        vocab_size: number of tokens the embedding and the output head cover (GPT-2 BPE: 50257).
        block_size: the context length; also the number of learned position embeddings.
        n_layer: number of transformer blocks.
        n_head: number of attention heads; must divide `n_embd`.
        n_embd: width of the residual stream.
        dropout: dropout on embeddings, attention weights and residual branches, in [0, 1).
        bias: whether Linear and LayerNorm layers carry biases.
        activation_function: the MLP non-linearity, a key of `transformers.activations.ACT2FN`
            (`"gelu"` is the exact erf GELU of the seed).
        layer_norm_epsilon: epsilon of every LayerNorm.
        initializer_range: standard deviation of the GPT-2 normal initialisation.

    Example:

    ```python
    >>> from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
    >>> model = TinyStoriesGPTForCausalLM(TinyStoriesGPTConfig(n_layer=2, n_head=2, n_embd=64))
    ```
    """

    model_type = "tinystories_gpt"
    attribute_map = {
        "hidden_size": "n_embd",
        "num_hidden_layers": "n_layer",
        "num_attention_heads": "n_head",
        "max_position_embeddings": "block_size",
        "n_positions": "block_size",
    }
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 50257
    block_size: int = 128
    n_layer: int = 6
    n_head: int = 6
    n_embd: int = 384
    dropout: float | int = 0.1
    bias: bool = True
    activation_function: str = "gelu"
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    # The v5 base config no longer declares these: without them the head is left untied
    # and generate() finds no eos/bos ids.
    use_cache: bool = True
    tie_word_embeddings: bool = True
    bos_token_id: int | None = 50256
    eos_token_id: int | list[int] | None = 50256
    pad_token_id: int | None = None

    def __post_init__(self, **kwargs):
        # Checked here rather than in a `@strict` validator, which would wrap the ValueError
        # in an exception type callers do not expect.
        self._check_shapes()
        super().__post_init__(**kwargs)

    def _check_shapes(self) -> None:
        """Refuse impossible shapes with a ValueError that names the field and the fix."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value}.")
        if self.n_embd % self.n_head != 0:
            raise ValueError(
                f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): each head gets "
                f"n_embd / n_head channels. Pick, for example, n_head={_nearest_divisor(self.n_embd, self.n_head)}."
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.layer_norm_epsilon <= 0:
            raise ValueError(f"layer_norm_epsilon must be positive, got {self.layer_norm_epsilon}.")
        if self.initializer_range < 0:
            raise ValueError(f"initializer_range must not be negative, got {self.initializer_range}.")


def _nearest_divisor(width: int, heads: int) -> int:
    """The divisor of `width` closest to `heads`, to suggest a valid head count."""
    return min((d for d in range(1, width + 1) if width % d == 0), key=lambda d: abs(d - heads))


__all__ = ["TinyStoriesGPTConfig"]
