"""Tokenizers: the bundled GPT-2 tokenizer (offline), a Hub or local one, or a byte-level BPE trained with `tokenizers`.

Every tokenizer comes back as a `PreTrainedTokenizerFast` with `eos_token` and `pad_token` set, so it pads batches,
marks story ends, and round-trips through `save_pretrained` / `AutoTokenizer.from_pretrained`.

A tokenizer spec is one of:
- ``"gpt2"``: the GPT-2 tokenizer bundled in this package (50,257 tokens, `<|endoftext|>` = 50256), no network;
- ``"bpe:N"``: a byte-level BPE trained on the training split, with N ordinary tokens (the 256 byte symbols plus
  N - 256 merges) and `<|endoftext|>` after them as id N, so ``len(tokenizer) == N + 1``. ``bpe:256`` is a pure
  byte ("character") tokenizer with no merges; ``bpe:50256`` has GPT-2's shape;
- anything else: a local folder or a Hub repo id, loaded with `AutoTokenizer.from_pretrained`.
"""

import hashlib
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import tokenizers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from ..files import replacing_folder

if TYPE_CHECKING:  # for hints only: datasets (and pyarrow) load only where the data is read
    from datasets import Dataset

EOS_TOKEN = "<|endoftext|>"
GPT2_TOKENIZER_DIR = Path(__file__).resolve().parent / "gpt2_tokenizer"
NUM_BYTE_SYMBOLS = 256  # byte-level BPE starts from one symbol per byte value, so it never needs an unknown token
# A story model has no conversation, but chat clients speak only in messages: the last user message is the story's
# opening, written as it is (no role markers the model never saw), and the reply is its continuation.
STORY_CHAT_TEMPLATE = (
    "{%- set openings = messages | selectattr('role', 'equalto', 'user') | list -%}"
    "{%- if not openings -%}"
    "{{ raise_exception('A story model continues an opening: send the opening as a user message.') }}"
    "{%- endif -%}"
    "{%- set opening = openings[-1]['content'] -%}"
    "{%- if opening is string -%}{{ opening }}"
    "{%- else -%}{%- for part in opening if part['type'] == 'text' -%}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
)


def load_gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """The GPT-2 tokenizer bundled with the package; loads offline."""
    # Transformers 5 ignores (with a warning at every decode) the config's clean_up_tokenization_spaces=True for BPE.
    return _with_pad_token(AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR, clean_up_tokenization_spaces=False))


