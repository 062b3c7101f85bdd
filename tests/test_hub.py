"""The Hub-ready folder: its files and card, atomic replacement, the pull path without this package, and the push.

The push and the in-process pull run against the in-memory fake Hub (tests/fake_hub.py), so the real
huggingface_hub and Transformers clients go through every route they use, and nothing reaches the network.
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.data.tokenization import load_gpt2_tokenizer
from tinystories_gpt.export.hub import TEMPLATE_PATH, TRANSFORMERS_REQUIREMENT, push_to_hub, save_hub_folder

REPO = Path(__file__).resolve().parents[1]
METRICS = {"loss": 1.5, "bits_per_byte": 0.55, "tokens": 2048, "bytes": 8192}
TRAINING = {"dataset": "roneneldan/TinyStories", "steps": 24, "learning_rate": 1e-4, "batch_size": 8}
SAMPLES = ["Once upon a time there was a pumpkin.\nIt was orange.", "Lily found a red ball."]
PROMPT_IDS = [[7454, 2402, 257, 640]]  # "Once upon a time"


@pytest.fixture(scope="module")
def model() -> TinyStoriesGPTForCausalLM:
    torch.manual_seed(0)
    config = TinyStoriesGPTConfig(vocab_size=50257, block_size=32, n_layer=2, n_head=2, n_embd=32)
    return TinyStoriesGPTForCausalLM(config).eval()


@pytest.fixture(scope="module")
def hub_folder(model, tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("hub")
    loss_curve = work / "loss_curve.png"
    loss_curve.write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    return save_hub_folder(
        model,
        load_gpt2_tokenizer(),
        work / "best",
        metrics=METRICS,
        training=TRAINING,
        loss_curve=loss_curve,
        samples=SAMPLES,
        repo_id="user/tiny-stories",
        dataset_id="roneneldan/TinyStories",
        evaluation="a full pass over the validation split",
    )


def logits(model, input_ids=PROMPT_IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(input_ids)).logits


# The folder and its card ---------------------------------------------------------------------------------------


def test_hub_folder_holds_weights_code_tokenizer_generation_defaults_and_image(hub_folder, model):
    names = {path.name for path in hub_folder.iterdir()}
    assert names >= {
        "model.safetensors",
        "config.json",
        "configuration_tinystories_gpt.py",
        "modeling_tinystories_gpt.py",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
        "README.md",
        "loss_curve.png",
    }
    assert json.loads((hub_folder / "config.json").read_text())["auto_map"]["AutoConfig"] == (
        "configuration_tinystories_gpt.TinyStoriesGPTConfig"
    )
    generation = json.loads((hub_folder / "generation_config.json").read_text())
    assert generation["do_sample"] and generation["temperature"] == 0.8 and generation["top_k"] == 200
    assert generation["eos_token_id"] == generation["pad_token_id"] == 50256
    assert 0 < generation["max_new_tokens"] < model.config.block_size
    torch.testing.assert_close(logits(AutoModelForCausalLM.from_pretrained(hub_folder)), logits(model))


def test_card_parses_as_hub_metadata_with_the_measured_results(hub_folder):
    card = ModelCard.load(hub_folder / "README.md")
    assert card.data.license == "mit" and card.data.language == "en"
    assert card.data.datasets == ["roneneldan/TinyStories"]
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-generation")
    assert "tinystories" in card.data.tags and card.data.model_name == "tiny-stories"
    results = {result.metric_type: result for result in card.data.eval_results}
    assert results["loss"].metric_value == 1.5 and results["loss"].dataset_split == "validation"
    assert results["perplexity"].metric_value == round(math.exp(1.5), 4)
    assert results["bits_per_byte"].metric_value == 0.55
    assert {result.dataset_type for result in results.values()} == {"roneneldan/TinyStories"}

    text = card.text
    assert "# tiny-stories" in text and "| n_layer | 2 |" in text and "| learning_rate | 0.0001 |" in text
    assert "| Bits per byte | 0.55 |" in text and "| validation tokens | 2048 |" in text
    assert "![Training and validation loss](loss_curve.png)" in text
    assert "> Once upon a time there was a pumpkin.\n> It was orange." in text
    assert 'model_id = "user/tiny-stories"' in text and "trust_remote_code=True" in text
    assert "## Limitations" in text


def test_card_without_metrics_has_no_model_index(model, tmp_path):
    folder = save_hub_folder(model, load_gpt2_tokenizer(), tmp_path / "converted")
    card = ModelCard.load(folder / "README.md")
    assert card.data.eval_results is None and "model-index" not in card.content
    assert "No evaluation results were recorded" in card.text and not (folder / "loss_curve.png").exists()


def test_card_names_the_transformers_release_the_code_needs(hub_folder):
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"{TRANSFORMERS_REQUIREMENT}",' in pyproject
    assert f"needs only `torch` and `{TRANSFORMERS_REQUIREMENT}`" in (hub_folder / "README.md").read_text()


def test_top_level_model_card_is_the_packaged_template():
    assert (REPO / "model_card.md").resolve() == TEMPLATE_PATH
    assert "{{ card_data }}" in TEMPLATE_PATH.read_text()


def test_existing_folder_is_kept_until_a_complete_one_replaces_it(model, tmp_path):
    tokenizer = load_gpt2_tokenizer()
    best = save_hub_folder(model, tokenizer, tmp_path / "best", metrics={"val_loss": 3.0, "step": 8})
    before = (best / "README.md").read_text()
    with pytest.raises(ValueError, match="best already exists; pass overwrite=True"):
        save_hub_folder(model, tokenizer, best)
    with pytest.raises(FileNotFoundError, match="loss curve .*missing.png does not exist"):
        save_hub_folder(model, tokenizer, best, loss_curve=tmp_path / "missing.png", overwrite=True)
    assert (best / "README.md").read_text() == before
    assert [path.name for path in tmp_path.iterdir()] == ["best"]  # no staged or old folders left behind

    save_hub_folder(model, tokenizer, best, metrics=METRICS, overwrite=True)
    assert "| Validation loss (nats/token) | 1.5 |" in (best / "README.md").read_text()
    assert [path.name for path in tmp_path.iterdir()] == ["best"]


def test_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path):
    small = TinyStoriesGPTForCausalLM(TinyStoriesGPTConfig(vocab_size=300, block_size=8, n_layer=1, n_head=1, n_embd=8))
    with pytest.raises(ValueError, match="tokenizer has 50257 tokens but the model's vocab_size is 300"):
        save_hub_folder(small, load_gpt2_tokenizer(), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# Pull: by repo id, offline, where this package cannot be imported -------------------------------------------

PULL_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["tinystories_gpt"] = None  # as if the package were not installed: only the Hub's code can run
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    repo_id, logits_file = sys.argv[1], sys.argv[2]
    model = AutoModelForCausalLM.from_pretrained(repo_id, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules."), type(model).__module__
    tokenizer = AutoTokenizer.from_pretrained(repo_id, trust_remote_code=True)
    with torch.no_grad():
        torch.save(model(tokenizer("Once upon a time", return_tensors="pt").input_ids).logits, logits_file)
    generator = pipeline("text-generation", model=repo_id, trust_remote_code=True)
    print(generator("Once upon a time", max_new_tokens=5, do_sample=False)[0]["generated_text"])
    """
)


