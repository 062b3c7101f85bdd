"""Nothing lost, nothing mixed, nothing left running: one run per folder, clean stops in every phase, damaged files
detected, and every failure one clear line (issue 16). Tiny shapes throughout (test_training.tiny_args)."""

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.figure
import psutil
import pytest
import torch
from accelerate import Accelerator
from filelock import FileLock
from runs import REPO, assert_same_tensors, losses, run_cli, tiny_args
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.cli import convert as convert_cli
from tinystories_gpt.cli import evaluate as evaluate_cli
from tinystories_gpt.cli import generate as generate_cli
from tinystories_gpt.cli import train as train_cli
from tinystories_gpt.data import token_files
from tinystories_gpt.data.token_files import remove_dead_scratch
from tinystories_gpt.data.tokenization import GPT2_TOKENIZER_DIR
from tinystories_gpt.export import hub
from tinystories_gpt.export.nanogpt import convert_training_checkpoint
from tinystories_gpt.files import DiskFull, folder_damage
from tinystories_gpt.signals import Stopped
from tinystories_gpt.training import evaluations, lora
from tinystories_gpt.training.checkpoints import LOCK_FILE, remove_leftovers, take_run_lock
from tinystories_gpt.training.loop import parse_args, train
from tinystories_gpt.training.records import read_metrics

DATA = REPO / "data" / "tinystories"


def one_line(stderr: str) -> str:
    """The error a command line printed: its last line (progress bars aside), with no traceback anywhere."""
    lines = [line for line in stderr.strip().splitlines() if "it/s]" not in line and "examples/s]" not in line]
    assert len(lines) >= 1 and "Traceback" not in stderr, stderr
    return lines[-1]


def train_cli_in_process(capsys, *argv: str) -> tuple[int, str]:
    status = train_cli.main(list(argv))
    return status, capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# One run per output folder


