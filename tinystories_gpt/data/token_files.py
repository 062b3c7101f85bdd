"""Text -> tokens: a split tokenized once into a cached flat token file.

`tokenize_split` encodes a split (batched, fast tokenizer), appends `<|endoftext|>` after every story, and streams
the ids into one flat uint16/uint32 file with a JSON sidecar. A later run with the same source and tokenizer
reuses the file; any change to either builds a new one. `prepare_data` does it for every split a run needs,
with its tokenizer. The next stage, windows of those tokens for the model, is batches.py.
"""

import hashlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset, DatasetDict
from filelock import FileLock, Timeout
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from ..files import HASH_CHUNK, remove, removed_on_failure, replacing_file
from ..signals import workers_die_with_this_process
from .sources import DEFAULT_DATASET, FORMAT_VERSION, TEXT_COLUMN, is_local_source, load_splits, stable_hash
from .tokenization import load_tokenizer, tokenizer_fingerprint

SCRATCH_SUFFIX = ".tmp"  # `.{split}-{key}.tmp`: where a token file is built, beside its lock `.{split}-{key}.lock`


@dataclass(frozen=True)
class TokenFile:
    """One split tokenized into a flat file: every story's ids followed by `<|endoftext|>`, stories in order."""

    path: Path
    num_tokens: int  # end-of-story tokens included: the number of tokens a full evaluation pass predicts
    num_bytes: int  # sum over stories of len(story.encode("utf-8")) + 1: the bits-per-byte denominator
    num_stories: int
    dtype: str  # "uint16" when the vocabulary fits, else "uint32"
    sha256: str  # of the file's bytes, written in its sidecar and checked whenever the file is reused

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
    texts: DatasetDict  # the stories of each split (memory-mapped by datasets), for the story figures
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
    check_tokenizer: Callable[[PreTrainedTokenizerFast], None] | None = None,
) -> PreparedData:
    """Load the source, resolve the tokenizer spec (training `bpe:N` on the train split), tokenize both splits.

    Everything is cached under `cache_dir` (default: `default_cache_dir()`), so a second call is fast.
    `check_tokenizer` refuses a tokenizer before the splits are tokenized (the work that takes time).
    """
    started = time.perf_counter()
    splits, held_out = load_splits(dataset, validation_split_percentage, dev_stories)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    resolved = load_tokenizer(
        tokenizer, training_texts=splits["train"], cache_dir=cache_dir, cache_key=dataset_fingerprint(splits["train"])
    )
    if check_tokenizer is not None:
        check_tokenizer(resolved)
    tokenized = time.perf_counter()
    token_files = {name: tokenize_split(split, resolved, cache_dir, name, num_proc) for name, split in splits.items()}
    seconds = {"tokenizer": tokenized - started, "tokenization": time.perf_counter() - tokenized}
    return PreparedData(
        tokenizer=resolved,
        train=token_files["train"],
        validation=token_files["validation"],
        dev=token_files.get("dev"),
        texts=splits,
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
    interrupted build is never mistaken for a finished one. A build holds a lock (a second process waits, then
    reuses the file) and works in a scratch folder that any failure removes (a full disk raises DiskFull); the
    scratch folders of builds that were killed are removed by the next build in the same `cache_dir`.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos_token, which marks the end of every story; set one")
    source_fingerprint = dataset_fingerprint(texts)
    tokenizer_hash = tokenizer_fingerprint(tokenizer)
    key = stable_hash(FORMAT_VERSION, source_fingerprint, tokenizer_hash)[:16]
    cache_dir = Path(cache_dir)
    bin_path, meta_path = cache_dir / f"{split}-{key}.bin", cache_dir / f"{split}-{key}.json"
    found = _matching_meta(meta_path, bin_path, source_fingerprint, tokenizer_hash)
    if found and _tokens_intact(bin_path, found):
        return _token_file(bin_path, found)

    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_scratch(cache_dir)
    with _build_lock(cache_dir, f"{split}-{key}"):
        meta = _matching_meta(meta_path, bin_path, source_fingerprint, tokenizer_hash)  # built while we waited?
        if meta and meta != found and _tokens_intact(bin_path, meta):
            return _token_file(bin_path, meta)
        meta_path.unlink(missing_ok=True)  # a stale sidecar must never vouch for the file being rebuilt
        scratch = cache_dir / f".{split}-{key}{SCRATCH_SUFFIX}"
        remove(scratch)  # left by a run that died building it: the lock says none is building it now
        scratch.mkdir()
        what = f"the {split} token file"
        with removed_on_failure(scratch, what):  # every partial file lives in the scratch folder
            with replacing_file(bin_path, what, partial=scratch / "tokens.bin"):
                meta = _build_token_file(texts, tokenizer, scratch, key, split, num_proc)
            meta.update(
                split=split,
                source_fingerprint=source_fingerprint,
                tokenizer_fingerprint=tokenizer_hash,
                format_version=FORMAT_VERSION,
                eos_token_id=tokenizer.eos_token_id,
                vocab_size=len(tokenizer),
            )
            with replacing_file(meta_path, what, partial=scratch / "meta.json") as partial:
                partial.write_text(json.dumps(meta, indent=2) + "\n")  # last: from here on the pair is complete
        remove(scratch)  # what is left: datasets' intermediate files
    return _token_file(bin_path, meta)


def _build_token_file(
    texts: Dataset, tokenizer: PreTrainedTokenizerFast, scratch: Path, key: str, split: str, num_proc: int | None
) -> dict:
    """Encode `texts` (in `num_proc` worker processes) and stream the ids into `scratch/tokens.bin`."""
    dtype = "uint16" if len(tokenizer) <= 1 << 16 else "uint32"
    with workers_die_with_this_process():  # a kill -9 of the run ends its workers too
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
    return meta


@contextmanager
def _build_lock(cache_dir: Path, name: str) -> Iterator[None]:
    """Hold `cache_dir/.{name}.lock` while building `name`: a second run on the same cache waits for the first one
    and reuses its file, where both would otherwise build it. flock(2) locks end with their process, so a
    killed build never blocks the next one."""
    lock = FileLock(cache_dir / f".{name}.lock")
    try:
        lock.acquire(blocking=False)
    except Timeout:
        print(f"waiting for another process to finish building {cache_dir / name}.bin ...", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def remove_dead_scratch(cache_dir: Path) -> list[Path]:
    """Delete the scratch folders of builds that died (killed, or a power cut) in `cache_dir`; returns them.

    A build holds its lock while its scratch folder exists, so a scratch folder whose lock is free is dead.
    """
    removed = []
    for scratch in cache_dir.glob(f".*{SCRATCH_SUFFIX}"):
        lock = FileLock(cache_dir / f"{scratch.name.removesuffix(SCRATCH_SUFFIX)}.lock")
        try:
            lock.acquire(blocking=False)
        except Timeout:
            continue  # being built right now
        try:
            remove(scratch)
            removed.append(scratch)
        finally:
            lock.release()
    return removed


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
    """Stream the ids into `path`, hashing them on the way: the sidecar's SHA-256 proves the file by its contents."""
    num_tokens = num_bytes = num_stories = 0
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        for batch in encoded.iter(batch_size=batch_size):
            ids = pc.list_flatten(batch.column("input_ids")).to_numpy().astype(dtype, copy=False)
            ids.tofile(file)
            digest.update(ids)
            num_tokens += len(ids)
            num_bytes += pc.sum(batch.column("num_bytes")).as_py()
            num_stories += batch.num_rows
    return {
        "dtype": dtype,
        "num_tokens": num_tokens,
        "num_bytes": num_bytes,
        "num_stories": num_stories,
        "sha256": digest.hexdigest(),
    }


def _tokens_intact(path: Path, meta: dict) -> bool:
    """Whether the token file holds what was written (its SHA-256) and only ids of the vocabulary it was built
    with; one pass over the file, in chunks. A file that fails is rebuilt, with a line saying why."""
    digest, largest = hashlib.sha256(), 0
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
            largest = max(largest, int(np.frombuffer(chunk, dtype=meta["dtype"]).max()))
    if digest.hexdigest() != meta["sha256"]:
        damage = "its contents changed since it was written (the SHA-256 in its sidecar differs)"
    elif largest >= meta["vocab_size"]:
        damage = f"it holds token id {largest}, past the {meta['vocab_size']}-token vocabulary it was built with"
    else:
        return True
    print(f"warning: the cached token file {path} is damaged: {damage}. Rebuilding it", file=sys.stderr)
    return False


def dataset_fingerprint(texts: Dataset) -> str:
    """datasets' hash of where the rows came from and every transform since: the key of the caches built from them.

    datasets keeps it in the private `_fingerprint` and has no public accessor (hashing the dataset ourselves would
    read every row), so this is the one place that reads it.
    """
    return texts._fingerprint


def _matching_meta(meta_path: Path, bin_path: Path, source_fingerprint: str, tokenizer_hash: str) -> dict | None:
    """The sidecar of a complete token file built from these texts with this tokenizer, or None."""
    meta = _read_meta(meta_path, bin_path)
    if meta and meta["source_fingerprint"] == source_fingerprint and meta["tokenizer_fingerprint"] == tokenizer_hash:
        return meta
    return None


def _read_meta(meta_path: Path, bin_path: Path) -> dict | None:
    """The sidecar of a complete token file, or None if either is missing, unreadable or inconsistent."""
    try:
        meta = json.loads(meta_path.read_text())
        complete = bin_path.stat().st_size == meta["num_tokens"] * np.dtype(meta["dtype"]).itemsize
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if complete and meta.get("format_version") == FORMAT_VERSION else None


def _token_file(path: Path, meta: dict) -> TokenFile:
    return TokenFile(path, meta["num_tokens"], meta["num_bytes"], meta["num_stories"], meta["dtype"], meta["sha256"])
