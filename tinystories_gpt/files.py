"""Writing files so that no crash, kill or full disk ever leaves a half-written one where a complete one belongs.

Every file and folder the package writes goes through one of three helpers, which keep one promise: a reader
finds the old complete version or the new complete one, never a part of either.

- `replacing_file(path)` yields a partial path beside `path`; when the block succeeds, the partial file is
  renamed over `path` (rename(2) replaces a name in one step); when it fails, the partial file is removed.
  `write_file` is it for a string.
- `replacing_folder(path)` does the same for a folder: it yields an empty staging folder beside `path`, and an
  existing folder is swapped with the new one in one step where the system can (Linux's renameat2 with
  RENAME_EXCHANGE), so there is no moment without one; elsewhere the old folder is moved aside first, and a kill
  between the two renames is put right by the next run (`training.checkpoints.remove_leftovers`).
- `appending(path)` opens a file to append lines to; a failed write is cut off again, so no torn line is left.

A failure for lack of space becomes `DiskFull`, raised once the partial file is gone, naming what could not be
written where. Partial names start with a dot and end in `.tmp`, so a listing of complete files skips them.

A folder that will be read back (a training checkpoint, best/) also carries a manifest, written last: every file
with its size and its SHA-256, so that `folder_damage` tells a complete folder from one cut short or changed in
place, by its contents rather than its sizes.
"""

import ctypes
import errno
import hashlib
import json
import os
import secrets
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from safetensors import safe_open

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# PyTorch's C++ writer and numpy's tofile report a short write without an errno; a filesystem left with less than
# this free is then taken to be the cause (a full disk is left at 0 bytes, the write having filled it).
NEARLY_FULL_BYTES = 1 << 20
AT_FDCWD, RENAME_EXCHANGE = -100, 2  # from Linux's <fcntl.h> and <linux/fs.h>
MANIFEST = "manifest.json"
HASH_CHUNK = 1 << 24  # 16 MB: reading a file to hash it keeps memory flat


class DiskFull(OSError):
    """A write failed for lack of space; the partial file was removed. `advice` ends the message."""

    def __init__(self, what: str, path: str | Path):
        super().__init__(errno.ENOSPC, f"the disk is full: {what} could not be written to {path}", str(path))
        self.advice = "Free some space, or write to another disk"

    def __str__(self) -> str:
        return f"{self.strerror} (the partial file was removed). {self.advice}."


# 1. The three ways to write -----------------------------------------------------------------------------------


@contextmanager
def replacing_file(path: str | Path, what: str, *, partial: Path | None = None) -> Iterator[Path]:
    """Yield a partial path to write `path`'s new contents to; it takes `path`'s place once the block succeeds.

    `partial` names it where the caller keeps its work in a folder of its own (on the same filesystem); by
    default it is a hidden sibling of `path`.
    """
    path = Path(path)
    partial = partial or path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with removed_on_failure(partial, what):
        yield partial
    os.replace(partial, path)


def write_file(path: str | Path, text: str, what: str) -> None:
    """Replace `path` with `text`, atomically."""
    with replacing_file(path, what) as partial:
        partial.write_text(text)


@contextmanager
def replacing_folder(
    path: str | Path, what: str, *, staging: Path | None = None, commit: bool = True
) -> Iterator[Path]:
    """Yield an empty staging folder; once the block succeeds it takes `path`'s place, swapped in without a gap.

    `staging` names the folder to write into where several processes must agree on it (the caller creates it);
    by default it is a fresh sibling. Only a process with `commit` renames it into place. The folder is left
    readable by others under the umask, like one made by `mkdir` (safetensors writes its files owner-only).
    """
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    if staging is None:
        staging = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        staging.mkdir()
    with removed_on_failure(staging, what):
        yield staging
        if commit:
            give_usual_permissions(staging)
    if not commit:
        return
    if not path.exists():
        os.replace(staging, path)
    elif exchange_paths(staging, path):
        shutil.rmtree(staging)  # now the old folder
    else:  # no atomic swap on this filesystem: move aside, rename in (a run killed in between is repaired later)
        aside = path.with_name(f".{path.name}.{secrets.token_hex(4)}.old")
        aside.mkdir()
        os.replace(path, aside / path.name)
        os.replace(staging, path)
        shutil.rmtree(aside)


@contextmanager
def appending(path: str | Path, what: str) -> Iterator[TextIO]:
    """A file opened to append to; a failed write is cut off again, so no torn line is left behind."""
    path = Path(path)
    size = path.stat().st_size if path.exists() else 0
    try:
        with path.open("a") as file:
            yield file
    except BaseException as error:
        full = is_disk_full(error, path)
        os.truncate(path, size)
        if full:
            raise DiskFull(what, path) from error
        raise


