"""Tokenizers: the bundled GPT-2 one offline, trained byte-level BPEs, specs, caching and the vocab check."""

import time
from pathlib import Path

import pytest
from datasets import Dataset
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tinystories_gpt.data import tokenization
from tinystories_gpt.data.token_files import dataset_fingerprint
from tinystories_gpt.data.tokenization import (
    EOS_TOKEN,
    GPT2_TOKENIZER_DIR,
    STORY_CHAT_TEMPLATE,
    check_vocab_fits,
    load_gpt2_tokenizer,
    load_tokenizer,
    tokenizer_fingerprint,
    train_tokenizer,
    with_story_chat_template,
)

pytestmark = pytest.mark.usefixtures("hf_cache")

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "data" / "tinystories"

TEXTS = [
    "Once upon a time there was a pumpkin.",
    "Lily saw a big dog. “Hello, dog!” she said.\nThe dog wagged its tail.",
    "Tom’s café had crème brûlée, 🍰 and naïve jokes — the end.",
] * 20


@pytest.fixture(scope="module")
def sample_stories() -> list[str]:
    text = (SAMPLE_DATA / "train.txt").read_text(encoding="utf-8")
    return [story.strip() for story in text.split(EOS_TOKEN) if story.strip()]


def test_bundled_gpt2_loads_offline_with_the_published_ids(fake_hub):
    tokenizer = load_gpt2_tokenizer()
    assert fake_hub.requests == []  # nothing asked of the (fake) Hub
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert tokenizer.encode("Once upon a time there was a pumpkin.") == [7454, 2402, 257, 640, 612, 373, 257, 30089, 13]
    assert (len(tokenizer), tokenizer.eos_token, tokenizer.eos_token_id) == (50257, EOS_TOKEN, 50256)
    assert tokenizer.pad_token == EOS_TOKEN
    assert (GPT2_TOKENIZER_DIR / "SOURCE.md").is_file()


@pytest.mark.parametrize("vocab_size", [256, 300, 4096])
def test_trained_tokenizer_round_trips_text_and_puts_eos_last(vocab_size):
    tokenizer = train_tokenizer(TEXTS, vocab_size)
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    assert len(tokenizer) <= vocab_size + 1
    assert tokenizer.eos_token_id == len(tokenizer) - 1
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == EOS_TOKEN
    assert tokenizer.bos_token == tokenizer.pad_token == EOS_TOKEN
    for text in TEXTS[:3]:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert max(ids) < tokenizer.eos_token_id  # story text never produces the end-of-text token


def test_bpe_256_is_a_byte_tokenizer():
    tokenizer = train_tokenizer(TEXTS, 256)
    assert len(tokenizer) == 257  # 256 byte symbols + <|endoftext|>
    text = TEXTS[2]
    assert len(tokenizer.encode(text)) == len(text.encode("utf-8"))  # one token per UTF-8 byte, even for emoji


def test_bpe_size_counts_ordinary_tokens(sample_stories):
    tokenizer = train_tokenizer(sample_stories[:500], 1000)
    assert len(tokenizer) == 1001  # the corpus has enough pairs: 256 bytes + 744 merges + <|endoftext|>


def test_training_is_deterministic(sample_stories):
    first = train_tokenizer(sample_stories[:500], 1000)
    second = train_tokenizer(sample_stories[:500], 1000)
    assert tokenizer_fingerprint(first) == tokenizer_fingerprint(second)
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()


@pytest.mark.slow
def test_4096_bpe_on_the_local_corpus_trains_in_seconds(sample_stories):
    start = time.perf_counter()
    tokenizer = train_tokenizer(sample_stories, 4096)
    assert time.perf_counter() - start < 20  # about 0.4 s here; generous for a busy shared machine
    assert len(tokenizer) == 4097


def test_trained_tokenizer_saves_and_reloads(tmp_path):
    tokenizer = train_tokenizer(TEXTS, 300)
    tokenizer.save_pretrained(tmp_path)
    for reloaded in (AutoTokenizer.from_pretrained(tmp_path), load_tokenizer(str(tmp_path))):
        assert reloaded.encode(TEXTS[1]) == tokenizer.encode(TEXTS[1])
        assert (reloaded.eos_token, reloaded.pad_token, len(reloaded)) == (EOS_TOKEN, EOS_TOKEN, len(tokenizer))
        assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(tokenizer)


