"""GGUF in llama.cpp (llama-cpp-python, compiled from source by .ci/side_envs.sh): our `convert.py gguf` files and
llama.cpp's own convert_hf_to_gguf.py run on our GPT-2 export, against our model on a trained model of each
tokenizer: the same token ids for a validation story, logits within the measured tolerance, the same greedy story.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from exports import (
    GGUF_LOGITS_TOLERANCE as LOGITS_TOLERANCE,
)
from exports import NEW_TOKENS, REPO, our_greedy, our_logits, prompt, side_env, validation_story

pytestmark = pytest.mark.slow  # every test here trains a model or runs a real tool


def llama_cpp_module():
    """The llama_cpp package from the side environment, imported into this process."""
    folder = side_env("llama-cpp/llama_cpp", "llama-cpp-python")
    if str(folder.parent) not in sys.path:
        sys.path.insert(0, str(folder.parent))
    import llama_cpp

    return llama_cpp


def what_llama_cpp_computes(gguf_file: Path, text: str, prompt_text: str, context: int):
    """(token ids of `text`, logits of its first `context` tokens, greedy continuation of `prompt_text`)."""
    llama_cpp = llama_cpp_module()
    llm = llama_cpp.Llama(str(gguf_file), n_ctx=context, logits_all=True, n_threads=2, verbose=False)
    input_ids = llm.tokenize(text.encode(), add_bos=False, special=True)
    llm.eval(input_ids[:context])
    logits = np.array(llm.scores[: min(context, len(input_ids))])
    llm.reset()
    prompt_ids = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    greedy = []
    for token in llm.generate(prompt_ids, top_k=1, temp=0.0, reset=True):
        if token == llm.token_eos() or len(greedy) == NEW_TOKENS:
            break
        greedy.append(token)
    llm.close()
    return input_ids, logits, greedy


def assert_llama_cpp_agrees(story_models, tokenizer: str, gguf_file: Path, tolerance: float) -> None:
    model, text_tokenizer = story_models.ours(tokenizer)
    text = validation_story()
    input_ids, logits, greedy = what_llama_cpp_computes(gguf_file, text, prompt(), model.config.block_size)
    assert input_ids == text_tokenizer(text)["input_ids"]
    expected = our_logits(model, input_ids[: model.config.block_size]).numpy()
    assert np.abs(logits - expected).max() < tolerance * np.abs(expected).max()
    assert greedy == our_greedy(model, text_tokenizer(prompt())["input_ids"])


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe"])
def test_our_f32_gguf_runs_in_llama_cpp_like_our_model(story_models, tokenizer):
    assert_llama_cpp_agrees(story_models, tokenizer, story_models.gguf_file(tokenizer), LOGITS_TOLERANCE["f32"])


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_quantised_gguf_runs_in_llama_cpp_like_our_model(story_models, outtype):
    gguf_file = story_models.gguf_file("bpe", outtype)
    assert gguf_file.stat().st_size < story_models.gguf_file("bpe").stat().st_size
    assert_llama_cpp_agrees(story_models, "bpe", gguf_file, LOGITS_TOLERANCE[outtype])


def test_gguf_from_the_gpt2_export_is_the_same_file(story_models, tmp_path):
    from_export = run_convert("gguf", str(story_models.gpt2_export("bpe")), str(tmp_path / "from-export.gguf"))
    assert from_export.returncode == 0, from_export.stderr
    assert (tmp_path / "from-export.gguf").read_bytes() == story_models.gguf_file("bpe").read_bytes()


def test_llama_cpp_converter_accepts_our_gpt2_export(story_models, tmp_path):
    python = side_env("tf457/bin/python", "the Transformers 4.57 environment llama.cpp's converter runs in")
    converter = side_env("llama.cpp/convert_hf_to_gguf.py", "the llama.cpp source")
    converted = tmp_path / "converted.gguf"
    result = subprocess.run(
        [str(python), str(converter), str(story_models.gpt2_export("gpt2")), "--outfile", str(converted)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]  # it reads n_ctx from config.json
    assert_llama_cpp_agrees(story_models, "gpt2", converted, LOGITS_TOLERANCE["f32"])


def test_llama_cpp_converter_refuses_a_trained_bpe_which_convert_py_declares(story_models, tmp_path):
    # Why `convert.py gguf` exists beside llama.cpp's converter: the converter knows BPE pre-tokenizers only by
    # a hash of their output, so it refuses every tokenizer trained here (which splits text like GPT-2).
    python = side_env("tf457/bin/python", "the Transformers 4.57 environment llama.cpp's converter runs in")
    converter = side_env("llama.cpp/convert_hf_to_gguf.py", "the llama.cpp source")
    result = subprocess.run(
        [str(python), str(converter), str(story_models.gpt2_export("bpe")), "--outfile", str(tmp_path / "x.gguf")],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "BPE pre-tokenizer was not recognized" in result.stderr


# Bad input -----------------------------------------------------------------------------------------------------


def run_convert(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "convert.py"), *args], capture_output=True, text=True)


def assert_refused(result: subprocess.CompletedProcess, message: str, output: Path) -> None:
    """Exit status 2, one line on stderr naming the fix, nothing written."""
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"convert.py: error: {message}"]
    assert not output.exists() and not list(output.parent.glob(f".{output.name}*"))


def test_gguf_of_a_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes").mkdir()
    output = tmp_path / "out.gguf"
    message = (
        f"{tmp_path / 'notes'} has no config.json, so it is not a saved model; pass a folder written by "
        "save_pretrained (train.py's best/, or a convert.py output)"
    )
    assert_refused(run_convert("gguf", str(tmp_path / "notes"), str(output)), message, output)


def test_gguf_with_an_unknown_outtype_is_refused(story_models, tmp_path):
    output = tmp_path / "out.gguf"
    result = run_convert("gguf", str(story_models.hub_folder("bpe")), str(output), "--outtype", "q4_k")
    assert_refused(result, "unknown outtype 'q4_k'; pick one of f32, f16, q8_0 (--outtype f16, say)", output)


def test_q8_0_of_a_model_whose_rows_32_does_not_divide_is_refused(tmp_path):
    from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
    from tinystories_gpt.data.tokenization import load_gpt2_tokenizer
    from tinystories_gpt.export.hub import save_hub_folder

    config = TinyStoriesGPTConfig(vocab_size=50257, block_size=16, n_layer=1, n_head=2, n_embd=48)
    folder = save_hub_folder(TinyStoriesGPTForCausalLM(config), load_gpt2_tokenizer(), tmp_path / "narrow")
    output = tmp_path / "out.gguf"
    result = run_convert("gguf", str(folder), str(output), "--outtype", "q8_0")
    message = (
        "q8_0 quantises rows in blocks of 32 values, but this model's rows are n_embd=48 wide; use --outtype f16 "
        "or f32, or a model whose n_embd is a multiple of 32"
    )
    assert_refused(result, message, output)
    assert run_convert("gguf", str(folder), str(output), "--outtype", "f16").returncode == 0
