"""The evaluation and generation command lines on a tiny saved model."""

import json
import math

import pytest
import torch
from transformers import AutoTokenizer

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt import evaluate as evaluate_cli
from tinystories_gpt import generate as generate_cli
from tinystories_gpt.tokenization import GPT2_TOKENIZER_DIR

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


def test_generate_missing_model_folder(tmp_path, capsys):
    assert generate_cli.main([str(tmp_path / "nowhere"), "--prompt", "Hi"]) == 2
    assert "cannot load a model from" in capsys.readouterr().err
