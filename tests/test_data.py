"""Data pipeline: every source format, the cached token files, and the batch samplers."""

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Dataset, DatasetDict, Features, Value

from tinystories_gpt.data import sources, token_files
from tinystories_gpt.data.sources import load_text_splits
from tinystories_gpt.data.token_files import prepare_data, tokenize_split
from tinystories_gpt.data.tokenization import EOS_TOKEN, load_gpt2_tokenizer

pytestmark = pytest.mark.usefixtures("hf_cache")

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "data" / "tinystories"

TRAIN = [
    f"Story {i}. Once upon a time, {name} found a {thing}.\nThe end, said {name} — “happy” 🎈."
    for i, (name, thing) in enumerate((n, t) for n in ("Lily", "Tom", "Zoë", "Ben") for t in ("ball", "café", "cat"))
]
TEXT_FEATURES = Features({"text": Value("string")})
VALIDATION = ["Sue had a red kite.\nIt flew high.", "Max saw the moon. “Wow!” he said."]


def stories_text(stories: list[str]) -> str:
    """The official TinyStories text layout: each story followed by a line holding `<|endoftext|>`."""
    return "".join(f"{story}\n{EOS_TOKEN}\n" for story in stories)


def parquet_bytes(stories: list[str]) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.table({"text": stories}), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def gpt2():
    return load_gpt2_tokenizer()


@pytest.fixture
def story_folder(tmp_path):
    folder = tmp_path / "stories"
    folder.mkdir()
    (folder / "train.txt").write_text(stories_text(TRAIN), encoding="utf-8")
    (folder / "validation.txt").write_text(stories_text(VALIDATION), encoding="utf-8")
    return folder


# ---------------------------------------------------------------------------------------------------------------
# Sources


def write_source(kind: str, folder) -> str:
    """Write TRAIN (and VALIDATION where the format has splits) in one source format; return the spec."""
    if kind == "txt folder":
        (folder / "train.txt").write_text(stories_text(TRAIN), encoding="utf-8")
        (folder / "validation.txt").write_text(stories_text(VALIDATION), encoding="utf-8")
        return str(folder)
    if kind == "jsonl folder":
        (folder / "train.jsonl").write_text("".join(json.dumps({"text": s, "id": 1}) + "\n" for s in TRAIN))
        (folder / "validation.parquet").write_bytes(parquet_bytes(VALIDATION))
        return str(folder)
    if kind == "json":
        (folder / "stories.json").write_text(json.dumps([{"text": s} for s in TRAIN + VALIDATION]))
        return str(folder / "stories.json")
    if kind == "parquet":
        (folder / "stories.parquet").write_bytes(parquet_bytes(TRAIN + VALIDATION))
        return str(folder / "stories.parquet")
    if kind == "save_to_disk":
        DatasetDict(
            train=Dataset.from_dict({"text": TRAIN}), validation=Dataset.from_dict({"text": VALIDATION})
        ).save_to_disk(folder / "saved")
        return str(folder / "saved")
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["txt folder", "jsonl folder", "save_to_disk"])
def test_sources_with_both_splits(kind, tmp_path):
    splits = load_text_splits(write_source(kind, tmp_path))
    assert splits["train"]["text"] == TRAIN
    assert splits["validation"]["text"] == VALIDATION
    assert splits["train"].column_names == ["text"]  # other columns (like "id") are dropped


@pytest.mark.parametrize("kind", ["json", "parquet"])
def test_single_files_hold_out_the_first_percent(kind, tmp_path):
    spec = write_source(kind, tmp_path)
    stories = TRAIN + VALIDATION
    splits = load_text_splits(spec, validation_split_percentage=10)
    assert splits["validation"]["text"] == stories[:1]  # round(14 * 10%) = 1
    assert splits["train"]["text"] == stories[1:]
    assert load_text_splits(spec, validation_split_percentage=10)["validation"]["text"] == stories[:1]  # same again


def test_single_txt_file_and_a_saved_dataset_without_validation(tmp_path):
    (tmp_path / "all.txt").write_text(stories_text(TRAIN))
    splits = load_text_splits(tmp_path / "all.txt", validation_split_percentage=25)
    assert splits["validation"]["text"] == TRAIN[:3] and splits["train"]["text"] == TRAIN[3:]
    Dataset.from_dict({"text": TRAIN}).save_to_disk(tmp_path / "saved")
    assert load_text_splits(str(tmp_path / "saved"))["train"]["text"] == TRAIN[1:]  # 5% of 12 rounds to 1


