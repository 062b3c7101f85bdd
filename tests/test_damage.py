"""Files proven by their contents (issue 22): a token file, a checkpoint or a model folder changed in place at the
same size is found out by its SHA-256, named, and rebuilt or refused; never trained on or loaded as if whole."""

import hashlib
import json
import re
import shutil

import numpy as np
import pytest
from runs import tiny_args, without

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.cli import convert as convert_cli
from tinystories_gpt.cli import evaluate as evaluate_cli
from tinystories_gpt.cli import generate as generate_cli
from tinystories_gpt.data.sources import load_text_splits
from tinystories_gpt.data.token_files import tokenize_split
from tinystories_gpt.data.tokenization import load_gpt2_tokenizer
from tinystories_gpt.export.hub import save_hub_folder
from tinystories_gpt.training import loop
from tinystories_gpt.training.loop import parse_args, train

STORIES = "Tom had a red ball.<|endoftext|>Sue sat by the sea. She saw a boat.<|endoftext|>The end came soon."


@pytest.fixture
def built(tmp_path):
    """A validation token file built from three stories with GPT-2's tokenizer, and what it held."""
    (tmp_path / "stories").mkdir()
    (tmp_path / "stories" / "train.txt").write_text(STORIES)
    texts = load_text_splits(tmp_path / "stories", validation_split_percentage=50)["train"]
    tokenizer = load_gpt2_tokenizer()
    token_file = tokenize_split(texts, tokenizer, tmp_path / "cache", "train")
    return texts, tokenizer, token_file, token_file.path.read_bytes()


def test_a_token_file_changed_in_place_is_named_and_rebuilt(built, tmp_path, capsys):
    texts, tokenizer, token_file, original = built
    token_file.path.write_bytes(b"\0" * len(original))  # zeros over the ids: the same size as before
    again = tokenize_split(texts, tokenizer, tmp_path / "cache", "train")
    err = capsys.readouterr().err
    assert f"the cached token file {token_file.path} is damaged: its contents changed since it was written" in err
    assert "Rebuilding it" in err
    assert again == token_file and again.path.read_bytes() == original
    assert tokenize_split(texts, tokenizer, tmp_path / "cache", "train") == token_file  # whole again: no line
    assert capsys.readouterr().err == ""


def test_ids_past_the_vocabulary_are_caught_even_with_a_matching_checksum(built, tmp_path, capsys):
    texts, tokenizer, token_file, original = built
    ids = np.frombuffer(original, dtype=token_file.dtype).copy()
    ids[3] = 60_000  # past GPT-2's 50,257
    token_file.path.write_bytes(ids.tobytes())
    sidecar = token_file.path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps(meta | {"sha256": hashlib.sha256(ids.tobytes()).hexdigest()}))  # the sidecar too
    again = tokenize_split(texts, tokenizer, tmp_path / "cache", "train")
    assert "it holds token id 60000, past the 50257-token vocabulary it was built with" in capsys.readouterr().err
    assert again.path.read_bytes() == original


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "model"
    model = TinyStoriesGPTForCausalLM(TinyStoriesGPTConfig(block_size=64, n_layer=1, n_head=2, n_embd=16))
    save_hub_folder(model, load_gpt2_tokenizer(), folder)
    return folder


def damaged(model_folder, tmp_path, damage: str):
    copy = tmp_path / "model"
    shutil.copytree(model_folder, copy)
    weights = copy / "model.safetensors"
    if damage == "changed in place":
        data = bytearray(weights.read_bytes())
        data[-32:] = b"\xff" * 32
        weights.write_bytes(bytes(data))
    elif damage == "cut short":
        weights.write_bytes(weights.read_bytes()[:100])
    elif damage == "cut short, no manifest":  # a folder assembled by hand: its format tells
        (copy / "manifest.json").unlink()
        weights.write_bytes(weights.read_bytes()[:100])
    else:
        (copy / "config.json").unlink()
    return copy


DAMAGES = {
    "changed in place": r"model.safetensors has changed since it was saved \(its SHA-256 differs",
    "cut short": r"model.safetensors is 100 bytes, [\d,]+ when it was saved",
    "cut short, no manifest": r"model.safetensors does not read as safetensors",
    "no config.json": r"has no config.json, so it is not a saved model",
}
COMMANDS = {
    "evaluate": lambda folder, tmp: evaluate_cli.main([str(folder), "--dataset", str(tmp / "nowhere")]),
    "generate": lambda folder, tmp: generate_cli.main([str(folder), "--prompt", "Once"]),
    "convert gpt2": lambda folder, tmp: convert_cli.main(["gpt2", str(folder), str(tmp / "out")]),
    "convert gguf": lambda folder, tmp: convert_cli.main(["gguf", str(folder), str(tmp / "out.gguf")]),
}


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("command", COMMANDS)
def test_a_damaged_model_folder_is_named_as_such_by_every_command(model_folder, tmp_path, capsys, damage, command):
    folder = damaged(model_folder, tmp_path, damage)
    assert COMMANDS[command](folder, tmp_path) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.strip().splitlines() if "it/s]" not in line]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    assert re.search(DAMAGES[damage], lines[0]), lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.gguf").exists()


@pytest.mark.slow
def test_init_from_a_damaged_folder_is_refused(model_folder, tmp_path):
    folder = damaged(model_folder, tmp_path, "changed in place")
    with pytest.raises(ValueError, match=r"model folder .* is damaged: model.safetensors has changed"):
        argv = tiny_args(tmp_path, "--init_from", str(folder))
        for flag in ("--tokenizer", "--block_size", "--n_layer", "--n_head", "--n_embd"):  # the parent's own
            argv = without(argv, flag)
        train(*parse_args(argv))


@pytest.mark.slow
def test_a_best_folder_changed_before_the_final_pass_is_refused_not_scored(tmp_path, monkeypatch):
    real_final_pass = loop.final_pass

    def damage_then_final_pass(run):
        weights = run.output_dir / "best" / "model.safetensors"
        data = bytearray(weights.read_bytes())
        data[-32:] = b"\xff" * 32
        weights.write_bytes(bytes(data))
        return real_final_pass(run)

    monkeypatch.setattr(loop, "final_pass", damage_then_final_pass)
    with pytest.raises(ValueError, match=r"best is not the model this run saved: model.safetensors has changed"):
        train(*parse_args(tiny_args(tmp_path)))
