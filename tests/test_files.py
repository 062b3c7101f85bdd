"""files.py's promise, tested once for every writer that uses it: a reader finds the old complete file or folder or
the new complete one, never a part of either, and a failure (a full disk among them) leaves nothing partial."""

import errno
import hashlib
import json
import os
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from tinystories_gpt import files
from tinystories_gpt.files import (
    DiskFull,
    appending,
    check_output,
    folder_damage,
    is_disk_full,
    removed_on_failure,
    replacing_file,
    replacing_folder,
    write_file,
    write_manifest,
)

NO_SPACE = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_replaced_file_is_the_old_one_until_the_new_one_is_complete(tmp_path):
    path = tmp_path / "metrics.json"
    write_file(path, "old", "the metrics")
    with replacing_file(path, "the metrics") as partial:
        partial.write_text("new, half")
        assert path.read_text() == "old" and partial.name.startswith(".metrics.json.") and partial.suffix == ".tmp"
        partial.write_text("new")
    assert path.read_text() == "new" and sorted(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize("failure, raised", [(KeyError("a bug"), KeyError), (NO_SPACE, DiskFull)])
def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path, failure, raised):
    path = tmp_path / "loss_curve.png"
    write_file(path, "old", "the loss curve")
    with pytest.raises(raised), replacing_file(path, "the loss curve") as partial:
        partial.write_text("half")
        raise failure
    assert path.read_text() == "old" and sorted(tmp_path.iterdir()) == [path]


def test_a_full_disk_names_what_and_where(tmp_path):
    with pytest.raises(DiskFull) as raised, replacing_file(tmp_path / "x.bin", "the train token file"):
        raise NO_SPACE
    assert str(raised.value).startswith("the disk is full: the train token file could not be written to ")
    assert str(raised.value).endswith("(the partial file was removed). Free some space, or write to another disk.")


def test_a_folder_is_replaced_without_a_gap_with_the_usual_permissions(tmp_path, monkeypatch):
    folder = tmp_path / "best"

    def write(staging: Path, text: str) -> None:
        fd = os.open(staging / "model.safetensors", os.O_WRONLY | os.O_CREAT, 0o600)  # as safetensors writes
        os.write(fd, text.encode())
        os.close(fd)

    with replacing_folder(folder, "best/") as staging:
        write(staging, "0")
    gaps, done = [], threading.Event()

    def watch():
        while not done.is_set():
            if not (folder / "model.safetensors").is_file():
                gaps.append(None)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for version in range(1, 6):
            with replacing_folder(folder, "best/") as staging:
                write(staging, str(version))
    finally:
        done.set()
        watcher.join()
    assert gaps == [] and (folder / "model.safetensors").read_text() == "5"
    umask = os.umask(0)
    os.umask(umask)
    assert not folder.is_symlink() and (folder.stat().st_mode & 0o777) == 0o777 & ~umask
    assert ((folder / "model.safetensors").stat().st_mode & 0o777) == 0o666 & ~umask
    assert [path.name for path in tmp_path.iterdir()] == ["best"]

    monkeypatch.setattr(files, "exchange_paths", lambda first, second: False)  # a filesystem that cannot swap
    with replacing_folder(folder, "best/") as staging:
        write(staging, "6")
    assert [path.name for path in tmp_path.iterdir()] == ["best"] and (folder / "model.safetensors").read_text() == "6"


def test_a_failed_folder_leaves_the_old_one(tmp_path):
    folder = tmp_path / "best"
    with replacing_folder(folder, "best/") as staging:
        (staging / "config.json").write_text("old")
    with pytest.raises(DiskFull), replacing_folder(folder, "best/") as staging:
        (staging / "config.json").write_text("new")
        raise NO_SPACE
    assert (folder / "config.json").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["best"]