def place_in_cache(cache: Path, repo_id: str, folder: Path) -> None:
    """Lay a folder out as a downloaded Hub snapshot: models--org--name/snapshots/<commit>/, refs/main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "snapshots" / commit).mkdir(parents=True)
    for path in folder.iterdir():
        (repo / "snapshots" / commit / path.name).write_bytes(path.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


@pytest.mark.slow
def test_pull_by_repo_id_offline_without_the_package(hub_folder, model, tmp_path):
    home = tmp_path / "hf_home"
    place_in_cache(home / "hub", "user/tiny-stories", hub_folder)
    env = os.environ | {"HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", PULL_SCRIPT, "user/tiny-stories", str(tmp_path / "logits.pt")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("Once upon a time") and len(result.stdout.strip()) > 16
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), logits(model))


# Push: the real client against the fake Hub -------------------------------------------------------------------


@pytest.mark.slow
def test_push_then_pull_by_repo_id(hub_folder, model, fake_hub, hf_cache):
    url = push_to_hub(hub_folder, "user/tiny-stories", private=True)

    repo = fake_hub.repos["model", "user/tiny-stories"]
    assert repo.private and url.endswith(repo.sha)
    assert repo.files == {path.name: path.read_bytes() for path in hub_folder.iterdir()}
    routes = {(request.method, request.url.path.split("/tiny-stories")[-1]) for request in fake_hub.requests}
    assert {("POST", "/api/repos/create"), ("POST", "/api/validate-yaml"), ("POST", "/preupload/main")} <= routes
    assert ("POST", "/commit/main") in routes

    pulled = AutoModelForCausalLM.from_pretrained("user/tiny-stories", trust_remote_code=True)
    torch.testing.assert_close(logits(pulled), logits(model))
    tokenizer = AutoTokenizer.from_pretrained("user/tiny-stories", trust_remote_code=True)
    generator = pipeline("text-generation", model=pulled, tokenizer=tokenizer)
    assert generator("Once upon a time", max_new_tokens=3, do_sample=False)[0]["generated_text"].startswith("Once")
    card = ModelCard.load("user/tiny-stories")
    assert {result.metric_type for result in card.data.eval_results} == {"loss", "perplexity", "bits_per_byte"}

    push_to_hub(hub_folder, "user/tiny-stories")  # pushing again updates the existing repo
    assert fake_hub.repos["model", "user/tiny-stories"].private


def test_push_to_a_branch_leaves_main_alone(hub_folder, model, fake_hub, hf_cache):
    push_to_hub(hub_folder, "user/tiny-stories", revision="candidate")
    repo = fake_hub.repos["model", "user/tiny-stories"]
    assert repo.files == {} and set(repo.branches["candidate"].files) == {path.name for path in hub_folder.iterdir()}
    pulled = AutoModelForCausalLM.from_pretrained("user/tiny-stories", revision="candidate", trust_remote_code=True)
    torch.testing.assert_close(logits(pulled), logits(model))


def test_push_refuses_a_folder_that_is_not_hub_ready(tmp_path, fake_hub):
    (tmp_path / "step_8").mkdir()
    (tmp_path / "step_8" / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="not a Hub-ready folder: it lacks config.json, generation_config.json"):
        push_to_hub(tmp_path / "step_8", "user/x")
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        push_to_hub(tmp_path / "nowhere", "user/x")
    assert fake_hub.requests == []


@pytest.mark.slow
def test_cli_push_reports_bad_input_in_one_line(tmp_path, hub_folder):
    result = subprocess.run(
        [sys.executable, str(REPO / "convert.py"), "push", str(hub_folder), "not-a-repo-id"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "convert.py: error: repo id 'not-a-repo-id' must look like user/name (or org/name)"