def check_output(path: str | Path, overwrite: bool, *, folder: bool = True) -> Path:
    """Refuse, before any slow work, an output `path` that exists (unless `overwrite`) or is of the other kind."""
    path = Path(path).absolute()
    kind, example = ("folder", "hf/") if folder else ("file", "model.gguf")
    if path.exists() and path.is_dir() != folder:
        raise ValueError(f"output path {path} is a {'file' if folder else 'folder'}; pass a {kind} such as {example}")
    if path.exists() and not overwrite:
        raise ValueError(f"output {kind} {path} already exists; pass overwrite=True (--overwrite) to replace it")
    if not folder and not path.parent.is_dir():
        raise FileNotFoundError(f"folder {path.parent} does not exist; create it or pick another output path")
    return path


# 2. What they are made of -------------------------------------------------------------------------------------


@contextmanager
def removed_on_failure(partial: Path, what: str) -> Iterator[None]:
    """Remove `partial` (a file or a folder) if the block fails; a failure for lack of space becomes DiskFull."""
    try:
        yield
    except BaseException as error:
        full = is_disk_full(error, partial)  # before the clean-up frees the space again
        remove(partial)
        if full:
            raise DiskFull(what, partial) from error
        raise


def is_disk_full(error: BaseException, path: str | Path) -> bool:
    """Whether `error` came from a full disk: an ENOSPC/EDQUOT anywhere in its chain, the system's words for it
    (safetensors and pyarrow keep only those), or a short write on a filesystem with no space left."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return True
        if any(os.strerror(code) in str(seen) for code in DISK_FULL_ERRNOS):
            return True
        seen = seen.__cause__ or seen.__context__
    return isinstance(error, RuntimeError | OSError) and free_bytes(Path(path)) < NEARLY_FULL_BYTES


def free_bytes(path: Path) -> int:
    """Free space on the filesystem that holds `path` (or its nearest existing parent)."""
    existing = next((folder for folder in (path, *path.parents) if folder.exists()), Path("."))
    return shutil.disk_usage(existing).free


def remove(path: Path) -> None:
    """Delete a file or a folder, if it is there."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def give_usual_permissions(folder: Path) -> None:
    """The modes `mkdir` and `open` give under the umask, for a folder meant to be shared."""
    umask = os.umask(0)  # the only way to read it (and the value is put straight back)
    os.umask(umask)
    for path in (folder, *folder.rglob("*")):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def exchange_paths(first: Path, second: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False where the system or filesystem
    cannot (Python has no binding for it, hence ctypes)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:  # not Linux, or a C library older than glibc 2.28
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):  # a kernel or filesystem without the flag
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


# 3. Folders that are read back --------------------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's contents, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record every file of `folder` with its size and SHA-256 (written last, so its presence means complete)."""
    files = {
        str(path.relative_to(folder)): {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
        for path in sorted(folder.rglob("*"))
        if path.is_file() and path.name != MANIFEST
    }
    (folder / MANIFEST).write_text(json.dumps({"files": files}, indent=1) + "\n")


def folder_damage(folder: Path, manifest_required: bool = True) -> str | None:
    """What makes a folder unusable, in words, or None if it is complete and readable.

    Every file its manifest lists must be there with the size and the SHA-256 it had when written (a folder
    without a manifest is incomplete, unless `manifest_required` is False: one assembled by hand, which is then
    checked by its formats only): every safetensors header must parse and cover its file, and every PyTorch file
    (.bin, .pkl) must end with its zip directory, which a cut-short file lacks.
    """
    manifest = folder / MANIFEST
    expected: dict[str, tuple[int, str]] = {}  # name: (bytes, sha256)
    if manifest.is_file():
        try:
            listed = json.loads(manifest.read_text())["files"]
            expected = {name: (entry["bytes"], entry["sha256"]) for name, entry in listed.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            return f"its {MANIFEST} is unreadable"
    elif manifest_required:
        return f"it has no {MANIFEST}, which is written last: it was never completed"
    for name, (size, sha256) in expected.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} is {path.stat().st_size:,} bytes, {size:,} when it was saved"
        if file_sha256(path) != sha256:
            return f"{name} has changed since it was saved (its SHA-256 differs from the one in {MANIFEST})"
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder)
        if path.suffix == ".safetensors":
            try:
                with safe_open(path, framework="pt"):
                    pass
            except Exception as error:  # safetensors raises its own SafetensorError for every kind of damage
                return f"{name} does not read as safetensors ({error})"
        elif path.suffix in (".bin", ".pkl") and not zipfile.is_zipfile(path):
            return f"{name} is not a complete PyTorch file (its zip directory is missing)"
    return None
