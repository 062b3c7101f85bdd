"""The training loop end to end on the bundled data, plus its recipe pieces and bad inputs."""

import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from runs import REPO, assert_sigterm_resumes_bit_for_bit, run_cli, tiny_args
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

from tinystories_gpt.cli import evaluate as evaluate_cli
from tinystories_gpt.evaluation.losses import next_token_loss
from tinystories_gpt.training.loop import TrainingDiverged, parse_args, train


@pytest.mark.slow
def test_end_to_end_run_leaves_a_hub_ready_model(tmp_path):
    argv = tiny_args(tmp_path, "--max_iters", "24", "--eval_interval", "8", "--report_to", "tensorboard")
    model_args, data_args, args = parse_args(argv)
    result = train(model_args, data_args, args)
    run = Path(args.output_dir)

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in metrics] == [8, 16, 24]
    assert metrics[-1]["val_loss"] < metrics[0]["val_loss"]
    assert (run / "loss_curve.png").read_bytes().startswith(b"\x89PNG")
    assert (run / "samples.md").read_text().count("## step") == 3
    assert list((run / "logs").rglob("events.out.tfevents.*")), "tensorboard got no events"
    assert json.loads((run / "final_metrics.json").read_text())["bits_per_byte"] == result["bits_per_byte"]
    assert result["bits_per_byte"] > 0 and result["tokens"] > 0

    best = run / "best"
    model = AutoModelForCausalLM.from_pretrained(best)
    tokenizer = AutoTokenizer.from_pretrained(best)
    assert len(tokenizer) <= model.config.vocab_size and model.config.eos_token_id == tokenizer.eos_token_id
    generator = pipeline("text-generation", model=model, tokenizer=tokenizer)
    text = generator("Once upon a time", max_new_tokens=10, do_sample=False)[0]["generated_text"]
    assert text.startswith("Once upon a time") and len(text) > len("Once upon a time")
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["step_20", "step_24"]  # keep_checkpoints=2

    card = ModelCard.load(best / "README.md")  # local files: named as such, no Hub dataset claimed
    assert card.data.datasets is None and card.data.eval_results is None and "roneneldan" not in card.content
    stories = tmp_path.parent / "small-stories"
    assert f"trained on local files (`{stories}`)" in card.text
    assert f"a full pass over the validation split of {stories}: every token predicted once" in card.text


def test_an_unfinished_run_says_its_card_figures_are_interim(tmp_path, monkeypatch):
    from tinystories_gpt.training import loop

    monkeypatch.setattr(loop, "final_pass", lambda run: {})  # as if killed before the final pass
    train(*parse_args(tiny_args(tmp_path)))
    text = ModelCard.load(tmp_path / "run" / "best" / "README.md").text
    assert "an estimate on 4 fixed batches of 64 x 32-token windows of the validation split" in text
    assert "interim figures" in text


@pytest.mark.slow
def test_attention_kernel_changes_speed_not_training(tmp_path):
    """--attn_implementation eager (the quickstart's, faster on a CPU) trains the same weights as sdpa."""
    weights = {}
    for kernel in ("sdpa", "eager"):
        args = tiny_args(tmp_path / kernel, "--attn_implementation", kernel, "--num_samples", "0")
        result = train(*parse_args(args))
        weights[kernel] = load_file(Path(result["best_dir"]) / "model.safetensors")
    assert weights["sdpa"].keys() == weights["eager"].keys()
    for name, tensor in weights["sdpa"].items():
        torch.testing.assert_close(weights["eager"][name], tensor, rtol=0, atol=1e-5, msg=name)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "eager" / "run" / "best")
    assert reloaded.config._attn_implementation == "sdpa"  # the kernel is a training choice, not saved


def test_output_dir_holding_another_run_is_refused(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("{}\n")
    with pytest.raises(ValueError, match="--overwrite_output_dir"):
        train(*parse_args(tiny_args(tmp_path)))


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such-folder"):
        train(*parse_args(tiny_args(tmp_path, "--dataset", str(tmp_path / "no-such-folder"))))


def test_tokenizer_larger_than_vocab_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="vocab_size"):
        train(*parse_args(tiny_args(tmp_path, "--vocab_size", "300")))


def test_resume_from_a_checkpoint_of_another_shape_is_refused(tmp_path):
    train(*parse_args(tiny_args(tmp_path, "--max_iters", "4")))
    with pytest.raises(ValueError, match="n_embd 32 -> 64"):
        train(*parse_args(tiny_args(tmp_path, "--resume", "--n_embd", "64")))


@pytest.mark.slow
def test_checkpoint_rotation_leaves_stray_folders_alone(tmp_path):
    train(*parse_args(tiny_args(tmp_path, "--max_iters", "4")))
    checkpoints = tmp_path / "run" / "checkpoints"
    (checkpoints / "step_x").mkdir()  # someone's copy, not a checkpoint of this run
    train(*parse_args(tiny_args(tmp_path, "--resume", "--max_iters", "12", "--keep_checkpoints", "1")))
    assert sorted(path.name for path in checkpoints.iterdir()) == ["step_12", "step_x"]


