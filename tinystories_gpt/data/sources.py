"""Text: stories from the Hub or from local files, as `datasets` splits with a `text` column.

`load_text_splits` is the one entry: a Hub dataset name or a local path (a folder of `train.<ext>` and
`validation.<ext>`, one file, or a `save_to_disk` folder), with a validation split held out of train where there is
none and, on request, a `dev` split for tuning. The next stage, tokens, is token_files.py.
"""

import codecs
import errno
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import datasets
import pyarrow.compute as pc
import pyarrow.parquet as pq
from datasets import Dataset, DatasetDict
from datasets.exceptions import DatasetGenerationError, DatasetNotFoundError

from .tokenization import EOS_TOKEN

DEFAULT_DATASET = "roneneldan/TinyStories"
SPLITS = ("train", "validation")
TEXT_COLUMN = "text"
# How each local file extension is read: "stories" is our reader for `<|endoftext|>`-separated text files,
# the others are datasets' packaged builders.
FILE_READERS = {".txt": "stories", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
CANNOT_WRITE = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
MAX_STORY_BYTES = 1_000_000  # a story longer than this is most likely a file that lost its separators
FORMAT_VERSION = 2  # bump when the story reader or the token file layout changes, to rebuild old caches


def load_text_splits(
    dataset: str | Path = DEFAULT_DATASET,
    validation_split_percentage: float = 5.0,
    dev_stories: int = 0,
    splits: tuple[str, ...] | None = None,
) -> DatasetDict:
    """Load stories as a DatasetDict with `train` and `validation` splits (or the `splits` named), each with a
    `text` column.

    `dataset` is a Hub dataset name (loaded with `datasets.load_dataset`) or a local path: a folder holding
    `train.<ext>` and optionally `validation.<ext>`, a single file, or a folder written by `save_to_disk`.
    Extensions: `.txt` (stories separated by lines holding `<|endoftext|>`, like the official TinyStories text
    files), `.jsonl`/`.json` (a `text` field), `.parquet`. Without a validation split, the first
    `validation_split_percentage` percent of the stories are held out as one (as in Transformers' run_clm.py),
    which is deterministic and keeps the files' order (asked for train alone, a hold-out of no story is allowed).
    With `dev_stories`, the last that many train stories become a third split, `dev`, for tuning without looking
    at the validation split.
    """
    return load_splits(dataset, validation_split_percentage, dev_stories, splits)[0]


def is_local_source(dataset: str | Path) -> bool:
    """Whether `dataset` names local files (else it is a Hub dataset name)."""
    return Path(dataset).expanduser().exists()


def load_splits(
    dataset: str | Path, validation_split_percentage: float, dev_stories: int = 0, wanted: tuple[str, ...] | None = None
) -> tuple[DatasetDict, bool]:
    """(the `wanted` splits, by default all there are, and whether the validation split was held out of train)."""
    splits = _load_local(Path(dataset).expanduser()) if is_local_source(dataset) else _load_hub(str(dataset))
    if "train" not in splits:
        raise ValueError(f"{dataset} has no train split (splits found: {', '.join(splits)}); name one 'train'")
    for name, split in splits.items():
        _check_text_split(split, name, dataset)
    held_out = "validation" not in splits
    if held_out:
        need_validation = wanted is None or "validation" in wanted
        splits = _hold_out(splits["train"], validation_split_percentage, dataset, need_validation)
    if dev_stories:
        splits |= _dev_split(splits["train"], dev_stories, dataset)
    names = wanted or ((*SPLITS, "dev") if dev_stories else SPLITS)
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
            fingerprint=stable_hash(
                "stories", FORMAT_VERSION, str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns
            ),
        )
    try:
        return datasets.load_dataset(reader, data_files={split: str(path)}, split=split)
    except DatasetGenerationError as error:  # its message names no row: find it, or name the root cause
        where = _first_invalid_json(path) if reader == "json" else None
        if where:
            raise ValueError(f"{path} is not valid JSON: {where}; fix or delete that line") from None
        cause = error.__cause__ or error
        if isinstance(cause, OSError) and cause.errno in CANNOT_WRITE:  # datasets' cache, not the file, is the cause
            raise cause from None
        raise ValueError(f"{path} could not be read as {reader} ({type(cause).__name__}: {cause})") from None


def _first_invalid_json(path: Path) -> str | None:
    """Where a .json or .jsonl file stops being JSON objects, in words, or None if it parses."""
    with open(path, encoding="utf-8") as file:
        if path.suffix == ".json":  # one document, or JSON Lines ("Extra data" after the first)
            try:
                json.load(file)
                return None
            except json.JSONDecodeError as error:
                if error.msg != "Extra data":
                    return f"line {error.lineno}, column {error.colno}: {error.msg}"
            file.seek(0)
        for number, line in enumerate(file, start=1):
            try:
                row = json.loads(line) if line.strip() else {}
            except json.JSONDecodeError as error:
                return f"line {number}, column {error.colno}: {error.msg}"
            if not isinstance(row, dict):
                return f"line {number} holds a JSON {type(row).__name__}, not an object with a {TEXT_COLUMN!r} field"
    return None


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


def _hold_out(train: Dataset, percentage: float, dataset: str | Path, need_validation: bool) -> dict[str, Dataset]:
    num_validation = round(len(train) * percentage / 100)
    if num_validation < int(need_validation) or num_validation >= len(train):  # train needs a story; so may validation
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
    lengths = pc.binary_length(split.data.column(TEXT_COLUMN))  # from the Arrow column: no story is read whole
    longest = pc.max(lengths).as_py()
    if longest > MAX_STORY_BYTES:  # tokenizers would need ~300 bytes of memory per byte of it
        raise ValueError(
            f"story {pc.index(lengths, longest).as_py()} of the {name} split of {dataset} is {longest:,} bytes, "
            f"longer than the {MAX_STORY_BYTES:,} a story may be (TinyStories' are a few thousand): split it into "
            "stories (in a .txt file, a line holding <|endoftext|> ends each one)"
        )


def stable_hash(*parts: object) -> str:
    """A hash of JSON-able values that is the same in every process and every run (unlike `hash`)."""
    return hashlib.sha256(json.dumps(parts).encode("utf-8")).hexdigest()
