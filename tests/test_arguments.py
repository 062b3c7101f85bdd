"""The run's arguments: presets under flags, every bad value refused by name before any work."""

from pathlib import Path

import pytest
import yaml

from tinystories_gpt.training.arguments import DataArguments, ModelArguments, TrainingArguments, parse_args

REPO = Path(__file__).resolve().parent.parent


def test_presets_load_and_flags_override_them():
    model_args, data_args, args = parse_args(["--config", str(REPO / "configs" / "seed.yaml"), "--max_iters", "2000"])
    assert (model_args.n_layer, model_args.n_head, model_args.n_embd, model_args.block_size) == (6, 6, 384, 128)
    assert (args.batch_size, args.gradient_accumulation_steps, args.learning_rate) == (32, 32, 1e-4)
    assert (args.warmup_steps, args.eval_interval, args.eval_iters, args.min_lr) == (1000, 500, 500, 1e-5)
    assert data_args.dataset == "roneneldan/TinyStories" and args.max_iters == 2000
    quickstart = REPO / "configs" / "quickstart.yaml"
    parsed = {
        name: value
        for arguments in parse_args(["--config", str(quickstart)])
        for name, value in vars(arguments).items()
    }
    preset = yaml.safe_load(quickstart.read_text())
    assert {name: parsed[name] for name in preset} == preset  # every preset value reaches the run


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--learning_rate", "1e-4", "--min_lr", "5e-4"], "min_lr"),
        (["--batch_size", "0"], "batch_size"),
        (["--warmup_steps", "30", "--max_iters", "20"], "warmup_steps"),
        (["--mixed_precision", "fp8"], "mixed_precision"),
        (["--report_to", "mlflow"], "report_to"),
        (["--push_to_hub"], "hub_model_id"),
        (["--n_embd", "100", "--n_head", "3"], "n_embd"),
        (["--attn_implementation", "flash"], "attn_implementation"),
        (["--lr_scheduler_type", "constant"], "lr_scheduler_type"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(argv, message):
    with pytest.raises(ValueError, match=message):
        parse_args(argv)


def test_unknown_preset_keys_are_named(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("n_layer: 2\nlearnin_rate: 0.1\n")
    with pytest.raises(ValueError, match="learnin_rate"):
        parse_args(["--config", str(preset)])


def test_training_arguments_are_dataclasses_with_the_seed_names():
    names = {f for cls in (ModelArguments, DataArguments, TrainingArguments) for f in cls.__dataclass_fields__}
    for name in (
        "batch_size gradient_accumulation_steps max_iters eval_interval eval_iters learning_rate min_lr "
        "warmup_steps block_size n_layer n_head n_embd dropout bias dataset tokenizer output_dir seed "
        "checkpoint_interval keep_checkpoints mixed_precision weight_decay beta1 beta2 grad_clip compile "
        "report_to resume push_to_hub hub_model_id"
    ).split():
        assert name in names, name