@pytest.mark.slow
def test_cli_reports_bad_input_in_one_line(tmp_path):
    result = run_cli("--min_lr", "1", "--learning_rate", "0.1", "--output_dir", str(tmp_path / "x"))
    assert result.returncode == 2
    assert result.stderr.strip().startswith("train.py: error: min_lr (1.0)")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_sigterm_leaves_a_checkpoint_that_resumes_bit_for_bit(tmp_path):
    """Interrupted + resumed must end with exactly the weights and optimizer of the run never interrupted."""
    recipe = ["--max_iters", "12", "--checkpoint_interval", "2", "--eval_interval", "6", "--dropout", "0.1"]
    assert_sigterm_resumes_bit_for_bit(lambda folder: tiny_args(folder, *recipe), tmp_path, last_step=12)


@pytest.mark.slow
def test_quickstart_preset_runs_shortened(tmp_path):
    """The README's quickstart command, its time budget capped at a few steps: it ends with a story, the time each
    phase took and the output listing."""
    output_dir = tmp_path / "quickstart"
    result = run_cli(
        "--config",
        str(REPO / "configs" / "quickstart.yaml"),
        "--max_iters",
        "12",
        "--warmup_steps",
        "6",
        "--eval_interval",
        "6",
        "--eval_iters",
        "2",
        "--output_dir",
        str(output_dir),
        "--cache_dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    assert "time budget: 9m30s from the start of the process; max_iters is chosen after 6 steps" in result.stdout
    assert "max_iters = 12 (the --max_iters cap)" in result.stdout
    assert re.search(
        r"time: tokenizer [\dms]+, tokenization [\dms]+, .*, final pass [\dms]+; [\dms]+ in all", result.stdout
    )
    assert "the best model's story for 'Once upon a time there was a pumpkin.'" in result.stdout
    assert "bits per byte" in result.stdout and f"{output_dir}/" in result.stdout
    for name in ("best", "checkpoints", "metrics.jsonl", "final_metrics.json", "loss_curve.png", "samples.md"):
        assert (output_dir / name).exists(), name
    assert "tinystories" in (output_dir / "best" / "README.md").read_text()


def test_a_diverging_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from tinystories_gpt.training import loop

    calls = []

    def loss_turning_nan(model, inputs, targets):  # the 5th optimizer step (micro-batches 9, 10) sees NaN
        calls.append(None)
        loss = next_token_loss(model, inputs, targets)
        return loss * float("nan") if len(calls) > 8 else loss

    monkeypatch.setattr(loop, "next_token_loss", loss_turning_nan)
    argv = tiny_args(tmp_path, "--max_iters", "12", "--checkpoint_interval", "2", "--eval_interval", "12")
    with pytest.raises(TrainingDiverged, match=r"The training loss became nan at step 4") as raised:
        train(*parse_args(argv))
    # step_4 holds the weights whose loss was NaN: set aside, so --resume restarts from step_2
    checkpoints = tmp_path / "run" / "checkpoints"
    assert sorted(path.name for path in checkpoints.iterdir()) == [".step_4.diverged", "step_2"]
    assert f"The last good checkpoint is {checkpoints / 'step_2'}" in str(raised.value)


@pytest.mark.slow
def test_compiled_training_checkpoints_resume_without_compile(tmp_path):
    """--compile trains, and its checkpoints keep the plain parameter names, so they resume without it."""
    recipe = ["--max_iters", "6", "--checkpoint_interval", "3", "--eval_interval", "3"]
    first = run_cli(*tiny_args(tmp_path, *recipe, "--compile", "--max_iters", "3"))
    assert first.returncode == 0, first.stderr
    weights = load_file(tmp_path / "run" / "checkpoints" / "step_3" / "model.safetensors")
    assert "transformer.wte.weight" in weights and not any(key.startswith("_orig_mod.") for key in weights)
    resumed = run_cli(*tiny_args(tmp_path, *recipe, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout


@pytest.mark.slow
def test_a_dev_split_is_tuned_on_and_the_validation_split_scored_once(tmp_path, capsys):
    """--dev_stories: evaluations and best/ use the dev hold-out; only the final pass sees the validation split."""
    result = train(*parse_args(tiny_args(tmp_path, "--dev_stories", "40")))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all("dev_loss" in record and "val_loss" not in record for record in records)
    assert "step 8: train loss" in (printed := capsys.readouterr().out) and ", dev loss " in printed
    validation = json.loads((tmp_path / "run" / "final_metrics.json").read_text())
    assert validation == {key: result[key] for key in validation}
    # the same figures the evaluate command gives for the validation split; the dev split is its own
    stories = str(tmp_path.parent / "small-stories")
    best = str(tmp_path / "run" / "best")
    assert evaluate_cli.main([best, "--dataset", stories, "--json", "--cache_dir", str(tmp_path / "cache")]) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == validation["tokens"]
    dev = [best, "--dataset", stories, "--split", "dev", "--dev_stories", "40", "--json"]
    assert evaluate_cli.main(dev) == 0
    assert json.loads(capsys.readouterr().out)["tokens"] != validation["tokens"]
