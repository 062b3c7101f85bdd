"""The fault table (issues 16 and 22): each fault tried as a user meets it, through the command lines, and what
happened.

    python benchmarks/fault_table.py [--work /tmp/faults] [--out benchmarks/fault_table.md]

Every run trains the tiny 2-layer, 32-wide model on the bundled stories with a bpe:512 tokenizer (seconds each)
in a scratch folder. The disk-full rows mount small tmpfs filesystems, so they need root (CAP_SYS_ADMIN); without
it they are reported as not tried. About 15 minutes on 2 CPU cores.
"""

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch
from machine import cpu_name
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "tinystories"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
ROWS: list[tuple[str, str, str]] = []
WORK = Path("/tmp/faults")  # set by --work


def tiny(folder: Path, *extra: str) -> list[str]:
    """train.py's flags for a run of seconds writing into folder/run."""
    flags = {
        "--dataset": str(DATA),
        "--tokenizer": "bpe:512",
        "--cache_dir": str(WORK / "token-cache"),
        "--block_size": "32",
        "--n_layer": "2",
        "--n_head": "2",
        "--n_embd": "32",
        "--batch_size": "8",
        "--gradient_accumulation_steps": "2",
        "--max_iters": "8",
        "--warmup_steps": "2",
        "--learning_rate": "3e-3",
        "--min_lr": "3e-4",
        "--eval_interval": "4",
        "--eval_iters": "4",
        "--checkpoint_interval": "4",
        "--num_samples": "0",
        "--output_dir": str(folder / "run"),
        "--seed": "7",
        "--mixed_precision": "no",
    }
    return [item for pair in flags.items() for item in pair] + ["--cpu", *extra]


def command(name: str, *argv: str) -> list[str]:
    scripts = {"train": [str(REPO / "train.py")], "convert": [str(REPO / "convert.py")]}
    return [sys.executable, *scripts.get(name, ["-m", f"tinystories_gpt.cli.{name}"]), *argv]


def run(name: str, *argv: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command(name, *argv), capture_output=True, text=True, cwd=REPO, env=env or ENV)


