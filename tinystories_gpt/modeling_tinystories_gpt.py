"""The TinyStories GPT as a native Transformers model.

nanoGPT's architecture (fused QKV projection, learned positions, pre-LayerNorm blocks, GELU MLP, tied
output head) written in the conventions of the installed Transformers: attention goes through
`ALL_ATTENTION_FUNCTIONS`, keys and values through the `Cache` API, outputs are `ModelOutput`s.

This file imports only torch, transformers and its configuration file, so that `save_pretrained`
can copy it beside the weights and the folder runs as Hub remote code without this package.
"""

import math
from collections.abc import Callable

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.cache_utils import Cache, DynamicCache
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, slice_logits_to_keep
from transformers.utils import can_return_tuple, logging
from transformers.utils.deprecation import deprecate_kwarg
from transformers.utils.generic import merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_tinystories_gpt import TinyStoriesGPTConfig

logger = logging.get_logger(__name__)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain softmax attention; the reference the fused backends are checked against."""
    attn_weights = torch.matmul(query, key.transpose(2, 3)) * scaling  # (B, nh, T, S)
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    # softmax in fp32 so that bf16/fp16 weights do not lose the small probabilities
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()  # (B, T, nh, hs)
    return attn_output, attn_weights


class TinyStoriesGPTAttention(nn.Module):
    """Causal multi-head self-attention with one fused QKV projection (nanoGPT's `c_attn`)."""

    def __init__(self, config: TinyStoriesGPTConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.n_embd // config.n_head
        self.scaling = self.head_dim**-0.5
        self.is_causal = True  # read by the sdpa/flash backends
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True  # read by _init_weights
        self.resid_dropout = nn.Dropout(config.dropout)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.c_attn(hidden_states).view(batch_size, seq_len, 3, self.config.n_head, self.head_dim)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)

        if cache is not None:
            # kwargs: a paged cache (continuous batching) reads its indices there and adds the attention's own
            key, value = cache.update(key, value, self.layer_idx, kwargs=kwargs)

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=self.config.dropout if self.training else 0.0,
            scaling=self.scaling,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, seq_len, -1)  # (B, T, C)
        return self.resid_dropout(self.c_proj(attn_output)), attn_weights


class TinyStoriesGPTMLP(nn.Module):
    """The 4x-wide feed-forward layer."""

    def __init__(self, config: TinyStoriesGPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.act = ACT2FN[config.activation_function]
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.c_proj.is_residual_projection = True  # read by _init_weights
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(hidden_states))))