def test_txt_story_boundaries(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(
        f"First story.\nSecond paragraph.\n{EOS_TOKEN}\n\n  {EOS_TOKEN}\n"  # an empty story is skipped
        f"Second story.{EOS_TOKEN}Third story, same line.\n{EOS_TOKEN}\n"
        "Last story, no separator after it.\n"
    )
    assert list(sources._read_stories(str(path))) == [
        {"text": "First story.\nSecond paragraph."},
        {"text": "Second story."},
        {"text": "Third story, same line."},
        {"text": "Last story, no separator after it."},
    ]


def test_hub_dataset_loads_end_to_end_through_the_fake_hub(fake_hub, tmp_path):
    fake_hub.add_repo(
        "roneneldan/TinyStories",
        {
            "data/train-00000-of-00001.parquet": parquet_bytes(TRAIN),
            "data/validation-00000-of-00001.parquet": parquet_bytes(VALIDATION),
        },
        repo_type="dataset",
    )
    prepared = prepare_data("roneneldan/TinyStories", "bpe:300", cache_dir=tmp_path / "cache")  # the real code path
    assert (prepared.train.num_stories, prepared.validation.num_stories) == (len(TRAIN), len(VALIDATION))
    assert any("/datasets/roneneldan/TinyStories/resolve/" in str(r.url) for r in fake_hub.requests)
    assert sources.DEFAULT_DATASET == "roneneldan/TinyStories"


def test_the_bundled_sample_is_there():
    splits = load_text_splits(SAMPLE_DATA)
    assert (len(splits["train"]), len(splits["validation"])) == (3365, 919)
    assert (SAMPLE_DATA / "LICENSE.md").read_text().count("CDLA-Sharing-1.0") >= 1


# ---------------------------------------------------------------------------------------------------------------
# Bad input


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_text_splits(str(tmp_path / "nowhere.txt"))


def test_unknown_name_on_the_hub(fake_hub):
    with pytest.raises(FileNotFoundError, match="'someone/nothing' is neither a local file"):
        load_text_splits("someone/nothing")


def test_unknown_extension(tmp_path):
    (tmp_path / "stories.csv").write_text("text\nOnce upon a time.\n")
    with pytest.raises(ValueError, match=r"stories.csv: unknown extension '.csv'; use one of .txt"):
        load_text_splits(tmp_path / "stories.csv")


def test_folder_without_a_train_file(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="holds no training data: expected one of train.txt"):
        load_text_splits(tmp_path)


@pytest.mark.parametrize(
    ("name", "content"),
    [("train.txt", f"\n{EOS_TOKEN}\n  \n{EOS_TOKEN}\n"), ("train.jsonl", ""), ("train.parquet", parquet_bytes([]))],
)
def test_empty_split(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    with pytest.raises(ValueError, match=rf"{name} holds no stories for the train split"):
        load_text_splits(tmp_path)


def test_empty_split_from_any_source():
    # (datasets cannot even reload an empty split it saved, so this check is called on its own)
    with pytest.raises(ValueError, match="the validation split of somewhere holds no stories"):
        sources._check_text_split(Dataset.from_dict({"text": []}, features=TEXT_FEATURES), "validation", "somewhere")


def test_no_text_column_lists_the_columns_found(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"story": s, "id": 3}) + "\n" for s in TRAIN))
    with pytest.raises(ValueError, match=r"no 'text' column \(columns found: story, id\)"):
        load_text_splits(tmp_path)


@pytest.mark.parametrize("name", ["train.txt", "train.jsonl"])
def test_bytes_that_are_not_utf8_name_the_file_and_offset(tmp_path, name):
    good = stories_text(TRAIN[:2]) if name.endswith(".txt") else json.dumps({"text": TRAIN[0]}) + "\n"
    prefix = good.encode("utf-8") + "Zoë".encode()
    (tmp_path / name).write_bytes(prefix + b"\xe9t\xe9 en latin-1\n")
    with pytest.raises(ValueError, match=rf"{name}: the bytes at offset {len(prefix)} are not valid UTF-8"):
        load_text_splits(tmp_path)


