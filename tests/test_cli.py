"""The evaluation and generation command lines on a tiny saved model."""

import json
import math
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.cli import evaluate as evaluate_cli
from tinystories_gpt.cli import generate as generate_cli
from tinystories_gpt.data.tokenization import GPT2_TOKENIZER_DIR

REPO = Path(__file__).resolve().parents[1]
STORIES = ["Tom had a red ball.", "Lily saw a big cat. She smiled.", "The sun was warm and happy."]


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = TinyStoriesGPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    TinyStoriesGPTForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR).save_pretrained(folder)
    return folder


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "stories"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": story}) + "\n" for story in STORIES))
    return folder


@pytest.mark.slow
def test_evaluate_matches_a_direct_computation(saved_model, dataset, capsys, tmp_path):
    assert evaluate_cli.main([str(saved_model), "--dataset", str(dataset), "--json", "--cache_dir", str(tmp_path)]) == 0
    figures = json.loads(capsys.readouterr().out)

    # every story's tokens then <|endoftext|>, predicted from a leading <|endoftext|>: one forward fits it all
    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    ids = [tokenizer.eos_token_id]
    for story in STORIES:
        ids += tokenizer(story).input_ids + [tokenizer.eos_token_id]
    assert len(ids) <= 64
    model = TinyStoriesGPTForCausalLM.from_pretrained(saved_model).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids[:-1]])).logits[0]
    nats = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
    num_bytes = sum(len(story.encode()) + 1 for story in STORIES)

    assert figures["tokens"] == len(ids) - 1 and figures["bytes"] == num_bytes
    assert figures["loss"] == pytest.approx(nats / (len(ids) - 1), rel=1e-5)
    assert figures["perplexity"] == pytest.approx(math.exp(figures["loss"]), rel=1e-9)
    assert figures["bits_per_byte"] == pytest.approx(figures["loss"] * figures["tokens"] / (num_bytes * math.log(2)))


def test_evaluate_missing_model_folder_is_a_clear_error(dataset, tmp_path, capsys):
    assert evaluate_cli.main([str(tmp_path / "nowhere"), "--dataset", str(dataset)]) == 2
    assert "cannot load a model from" in capsys.readouterr().err


@pytest.mark.slow
def test_generate_with_a_seed_is_reproducible(saved_model, capsys):
    argv = [str(saved_model), "--prompt", "Once upon a time", "--max_new_tokens", "12", "--seed", "3"]
    assert generate_cli.main(argv) == 0
    first = capsys.readouterr().out
    assert generate_cli.main(argv) == 0
    assert capsys.readouterr().out == first and first.startswith("Once upon a time")
    assert generate_cli.main([*argv, "--num_return_sequences", "2", "--top_k", "5", "--temperature", "0.7"]) == 0
    assert capsys.readouterr().out.count("--- story") == 2


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "   "], "the prompt is empty"),
        (["--prompt", "word " * 70], "shorten the prompt"),
        (["--prompt", "Once", "--max_new_tokens", "100"], "at most --max_new_tokens 63"),
    ],
)
def test_generate_bad_input_gives_clear_errors(saved_model, capsys, extra, message):
    assert generate_cli.main([str(saved_model), *extra]) == 2
    assert message in capsys.readouterr().err


def test_generate_keeps_a_pad_id_of_0(saved_model, tmp_path, monkeypatch):
    folder = tmp_path / "pad0"
    TinyStoriesGPTForCausalLM.from_pretrained(saved_model).save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(saved_model)
    tokenizer.pad_token = "!"  # id 0
    tokenizer.save_pretrained(folder)
    seen = []
    real_generate = TinyStoriesGPTForCausalLM.generate

    def recording_generate(model, *args, **kwargs):
        seen.append(kwargs["pad_token_id"])
        return real_generate(model, *args, **kwargs)

    monkeypatch.setattr(TinyStoriesGPTForCausalLM, "generate", recording_generate)
    assert generate_cli.main([str(folder), "--prompt", "Once", "--max_new_tokens", "2", "--greedy"]) == 0
    assert seen == [0]


def test_generate_missing_model_folder(tmp_path, capsys):
    assert generate_cli.main([str(tmp_path / "nowhere"), "--prompt", "Hi"]) == 2
    assert "cannot load a model from" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_runs_from_an_installed_wheel_outside_the_checkout(saved_model, dataset, tmp_path, capsys):
    """The wheel carries everything the command needs (the metric, the card template, the GPT-2 tokenizer)."""
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)]
    subprocess.run(build, check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--quiet"]
    subprocess.run([*install, str(next(wheels.glob("*.whl")))], check=True, capture_output=True)
    # the dependencies come from this environment, as a plain path (its .pth files, the editable install's
    # among them, are not run), so the package itself can only come from the wheel
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site_packages) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    arguments = [str(saved_model), "--dataset", str(dataset), "--json"]
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    for command in ([str(python), "-m", "tinystories_gpt.cli.evaluate"], [str(venv / "bin" / "tinystories-evaluate")]):
        result = subprocess.run([*command, *arguments], capture_output=True, text=True, cwd=outside)
        assert result.returncode == 0, result.stderr
        figures = json.loads(result.stdout)
        assert evaluate_cli.main([*arguments, "--cache_dir", str(tmp_path / "cache")]) == 0
        assert figures == json.loads(capsys.readouterr().out)
    where = subprocess.run(
        [str(python), "-c", "import tinystories_gpt; print(tinystories_gpt.__file__)"],
        capture_output=True,
        text=True,
        cwd=outside,
    ).stdout
    assert where.startswith(site_packages), where