class TinyStoriesGPTBlock(GradientCheckpointingLayer):
    """A pre-LayerNorm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, config: TinyStoriesGPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.attn = TinyStoriesGPTAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.mlp = TinyStoriesGPTMLP(config)

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attn_output, _ = self.attn(self.ln_1(hidden_states), attention_mask=attention_mask, cache=cache, **kwargs)
        hidden_states = hidden_states + attn_output
        return hidden_states + self.mlp(self.ln_2(hidden_states))


class TinyStoriesGPTPreTrainedModel(PreTrainedModel):
    config: TinyStoriesGPTConfig
    config_class = TinyStoriesGPTConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["TinyStoriesGPTBlock"]
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": TinyStoriesGPTBlock,
        "attentions": OutputRecorder(TinyStoriesGPTAttention, index=1),
    }

    def _init_weights(self, module: nn.Module) -> None:
        """GPT-2 initialisation: normal(0, initializer_range), residual projections scaled down."""
        super()._init_weights(module)
        # Marked on the Linear itself: Transformers skips modules without parameters of their own
        # (the attention and MLP wrappers) when initialising remote code.
        if getattr(module, "is_residual_projection", False):
            # Two residual branches per block add up over depth; 1/sqrt(2 n_layer) keeps the
            # residual stream's variance flat at initialisation (GPT-2 paper, section 2.3).
            std = self.config.initializer_range / math.sqrt(2 * self.config.n_layer)
            init.normal_(module.weight, mean=0.0, std=std)


class TinyStoriesGPTModel(TinyStoriesGPTPreTrainedModel):
    """The bare decoder: embeddings, blocks and the final LayerNorm, returning hidden states."""

    def __init__(self, config: TinyStoriesGPTConfig):
        super().__init__(config)
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([TinyStoriesGPTBlock(config, layer_idx) for layer_idx in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon, bias=config.bias)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, new_embeddings: nn.Embedding) -> None:
        self.wte = new_embeddings

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @merge_with_config_defaults
    @capture_outputs
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.wte(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)

        # Positions given by the caller are the caller's to keep in range, as in Llama: continuous batching packs many
        # requests into one row and passes each token's own position, and its paged cache has no sequence length.
        if position_ids is None:
            past_seen_tokens = cache.get_seq_length() if cache is not None else 0
            total_length = past_seen_tokens + inputs_embeds.shape[1]
            if total_length > self.config.block_size:
                raise ValueError(
                    f"The sequence is {total_length} tokens long ({past_seen_tokens} cached + "
                    f"{inputs_embeds.shape[1]} new), but this model's context is block_size="
                    f"{self.config.block_size} tokens. Shorten the prompt or ask for fewer new tokens."
                )
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device) + past_seen_tokens
            position_ids = position_ids.unsqueeze(0)

        causal_mask = create_causal_mask(
            config=self.config,
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            cache=cache,
            position_ids=position_ids,
        )

        hidden_states = self.drop(inputs_embeds + self.wpe(position_ids))
        for block in self.h:
            hidden_states = block(hidden_states, attention_mask=causal_mask, cache=cache, **kwargs)
        hidden_states = self.ln_f(hidden_states)

        return BaseModelOutputWithPast(last_hidden_state=hidden_states, cache=cache if use_cache else None)


class TinyStoriesGPTForCausalLM(TinyStoriesGPTPreTrainedModel, GenerationMixin):
    """The decoder with a language-modelling head tied to the token embedding."""

    # target -> source: only `transformer.wte.weight` is stored; loading re-ties the head to it
    _tied_weights_keys = {"lm_head.weight": "transformer.wte.weight"}

    def __init__(self, config: TinyStoriesGPTConfig):
        super().__init__(config)
        self.transformer = TinyStoriesGPTModel(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Targets for the next-token loss. They are shifted inside the model, so `labels=input_ids`
            works; positions set to -100 are ignored.
        logits_to_keep (`int` or `torch.Tensor`, *optional*):
            Compute logits for the last `logits_to_keep` positions only (0 keeps all); `generate()`
            passes 1, which saves the full-vocabulary projection of the prompt.
        """
        outputs: BaseModelOutputWithPast = self.transformer(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden_states = slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep)
        logits = self.lm_head(hidden_states)

        loss = None
        if labels is not None:
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)

        return CausalLMOutputWithPast(
            loss=loss,
            logits=logits,
            cache=outputs.cache,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )

    def _prepare_generated_length(
        self,
        generation_config,
        has_default_max_length,
        has_default_min_length,
        model_input_name,
        input_ids_length,
        inputs_tensor,
    ):
        # A story ends where the context ends, as Transformers' default max_length already does: positions past
        # block_size have no embedding. Servers ask for many new tokens by default (`transformers serve`: 1024, when
        # a request gives no max_tokens), and the OpenAI API, too, writes up to the context.
        generation_config = super()._prepare_generated_length(
            generation_config,
            has_default_max_length,
            has_default_min_length,
            model_input_name,
            input_ids_length,
            inputs_tensor,
        )
        if input_ids_length < self.config.block_size < generation_config.max_length:
            logger.warning_once(
                f"Generation stops at this model's context, block_size={self.config.block_size} tokens, before the "
                f"{generation_config.max_length} tokens asked for (prompt and new tokens)."
            )
            generation_config.max_length = self.config.block_size
        return generation_config

    def _validate_generated_length(self, generation_config, input_ids_length, has_default_max_length):
        # Refuse before the first token a prompt that leaves no room in the context.
        super()._validate_generated_length(generation_config, input_ids_length, has_default_max_length)
        if input_ids_length >= self.config.block_size:
            raise ValueError(
                f"The prompt is {input_ids_length} tokens, but this model's context is block_size="
                f"{self.config.block_size} tokens, prompt and story; shorten the prompt to at most "
                f"{self.config.block_size - 1} tokens."
            )


__all__ = ["TinyStoriesGPTForCausalLM", "TinyStoriesGPTModel", "TinyStoriesGPTPreTrainedModel"]
