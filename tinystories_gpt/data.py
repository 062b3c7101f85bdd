"""Text -> tokens: stories from the Hub or local files, tokenized once into a cached flat token file.

1. `load_text_splits`: stories from the Hub or local files, through `datasets`, as train/validation splits with a
   `text` column.
2. `tokenize_split` / `prepare_data`: tokenize a split once (batched, fast tokenizer), append `<|endoftext|>` after
   every story, and stream the ids into one flat uint16/uint32 file with a JSON sidecar. A later run with the same
   source and tokenizer reuses the file; any change to either builds a new one.

The next step along the data's path, windows of those tokens for the model, is windows.py.
"""

import codecs
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict
from datasets.exceptions import DatasetNotFoundError
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from .tokenization import EOS_TOKEN, load_tokenizer, tokenizer_fingerprint

DEFAULT_DATASET = "roneneldan/TinyStories"
SPLITS = ("train", "validation")
TEXT_COLUMN = "text"
# How each local file extension is read: "stories" is our reader for `<|endoftext|>`-separated text files,
# the others are datasets' packaged builders.
FILE_READERS = {".txt": "stories", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
FORMAT_VERSION = 1  # bump when the story reader or the token file layout changes, to rebuild old caches


# ---------------------------------------------------------------------------------------------------------------
# 1. Sources


def load_text_splits(
    dataset: str | Path = DEFAULT_DATASET, validation_split_percentage: float = 5.0, dev_stories: int = 0
) -> DatasetDict:
    """Load stories as a DatasetDict with `train` and `validation` splits, each with a `text` column.

    `dataset` is a Hub dataset name (loaded with `datasets.load_dataset`) or a local path: a folder holding
    `train.<ext>` and optionally `validation.<ext>`, a single file, or a folder written by `save_to_disk`.
    Extensions: `.txt` (stories separated by lines holding `<|endoftext|>`, like the official TinyStories text
    files), `.jsonl`/`.json` (a `text` field), `.parquet`. Without a validation split, the first
    `validation_split_percentage` percent of the stories are held out as one (as in Transformers' run_clm.py),
    which is deterministic and keeps the files' order. With `dev_stories`, the last that many train stories become
    a third split, `dev`, for tuning without looking at the validation split.
    """
    return _load_splits(dataset, validation_split_percentage, dev_stories)[0]


def is_local_source(dataset: str | Path) -> bool:
    """Whether `dataset` names local files (else it is a Hub dataset name)."""
    return Path(dataset).expanduser().exists()


def _load_splits(
    dataset: str | Path, validation_split_percentage: float, dev_stories: int = 0
) -> tuple[DatasetDict, bool]:
    """(the splits, whether the validation split was held out of train)."""
    splits = _load_local(Path(dataset).expanduser()) if is_local_source(dataset) else _load_hub(str(dataset))
    if "train" not in splits:
        raise ValueError(f"{dataset} has no train split (splits found: {', '.join(splits)}); name one 'train'")
    for name, split in splits.items():
        _check_text_split(split, name, dataset)
    held_out = "validation" not in splits
    if held_out:
        splits = _hold_out(splits["train"], validation_split_percentage, dataset)
    if dev_stories:
        splits |= _dev_split(splits["train"], dev_stories, dataset)
    names = (*SPLITS, "dev") if dev_stories else SPLITS
    return DatasetDict({name: splits[name].select_columns(TEXT_COLUMN) for name in names}), held_out


def _dev_split(train: Dataset, dev_stories: int, dataset: str | Path) -> dict[str, Dataset]:
    """The last `dev_stories` train stories as `dev`, the rest as `train`."""
    if not 0 < dev_stories < len(train):
        raise ValueError(
            f"dev_stories={dev_stories} must leave train stories to train on: the train split of {dataset} has "
            f"{len(train)}; hold out fewer"
        )
    cut = len(train) - dev_stories
    return {"train": train.select(range(cut)), "dev": train.select(range(cut, len(train)))}


def _load_hub(name: str) -> dict[str, Dataset]:
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or Path(name).suffix in FILE_READERS:
        raise FileNotFoundError(f"no such file or folder: {name}; pass an existing path or a Hub dataset name")
    try:
        return dict(datasets.load_dataset(name))
    except DatasetNotFoundError as err:
        raise FileNotFoundError(
            f"{name!r} is neither a local file or folder nor a dataset on the Hub ({err}); pass an existing path "
            f"or a Hub dataset name like {DEFAULT_DATASET}"
        ) from err
    except ConnectionError as err:
        raise ConnectionError(
            f"{name!r} is not a local file or folder, and the Hub could not be reached to load it as a dataset "
            f"({err}); check the path, or the connection (HF_HUB_OFFLINE=1 uses a copy datasets cached earlier)"
        ) from err


def _load_local(path: Path) -> dict[str, Dataset]:
    if path.is_file():
        return {"train": _load_file(path, "train")}
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        loaded = datasets.load_from_disk(str(path))
        return dict(loaded) if isinstance(loaded, DatasetDict) else {"train": loaded}
    splits = {}
    for split in SPLITS:
        files = [path / f"{split}{ext}" for ext in FILE_READERS if (path / f"{split}{ext}").is_file()]
        if len(files) > 1:
            raise ValueError(f"{path} holds several {split} files ({', '.join(f.name for f in files)}); keep one")
        if files:
            splits[split] = _load_file(files[0], split)
    if "train" not in splits:
        names = ", ".join(f"train{ext}" for ext in FILE_READERS)
        raise FileNotFoundError(
            f"{path} holds no training data: expected one of {names} (and optionally validation.*), "
            "or a folder written by Dataset.save_to_disk"
        )
    return splits


def _load_file(path: Path, split: str) -> Dataset:
    reader = FILE_READERS.get(path.suffix)
    if reader is None:
        raise ValueError(f"{path}: unknown extension {path.suffix!r}; use one of {', '.join(FILE_READERS)}")
    # Checked up front: datasets' builders fail on empty files with unhelpful errors, and pyarrow's JSON reader
    # accepts invalid UTF-8 that only breaks much later.
    if _holds_no_stories(path, reader):
        raise ValueError(f"{path} holds no stories for the {split} split; add text to it or point to another source")
    if reader == "stories":
        return Dataset.from_generator(
            _read_stories,
            gen_kwargs={"path": str(path)},
            features=datasets.Features({TEXT_COLUMN: datasets.Value("string")}),
            split=split,
            # datasets would hash only the generator and the path; the file's size and mtime catch edits too.
            fingerprint=_hash(
                "stories", FORMAT_VERSION, str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns
            ),
        )
    return datasets.load_dataset(reader, data_files={split: str(path)}, split=split)


def _holds_no_stories(path: Path, reader: str) -> bool:
    if reader == "parquet":
        return pq.ParquetFile(path).metadata.num_rows == 0
    if not _check_utf8(path):
        return True
    return reader == "stories" and next(_read_stories(str(path)), None) is None  # reads up to the first story


def _read_stories(path: str) -> Iterator[dict[str, str]]:
    """Yield the stories of a text file in which `<|endoftext|>` ends each story, reading line by line."""
    lines = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            *story_ends, rest = line.split(EOS_TOKEN)  # usually no separator, or a line holding only one
            for end in story_ends:
                story = ("".join(lines) + end).strip()
                lines = []
                if story:
                    yield {TEXT_COLUMN: story}
            lines.append(rest)
    story = "".join(lines).strip()
    if story:
        yield {TEXT_COLUMN: story}


def _check_utf8(path: Path, chunk_size: int = 1 << 20) -> bool:
    """Raise ValueError at the first invalid UTF-8 byte of a file; return whether it holds any non-whitespace."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes fed to the decoder so far
    has_text = False
    with open(path, "rb") as file:
        while True:
            chunk = file.read(chunk_size)
            pending = len(decoder.getstate()[0])  # bytes of an unfinished character carried over from the last chunk
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                raise ValueError(
                    f"{path}: the bytes at offset {offset - pending + err.start} are not valid UTF-8; re-encode the "
                    "file as UTF-8 (e.g. iconv -f <its encoding> -t UTF-8)"
                ) from None
            has_text = has_text or not text.isspace() and text != ""
            if not chunk:
                return has_text
            offset += len(chunk)


def _hold_out(train: Dataset, percentage: float, dataset: str | Path) -> dict[str, Dataset]:
    num_validation = round(len(train) * percentage / 100)
    if not 0 < num_validation < len(train):
        raise ValueError(
            f"{dataset} has no validation split, and holding out validation_split_percentage={percentage}% of its "
            f"{len(train)} stories leaves {num_validation} for validation; choose a percentage that keeps at least "
            "one story on each side, or provide a validation split"
        )
    return {"train": train.select(range(num_validation, len(train))), "validation": train.select(range(num_validation))}


def _check_text_split(split: Dataset, name: str, dataset: str | Path) -> None:
    if TEXT_COLUMN not in split.column_names:
        raise ValueError(
            f"the {name} split of {dataset} has no {TEXT_COLUMN!r} column (columns found: "
            f"{', '.join(split.column_names) or 'none'}); rename the column that holds the stories to {TEXT_COLUMN!r}"
        )
    if split.features[TEXT_COLUMN] not in (datasets.Value("string"), datasets.Value("large_string")):
        raise ValueError(
            f"the {TEXT_COLUMN!r} column of the {name} split of {dataset} holds "
            f"{split.features[TEXT_COLUMN]}, not strings"
        )
    if len(split) == 0:
        raise ValueError(f"the {name} split of {dataset} holds no stories; add some text or point to another source")


# ---------------------------------------------------------------------------------------------------------------
# 2. Token files


@dataclass(frozen=True)
class TokenFile:
    """One split tokenized into a flat file: every story's ids followed by `<|endoftext|>`, stories in order."""

    path: Path
    num_tokens: int  # end-of-story tokens included: the number of tokens a full evaluation pass predicts
    num_bytes: int  # sum over stories of len(story.encode("utf-8")) + 1: the bits-per-byte denominator
    num_stories: int
    dtype: str  # "uint16" when the vocabulary fits, else "uint32"

    def tokens(self) -> np.memmap:
        """The token ids, memory-mapped read-only (nothing is loaded until indexed)."""
        return np.memmap(self.path, dtype=self.dtype, mode="r", shape=(self.num_tokens,))


@dataclass(frozen=True)
class PreparedData:
    """What training needs from the data: the tokenizer, the two tokenized splits, and where they came from."""

    tokenizer: PreTrainedTokenizerFast
    train: TokenFile
    validation: TokenFile
    dev: TokenFile | None  # the tuning hold-out carved from train, when asked for
    hub_id: str | None  # the Hub dataset name, or None for local files
    validation_source: str  # what the validation split is, in words, for the model card
    seconds: dict[str, float]  # wall time of each phase: "tokenizer" (train or load it), "tokenization" (both splits)


def default_cache_dir() -> Path:
    """Where token files and trained tokenizers go unless told otherwise: beside datasets' own cache."""
    return Path(datasets.config.HF_DATASETS_CACHE) / "tinystories_gpt"


def prepare_data(
    dataset: str | Path = DEFAULT_DATASET,
    tokenizer: str = "gpt2",
    cache_dir: str | Path | None = None,
    validation_split_percentage: float = 5.0,
    num_proc: int | None = None,
    dev_stories: int = 0,
) -> PreparedData:
    """Load the source, resolve the tokenizer spec (training `bpe:N` on the train split), tokenize both splits.

    Everything is cached under `cache_dir` (default: `default_cache_dir()`), so a second call is fast.
    """
    started = time.perf_counter()
    splits, held_out = _load_splits(dataset, validation_split_percentage, dev_stories)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    resolved = load_tokenizer(
        tokenizer, training_texts=splits["train"], cache_dir=cache_dir, cache_key=dataset_fingerprint(splits["train"])
    )
    tokenized = time.perf_counter()
    token_files = {name: tokenize_split(split, resolved, cache_dir, name, num_proc) for name, split in splits.items()}
    seconds = {"tokenizer": tokenized - started, "tokenization": time.perf_counter() - tokenized}
    return PreparedData(
        tokenizer=resolved,
        train=token_files["train"],
        validation=token_files["validation"],
        dev=token_files.get("dev"),
        hub_id=None if is_local_source(dataset) else str(dataset),
        validation_source=(
            f"a {validation_split_percentage:g}% hold-out of the train split of {dataset}"
            if held_out
            else f"the validation split of {dataset}"
        ),
        seconds=seconds,
    )


def tokenize_split(
    texts: Dataset, tokenizer: PreTrainedTokenizerFast, cache_dir: str | Path, split: str, num_proc: int | None = None
) -> TokenFile:
    """Tokenize one split into `cache_dir`, or reuse the file an earlier call built from the same texts and tokenizer.

    The ids are streamed to disk batch by batch, so memory stays flat however large the split. The token file and
    then its sidecar are renamed into place, and only a sidecar that matches marks a file complete, so an
    interrupted build is never mistaken for a finished one.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token, which marks the end of every story; set one")
    source_fingerprint = dataset_fingerprint(texts)
    tokenizer_hash = tokenizer_fingerprint(tokenizer)
    key = _hash(FORMAT_VERSION, source_fingerprint, tokenizer_hash)[:16]
    cache_dir = Path(cache_dir)
    bin_path, meta_path = cache_dir / f"{split}-{key}.bin", cache_dir / f"{split}-{key}.json"
    meta = _read_meta(meta_path, bin_path)
    if meta and meta["source_fingerprint"] == source_fingerprint and meta["tokenizer_fingerprint"] == tokenizer_hash:
        return _token_file(bin_path, meta)

    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path.unlink(missing_ok=True)  # a stale sidecar must never vouch for the file being rebuilt
    dtype = "uint16" if len(tokenizer) <= 1 << 16 else "uint32"
    scratch = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".{split}-{key}-"))
    try:
        encoded = (
            texts.select_columns(TEXT_COLUMN)
            .with_format("arrow")
            .map(
                _encode_batch,
                batched=True,
                num_proc=num_proc,
                fn_kwargs={
                    "backend": tokenizer.backend_tokenizer,
                    "eos_token_id": tokenizer.eos_token_id,
                    "dtype": dtype,
                },
                remove_columns=[TEXT_COLUMN],
                features=datasets.Features(
                    {"input_ids": datasets.List(datasets.Value(dtype)), "num_bytes": datasets.Value("int64")}
                ),
                cache_file_name=str(scratch / "encoded.arrow"),  # intermediate: deleted with the scratch folder
                load_from_cache_file=False,
                new_fingerprint=key,  # skips hashing the tokenizer, which is slow and already done
                desc=f"Tokenizing {split}",
            )
        )
        meta = _write_tokens(encoded, scratch / "tokens.bin", dtype)
        del encoded  # release its memory map before the scratch folder goes
        meta.update(
            split=split,
            source_fingerprint=source_fingerprint,
            tokenizer_fingerprint=tokenizer_hash,
            format_version=FORMAT_VERSION,
            eos_token_id=tokenizer.eos_token_id,
            vocab_size=len(tokenizer),
        )
        (scratch / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(scratch / "tokens.bin", bin_path)
        os.replace(scratch / "meta.json", meta_path)  # last: from here on the pair counts as complete
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return _token_file(bin_path, meta)


def _encode_batch(batch: pa.Table, backend: Tokenizer, eos_token_id: int, dtype: str) -> pa.Table:
    """Encode a batch of stories into one flat id array (each story followed by EOS) and per-story byte counts."""
    encodings = backend.encode_batch_fast(batch.column(TEXT_COLUMN).to_pylist(), add_special_tokens=False)
    offsets = np.zeros(len(encodings) + 1, dtype=np.int32)
    np.cumsum([len(encoding.ids) + 1 for encoding in encodings], out=offsets[1:])
    ids = np.full(offsets[-1], eos_token_id, dtype=dtype)  # pre-filled with EOS, so each story's last slot has it
    for encoding, start in zip(encodings, offsets, strict=False):
        ids[start : start + len(encoding.ids)] = encoding.ids
    num_bytes = pc.add(pc.binary_length(batch.column(TEXT_COLUMN)).cast(pa.int64()), 1)  # + 1 separator byte
    return pa.table({"input_ids": pa.ListArray.from_arrays(offsets, ids), "num_bytes": num_bytes})


def _write_tokens(encoded: Dataset, path: Path, dtype: str, batch_size: int = 10_000) -> dict:
    num_tokens = num_bytes = num_stories = 0
    with open(path, "wb") as file:
        for batch in encoded.iter(batch_size=batch_size):
            ids = pc.list_flatten(batch.column("input_ids")).to_numpy().astype(dtype, copy=False)
            ids.tofile(file)
            num_tokens += len(ids)
            num_bytes += pc.sum(batch.column("num_bytes")).as_py()
            num_stories += batch.num_rows
    return {"dtype": dtype, "num_tokens": num_tokens, "num_bytes": num_bytes, "num_stories": num_stories}


def dataset_fingerprint(texts: Dataset) -> str:
    """datasets' hash of where the rows came from and every transform since: the key of the caches built from them.

    datasets keeps it in the private `_fingerprint` and has no public accessor (hashing the dataset ourselves would
    read every row), so this is the one place that reads it.
    """
    return texts._fingerprint


def _read_meta(meta_path: Path, bin_path: Path) -> dict | None:
    """The sidecar of a complete token file, or None if either is missing, unreadable or inconsistent."""
    try:
        meta = json.loads(meta_path.read_text())
        complete = bin_path.stat().st_size == meta["num_tokens"] * np.dtype(meta["dtype"]).itemsize
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if complete and meta.get("format_version") == FORMAT_VERSION else None


def _token_file(path: Path, meta: dict) -> TokenFile:
    return TokenFile(path, meta["num_tokens"], meta["num_bytes"], meta["num_stories"], meta["dtype"])


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()
