"""Shared fixtures: an isolated Hugging Face cache, (from fake_hub.py) an in-memory Hub, (from exports.py) the
story models the export tests train once per session, and (from browsers.py) a headless Chromium."""

from pathlib import Path

import datasets.config
import huggingface_hub.constants
import pytest
import torch
from browsers import browser  # noqa: F401  (re-exported as a fixture)
from exports import story_models  # noqa: F401  (re-exported as a fixture)
from fake_hub import fake_hub  # noqa: F401  (re-exported as a fixture)
from transformers import AutoTokenizer

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.data.tokenization import GPT2_TOKENIZER_DIR
from tinystories_gpt.export.hub import save_hub_folder


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point every Hugging Face cache (and the token file) at a fresh folder, so tests never touch the user's.

    The libraries read their cache paths from module constants computed at import, so the environment variables
    (for subprocesses) are not enough: every constant under the real HF home is moved under the new one too.
    """
    home = tmp_path / "hf_home"
    real_home = huggingface_hub.constants.HF_HOME
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(home / "datasets"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for module in (huggingface_hub.constants, datasets.config):
        for name, value in list(vars(module).items()):
            if isinstance(value, str | Path) and str(value).startswith(real_home):
                monkeypatch.setattr(module, name, type(value)(str(home) + str(value)[len(real_home) :]))
    return home


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A random 2 x 2 x 32 model with GPT-2's vocabulary (so a story seldom ends early), context 64."""
    torch.manual_seed(0)
    config = TinyStoriesGPTConfig(block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    tokenizer = AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR)
    return save_hub_folder(TinyStoriesGPTForCausalLM(config), tokenizer, tmp_path_factory.mktemp("tiny") / "model")