@pytest.mark.slow
def test_a_second_run_on_a_busy_folder_is_refused_and_the_first_one_is_untouched(tmp_path):
    (tmp_path / "a").mkdir()
    recipe = ["--max_iters", "2000", "--eval_interval", "10", "--checkpoint_interval", "10"]
    first = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *tiny_args(tmp_path / "a", *recipe)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    run = tmp_path / "a" / "run"
    lock = run / LOCK_FILE
    deadline = time.monotonic() + 120
    while f'"pid": {first.pid}' not in (lock.read_text() if lock.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    # the most dangerous second run: another seed, told to replace the folder
    second = run_cli(*tiny_args(tmp_path / "a", *recipe, "--seed", "99", "--overwrite_output_dir"))
    assert first.poll() is None, "the first run ended before the second one started: nothing was tested"
    assert second.returncode == 2
    message = one_line(second.stderr)
    assert message.startswith(f"train.py: error: output_dir {run} is in use by another run (PID {first.pid} on host")
    assert "choose another --output_dir" in message and "model:" not in second.stdout  # refused before any work

    while not list((run / "checkpoints").glob("step_*")) and first.poll() is None:
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    steps = [record["step"] for record in read_metrics(run / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps, steps  # one run's records, not two interleaved
    assert (run / "checkpoints").is_dir() and (run / "best").is_dir()
    assert lock.read_text() == ""  # released cleanly


def test_the_lock_is_exclusive_and_names_its_holder(tmp_path):
    lock = take_run_lock(tmp_path)
    try:
        with pytest.raises(ValueError, match=rf"is in use by another run \(PID {os.getpid()} on host .* since "):
            take_run_lock(tmp_path)
    finally:
        lock.release()
    take_run_lock(tmp_path).release()  # free again


@pytest.mark.slow
def test_a_stale_lock_of_a_killed_run_is_taken_over_with_a_message(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from tinystories_gpt.training.checkpoints import take_run_lock; take_run_lock(Path(sys.argv[1])); "
            "print('locked', flush=True); time.sleep(600)",
            str(run),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    holder.kill()  # kill -9: no clean-up ran, the record stays
    holder.wait()
    assert f'"pid": {holder.pid}' in (run / LOCK_FILE).read_text()

    train(*parse_args(tiny_args(tmp_path, "--max_iters", "4")))
    out = capsys.readouterr().out
    assert f"warning: took over {run / LOCK_FILE} from a run that ended without releasing it (PID {holder.pid}" in out
    assert (run / "final_metrics.json").is_file()


@pytest.mark.slow
def test_two_processes_refuse_a_busy_folder_together(tmp_path):
    """With torchrun, rank 0 takes the lock and the other rank learns of the refusal: neither trains nor hangs."""
    run = tmp_path / "run"
    lock = take_run_lock(run)
    try:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr"]
        command += ["127.0.0.1", "--master_port", "29531", str(REPO / "train.py"), *tiny_args(tmp_path)]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
        )
    finally:
        lock.release()
    assert result.returncode != 0
    refusals = [line for line in result.stderr.splitlines() if line.startswith("train.py: error:")]
    # both ranks refuse; torchrun ends the other rank as soon as one exits, so its line may be cut off under load
    assert 1 <= len(refusals) <= 2 and all(f"in use by another run (PID {os.getpid()}" in line for line in refusals)
    assert "model:" not in result.stdout


# ---------------------------------------------------------------------------------------------------------------
# Clean stops in every phase


def tokenizing_with_workers(tmp_path: Path, **popen) -> tuple[subprocess.Popen, Path]:
    """train.py started on the bundled stories x 8 (long enough to be caught tokenizing) with --num_proc 2, and its
    token cache folder."""
    stories = tmp_path / "stories"
    stories.mkdir()
    (stories / "train.txt").write_text((DATA / "train.txt").read_text() * 8)
    (stories / "validation.txt").write_text((DATA / "validation.txt").read_text())
    cache = tmp_path / "cache"
    argv = tiny_args(tmp_path, "--dataset", str(stories), "--tokenizer", "gpt2", "--cache_dir", str(cache))
    command = [sys.executable, str(REPO / "train.py"), *argv, "--num_proc", "2"]
    datasets_cache = {"HF_DATASETS_CACHE": str(tmp_path / "datasets")}  # not 23 MB more in the user's cache
    return subprocess.Popen(command, env={**os.environ, **datasets_cache}, **popen), cache


@pytest.mark.slow
def test_sigterm_while_tokenizing_ends_the_workers_and_leaves_no_scratch(tmp_path):
    """datasets' map with num_proc=2 runs two pool workers and a Manager server: none may outlive the run."""
    process, cache = tokenizing_with_workers(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    workers = []
    while len(workers) < 3 and time.monotonic() < deadline and process.poll() is None:  # 2 workers, a Manager
        workers = psutil.Process(process.pid).children(recursive=True) if list(cache.glob(".train-*.tmp")) else []
        time.sleep(0.05)
    assert len(workers) >= 3, "never caught tokenizing with two workers and a Manager"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 128 + signal.SIGTERM
    assert one_line(stderr) == (
        "train.py: stopped by SIGTERM before the first step: nothing was left half-written; run the same command again"
    )
    time.sleep(1)  # the pool's terminate() signals its workers; give the kernel a moment to reap them
    alive = [worker.pid for worker in workers if worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], "orphaned worker processes"
    assert not list(cache.glob(".*.tmp")) and not list(cache.glob("train-*"))
    assert [path.name for path in (tmp_path / "run").iterdir()] == [LOCK_FILE]


@pytest.mark.slow
@pytest.mark.parametrize("moment", [0.0, 1.5], ids=["as the workers start", "while they tokenize"])
def test_kill_9_while_tokenizing_leaves_no_process_of_the_run(tmp_path, moment):
    """The kernel ends datasets' workers and Manager with the run (PR_SET_PDEATHSIG): no orphan outlives a kill -9."""
    process, cache = tokenizing_with_workers(tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    workers = []
    while len(workers) < 3 and time.monotonic() < deadline and process.poll() is None:  # 2 workers, a Manager
        workers = psutil.Process(process.pid).children(recursive=True) if list(cache.glob(".train-*.tmp")) else []
        time.sleep(0.05)
    assert len(workers) >= 3, "never caught tokenizing with two workers and a Manager"
    time.sleep(moment)
    workers = psutil.Process(process.pid).children(recursive=True)  # every process of the run at this moment
    process.kill()
    process.wait(timeout=60)
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], f"orphaned processes: {[worker.pid for worker in alive]}"


def test_scratch_of_a_dead_build_goes_and_that_of_a_live_one_stays(tmp_path):
    dead, live = tmp_path / ".train-0123456789abcdef.tmp", tmp_path / ".validation-fedcba9876543210.tmp"
    for scratch in (dead, live):
        scratch.mkdir()
        (scratch / "tokens.bin").write_bytes(b"\0" * 64)
    with FileLock(tmp_path / ".validation-fedcba9876543210.lock"):  # a build in progress holds its lock
        assert remove_dead_scratch(tmp_path) == [dead]
    assert not dead.exists() and live.exists()


def stop_at_call(monkeypatch, name: str, call: int) -> list:
    """Make `evaluations.<name>` send this process SIGTERM when it is called for the `call`-th time."""
    calls = []
    real = getattr(evaluations, name)

    def signalling(*args, **kwargs):
        calls.append(None)
        if len(calls) == call:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluations, name, signalling)
    return calls


@pytest.mark.slow
def test_sigterm_during_an_evaluation_stops_within_a_few_batches_and_resumes_exactly(tmp_path, monkeypatch):
    """The evaluation cut short is owed: --resume does it first, so records and weights equal an unbroken run's."""
    recipe = ["--max_iters", "8", "--eval_interval", "4", "--checkpoint_interval", "8", "--eval_iters", "40"]
    train(*parse_args(tiny_args(tmp_path / "whole", *recipe)))

    calls = stop_at_call(monkeypatch, "estimate_loss", 2)  # in the first evaluation (step 4), 10 chunks per split
    result = train(*parse_args(tiny_args(tmp_path / "broken", *recipe)))
    assert result["interrupted"] and result["step"] == 4
    assert len(calls) == 2  # the next chunk saw the request: honoured within 4 batches, not 80
    broken = tmp_path / "broken" / "run"
    assert read_metrics(broken / "metrics.jsonl") == [] and (broken / "checkpoints" / "step_4").is_dir()

    monkeypatch.undo()
    train(*parse_args(tiny_args(tmp_path / "broken", *recipe, "--resume")))
    assert losses(tmp_path / "whole" / "run") == losses(broken)
    expected = load_file(tmp_path / "whole" / "run" / "checkpoints" / "step_8" / "model.safetensors")
    assert_same_tensors(expected, load_file(broken / "checkpoints" / "step_8" / "model.safetensors"))


def test_sigterm_in_the_final_pass_says_what_is_kept_and_resume_finishes(tmp_path, monkeypatch):
    stop_at_call(monkeypatch, "evaluate_split", 1)
    with pytest.raises(Stopped) as stopped:
        train(*parse_args(tiny_args(tmp_path)))
    checkpoint = tmp_path / "run" / "checkpoints" / "step_8"
    assert str(stopped.value) == (
        f"stopped by SIGTERM after the last step: {checkpoint} and best/ are complete; --resume redoes the rest"
    )
    assert stopped.value.exit_status == 143 and folder_damage(checkpoint) is None
    assert not (tmp_path / "run" / "final_metrics.json").exists()

    monkeypatch.undo()
    train(*parse_args(tiny_args(tmp_path, "--resume")))
    assert json.loads((tmp_path / "run" / "final_metrics.json").read_text())["bits_per_byte"] > 0


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints verified before use


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> Path:
    """A finished tiny run with step_4 and step_8, to copy and damage."""
    root = tmp_path_factory.mktemp("checkpointed")
    train(*parse_args(tiny_args(root, "--num_samples", "0")))
    return root


def damaged_copy(two_checkpoints: Path, tmp_path: Path, damage) -> Path:
    shutil.copytree(two_checkpoints / "run", tmp_path / "run", symlinks=True)
    damage(tmp_path / "run" / "checkpoints" / "step_8")
    return tmp_path


def overwrite_the_end(path: Path, count: int = 64) -> None:
    """Damage a file in place, keeping its size: its last `count` bytes become 0xff."""
    with open(path, "r+b") as file:
        file.seek(-count, os.SEEK_END)
        file.write(b"\xff" * count)


def truncate(path: Path) -> None:
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 2)


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage, reason",
    [
        (
            lambda step: truncate(step / "model.safetensors"),
            r"model.safetensors is [\d,]+ bytes, [\d,]+ when it was saved",
        ),
        (lambda step: (step / "optimizer.bin").unlink(), "optimizer.bin is missing"),
        (  # bytes overwritten inside the weights: the same size, a header that parses; only the contents tell
            lambda step: overwrite_the_end(step / "model.safetensors"),
            r"model.safetensors has changed since it was saved \(its SHA-256 differs from the one in manifest.json\)",
        ),
        (  # the manifest is written last: a checkpoint without one was never completed
            lambda step: (step / "manifest.json").unlink(),
            r"it has no manifest.json, which is written last",
        ),
    ],
    ids=["truncated weights", "deleted optimizer", "weights changed in place", "no manifest"],
)
def test_resume_skips_a_damaged_checkpoint_for_the_one_before(two_checkpoints, tmp_path, capsys, damage, reason):
    root = damaged_copy(two_checkpoints, tmp_path, damage)
    checkpoints = root / "run" / "checkpoints"
    train(*parse_args(tiny_args(root, "--resume", "--max_iters", "12", "--num_samples", "0")))
    out = capsys.readouterr().out
    assert f"warning: skipped checkpoint {checkpoints / 'step_8'}: " in out
    assert re.search(reason, out), out
    assert "Set aside as .step_8.damaged (nothing was deleted)" in out
    assert f"resumed from {checkpoints / 'step_4'} at step 4" in out
    assert (checkpoints / ".step_8.damaged").is_dir() and (checkpoints / "step_12").is_dir()
    assert [record["step"] for record in read_metrics(root / "run" / "metrics.jsonl")] == [4, 8, 12]


def test_convert_refuses_a_damaged_checkpoint(two_checkpoints, tmp_path):
    root = damaged_copy(two_checkpoints, tmp_path, lambda step: truncate(step / "model.safetensors"))
    with pytest.raises(ValueError, match=r"step_8 is damaged: model.safetensors is .* when it was saved"):
        convert_training_checkpoint(root / "run" / "checkpoints" / "step_8", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.slow
def test_no_usable_checkpoint_and_no_checkpoint_at_all_point_to_overwrite(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 4, "train_loss": 5.0, "val_loss": 5.0}\n')  # killed before step_8
    status, err = train_cli_in_process(capsys, *tiny_args(tmp_path, "--resume"))
    assert status == 2 and "none was written yet. Start the run again with --overwrite_output_dir" in err
    status, err = train_cli_in_process(capsys, *tiny_args(tmp_path))
    assert status == 2 and "It has no checkpoint to resume from: pass --overwrite_output_dir" in err
    assert "--resume" not in err  # no circle


# ---------------------------------------------------------------------------------------------------------------
# Disk full


def fail_like_a_full_disk(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a file")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class FillsTheDisk:
    """A file whose writes stop halfway with ENOSPC, as on a full disk."""

    def __init__(self, file):
        self.file = file

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.file.close()

    def write(self, text: str) -> None:
        self.file.write(text[: len(text) // 2])
        self.file.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_at_a_checkpoint_names_the_last_good_one(tmp_path, monkeypatch):
    real_save_state = Accelerator.save_state

    def save_state(self, output_dir, **kwargs):
        if output_dir.endswith(".step_8.tmp"):
            fail_like_a_full_disk(Path(output_dir) / "optimizer.bin")
        return real_save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state)
    with pytest.raises(DiskFull) as full:
        train(*parse_args(tiny_args(tmp_path, "--num_samples", "0")))
    checkpoints = tmp_path / "run" / "checkpoints"
    assert str(full.value) == (
        f"the disk is full: checkpoint step_8 could not be written to {checkpoints / '.step_8.tmp'} (the partial file "
        f"was removed). The last good checkpoint is {checkpoints / 'step_4'}: free some space, then continue with "
        "--resume."
    )
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step_4"]


@pytest.mark.parametrize("target", ["loss curve", "metrics", "best", "token file"])
def test_a_full_disk_anywhere_removes_the_partial_file_and_says_so(tmp_path, monkeypatch, target):
    if target == "loss curve":
        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda self, path, **kw: fail_like_a_full_disk(path))
    elif target == "metrics":
        real_open = Path.open

        def open_filling_the_disk(path, mode="r", *args, **kwargs):
            file = real_open(path, mode, *args, **kwargs)
            return FillsTheDisk(file) if path.name == "metrics.jsonl" and mode == "a" else file

        monkeypatch.setattr(Path, "open", open_filling_the_disk)
    elif target == "best":
        for module in (hub, lora):  # best/ is written through lora.save_model_folder
            monkeypatch.setattr(
                module, "write_hub_folder", lambda model, tok, folder, **kw: fail_like_a_full_disk(folder / "x")
            )
    else:
        monkeypatch.setattr(token_files, "_write_tokens", lambda encoded, path, dtype: fail_like_a_full_disk(path))
    cache = tmp_path / "cache"
    with pytest.raises(DiskFull, match="the disk is full: .* could not be written to .*the partial file was removed"):
        train(*parse_args(tiny_args(tmp_path, "--cache_dir", str(cache), "--num_samples", "0")))
    leftovers = [path for path in (*tmp_path.rglob(".*tmp*"), *tmp_path.rglob("*.tmp.*")) if "hf_home" not in str(path)]
    assert leftovers == []
    if target == "metrics":
        assert (tmp_path / "run" / "metrics.jsonl").read_text() == ""  # cut back: no torn line


def tmpfs(path: Path, size: str):
    path.mkdir()
    if subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    ).returncode:
        pytest.skip("mounting a tmpfs needs CAP_SYS_ADMIN; the monkeypatched tests above cover the same code")


@pytest.mark.slow
def test_a_real_full_disk_ends_the_run_in_one_line_with_nothing_partial(tmp_path):
    """On a 1.6 MB tmpfs the run fills the disk at some write (PyTorch's writer then reports no errno)."""
    disk = tmp_path / "disk"
    tmpfs(disk, "1600k")
    try:
        result = run_cli(*tiny_args(disk, "--cache_dir", str(tmp_path / "cache"), "--num_samples", "0"))
        message = one_line(result.stderr)
        assert result.returncode == 1 and message.startswith("train.py: error: the disk is full: "), result.stderr
        assert "(the partial file was removed)" in message
        partial = [path for path in disk.rglob("*") if ".tmp" in path.name]
        assert partial == []
        named = message.split("The last good checkpoint is ")[-1].split(":")[0]
        if "No checkpoint was written yet" not in message:
            assert folder_damage(Path(named)) is None
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ---------------------------------------------------------------------------------------------------------------
# Records and folders that survive a crash


@pytest.mark.slow
def test_a_torn_last_metrics_line_is_dropped_with_a_warning_on_resume(tmp_path, capsys):
    train(*parse_args(tiny_args(tmp_path, "--num_samples", "0")))
    metrics = tmp_path / "run" / "metrics.jsonl"
    with metrics.open("a") as file:
        file.write('{"step": 12, "train_loss": 4.1, "val_lo')  # killed mid-write
    train(*parse_args(tiny_args(tmp_path, "--resume", "--max_iters", "12", "--num_samples", "0")))
    assert "warning: dropped the last line of" in capsys.readouterr().out
    assert [record["step"] for record in read_metrics(metrics)] == [4, 8, 12]

    metrics.write_text('{"step": 4}\nnot json\n{"step": 8}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl line 2 is not JSON .*; fix or delete that line"):
        read_metrics(metrics)


def test_leftovers_of_a_dead_run_are_removed_and_a_best_moved_aside_is_put_back(tmp_path, capsys):
    run = tmp_path / "run"
    for folder in (".best.1a2b3c4d.tmp", ".best.5e6f7a8b.old/best", "checkpoints/.step_3.tmp"):
        (run / folder).mkdir(parents=True)
    (run / ".best.5e6f7a8b.old" / "best" / "config.json").write_text("{}")
    (run / ".loss_curve.png.9c0d1e2f.tmp").write_bytes(b"")  # files.replacing_file's partial name
    (run / "notes.tmp").write_text("the user's own file")
    assert remove_leftovers(run) == [
        ".best.1a2b3c4d.tmp",
        ".best.5e6f7a8b.old",
        ".loss_curve.png.9c0d1e2f.tmp",
        "checkpoints/.step_3.tmp",
    ]
    assert (run / "best" / "config.json").is_file() and (run / "notes.tmp").is_file()


# ---------------------------------------------------------------------------------------------------------------
# Every bad input: one line, exit status 2


def test_a_malformed_jsonl_line_is_one_line_naming_it(tmp_path, capsys, hf_cache):
    (tmp_path / "stories.jsonl").write_text('{"text": "Tom ran."}\n{"text": "Sue" "sat."}\n{"text": "The end."}\n')
    status, err = train_cli_in_process(capsys, *tiny_args(tmp_path, "--dataset", str(tmp_path / "stories.jsonl")))
    assert status == 2
    assert one_line(err) == (
        f"train.py: error: {tmp_path / 'stories.jsonl'} is not valid JSON: line 2, column 16: Expecting ',' "
        "delimiter; fix or delete that line"
    )


@pytest.mark.slow
def test_an_unknown_hub_dataset_offline_is_one_line(tmp_path, hf_cache):
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *tiny_args(tmp_path, "--dataset", "nonexistent/name")],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2
    assert one_line(result.stderr).startswith("train.py: error: 'nonexistent/name' is not a local file or folder")


def test_a_shape_that_cannot_fit_in_memory_is_refused_before_tokenizing(tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = tiny_args(tmp_path, "--cache_dir", str(cache), "--block_size", "100000", "--attn_implementation", "eager")
    status, err = train_cli_in_process(capsys, *argv)
    assert status == 2
    message = one_line(err)
    assert message.startswith("train.py: error: this run needs about ") and " TB of memory per process" in message
    assert message.endswith(
        "To make it fit, lower --batch_size (raise --gradient_accumulation_steps to keep the "
        "tokens per step) or --block_size."
    )
    assert not cache.exists()  # nothing was tokenized


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    TinyStoriesGPTForCausalLM(TinyStoriesGPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=16)).save_pretrained(
        folder
    )
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR).save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "0"], "--temperature 0 means always the most likely token: pass --greedy instead"),
        (["--temperature", "-0.5"], "--temperature must be positive (higher gives more varied stories), got -0.5"),
        (["--top_p", "1.5"], "--top_p is the probability mass to sample from, in (0, 1]; got 1.5"),
        (["--top_p", "0"], "--top_p is the probability mass to sample from, in (0, 1]; got 0.0"),
        (["--greedy", "--temperature", "0.7"], "--greedy always takes the most likely token"),
    ],
)
def test_generate_refuses_bad_sampling_before_any_output(saved_model, capsys, flags, message):
    assert generate_cli.main([str(saved_model), "--prompt", "Once", *flags]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and one_line(captured.err).startswith(f"generate: error: {message}")


@pytest.mark.slow
def test_evaluate_batch_size_0_and_a_one_story_train_split(saved_model, tmp_path, capsys):
    story = tmp_path / "one.jsonl"
    story.write_text('{"text": "Tom had a red ball."}\n')
    common = [str(saved_model), "--dataset", str(story), "--cache_dir", str(tmp_path / "cache")]
    assert evaluate_cli.main([*common, "--batch_size", "0"]) == 2
    assert one_line(capsys.readouterr().err) == "evaluate: error: --batch_size must be a positive integer, got 0"
    assert evaluate_cli.main([*common, "--split", "train", "--json"]) == 0  # no validation hold-out needed
    assert json.loads(capsys.readouterr().out)["tokens"] == 7  # 6 tokens of the story, then <|endoftext|>
    assert evaluate_cli.main(common) == 2  # the validation split of one story cannot be held out
    assert "choose a percentage that keeps at least one story on each side" in capsys.readouterr().err


def test_convert_nanogpt_on_a_safetensors_file_named_pt(tmp_path, capsys):
    save_file({"transformer.wte.weight": torch.zeros(4, 2)}, tmp_path / "ckpt.pt")
    assert convert_cli.main(["nanogpt", str(tmp_path / "ckpt.pt"), str(tmp_path / "hf")]) == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(f"convert.py: error: {tmp_path / 'ckpt.pt'} is a safetensors file, not a PyTorch")
    assert "weights_only" not in message and "convert.py checkpoint FOLDER OUT" in message