def start(name: str, *argv: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        command(name, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env or ENV
    )


def message(stderr: str) -> str:
    """The last line that is not a progress bar (scratch paths shortened), and whether a traceback came with it."""
    bars = ("it/s", "/s]", "s/it")
    lines = [line for line in stderr.splitlines() if line.strip() and not any(bar in line for bar in bars)]
    last = lines[-1] if lines else ""
    return ("TRACEBACK: " if "Traceback" in stderr else "") + last.replace(str(WORK), "$WORK")


def wait_for_path(process: subprocess.Popen, folder: Path, pattern: str, timeout: float = 300, poll=0.01) -> None:
    """Until `folder` holds a path matching `pattern`, or the process ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None and not any(folder.glob(pattern)):
        time.sleep(poll)


def stopped_line(stdout: str) -> str:
    return next((line for line in stdout.splitlines() if line.startswith("stopped by signal")), "no stop line")


def fresh(name: str) -> Path:
    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def row(fault: str, tries: int, outcome: str) -> None:
    ROWS.append((fault, str(tries), outcome))
    print(f"| {fault} | {tries} | {outcome} |", flush=True)


def tensors(checkpoint: Path) -> dict:
    weights = load_file(checkpoint / "model.safetensors")
    optimizer = torch.load(checkpoint / "optimizer.bin", weights_only=True)["state"]
    return weights | {f"{index}.{key}": value for index, state in optimizer.items() for key, value in state.items()}


def same(first: dict, second: dict) -> bool:
    return first.keys() == second.keys() and all(torch.equal(first[key], second[key]) for key in first)


def losses(run_dir: Path) -> list:
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in map(json.loads, (run_dir / "metrics.jsonl").open())]


def resume_until_done(folder: Path, *extra: str, limit: int = 4) -> tuple[int, list[str]]:
    """--resume until the run ends; returns the number of resumes and the notes the runs printed."""
    notes = []
    for attempt in range(1, limit + 1):
        result = run("train", *tiny(folder, *extra, "--resume"))
        notes += [line for line in result.stdout.splitlines() if line.startswith(("warning:", "removed what"))]
        if result.returncode == 0 and (folder / "run" / "final_metrics.json").exists():
            return attempt, notes
    return -1, notes


# ---------------------------------------------------------------------------------------------------------------


def kills_during_training() -> None:
    """kill -9 at random instants and aimed at a checkpoint being written, a SIGTERM: resumed bit-identical?"""
    recipe = ["--max_iters", "24", "--eval_interval", "8", "--dropout", "0.1"]
    reference = fresh("kill-reference")
    assert run("train", *tiny(reference, *recipe)).returncode == 0
    expected, expected_losses = tensors(reference / "run" / "checkpoints" / "step_24"), losses(reference / "run")
    outcomes = {"random": [], "aimed": [], "SIGTERM": []}
    for number, kind in enumerate(["random"] * 6 + ["aimed"] * 6 + ["SIGTERM"]):
        folder = fresh(f"kill-{number}")
        checkpoints = folder / "run" / "checkpoints"
        process = start("train", *tiny(folder, *recipe))
        wait_for_path(process, checkpoints, "step_*")  # a complete checkpoint to resume from
        if kind == "aimed":  # the moment the next checkpoint folder is being written
            wait_for_path(process, checkpoints, ".step_*.tmp", poll=0.001)
        elif kind == "random":
            time.sleep(random.uniform(0, 1.5))
        during_write = bool(list(checkpoints.glob(".step_*.tmp")))
        process.send_signal(signal.SIGKILL if kind != "SIGTERM" else signal.SIGTERM)
        process.wait()
        resumes, notes = resume_until_done(folder, *recipe)
        identical = resumes > 0 and same(expected, tensors(checkpoints / "step_24"))
        identical = identical and losses(folder / "run") == expected_losses
        outcomes[kind].append((identical, during_write, any("took over" in note for note in notes)))
    for kind, results in outcomes.items():
        row(
            f"{'kill -9' if kind != 'SIGTERM' else 'SIGTERM'} during training"
            + {"random": " at a random instant", "aimed": " while a checkpoint is written", "SIGTERM": ""}[kind],
            len(results),
            f"{sum(ok for ok, _, _ in results)}/{len(results)} resumed from the newest complete checkpoint and ended "
            f"bit-identical (weights, AdamW state, every metrics line) to an uninterrupted run; "
            f"{sum(write for _, write, _ in results)} killed mid-write; stale lock taken over with a warning in "
            f"{sum(stale for _, _, stale in results)}",
        )


def kills_while_best_is_written() -> None:
    loadable = cleaned = 0
    tries = 8
    for number in range(tries):
        folder = fresh(f"best-{number}")
        run_dir = folder / "run"
        process = start("train", *tiny(folder, "--max_iters", "40", "--eval_interval", "2"))
        wait_for_path(process, run_dir / "checkpoints", "step_*")  # best/ and a checkpoint to resume from
        wait_for_path(process, run_dir, ".best.*.tmp", poll=0.001)  # a rewrite of best/ under way
        time.sleep(random.uniform(0, 0.05))
        process.kill()
        process.wait()
        check = (
            "import sys, tinystories_gpt, transformers; transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1])"
        )
        ok = subprocess.run([sys.executable, "-c", check, str(run_dir / "best")], env=ENV).returncode == 0
        loadable += ok and (run_dir / "best").stat().st_mode & 0o777 == 0o755
        resumes, notes = resume_until_done(folder, "--max_iters", "40", "--eval_interval", "2")
        cleaned += resumes > 0 and not list(run_dir.glob(".best.*"))
    row(
        "kill -9 while best/ is rewritten",
        tries,
        f"best/ loadable (mode 755) in {loadable}/{tries}; the next run removed the staged folder and finished in "
        f"{cleaned}/{tries}",
    )


def two_runs_on_one_folder() -> None:
    refused, intact, seconds = 0, 0, []
    for number in range(3):
        folder = fresh(f"two-{number}")
        first = start("train", *tiny(folder, "--max_iters", "200", "--seed", "1"))
        lock = folder / "run" / ".run.lock"
        wait_for_path(first, folder / "run", ".run.lock")
        while first.poll() is None and f'"pid": {first.pid}' not in lock.read_text():
            time.sleep(0.01)
        began = time.monotonic()
        second = run("train", *tiny(folder, "--max_iters", "200", "--seed", "2", "--overwrite_output_dir"))
        seconds.append(time.monotonic() - began)
        refused += first.poll() is None and second.returncode == 2 and f"(PID {first.pid} on host" in second.stderr
        out, _ = first.communicate()
        final = json.loads((folder / "run" / "final_metrics.json").read_text())
        steps = [step for step, _, _ in losses(folder / "run")]
        card = (folder / "run" / "best" / "README.md").read_text()
        intact += (
            first.returncode == 0
            and f"loss {final['loss']:.4f}" in out
            and steps == sorted(set(steps))
            and "| seed | 1 |" in card
        )
    row(
        "a second run started on a folder in use (another seed, --overwrite_output_dir)",
        3,
        f"refused with exit 2 in {min(seconds):.0f}-{max(seconds):.0f} s (start-up included), naming host, PID and "
        f"start time: {refused}/3; the first run's best/, card, final_metrics.json and metrics.jsonl its own: "
        f"{intact}/3. Line: `{message(second.stderr)[:150]}...`",
    )
    exactly_one = 0
    for number in range(3):
        folder = fresh(f"same-instant-{number}")
        pair = [start("train", *tiny(folder, "--seed", str(seed))) for seed in (1, 2)]
        results = sorted((process.wait(), process.stderr.read()) for process in pair)
        exactly_one += [code for code, _ in results] == [0, 2] and "in use by another run" in results[1][1]
    row("two runs started on one folder at the same instant", 3, f"exactly one ran, the other exit 2: {exactly_one}/3")


def stops_while_preparing_data() -> None:
    stories = WORK / "big-stories"
    if not stories.exists():
        stories.mkdir(parents=True)
        (stories / "train.txt").write_text((DATA / "train.txt").read_text() * 8)
        (stories / "validation.txt").write_text((DATA / "validation.txt").read_text())
    cases = [
        ("SIGTERM, tokenizing, default num_proc", [], signal.SIGTERM, False, "tokens"),
        ("SIGTERM, tokenizing, --num_proc 1", ["--num_proc", "1"], signal.SIGTERM, False, "tokens"),
        ("SIGTERM, tokenizing, --num_proc 2", ["--num_proc", "2"], signal.SIGTERM, False, "tokens"),
        ("Ctrl-C (SIGINT to the group), --num_proc 2", ["--num_proc", "2"], signal.SIGINT, True, "tokens"),
        ("SIGTERM while datasets reads the text", [], signal.SIGTERM, False, "datasets"),
    ]
    results = []
    for number, (name, extra, signum, group, phase) in enumerate(cases):
        folder = fresh(f"stop-data-{number}")
        cache, datasets_cache = folder / "cache", folder / "datasets"
        env = {**ENV, "HF_DATASETS_CACHE": str(datasets_cache)}
        argv = tiny(folder, "--dataset", str(stories), "--tokenizer", "gpt2", "--cache_dir", str(cache), *extra)
        process = subprocess.Popen(
            command("train", *argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=group,
        )
        if phase == "tokens":
            wait_for_path(process, cache, ".train-*.tmp")
            time.sleep(0.5)
        else:
            wait_for_path(process, datasets_cache, "**/*.incomplete", timeout=120, poll=0.001)  # datasets' build
        children = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
        os.killpg(process.pid, signum) if group else process.send_signal(signum)
        _, stderr = process.communicate()
        time.sleep(1)
        alive = [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
        left = [*cache.glob(".*.tmp"), *datasets_cache.rglob("*.incomplete")]
        results.append((name, process.returncode, len(children), len(alive), len(left), message(stderr)))
    lines = "; ".join(
        f"{name}: exit {code}, {kids} child processes, {alive} left, {left} scratch left"
        for name, code, kids, alive, left, _ in results
    )
    row("stop signal while the data is prepared", len(cases), f"{lines}. Line: `{results[0][5]}`")


def damaged_checkpoints() -> None:
    base = fresh("damage-base")
    assert run("train", *tiny(base)).returncode == 0
    damages = {
        "model.safetensors cut to half": lambda step: truncate(step / "model.safetensors"),
        "optimizer.bin cut to half": lambda step: truncate(step / "optimizer.bin"),
        "random_states_0.pkl deleted": lambda step: (step / "random_states_0.pkl").unlink(),
        "model.safetensors deleted": lambda step: (step / "model.safetensors").unlink(),
        "bytes inside model.safetensors overwritten (same size)": lambda step: overwrite(step / "model.safetensors"),
        "bytes inside optimizer.bin overwritten (same size)": lambda step: overwrite(step / "optimizer.bin", 4096),
    }
    outcomes = []
    for number, (name, damage) in enumerate(damages.items()):
        folder = fresh(f"damage-{number}")
        shutil.copytree(base / "run", folder / "run")
        checkpoints = folder / "run" / "checkpoints"
        damage(checkpoints / "step_8")
        converted = run("convert", "checkpoint", str(checkpoints / "step_8"), str(folder / "hf"))
        result = run("train", *tiny(folder, "--resume", "--max_iters", "12"))
        skipped = next((line for line in result.stdout.splitlines() if line.startswith("warning: skipped")), "")
        fell_back = result.returncode == 0 and "resumed from" in result.stdout and "step_4 at step 4" in result.stdout
        outcomes.append((name, fell_back and (checkpoints / ".step_8.damaged").is_dir(), converted.returncode, skipped))
    row(
        "damaged newest checkpoint, --resume (and convert.py checkpoint on it)",
        len(damages),
        "; ".join(
            f"{name}: fell back to step_4 {'yes' if ok else 'NO'}, convert exit {code}"
            for name, ok, code, _ in outcomes
        )
        + f". Line: `{outcomes[0][3].replace(str(WORK), '$WORK')}`",
    )


def overwrite(path: Path, offset_from_end: int = 64, count: int = 32) -> None:
    """Damage a file in place, keeping its size (what a bad disk or a stray write does)."""
    with open(path, "r+b") as file:
        file.seek(-offset_from_end, os.SEEK_END)
        file.write(b"\xff" * count)


def token_files_changed_in_place() -> None:
    base = fresh("tokens-base")
    cache = base / "cache"
    assert run("train", *tiny(base, "--cache_dir", str(cache))).returncode == 0
    original = {path: path.read_bytes() for path in cache.glob("train-*.bin")}
    (train_bin,) = original
    size = len(original[train_bin])
    damages = {
        "zeros over train-*.bin (same size)": lambda: train_bin.write_bytes(b"\0" * size),
        "ids past the vocabulary written into it": lambda: overwrite(train_bin, 64, 64),
        "one byte changed in the middle": lambda: overwrite(train_bin, size // 2, 1),
    }
    outcomes = []
    for number, (name, damage) in enumerate(damages.items()):
        damage()
        folder = fresh(f"tokens-{number}")
        result = run("train", *tiny(folder, "--cache_dir", str(cache)))
        rebuilt = train_bin.read_bytes() == original[train_bin]
        noticed = next((line for line in result.stderr.splitlines() if "is damaged" in line), "")
        outcomes.append((name, result.returncode, rebuilt, noticed))
    row(
        "a cached token file changed in place",
        len(outcomes),
        "; ".join(f"{name}: exit {code}, rebuilt identical {'yes' if ok else 'NO'}" for name, code, ok, _ in outcomes)
        + f". Line: `{outcomes[0][3].replace(str(WORK), '$WORK')}`",
    )


def without_tokenizer(argv: list[str]) -> list[str]:
    """A parent brings its tokenizer: --init_from refuses a --tokenizer that would train another."""
    index = argv.index("--tokenizer")
    return argv[:index] + argv[index + 2 :]


def model_folders_damaged() -> None:
    base = fresh("folder-base")
    assert run("train", *tiny(base)).returncode == 0
    damages = {
        "model.safetensors changed in place": lambda folder: overwrite(folder / "model.safetensors"),
        "model.safetensors cut short": lambda folder: truncate(folder / "model.safetensors"),
        "config.json missing": lambda folder: (folder / "config.json").unlink(),
    }
    commands = {
        "evaluate": lambda folder: run("evaluate", str(folder), "--dataset", str(DATA)),
        "generate": lambda folder: run("generate", str(folder), "--prompt", "Once"),
        "convert.py gpt2": lambda folder: run("convert", "gpt2", str(folder), str(folder.parent / "out")),
        "train.py --init_from": lambda folder: run(
            "train", *without_tokenizer(tiny(folder.parent, "--init_from", str(folder)))
        ),
    }
    outcomes = []
    for number, (name, damage) in enumerate(damages.items()):
        for label, call in commands.items():
            folder = fresh(f"folder-{number}-{label.split()[0]}") / "best"
            shutil.copytree(base / "run" / "best", folder)
            damage(folder)
            result = call(folder)
            outcomes.append((name, label, result.returncode, message(result.stderr)))
    one_line = sum(1 for *_, code, line in outcomes if code == 2 and not line.startswith("TRACEBACK"))
    row(
        "a damaged model folder given to evaluate, generate, convert.py, --init_from",
        len(outcomes),
        f"{one_line}/{len(outcomes)} refused in one line, exit 2, naming the file; "
        + "; ".join(f"{name}: `{line[:110]}`" for name, label, _, line in outcomes if label == "evaluate"),
    )


def resumes_with_changes() -> None:
    base = fresh("recipe-base")
    assert run("train", *tiny(base)).returncode == 0
    other = fresh("recipe-stories") / "stories"
    shutil.copytree(DATA, other)
    (other / "train.txt").write_text((other / "train.txt").read_text().replace("Lily", "Rosa"))
    refused = {
        "another dataset": ["--dataset", str(other)],
        "another learning rate": ["--learning_rate", "1e-3"],
        "another batch size": ["--batch_size", "4"],
        "another seed": ["--seed", "8"],
        "another tokenizer": ["--tokenizer", "gpt2"],
        "fewer steps": ["--max_iters", "6"],
    }
    outcomes = []
    for number, (name, flags) in enumerate(refused.items()):
        folder = fresh(f"recipe-{number}")
        shutil.copytree(base / "run", folder / "run")
        result = run("train", *tiny(folder, "--resume", *flags))
        outcomes.append((name, result.returncode, message(result.stderr)))
    # allowed: a run stopped by SIGTERM at its first checkpoint, resumed with other intervals and trackers
    whole, broken = fresh("recipe-whole"), fresh("recipe-broken")
    assert run("train", *tiny(whole, "--max_iters", "12")).returncode == 0
    process = start("train", *tiny(broken, "--max_iters", "12"))
    wait_for_path(process, broken / "run" / "checkpoints", "step_*")
    process.send_signal(signal.SIGTERM)
    process.communicate()
    allowed = ["--eval_interval", "3", "--checkpoint_interval", "6", "--num_samples", "1", "--keep_checkpoints", "4"]
    resumed = run("train", *tiny(broken, "--max_iters", "12", "--resume", *allowed))
    exact = resumed.returncode == 0 and same(
        tensors(whole / "run" / "checkpoints" / "step_12"), tensors(broken / "run" / "checkpoints" / "step_12")
    )
    refusals = sum(1 for _, code, line in outcomes if code == 2 and "would not continue the run" in line)
    row(
        "--resume with a changed recipe, and with changed intervals",
        len(outcomes) + 1,
        f"refused by name, exit 2: {refusals}/{len(outcomes)} ("
        + ", ".join(name for name, *_ in outcomes)
        + f"); other intervals, samples and kept checkpoints: exit {resumed.returncode}, bit-identical weights and "
        f"AdamW state to the uninterrupted run: {'yes' if exact else 'NO'}. Line: `{outcomes[1][2][:260]}`",
    )


def kill_9_while_tokenizing() -> None:
    stories = WORK / "big-stories"
    if not stories.exists():
        stories.mkdir(parents=True)
        (stories / "train.txt").write_text((DATA / "train.txt").read_text() * 8)
        (stories / "validation.txt").write_text((DATA / "validation.txt").read_text())
    moments = [0.0, random.uniform(0.2, 1.0), random.uniform(1.0, 2.5)]
    outcomes = []
    for number, moment in enumerate(moments):
        folder = fresh(f"kill-tokens-{number}")
        cache = folder / "cache"
        env = {**ENV, "HF_DATASETS_CACHE": str(folder / "datasets")}
        argv = tiny(folder, "--dataset", str(stories), "--tokenizer", "gpt2", "--cache_dir", str(cache))
        process = start("train", *argv, "--num_proc", "2", env=env)
        wait_for_path(process, cache, ".train-*.tmp")
        deadline = time.monotonic() + 120  # the two workers and the Manager started: the moment counts from there
        while len(psutil.Process(process.pid).children(recursive=True)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(moment)
        children = psutil.Process(process.pid).children(recursive=True) if process.poll() is None else []
        process.kill()
        process.communicate()
        _, alive = psutil.wait_procs(children, timeout=5)
        for child in alive:  # leave nothing running for the next row
            child.kill()
        outcomes.append((moment, len(children), len(alive)))
    row(
        "kill -9 during tokenization with --num_proc 2",
        len(moments),
        "; ".join(
            f"at +{moment:.1f} s: {kids} processes of the run, {left} left 5 s later" for moment, kids, left in outcomes
        ),
    )


def truncate(path: Path) -> None:
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size // 2)


def disk_full() -> None:
    probe = WORK / "mount-probe"
    probe.mkdir(exist_ok=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode:
        row("disk full", 0, "not tried: mounting a tmpfs needs root")
        return
    subprocess.run(["umount", str(probe)], check=True)
    outcomes = []
    sizes = [("output", size) for size in ("400k", "700k", "1000k", "1300k", "1600k", "1900k")] + [("cache", "1500k")]
    for number, (where, size) in enumerate(sizes):
        folder = fresh(f"full-{number}")
        disk = folder / "disk"
        disk.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)
        try:
            output, cache = (disk, WORK / "token-cache") if where == "output" else (folder, disk / "cache")
            argv = tiny(output, "--cache_dir", str(cache), "--max_iters", "12")
            result = run("train", *argv)
            line = message(result.stderr)
            partial = [path for path in disk.rglob("*") if ".tmp" in path.name]
            subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # free some space
            again = "--resume" if "--resume" in line else "--overwrite_output_dir" if "overwrite" in line else None
            recovered = run("train", *argv, *([again] if again else [])).returncode == 0
            outcomes.append((where, size, result.returncode, line, len(partial), recovered))
        finally:
            subprocess.run(["umount", str(disk)], check=True)

    def what(line: str) -> str:
        return line.split("the disk is full: ")[-1].split(" could not")[0]

    row(
        "disk full (tmpfs of 400k-1.9M for the output folder, 1.5M for the token cache)",
        len(sizes),
        "; ".join(
            f"{where} {size}: exit {code}, {what(line)}, {partial} partial files, recovered after freeing "
            f"space as the line says: {'yes' if ok else 'NO'}"
            for where, size, code, line, partial, ok in outcomes
        )
        + f". Line: `{next((o[3] for o in outcomes if 'checkpoint is' in o[3]), outcomes[0][3])}`",
    )


def torn_metrics_and_no_checkpoint() -> None:
    base = fresh("torn")
    assert run("train", *tiny(base)).returncode == 0
    with (base / "run" / "metrics.jsonl").open("a") as file:
        file.write('{"step": 12, "train_loss": 4.1, "val_lo')
    result = run("train", *tiny(base, "--resume", "--max_iters", "12"))
    warned = any(line.startswith("warning: dropped the last line") for line in result.stdout.splitlines())
    row("metrics.jsonl's last line cut by a crash, --resume", 1, f"exit {result.returncode}, warned: {warned}")

    folder = fresh("no-checkpoint")
    recipe = ["--max_iters", "1000", "--checkpoint_interval", "1000", "--eval_interval", "2"]
    process = start("train", *tiny(folder, *recipe))
    wait_for_path(process, folder / "run", "metrics.jsonl")
    process.kill()
    process.wait()
    resumed, fresh_run = run("train", *tiny(folder, *recipe, "--resume")), run("train", *tiny(folder, *recipe))
    advised = run("train", *tiny(folder, "--overwrite_output_dir"))
    row(
        "a run killed before its first checkpoint, then --resume, then without",
        1,
        f"--resume exit {resumed.returncode}: `{message(resumed.stderr).replace(str(WORK), '$WORK')}`; without: exit "
        f"{fresh_run.returncode}, `...{message(fresh_run.stderr).split('(')[-1]}`; following the advice "
        f"(--overwrite_output_dir): exit {advised.returncode}",
    )


def stops_in_evaluation_and_final_pass() -> None:
    folder = fresh("stop-eval")
    recipe = ["--max_iters", "4", "--eval_interval", "1", "--eval_iters", "2000"]
    process = start("train", *tiny(folder, *recipe))
    wait_for_path(process, folder / "run", ".run.lock")
    time.sleep(10)  # start-up and step 1 done: inside the evaluation of 2 x 2000 batches
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate()
    took = time.monotonic() - signalled
    began = time.monotonic()
    redo = run("train", *tiny(folder, *recipe, "--resume", "--max_iters", "1", "--warmup_steps", "1"))  # redoes it
    evaluation = time.monotonic() - began
    row(
        "SIGTERM during an evaluation (--eval_iters 2000)",
        1,
        f"exit {process.returncode} {took:.1f} s after the signal (`{stopped_line(out)}`); --resume "
        f"redid the evaluation first ({evaluation:.0f} s with start-up and the final pass), exit {redo.returncode}",
    )

    folder = fresh("stop-final")
    process = start("train", *tiny(folder))
    wait_for_path(process, folder / "run" / "checkpoints", "step_8")
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate()
    resumed = run("train", *tiny(folder, "--resume"))
    row(
        "SIGTERM during the final pass over the validation split",
        1,
        f"exit {process.returncode}: `{message(stderr).replace(str(WORK), '$WORK')}`; --resume then exit "
        f"{resumed.returncode} with final_metrics.json: {(folder / 'run' / 'final_metrics.json').exists()}",
    )


def leftovers_and_best() -> None:
    base = fresh("leftovers")
    assert run("train", *tiny(base)).returncode == 0
    run_dir = base / "run"
    for name in (".best.1a2b3c4d.tmp", ".best.5e6f7a8b.old", "checkpoints/.step_3.tmp"):
        (run_dir / name).mkdir()
    result = run("train", *tiny(base, "--resume", "--max_iters", "12"))
    left = list(run_dir.glob(".best.*")) + list(run_dir.glob("checkpoints/.step_*.tmp"))
    modes = "/".join(
        f"{path.stat().st_mode & 0o777:o}" for path in (run_dir / "best", run_dir / "best" / "model.safetensors")
    )
    gaps = best_gaps(run_dir / "best", rewrites=20)
    row(
        "leftovers of a dead run (.best.*.tmp, .best.*.old, .step_N.tmp); best/'s modes and gaps",
        1,
        f"removed by the next run with a note: {not left and 'removed what' in result.stdout}; best/ and its "
        f"weights mode {modes} (umask 022); 20 rewrites of best/ watched by a reader: {gaps} moments without best/",
    )


def best_gaps(best: Path, rewrites: int) -> int:
    from transformers import AutoTokenizer

    from tinystories_gpt import TinyStoriesGPTForCausalLM
    from tinystories_gpt.export.hub import save_hub_folder

    model, tokenizer = TinyStoriesGPTForCausalLM.from_pretrained(best), AutoTokenizer.from_pretrained(best)
    missing, done = [0], threading.Event()

    def watch():
        while not done.is_set():
            missing[0] += not (best / "config.json").is_file()

    watcher = threading.Thread(target=watch)
    watcher.start()
    for _ in range(rewrites):
        save_hub_folder(model, tokenizer, best, overwrite=True)
    done.set()
    watcher.join()
    return missing[0]


def bad_input() -> None:
    folder = fresh("bad-input")
    (folder / "stories.jsonl").write_text('{"text": "Tom ran."}\n{"text": "Sue" "sat."}\n{"text": "The end."}\n')
    (folder / "one.jsonl").write_text('{"text": "Tom had a red ball."}\n')
    from safetensors.torch import save_file

    save_file({"transformer.wte.weight": torch.zeros(4, 2)}, folder / "ckpt.pt")
    (folder / "broken.yaml").write_text("max_iters: [\n")
    (folder / "wrong.yaml").write_text("grad_clip: [1, 2]\n")
    (folder / "huge").mkdir()
    (folder / "huge" / "train.txt").write_text("Tom sat.<|endoftext|>" + "The dog ran. " * 160_000)
    (folder / "huge" / "validation.txt").write_text("Sue sat.")
    base = fresh("bad-input-model")
    assert run("train", *tiny(base)).returncode == 0
    best = str(base / "run" / "best")
    offline = {**ENV, "HF_HUB_OFFLINE": "1"}
    cases = [
        ("a .jsonl with one malformed line", run("train", *tiny(folder, "--dataset", str(folder / "stories.jsonl")))),
        (
            "--dataset nonexistent/name offline",
            run("train", *tiny(folder, "--dataset", "nonexistent/name"), env=offline),
        ),
        (
            "--block_size 100000",
            run("train", *tiny(folder, "--block_size", "100000", "--attn_implementation", "eager")),
        ),
        ("evaluate --batch_size 0", run("evaluate", best, "--dataset", str(DATA), "--batch_size", "0")),
        (
            "convert.py nanogpt on a safetensors file named .pt",
            run("convert", "nanogpt", str(folder / "ckpt.pt"), str(folder / "hf")),
        ),
        (
            "evaluate a one-story file --split train",
            run("evaluate", best, "--dataset", str(folder / "one.jsonl"), "--split", "train"),
        ),
        ("generate --temperature 0", run("generate", best, "--prompt", "Once", "--temperature", "0")),
        ("generate --temperature -1", run("generate", best, "--prompt", "Once", "--temperature", "-1")),
        ("generate --top_p 1.5", run("generate", best, "--prompt", "Once", "--top_p", "1.5")),
        ("--block_size 1", run("train", *tiny(folder, "--block_size", "1"))),
        (
            "--block_size 8 with GPT-2's tokenizer",
            run("train", *tiny(folder, "--block_size", "8", "--tokenizer", "gpt2")),
        ),
        ("a preset that is not YAML", run("train", *tiny(folder, "--config", str(folder / "broken.yaml")))),
        ("a preset with grad_clip: [1, 2]", run("train", *tiny(folder, "--config", str(folder / "wrong.yaml")))),
        ("one story of 2 MB", run("train", *tiny(folder, "--dataset", str(folder / "huge")))),
        ("a damaged cached tokenizer.json", damaged_cached_tokenizer(folder)),
    ]
    cases += unwritable_places(folder)
    for name, result in cases:
        if result is None:
            row(f"bad input: {name}", 0, "not tried: mounting a tmpfs needs root")
            continue
        stdout = "nothing on stdout" if not result.stdout.strip() else "stdout: " + result.stdout.strip()[:60]
        row(
            f"bad input: {name}",
            1,
            f"exit {result.returncode}; {stdout}; `{message(result.stderr).replace(str(WORK), '$WORK')[:220]}`",
        )


def damaged_cached_tokenizer(folder: Path) -> subprocess.CompletedProcess:
    cache = folder / "tokenizer-cache"
    assert run("train", *tiny(folder / "tok", "--cache_dir", str(cache))).returncode == 0
    for trained in cache.glob("tokenizer-bpe512-*"):
        (trained / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')
    result = run("train", *tiny(folder / "tok", "--cache_dir", str(cache), "--overwrite_output_dir"))
    # exit 0 is the fix here: the warning is the line
    warning = next((line for line in result.stderr.splitlines() if "cached tokenizer" in line), "no warning")
    return subprocess.CompletedProcess(result.args, result.returncode, "", warning)


def unwritable_places(folder: Path) -> list[tuple[str, subprocess.CompletedProcess | None]]:
    """An output folder and a Hugging Face cache on a read-only disk, and a cache on a full one (tmpfs mounts)."""
    cases = []
    stories = folder / "many.jsonl"  # datasets writes a .jsonl source into its cache as Arrow
    stories.write_text("".join(f'{{"text": "Story {i}: Tom ran to the park and saw a dog."}}\n' for i in range(3000)))
    for name, options in (("read-only", "ro,size=1m"), ("full", "size=64k")):
        disk = folder / name
        disk.mkdir(exist_ok=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True).returncode:
            return [("unwritable folders", None)]
        try:
            cache_env = {**ENV, "HF_HOME": str(disk / "hf"), "HF_DATASETS_CACHE": str(disk / "hf" / "datasets")}
            if name == "read-only":
                cases.append(("an output folder on a read-only disk", run("train", *tiny(disk))))
            cases.append(
                (
                    f"a Hugging Face cache on a {name} disk",
                    run("train", *tiny(folder, "--dataset", str(stories)), env=cache_env),
                )
            )
        finally:
            subprocess.run(["umount", str(disk)], check=True)
    return cases


def main() -> None:
    global WORK  # noqa: PLW0603 (one setting read by every row)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/faults"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "fault_table.md")
    parser.add_argument("--only", nargs="*", default=None, help="names of the row functions to run")
    args = parser.parse_args()
    WORK = args.work
    WORK.mkdir(parents=True, exist_ok=True)
    random.seed(16)
    began = time.monotonic()
    steps = [
        kills_during_training,
        kills_while_best_is_written,
        two_runs_on_one_folder,
        stops_while_preparing_data,
        damaged_checkpoints,
        token_files_changed_in_place,
        model_folders_damaged,
        resumes_with_changes,
        kill_9_while_tokenizing,
        disk_full,
        torn_metrics_and_no_checkpoint,
        stops_in_evaluation_and_final_pass,
        leftovers_and_best,
        bad_input,
    ]
    for step in steps:
        if args.only is None or step.__name__ in args.only:
            step()
    cpu = cpu_name()
    table = ["| fault | tries | outcome |", "|---|---|---|", *(f"| {' | '.join(cells)} |" for cells in ROWS)]
    header = (
        f"# Fault table (issues 16 and 22)\n\n`python benchmarks/fault_table.py` on {cpu} ({os.cpu_count()} cores, "
        f"Python {platform.python_version()}), {(time.monotonic() - began) / 60:.0f} minutes.\n\n"
    )
    if args.only is None:
        args.out.write_text(header + "\n".join(table) + "\n")


if __name__ == "__main__":
    main()
