"""Stories: the seed's prompt, how a model samples them by default (saved with it as generation_config.json), and
sample stories written while a model trains."""

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

SEED_PROMPT = "Once upon a time there was a pumpkin."
# The story demo's examples (demo/app.py keeps a copy, being self-contained; a test keeps the two equal)
EXAMPLE_PROMPTS = (
    SEED_PROMPT,
    "Lily found a red ball in the park.",
    "Tom wanted to fly like a bird.",
    "The little dog was sad because",
)
# Stories want variety but not nonsense: nanoGPT's sample.py defaults, also saved as the model's generation_config.
TEMPERATURE = 0.8
TOP_K = 200
PROMPT_ROOM = 4  # a generation default must leave part of the context for the prompt


def story_generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> GenerationConfig:
    """Sampling defaults for stories that fit the model's context and stop at end-of-text."""
    config = model.config
    eos_token_id = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id
    return GenerationConfig(
        do_sample=True,
        temperature=TEMPERATURE,
        top_k=TOP_K,
        # The model refuses prompt + new tokens beyond block_size, so a default of block_size new tokens would
        # fail for every prompt; three quarters leaves room for a sentence-long prompt.
        max_new_tokens=max(1, min(config.block_size - PROMPT_ROOM, config.block_size * 3 // 4)),
        bos_token_id=config.bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
    )


def check_seed_prompt_fits(tokenizer: PreTrainedTokenizerBase, block_size: int) -> None:
    """Refuse a context too short for the seed prompt and a story after it: every run ends by writing one."""
    length = len(tokenizer(SEED_PROMPT).input_ids)
    if length >= block_size:
        raise ValueError(
            f"--block_size {block_size} cannot hold the seed prompt {SEED_PROMPT!r} ({length} tokens with this "
            f"tokenizer) and a story after it, which every run writes at its end: pass --block_size {length + 1} or "
            "more (the seed uses 128)"
        )


@torch.no_grad()
def sample_stories(model, tokenizer, num_samples: int, seed: int, prompt: str = SEED_PROMPT) -> list[str]:
    """Sampled continuations of the prompt, drawn from a private RNG so training's random stream is untouched."""
    device = next(model.parameters()).device
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    max_new_tokens = model.config.block_size - prompt_ids.shape[1]
    if num_samples == 0 or max_new_tokens <= 0:
        return []
    was_training = model.training
    model.eval()
    # eager even under --compile: each new sequence length would otherwise cost a recompilation
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        torch.compiler.set_stance("force_eager"),
    ):
        torch.manual_seed(seed)
        generated = model.generate(
            prompt_ids.expand(num_samples, -1),
            attention_mask=torch.ones_like(prompt_ids).expand(num_samples, -1),
            do_sample=True,
            temperature=TEMPERATURE,
            top_k=TOP_K,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.eos_token_id,
        )
    model.train(was_training)
    return [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]


@torch.no_grad()
def write_stories(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], seed: int
) -> list[tuple[str, bool]]:
    """(the continuation, whether it ended with the end-of-story token) for each prompt: sampled with the model's
    generation defaults (generation_config.json) up to its context, story i from seed + i, so a story does not
    depend on which others are written beside it."""
    device = next(model.parameters()).device
    context = model.config.max_position_embeddings
    eos_token_id = model.generation_config.eos_token_id
    was_training = model.training
    model.eval()
    written = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for number, prompt in enumerate(prompts):
            prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids[:, : context - 1].to(device)
            torch.manual_seed(seed + number)
            output = model.generate(
                prompt_ids,
                attention_mask=torch.ones_like(prompt_ids),
                max_new_tokens=context - prompt_ids.shape[1],
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_token_id,
            )
            new_ids = output[0, prompt_ids.shape[1] :]
            written.append((tokenizer.decode(new_ids, skip_special_tokens=True), bool((new_ids == eos_token_id).any())))
    model.train(was_training)
    return written
