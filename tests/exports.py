"""What the export tests share: story models trained by train.py, their exports, and the side environments.

The real tools run in side environments that `.ci/side_envs.sh` builds under `.side-envs/` (or
$TINYSTORIES_SIDE_ENVS). A test whose tool is not built skips with the command that builds it, except under
TINYSTORIES_REQUIRE_SIDE_ENVS=1 (as `.ci/run` sets), where a missing tool is a failure.
"""

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import tinystories_gpt  # noqa: F401  (registers the Auto classes)
from tinystories_gpt.export.gguf import export_gguf
from tinystories_gpt.export.gpt2 import export_gpt2
from tinystories_gpt.export.onnx import export_onnx

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "tinystories"
SIDE_ENVS = Path(os.environ.get("TINYSTORIES_SIDE_ENVS", REPO / ".side-envs"))
TOKENIZERS = ("gpt2", "bpe")  # the bundled GPT-2 tokenizer, and a byte-level BPE trained by train.py
VALIDATION_STORIES = 40  # the fixture's validation split: train.py scores it whole at the end of each run
NEW_TOKENS = 32  # with the prompt, within the context of 64
# Largest logit difference of llama.cpp from our float32 model, relative to our largest logit, measured on these
# models: f32 2.7e-4 (llama.cpp's GELU is the tanh approximation through an F16 table, ours the exact erf), f16 5.0e-4,
# q8_0 7.8e-3 (the trained BPE model's largest logit is 12.4: 0.0033, 0.0062, 0.097). A misplaced tensor is O(1).
GGUF_LOGITS_TOLERANCE = {"f32": 1e-3, "f16": 2e-3, "q8_0": 3e-2}


def side_env(relative: str, what: str) -> Path:
    """A path inside the side environments, or skip (fail under TINYSTORIES_REQUIRE_SIDE_ENVS=1) without it."""
    path = SIDE_ENVS / relative
    if not path.exists():
        message = f"{what} is not built ({path} is missing): run `bash .ci/side_envs.sh`"
        if os.environ.get("TINYSTORIES_REQUIRE_SIDE_ENVS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def llama_cpp_pythonpath() -> str:
    """PYTHONPATH for llama-cpp-python and its [server] extra, as .ci/side_envs.sh builds them (importable folders)."""
    folders = [side_env("llama-cpp/llama_cpp", "llama-cpp-python").parent]
    folders.append(side_env("llama-server/sse_starlette", "llama-cpp-python's [server] extra").parent)
    return os.pathsep.join(str(folder) for folder in folders)


def validation_story() -> str:
    """The first story of the bundled validation split (the models never trained on it)."""
    return (DATA / "validation.txt").read_text().split("<|endoftext|>")[1].strip()


def prompt() -> str:
    """The validation story's first sentence, for greedy continuations."""
    return validation_story().split(".")[0] + "."


class StoryModels:
    """Two small story models trained by train.py (one per tokenizer) and their exports, each made once."""

    def __init__(self, root: Path):
        self.root = root

    @cache  # noqa: B019  (one instance per test session)
    def hub_folder(self, tokenizer: str) -> Path:
        """train.py's best/ folder: 2 layers x 2 heads x 64 wide (n_embd divisible by 32, for q8_0), context 64."""
        data = self.root / "data"
        if not data.exists():
            data.mkdir()
            (data / "train.txt").symlink_to(DATA / "train.txt")
            stories = (DATA / "validation.txt").read_text().split("<|endoftext|>\n")[1 : VALIDATION_STORIES + 1]
            (data / "validation.txt").write_text("".join(story + "<|endoftext|>\n" for story in stories))
        run = self.root / f"run-{tokenizer}"
        # The BPE model trains long enough for varied greedy stories (a model that repeats one token agrees with
        # any export that looks faithful); the GPT-2 one, whose 50,257-way softmax costs 30x more a step, only for
        # a few steps: it checks the GPT-2 vocabulary (ids, every logit), its greedy text is mostly repetition.
        spec, steps, batch = ("bpe:512", 400, 16) if tokenizer == "bpe" else ("gpt2", 60, 8)
        argv = [
            *("--dataset", str(data), "--tokenizer", spec, "--cache_dir", str(self.root / "token-cache")),
            *("--block_size", "64", "--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--dropout", "0"),
            *("--batch_size", str(batch), "--gradient_accumulation_steps", "1", "--max_iters", str(steps)),
            *("--warmup_steps", "10", "--learning_rate", "1e-2", "--min_lr", "1e-3", "--eval_interval", str(steps)),
            *("--eval_iters", "2", "--num_samples", "0", "--checkpoint_interval", "1000", "--seed", "7"),
            *("--output_dir", str(run), "--mixed_precision", "no", "--cpu"),
        ]
        # One thread: as fast for these shapes, and immune to the slowdown two threads suffer on a busy machine.
        result = subprocess.run(
            [sys.executable, str(REPO / "train.py"), *argv],
            capture_output=True,
            text=True,
            cwd=REPO,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return run / "best"

    @cache  # noqa: B019
    def gpt2_export(self, tokenizer: str) -> Path:
        return export_gpt2(self.hub_folder(tokenizer), self.root / f"gpt2-{tokenizer}")

    @cache  # noqa: B019
    def onnx_folder(self, tokenizer: str) -> Path:
        return export_onnx(self.hub_folder(tokenizer), self.root / f"onnx-{tokenizer}")

    def gguf_file(self, tokenizer: str, outtype: str = "f32") -> Path:
        path = self.root / f"{tokenizer}-{outtype}.gguf"  # made once, however the arguments are passed
        return path if path.exists() else export_gguf(self.hub_folder(tokenizer), path, outtype=outtype)

    @cache  # noqa: B019
    def ours(self, tokenizer: str):
        """(our model in float32, its tokenizer), loaded from the Hub folder."""
        folder = self.hub_folder(tokenizer)
        return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


@pytest.fixture(scope="session")
def story_models(tmp_path_factory: pytest.TempPathFactory) -> StoryModels:
    return StoryModels(tmp_path_factory.mktemp("story-models"))


def our_logits(model, input_ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([input_ids])).logits[0]


def our_greedy(model, input_ids: list[int], new_tokens: int = NEW_TOKENS) -> list[int]:
    """Our generate()'s greedy continuation: the new tokens up to end-of-text (not included)."""
    with torch.no_grad():
        output = model.generate(torch.tensor([input_ids]), max_new_tokens=new_tokens, do_sample=False)
    return up_to_eos(output[0, len(input_ids) :].tolist(), model.config.eos_token_id)


def up_to_eos(tokens: list[int], eos_token_id: int) -> list[int]:
    """A greedy continuation cut before its end-of-text, where the tools differ on keeping it."""
    return tokens[: tokens.index(eos_token_id)] if eos_token_id in tokens else tokens


def run_side_python(python: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run one of tests/side/*.py in a side environment's interpreter, offline."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(
        [str(python), str(REPO / "tests" / "side" / script), *args], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result