def train_tokenizer(texts: Iterable[str] | Iterable[list[str]], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE on `texts` (strings, or batches of strings); deterministic.

    `vocab_size` counts the ordinary tokens: 256 byte symbols plus up to `vocab_size - 256` merges (fewer if the
    texts run out of pairs to merge). `<|endoftext|>` is added after them, so ``len(tokenizer) == vocab_size + 1``
    on a large enough corpus, and the model needs a `vocab_size` of at least ``len(tokenizer)``.
    """
    if vocab_size < NUM_BYTE_SYMBOLS:
        raise ValueError(
            f"a byte-level BPE needs at least {NUM_BYTE_SYMBOLS} tokens (one per byte value), got vocab_size="
            f"{vocab_size}; use bpe:256 for a pure byte tokenizer"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the texts or not
        special_tokens=[],
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    # Added after training (not as a trainer special token, which would take id 0) so that, as in GPT-2, the
    # end-of-text token comes last and ids 0..255 are the byte symbols.
    tokenizer.add_special_tokens([AddedToken(EOS_TOKEN, special=True)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN, unk_token=EOS_TOKEN, pad_token=EOS_TOKEN
    )


def load_tokenizer(
    spec: str,
    training_texts: "Dataset | None" = None,
    cache_dir: str | Path | None = None,
    cache_key: str | None = None,
) -> PreTrainedTokenizerFast:
    """The tokenizer for a spec (see the module docstring).

    ``bpe:N`` trains on the `text` column of `training_texts`; with a `cache_dir` and a `cache_key` (a fingerprint
    of the texts, e.g. `data.dataset_fingerprint`) the result is saved there, and a later call with the same key
    and N loads it instead of training again.
    """
    if spec == "gpt2":
        return load_gpt2_tokenizer()
    if spec.startswith("bpe:"):
        return _trained_tokenizer(_parse_bpe_size(spec), training_texts, cache_dir, cache_key)
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec)
    except OSError as err:
        raise FileNotFoundError(
            f"cannot load tokenizer {spec!r}: it is neither a local tokenizer folder nor a Hub repo with one ({err}). "
            "Use 'gpt2' (bundled), 'bpe:N' (train one), a folder written by save_pretrained, or a Hub repo id."
        ) from err
    if not isinstance(tokenizer, PreTrainedTokenizerFast):
        raise ValueError(f"tokenizer {spec!r} is a slow (Python) tokenizer; save it with a tokenizer.json first")
    if tokenizer.eos_token is None:
        raise ValueError(f"tokenizer {spec!r} has no eos_token, which marks the end of every story; set one")
    return _with_pad_token(tokenizer)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """A hash that changes whenever the tokenizer would encode any text differently (or mark story ends differently)."""
    state = tokenizer.backend_tokenizer.to_str() + "\0" + str(tokenizer.eos_token_id)
    return hashlib.sha256(state.encode("utf-8")).hexdigest()


def check_vocab_fits(tokenizer: PreTrainedTokenizerFast, vocab_size: int) -> None:
    """Raise ValueError if the tokenizer can emit ids the model's embedding (of `vocab_size` rows) cannot hold."""
    if len(tokenizer) > vocab_size:
        rounded = -(-len(tokenizer) // 64) * 64
        raise ValueError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {vocab_size}, so ids up to "
            f"{len(tokenizer) - 1} would index past the embedding. Set vocab_size >= {len(tokenizer)} "
            f"(e.g. {rounded}, a multiple of 64) or use a smaller tokenizer."
        )


def with_story_chat_template(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """`tokenizer`, given STORY_CHAT_TEMPLATE if it has no chat template, so a saved folder serves chat clients."""
    if tokenizer.chat_template is None:
        tokenizer.chat_template = STORY_CHAT_TEMPLATE
    return tokenizer


def _with_pad_token(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    # Like common GPT-2 use: padding positions are masked out, so reusing the end-of-text token costs nothing.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _parse_bpe_size(spec: str) -> int:
    size = spec.removeprefix("bpe:")
    if not size.isdigit():
        raise ValueError(f"tokenizer spec {spec!r} is not bpe:N with N a whole number of tokens, e.g. bpe:4096")
    return int(size)


def _trained_tokenizer(
    vocab_size: int, training_texts: "Dataset | None", cache_dir: str | Path | None, cache_key: str | None
) -> PreTrainedTokenizerFast:
    if training_texts is None:
        raise ValueError(f"tokenizer bpe:{vocab_size} is trained on the training split: pass training_texts")
    if cache_dir is None or cache_key is None:
        return train_tokenizer(_text_batches(training_texts), vocab_size)
    key = json.dumps([cache_key, vocab_size, tokenizers.__version__])
    folder = Path(cache_dir) / f"tokenizer-bpe{vocab_size}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    if (folder / "tokenizer.json").is_file():
        try:
            return load_tokenizer(str(folder))
        except Exception as error:  # tokenizers and transformers raise their own kinds for a file that does not parse
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"warning: the cached tokenizer {folder} is damaged ({reason}); training it again", file=sys.stderr)
    tokenizer = train_tokenizer(_text_batches(training_texts), vocab_size)
    with replacing_folder(folder, f"the trained tokenizer bpe:{vocab_size}") as staging:
        tokenizer.save_pretrained(staging)  # a concurrent run that trained the same one is swapped out: identical
    return tokenizer


def _text_batches(texts: "Dataset", batch_size: int = 1000) -> Iterable[list[str]]:
    for batch in texts.select_columns("text").iter(batch_size=batch_size):
        yield batch["text"]