def test_utf8_check_across_chunk_boundaries(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("é" * 10, encoding="utf-8")  # 2-byte characters split across 3-byte chunks
    assert sources._check_utf8(path, chunk_size=3)
    path.write_bytes("é".encode() * 10 + b"\xff")
    with pytest.raises(ValueError, match="offset 20 "):
        sources._check_utf8(path, chunk_size=3)


def test_hold_out_that_leaves_a_side_empty(tmp_path):
    (tmp_path / "one.txt").write_text("Only one story.")
    with pytest.raises(ValueError, match="validation_split_percentage"):
        load_text_splits(tmp_path / "one.txt")


# ---------------------------------------------------------------------------------------------------------------
# Token files


def test_token_file_is_each_story_then_eos(story_folder, tmp_path, gpt2):
    prepared = prepare_data(story_folder, "gpt2", cache_dir=tmp_path / "cache")
    expected = [token for story in TRAIN for token in gpt2.encode(story) + [gpt2.eos_token_id]]
    train = prepared.train
    assert train.tokens().tolist() == expected
    assert (train.num_tokens, train.num_stories, train.dtype) == (len(expected), len(TRAIN), "uint16")
    assert train.num_bytes == sum(len(story.encode("utf-8")) + 1 for story in TRAIN)
    sidecar = json.loads(train.path.with_suffix(".json").read_text())
    assert sidecar["num_tokens"] == len(expected) and sidecar["num_bytes"] == train.num_bytes
    assert set(sidecar) >= {"source_fingerprint", "tokenizer_fingerprint", "num_stories", "dtype"}
    assert prepared.validation.num_stories == len(VALIDATION)


def test_parallel_encoding_writes_the_same_file(story_folder, tmp_path, gpt2):
    texts = load_text_splits(story_folder)["train"]
    one = tokenize_split(texts, gpt2, tmp_path / "one", "train").tokens()
    two = tokenize_split(texts, gpt2, tmp_path / "two", "train", num_proc=2).tokens()
    assert np.array_equal(one, two)


def test_large_vocabularies_use_uint32(tmp_path, gpt2):
    big = load_gpt2_tokenizer()
    big.add_tokens([f"<extra_{i}>" for i in range((1 << 16) - len(gpt2) + 1)])  # 65,537 tokens
    token_file = tokenize_split(Dataset.from_dict({"text": VALIDATION}), big, tmp_path, "validation")
    assert token_file.dtype == "uint32"
    assert token_file.tokens().tolist() == [t for s in VALIDATION for t in gpt2.encode(s) + [gpt2.eos_token_id]]


def test_second_run_reuses_the_file(story_folder, tmp_path, monkeypatch):
    first = prepare_data(story_folder, "gpt2", cache_dir=tmp_path)
    modified = first.train.path.stat().st_mtime_ns

    def no_encoding(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(token_files, "_encode_batch", no_encoding)
    again = prepare_data(story_folder, "gpt2", cache_dir=tmp_path)
    assert again.train == first.train and again.validation == first.validation
    assert again.train.path.stat().st_mtime_ns == modified


def test_changing_the_source_or_the_tokenizer_rebuilds(story_folder, tmp_path):
    first = prepare_data(story_folder, "gpt2", cache_dir=tmp_path)
    other_tokenizer = prepare_data(story_folder, "bpe:300", cache_dir=tmp_path)
    assert other_tokenizer.train.path != first.train.path
    assert other_tokenizer.train.num_tokens != first.train.num_tokens

    with open(story_folder / "train.txt", "a", encoding="utf-8") as file:
        file.write(f"One more story.\n{EOS_TOKEN}\n")
    os.utime(story_folder / "train.txt", ns=(0, first.train.path.stat().st_mtime_ns + 10**9))
    edited = prepare_data(story_folder, "gpt2", cache_dir=tmp_path)
    assert edited.train.path != first.train.path and edited.train.num_stories == len(TRAIN) + 1
    assert edited.validation == first.validation  # untouched split: reused


def test_a_missing_or_wrong_sidecar_means_rebuild(story_folder, tmp_path, gpt2):
    texts = load_text_splits(story_folder)["validation"]
    built = tokenize_split(texts, gpt2, tmp_path, "validation")
    sidecar = built.path.with_suffix(".json")
    sidecar.unlink()  # e.g. killed between the two renames
    assert tokenize_split(texts, gpt2, tmp_path, "validation") == built
    with open(built.path, "ab") as file:  # a token file whose size disagrees with its sidecar
        file.write(b"\0\0")
    assert tokenize_split(texts, gpt2, tmp_path, "validation") == built
    assert built.path.stat().st_size == built.num_tokens * 2


def test_an_interrupted_build_leaves_nothing_that_looks_complete(story_folder, tmp_path, gpt2, monkeypatch):
    texts = load_text_splits(story_folder)["train"]
    real_write, real_rmtree = token_files._write_tokens, shutil.rmtree

    def killed_while_writing(encoded, path, dtype):
        path.write_bytes(b"\1\2\3\4")  # half a file
        raise KeyboardInterrupt

    monkeypatch.setattr(token_files, "_write_tokens", killed_while_writing)
    monkeypatch.setattr(shutil, "rmtree", lambda *args, **kwargs: None)  # as if killed: no clean-up ran
    with pytest.raises(KeyboardInterrupt):
        tokenize_split(texts, gpt2, tmp_path, "train")
    assert not list(tmp_path.glob("train-*"))  # only the hidden scratch folder is left
    assert len(list(tmp_path.glob(".train-*.tmp"))) == 1
    monkeypatch.setattr(token_files, "_write_tokens", real_write)
    monkeypatch.setattr(shutil, "rmtree", real_rmtree)
    token_file = tokenize_split(texts, gpt2, tmp_path, "train")
    assert token_file.num_stories == len(TRAIN)
    assert token_file.tokens()[-1] == gpt2.eos_token_id
    assert not list(tmp_path.glob(".*.tmp"))  # the dead build's scratch went with the next build


@pytest.mark.slow
def test_prepared_bundled_sample_with_a_byte_tokenizer(tmp_path):
    prepared = prepare_data(SAMPLE_DATA, "bpe:256", cache_dir=tmp_path)
    assert len(prepared.tokenizer) == 257
    # a byte tokenizer has exactly one token per byte, and the +1 per story is its EOS token
    assert prepared.train.num_tokens == prepared.train.num_bytes
    assert prepared.validation.num_tokens == prepared.validation.num_bytes
    assert prepared.validation.num_stories == 919


# ---------------------------------------------------------------------------------------------------------------
# Batches