def test_bpe_spec_trains_once_then_loads_from_the_cache(tmp_path, monkeypatch):
    texts = Dataset.from_dict({"text": TEXTS})
    trained = load_tokenizer("bpe:300", training_texts=texts, cache_dir=tmp_path, cache_key=dataset_fingerprint(texts))
    assert [p.name for p in tmp_path.iterdir()][0].startswith("tokenizer-bpe300-")

    def no_training(*args, **kwargs):
        raise AssertionError("retrained a cached tokenizer")

    monkeypatch.setattr(tokenization, "train_tokenizer", no_training)
    cached = load_tokenizer("bpe:300", training_texts=texts, cache_dir=tmp_path, cache_key=dataset_fingerprint(texts))
    assert tokenizer_fingerprint(cached) == tokenizer_fingerprint(trained)
    with pytest.raises(AssertionError, match="retrained"):  # other texts: a new key, so it trains
        other = Dataset.from_dict({"text": TEXTS[:3]})
        load_tokenizer("bpe:300", training_texts=other, cache_dir=tmp_path, cache_key=dataset_fingerprint(other))


def test_specs_name_gpt2_a_folder_or_a_hub_repo(tmp_path, fake_hub):
    assert len(load_tokenizer("gpt2")) == 50257
    files = {path.name: path.read_bytes() for path in GPT2_TOKENIZER_DIR.iterdir()}
    fake_hub.add_repo("someone/story-tokenizer", files)
    from_hub = load_tokenizer("someone/story-tokenizer")
    assert from_hub.encode(" pumpkin") == [30089]
    assert from_hub.pad_token == EOS_TOKEN


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        ("bpe:255", ValueError, "at least 256"),
        ("bpe:lots", ValueError, "bpe:N"),
        ("someone/no-such-tokenizer", FileNotFoundError, "someone/no-such-tokenizer"),
    ],
)
def test_bad_specs_say_what_to_do(spec, error, message, fake_hub):
    with pytest.raises(error, match=message):
        load_tokenizer(spec, training_texts=Dataset.from_dict({"text": TEXTS}))


def test_bpe_spec_needs_training_texts():
    with pytest.raises(ValueError, match="training_texts"):
        load_tokenizer("bpe:300")


def test_check_vocab_fits():
    tokenizer = load_gpt2_tokenizer()
    check_vocab_fits(tokenizer, 50257)
    check_vocab_fits(tokenizer, 50304)
    with pytest.raises(ValueError, match=r"50257 tokens .* vocab_size is 50000.*50304"):
        check_vocab_fits(tokenizer, 50000)


def test_the_story_chat_template_makes_the_last_user_message_the_opening():
    tokenizer = with_story_chat_template(load_gpt2_tokenizer())
    chat = [
        {"role": "system", "content": "You are a storyteller."},
        {"role": "user", "content": "Once upon a time"},
        {"role": "assistant", "content": " there was a cat."},
        {"role": "user", "content": "Tom had a red kite."},
    ]
    assert tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == "Tom had a red kite."
    parts = [{"role": "user", "content": [{"type": "text", "text": "Once"}, {"type": "text", "text": " upon"}]}]
    assert tokenizer.apply_chat_template(parts, tokenize=False) == "Once upon"
    with pytest.raises(Exception, match="send the opening as a user message"):
        tokenizer.apply_chat_template([{"role": "system", "content": "Be kind."}], tokenize=False)
    # a template of the tokenizer's own is kept
    tokenizer.chat_template = "{{ messages[0]['content'] }}"
    assert with_story_chat_template(tokenizer).chat_template == "{{ messages[0]['content'] }}"


def test_saved_folders_and_gpt2_exports_carry_the_chat_template(tiny_model, tmp_path):
    from tinystories_gpt.export.gpt2 import export_gpt2

    for folder in (tiny_model, export_gpt2(tiny_model, tmp_path / "gpt2")):
        assert (folder / "chat_template.jinja").read_text() == STORY_CHAT_TEMPLATE
        reloaded = AutoTokenizer.from_pretrained(folder)
        assert reloaded.apply_chat_template([{"role": "user", "content": "Hi."}], tokenize=False) == "Hi."
