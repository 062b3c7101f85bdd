"""The last tracebacks gone (issue 22): each of these failures is one line on stderr, exit status 2 (1 for a full
disk), naming the problem and the fix, with nothing written that looks complete."""

import errno
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from runs import REPO, run_cli, tiny_args

from tinystories_gpt.cli import train as train_cli
from tinystories_gpt.data.sources import MAX_STORY_BYTES


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip() and "it/s]" not in line and "examples/s]" not in line]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def train_in_process(capsys, *argv: str) -> tuple[int, str]:
    status = train_cli.main(list(argv))
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "block_size, tokenizer, tokens", [("1", "bpe:512", 13), ("8", "gpt2", 9), ("32", "bpe:256", 37)]
)
def test_a_context_too_short_for_the_seed_prompt_is_refused_before_tokenizing(
    tmp_path, capsys, block_size, tokenizer, tokens
):
    cache = tmp_path / "cache"
    argv = tiny_args(tmp_path, "--block_size", block_size, "--tokenizer", tokenizer, "--cache_dir", str(cache))
    status, err = train_in_process(capsys, *argv)
    assert status == 2
    assert one_line(err) == (
        f"train.py: error: --block_size {block_size} cannot hold the seed prompt 'Once upon a time there was a "
        f"pumpkin.' ({tokens} tokens with this tokenizer) and a story after it, which every run writes at its end: "
        f"pass --block_size {tokens + 1} or more (the seed uses 128)"
    )
    assert not list(cache.glob("*.bin"))  # no split was tokenized


@pytest.mark.parametrize(
    "preset, message",
    [
        (
            "max_iters: [\n",
            r"is not valid YAML at line 2, column 1: expected the node content, but found '<stream end>'",
        ),
        ("grad_clip: [1, 2]\n", r": grad_clip must be a number, got \[1, 2\]. Fix that line."),
        ("compile: maybe\n", r": compile must be true or false, got 'maybe'. Fix that line."),
        ("max_iters: 2.5\n", r": max_iters must be a whole number or null, got 2.5. Fix that line."),
    ],
)
def test_a_preset_that_does_not_parse_or_holds_the_wrong_type_is_one_line(tmp_path, capsys, preset, message):
    (tmp_path / "preset.yaml").write_text(preset)
    status, err = train_in_process(capsys, *tiny_args(tmp_path, "--config", str(tmp_path / "preset.yaml")))
    assert status == 2
    line = one_line(err)
    assert line.startswith(f"train.py: error: Config file {tmp_path / 'preset.yaml'}") and re.search(message, line), (
        line
    )


def test_a_damaged_cached_tokenizer_is_named_and_trained_again(tmp_path, capsys):
    cache = tmp_path / "cache"
    argv = tiny_args(tmp_path, "--cache_dir", str(cache), "--max_iters", "2", "--eval_interval", "2")
    assert train_cli.main(argv) == 0
    (trained,) = cache.glob("tokenizer-bpe512-*")
    (trained / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", "vocab": ')  # cut short
    capsys.readouterr()
    assert train_cli.main([*argv, "--overwrite_output_dir"]) == 0
    assert f"warning: the cached tokenizer {trained} is damaged (" in capsys.readouterr().err
    assert (trained / "tokenizer.json").read_text().endswith("}")  # trained again and saved whole


@pytest.mark.slow
def test_one_enormous_story_is_refused_up_front_with_its_size(tmp_path):
    stories = tmp_path / "stories"
    stories.mkdir()
    huge = "The dog ran. " * (MAX_STORY_BYTES // 13 + 1000)  # one story, no separators: a file that lost them
    (stories / "train.txt").write_text("Tom sat.<|endoftext|>" + huge)
    (stories / "validation.txt").write_text("Sue sat.")
    result = run_cli(*tiny_args(tmp_path, "--dataset", str(stories)))
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"train.py: error: story 1 of the train split of {stories} is {len(huge.strip()):,} bytes, longer than the "
        f"{MAX_STORY_BYTES:,} a story may be (TinyStories' are a few thousand): split it into stories (in a .txt "
        "file, a line holding <|endoftext|> ends each one)"
    )


def mount(path: Path, options: str) -> Path:
    path.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs CAP_SYS_ADMIN; test_an_unwritable_folder_is_one_line covers the same code")
    return path


@pytest.fixture
def read_only(tmp_path):
    folder = mount(tmp_path / "read-only", "ro,size=1m")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def full(tmp_path):
    folder = mount(tmp_path / "full", "size=64k")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_an_output_folder_on_a_read_only_disk_is_one_line(tmp_path, read_only):
    result = run_cli(*tiny_args(tmp_path, "--output_dir", str(read_only / "run")))
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"train.py: error: cannot write {read_only / 'run'}: a read-only filesystem. Choose a place you can write "
        "(--output_dir for the run, --cache_dir for token files, HF_HOME for the Hugging Face cache), or fix its "
        "permissions"
    )


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["read-only", "full"])
def test_an_unwritable_or_full_hugging_face_cache_is_one_line(tmp_path, request, cache):
    folder = request.getfixturevalue("read_only" if cache == "read-only" else "full")
    stories = tmp_path / "stories.jsonl"  # datasets writes a jsonl source into its cache as Arrow
    stories.write_text("".join(f'{{"text": "Story {i}: Tom ran to the park and saw a dog."}}\n' for i in range(3000)))
    argv = tiny_args(tmp_path, "--dataset", str(stories))
    result = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HOME": str(folder / "hf"), "HF_DATASETS_CACHE": str(folder / "hf" / "datasets")},
    )
    line = one_line(result.stderr)
    if cache == "read-only":
        assert result.returncode == 2 and f"cannot write {folder}" in line and "a read-only filesystem" in line, line
    else:
        assert result.returncode == 1 and line.startswith("train.py: error: the disk is full: "), line
        assert "Free some space, or write elsewhere" in line, line


def test_an_unwritable_folder_is_one_line(tmp_path, capsys, monkeypatch):
    """As the tmpfs tests, without mounting anything: a folder the user may not write (root may write any)."""
    real_mkdir = Path.mkdir

    def refused(path, *args, **kwargs):
        if path == tmp_path / "locked" / "run":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused)
    status, err = train_in_process(capsys, *tiny_args(tmp_path, "--output_dir", str(tmp_path / "locked" / "run")))
    assert status == 2
    assert one_line(err).startswith(f"train.py: error: cannot write {tmp_path / 'locked' / 'run'}: permission denied.")