def test_a_staging_folder_several_processes_share_is_renamed_by_the_committing_one_only(tmp_path):
    staging, final = tmp_path / ".step_4.tmp", tmp_path / "step_4"
    staging.mkdir()
    with replacing_folder(final, "checkpoint step_4", staging=staging, commit=False):
        (staging / "shard_1").write_text("from rank 1")
    assert staging.is_dir() and not final.exists()
    with replacing_folder(final, "checkpoint step_4", staging=staging):
        (staging / "shard_0").write_text("from rank 0")
    assert sorted(path.name for path in final.iterdir()) == ["shard_0", "shard_1"] and not staging.exists()


def test_an_append_that_fails_leaves_the_file_as_it_was(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 4}\n')
    with pytest.raises(DiskFull, match="a line could not be written"), appending(metrics, "a line") as file:
        file.write('{"step": 8, "train_loss"')
        raise NO_SPACE
    assert metrics.read_text() == '{"step": 4}\n'


def test_removed_on_failure_removes_and_reraises(tmp_path):
    partial = tmp_path / "partial"
    with pytest.raises(KeyError), removed_on_failure(partial, "it"):
        partial.mkdir()
        raise KeyError("not about space")
    assert not partial.exists()


def test_full_disk_errors_are_recognised_however_libraries_report_them(tmp_path, monkeypatch):
    assert is_disk_full(NO_SPACE, tmp_path)
    assert is_disk_full(SafetensorError("I/O error: No space left on device (os error 28)"), tmp_path)
    short_write = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert not is_disk_full(short_write, tmp_path)  # space left: some other fault
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: SimpleNamespace(free=0))
    assert is_disk_full(short_write, tmp_path)  # PyTorch's writer keeps no errno: a full filesystem tells
    assert not is_disk_full(KeyboardInterrupt(), tmp_path)


def test_a_manifest_tells_a_complete_folder_from_one_cut_short(tmp_path):
    folder = tmp_path / "step_4"
    folder.mkdir()
    save_file({"w": torch.zeros(4, 4)}, folder / "model.safetensors")
    (folder / "config.json").write_text("{}")
    assert folder_damage(folder) == "it has no manifest.json, which is written last: it was never completed"
    assert folder_damage(folder, manifest_required=False) is None
    write_manifest(folder)
    entry = json.loads((folder / "manifest.json").read_text())["files"]["config.json"]
    assert entry == {"bytes": 2, "sha256": hashlib.sha256(b"{}").hexdigest()}
    assert folder_damage(folder) is None
    weights = bytearray((folder / "model.safetensors").read_bytes())
    weights[-8:] = b"\xff" * 8  # the last weights overwritten in place: the same size, a header that still parses
    (folder / "model.safetensors").write_bytes(bytes(weights))
    with safe_open(folder / "model.safetensors", framework="pt"):  # by its format alone it looks fine
        pass
    assert folder_damage(folder) == (
        "model.safetensors has changed since it was saved (its SHA-256 differs from the one in manifest.json)"
    )
    write_manifest(folder)
    (folder / "config.json").write_text("{} ")
    assert folder_damage(folder) == "config.json is 3 bytes, 2 when it was saved"
    (folder / "config.json").unlink()
    assert folder_damage(folder) == "config.json is missing"


def test_an_output_that_exists_is_refused_unless_replacing_it(tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "model.gguf").write_text("")
    with pytest.raises(ValueError, match="output folder .* already exists; pass overwrite=True"):
        check_output(tmp_path / "hf", overwrite=False)
    with pytest.raises(ValueError, match="is a file; pass a folder such as hf/"):
        check_output(tmp_path / "model.gguf", overwrite=True)
    with pytest.raises(ValueError, match="is a folder; pass a file such as model.gguf"):
        check_output(tmp_path / "hf", overwrite=True, folder=False)
    with pytest.raises(FileNotFoundError, match="does not exist; create it"):
        check_output(tmp_path / "nowhere" / "model.gguf", overwrite=False, folder=False)
    assert check_output(tmp_path / "hf", overwrite=True) == (tmp_path / "hf").absolute()
