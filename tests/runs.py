"""Shared helpers for the tests that run train.py: tiny runs of seconds, and launchers for several processes."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "tinystories"
EOS = "<|endoftext|>"
TINY_MODEL = ["--block_size", "32", "--n_layer", "2", "--n_head", "2", "--n_embd", "32"]


def small_stories(folder: Path) -> Path:
    """The first 400 train and 100 validation stories of the bundled sample, written into `folder` once.

    Runs of seconds need a small validation split most: every run ends with a full pass over it.
    """
    for split, count in (("train", 400), ("validation", 100)):
        path = folder / f"{split}.txt"
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            stories = (DATA / f"{split}.txt").read_text(encoding="utf-8").split(EOS)[:count]
            partial = path.with_suffix(".partial")
            partial.write_text(EOS.join(stories), encoding="utf-8")
            os.replace(partial, path)
    return folder


def tiny_args(tmp_path: Path, *extra: str) -> list[str]:
    """A run of seconds: a few hundred stories, a 512-token BPE, a 2-layer model; the stories and their cached
    tokens are shared by every test of the session."""
    return [
        "--dataset",
        str(small_stories(tmp_path.parent / "small-stories")),
        "--tokenizer",
        "bpe:512",
        "--cache_dir",
        str(tmp_path.parent / "token-cache"),
        *TINY_MODEL,
        "--batch_size",
        "8",
        "--gradient_accumulation_steps",
        "2",
        "--max_iters",
        "8",
        "--warmup_steps",
        "2",
        "--learning_rate",
        "3e-3",
        "--min_lr",
        "3e-4",
        "--eval_interval",
        "4",
        "--eval_iters",
        "4",
        "--eval_batch_size",
        "64",
        "--checkpoint_interval",
        "4",
        "--num_samples",
        "1",
        "--output_dir",
        str(tmp_path / "run"),
        "--seed",
        "7",
        "--mixed_precision",
        "no",
        "--cpu",
        *extra,
    ]


def run_cli(*argv: str) -> subprocess.CompletedProcess:
    # run from the checkout, as the README does: the presets name data/tinystories relative to it
    return subprocess.run([sys.executable, str(REPO / "train.py"), *argv], capture_output=True, text=True, cwd=REPO)


def launch(config: str, num_processes: int, *argv: str, port: int, extra: tuple = ()) -> subprocess.CompletedProcess:
    """`accelerate launch` with a shipped config (configs/accelerate/NAME.yaml) on this machine's CPUs.

    One thread per process so that the processes do not fight over 2 cores.
    """
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / f"configs/accelerate/{config}.yaml"),
    ]
    command += [
        "--num_processes",
        str(num_processes),
        "--main_process_port",
        str(port),
        *extra,
        str(REPO / "train.py"),
        *argv,
    ]
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600
    )


def assert_sigterm_resumes_bit_for_bit(run_args: Callable[[Path], list[str]], tmp_path: Path, last_step: int) -> None:
    """Run `run_args(folder)` whole, and again stopped by SIGTERM at its first checkpoint then resumed (`--resume`):
    both must end with exactly the same weights, optimizer state and losses at `last_step`."""
    whole = tmp_path / "whole"
    whole.mkdir()
    result = run_cli(*run_args(whole))
    assert result.returncode == 0, result.stderr

    broken = tmp_path / "broken"
    broken.mkdir()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *run_args(broken)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    checkpoints = broken / "run" / "checkpoints"
    deadline = time.monotonic() + 120
    while not any(checkpoints.glob("step_*")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    interrupted_at = max(int(path.name.removeprefix("step_")) for path in checkpoints.glob("step_*"))
    assert interrupted_at < last_step, "the run finished before the signal arrived; nothing was tested"

    result = run_cli(*run_args(broken), "--resume")
    assert result.returncode == 0, result.stderr
    assert f"resumed from {checkpoints / f'step_{interrupted_at}'}" in result.stdout

    expected, actual = whole / "run" / "checkpoints" / f"step_{last_step}", checkpoints / f"step_{last_step}"
    assert_same_tensors(load_file(expected / "model.safetensors"), load_file(actual / "model.safetensors"))
    assert_same_tensors(optimizer_tensors(expected), optimizer_tensors(actual))
    assert losses(whole / "run") == losses(broken / "run")


def assert_same_tensors(expected: dict, actual: dict) -> None:
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def optimizer_tensors(checkpoint: Path) -> dict:
    state = torch.load(checkpoint / "optimizer.bin", weights_only=True)["state"]
    return {f"{index}.{name}": value for index, tensors in state.items() for name, value in tensors.items()}


def losses(run: Path) -> list[tuple]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(record["step"], record["train_loss"], record["val_loss"]) for record in records]


def without(argv: list[str], flag: str) -> list[str]:
    """`argv` less one flag and its value."""
    index = argv.index(flag)
    return argv[:index] + argv[index + 2 :]


def signal_after_checkpoint(patch: Callable[[object, str, object], None], step: int) -> None:
    """Send the run a SIGTERM once its checkpoint of `step` is written (it then checkpoints the next step and stops),
    through `patch(module, name, value)` (a monkeypatch context's setattr)."""
    from tinystories_gpt.training import run

    real_save = run.save_checkpoint

    def save_then_signal(accelerator, saved_step, *args):
        result = real_save(accelerator, saved_step, *args)
        if saved_step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return result

    patch(run, "save_checkpoint", save_then_signal)


class FakeClock:
    """The run's clock (`training.budget.now`) for the budget's logic: time moves only while a training micro-batch
    is computed, by `seconds_per_micro_batch`, so every duration the run measures is known in advance and nothing
    depends on how busy the machine is. With `slower=(step, factor)`, micro-batches of optimizer steps from `step`
    on take `factor` times as long (another job started on the machine), whichever process computes them."""

    START = 1_000_000.0

    def __init__(self, seconds_per_micro_batch: float, slower: tuple[int, float] | None = None):
        self.seconds = self.START
        self.seconds_per_micro_batch = seconds_per_micro_batch
        self.slower = slower
        self.step = 0  # the optimizer step being computed

    def __call__(self) -> float:
        return self.seconds

    def elapsed(self) -> float:
        return self.seconds - self.START

    def micro_batch_seconds(self) -> float:
        if self.slower and self.step >= self.slower[0]:
            return self.seconds_per_micro_batch * self.slower[1]
        return self.seconds_per_micro_batch

    def install(self, patch: Callable[[object, str, object], None]) -> None:
        """Put the clock in place through `patch(module, name, value)` (monkeypatch.setattr, or setattr)."""
        from tinystories_gpt.training import budget, loop, shape

        real_loss, real_step = loop.next_token_loss, loop.optimizer_step

        def timed_loss(model, input_ids, labels):
            self.seconds += self.micro_batch_seconds()
            return real_loss(model, input_ids, labels)

        def counted_step(run, stop_requested):
            self.step = run.state.step
            return real_step(run, stop_requested)

        patch(budget, "now", self)
        patch(budget, "process_start_time", lambda: self.START)
        patch(loop, "next_token_loss", timed_loss)
        patch(shape, "next_token_loss", timed_loss)  # --small_shape's timed steps
        patch(loop, "optimizer_step", counted_step)


FAKE_CLOCK_TRAIN = """
import os
import sys
sys.path.insert(0, {tests!r})
from runs import FakeClock
from tinystories_gpt.cli.train import main

seconds = {seconds!r}
if isinstance(seconds, list):  # one per process: machines of different speeds
    seconds = seconds[int(os.environ.get("RANK", "0"))]
FakeClock(seconds, slower={slower!r}).install(setattr)
sys.exit(main(sys.argv[1:]))
"""


def fake_clock_script(
    folder: Path, seconds_per_micro_batch: float | list[float], slower: tuple[int, float] | None = None
) -> Path:
    """A train.py for a subprocess (or several, under torchrun) that runs on a FakeClock; a list gives each process
    (by its RANK) its own speed."""
    script = folder / "train_on_a_fake_clock.py"
    text = FAKE_CLOCK_TRAIN.format(tests=str(Path(__file__).parent), seconds=seconds_per_micro_batch, slower=slower)
    script.write_text(text)
    return script
