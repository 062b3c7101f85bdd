"""Starting from a trained model (--init_from): continued training on other stories, the formats a parent comes in,
what it fixes, and LoRA through PEFT's own APIs (adapters, merging, reloading, generation, exact resume)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, PeftModel, get_peft_model
from runs import REPO, assert_same_tensors, assert_sigterm_resumes_bit_for_bit, run_cli, tiny_args
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.data.tokenization import tokenizer_fingerprint
from tinystories_gpt.evaluation.losses import next_token_loss
from tinystories_gpt.export.gpt2 import export_gpt2
from tinystories_gpt.training.loop import parse_args, train
from tinystories_gpt.training.parent import load_parent

TARGETS = ["c_attn", "c_proj", "c_fc"]


# The parent (a tiny run's best/) and stories it never saw ---------------------------------------------------------


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """best/ of a tiny run on the bundled stories (2 layers x 32 wide, a 512-token BPE, dropout 0.1, context 32)."""
    run = tmp_path_factory.mktemp("parent")
    train(*parse_args(tiny_args(run, "--max_iters", "16", "--eval_interval", "16", "--checkpoint_interval", "16")))
    return run / "run" / "best"


@pytest.fixture(scope="module")
def my_stories(tmp_path_factory) -> Path:
    """A handful of stories in another style, as a user's .jsonl, without a validation split."""
    path = tmp_path_factory.mktemp("stories") / "my_stories.jsonl"
    things = ["shells", "stars", "boats", "kites", "apples", "leaves", "stones", "hats"]
    stories = [
        f"Pip the little robot liked to count {thing}. One day Pip found {count} {thing} by the sea. "
        f"Pip counted them all, one by one, and smiled. The end."
        for count, thing in zip(range(2, 42), things * 5, strict=True)
    ]
    path.write_text("".join(json.dumps({"text": story}) + "\n" for story in stories))
    return path


def finetune_args(tmp_path: Path, parent: Path, stories: Path, *extra: str) -> list[str]:
    """A few seconds of fine-tuning on `stories` from `parent`: no shape flag, no tokenizer."""
    return [
        "--init_from",
        str(parent),
        "--dataset",
        str(stories),
        "--validation_split_percentage",
        "20",
        "--cache_dir",
        str(tmp_path / "token-cache"),
        "--dropout",
        "0",
        "--batch_size",
        "4",
        "--gradient_accumulation_steps",
        "1",
        "--max_iters",
        "8",
        "--warmup_steps",
        "1",
        "--learning_rate",
        "3e-3",
        "--min_lr",
        "3e-4",
        "--eval_interval",
        "4",
        "--eval_iters",
        "2",
        "--checkpoint_interval",
        "4",
        "--num_samples",
        "1",
        "--output_dir",
        str(tmp_path / "run"),
        "--seed",
        "3",
        "--mixed_precision",
        "no",
        "--cpu",
        *extra,
    ]


def train_recording_batches(argv: list[str], monkeypatch) -> list[tuple]:
    """Train, returning every micro-batch the loop trained on with the loss it computed: (input_ids, labels, loss)."""
    from tinystories_gpt.training import loop

    seen = []

    def recording_loss(model, input_ids, labels):
        loss = next_token_loss(model, input_ids, labels)
        seen.append((input_ids, labels, loss.item()))
        return loss

    monkeypatch.setattr(loop, "next_token_loss", recording_loss)
    train(*parse_args(argv))
    return seen


def parent_loss(parent_dir: Path, input_ids: torch.Tensor, labels: torch.Tensor) -> float:
    model = TinyStoriesGPTForCausalLM.from_pretrained(parent_dir).eval()
    with torch.no_grad():
        return next_token_loss(model, input_ids[:, : model.config.block_size], labels).item()


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# Continued training from each kind of parent --------------------------------------------------------------------


@pytest.mark.slow
def test_continued_training_from_best_starts_at_the_parents_loss_and_falls(parent, my_stories, tmp_path, monkeypatch):
    batches = train_recording_batches(finetune_args(tmp_path, parent, my_stories), monkeypatch)

    first_inputs, first_labels, first_loss = batches[0]
    assert first_loss == pytest.approx(parent_loss(parent, first_inputs, first_labels), rel=1e-6)  # the weights loaded
    records = metrics(tmp_path / "run")
    assert [record["step"] for record in records] == [0, 4, 8]  # step 0: the parent, before any update
    assert "tokens_per_second" not in records[0]
    assert records[-1]["val_loss"] < records[0]["val_loss"] and records[-1]["train_loss"] < records[0]["train_loss"]
    assert batches[-1][2] < first_loss

    best = tmp_path / "run" / "best"
    parent_tokenizer, tokenizer = AutoTokenizer.from_pretrained(parent), AutoTokenizer.from_pretrained(best)
    assert tokenizer_fingerprint(tokenizer) == tokenizer_fingerprint(parent_tokenizer)
    config = AutoModelForCausalLM.from_pretrained(best).config
    assert (config.n_layer, config.n_embd, config.block_size, config.dropout) == (2, 32, 32, 0.0)
    card = ModelCard.load(best / "README.md")
    assert card.data.base_model is None  # a local parent: nothing the Hub could link to
    assert f"Its training started from the weights of `{parent}`" in card.text
    assert f"| init_from | {parent} |" in card.text
    assert f"a full pass over a 20% hold-out of the train split of {my_stories}" in card.text  # held out automatically


@pytest.mark.slow
def test_continued_training_from_a_gpt2_export(parent, my_stories, tmp_path, monkeypatch):
    gpt2 = export_gpt2(parent, tmp_path / "gpt2")
    assert json.loads((gpt2 / "config.json").read_text())["model_type"] == "gpt2"
    batches = train_recording_batches(finetune_args(tmp_path, gpt2, my_stories), monkeypatch)
    inputs, labels, loss = batches[0]
    assert loss == pytest.approx(parent_loss(parent, inputs, labels), rel=1e-5)
    assert metrics(tmp_path / "run")[-1]["val_loss"] < metrics(tmp_path / "run")[0]["val_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nanogpt", "bare"])
def test_continued_training_from_a_nanogpt_checkpoint(parent, my_stories, tmp_path, monkeypatch, kind):
    """nanoGPT's ckpt.pt (model_args inside) and a bare state dict like the seed's (its n_head given)."""
    model = TinyStoriesGPTForCausalLM.from_pretrained(parent)
    config = model.config
    weights = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    model_args = {name: getattr(config, name) for name in ("n_layer", "n_head", "n_embd", "block_size", "bias")}
    checkpoint = tmp_path / "ckpt.pt"
    torch.save({"model": weights, "model_args": model_args | {"vocab_size": config.vocab_size}}, checkpoint)
    if kind == "bare":
        torch.save(weights, checkpoint)
        with pytest.raises(ValueError, match="pass --n_head N"):
            train(*parse_args(finetune_args(tmp_path, checkpoint, my_stories, "--tokenizer", str(parent))))
    # nanoGPT keeps no tokenizer: the run names the one the checkpoint learnt (here the parent's BPE)
    extra = ["--tokenizer", str(parent), *(["--n_head", "2"] if kind == "bare" else [])]
    batches = train_recording_batches(finetune_args(tmp_path, checkpoint, my_stories, *extra), monkeypatch)
    inputs, labels, loss = batches[0]
    assert loss == pytest.approx(parent_loss(parent, inputs, labels), rel=1e-6)


@pytest.mark.slow
def test_continued_training_from_a_hub_id_records_it_as_the_base_model(
    parent, my_stories, tmp_path, fake_hub, hf_cache
):
    fake_hub.add_repo("someone/tiny-parent", {path.name: path.read_bytes() for path in parent.iterdir()})
    train(*parse_args(finetune_args(tmp_path, "someone/tiny-parent", my_stories)))
    card = ModelCard.load(tmp_path / "run" / "best" / "README.md")
    assert card.data.base_model == "someone/tiny-parent"
    assert "[someone/tiny-parent](https://huggingface.co/someone/tiny-parent)" in card.text
    assert "| tokenizer | someone/tiny-parent |" in card.text
    paths = [request.url.path for request in fake_hub.requests]
    downloaded = {path.rsplit("/", 1)[-1] for path in paths if "/resolve/" in path}
    assert "model.safetensors" in downloaded and "loss_curve.png" not in downloaded  # what a model needs, only


@pytest.mark.slow
def test_a_training_checkpoint_is_a_parent_too(parent, my_stories, tmp_path, monkeypatch):
    checkpoint = parent.parent / "checkpoints" / "step_16"
    batches = train_recording_batches(finetune_args(tmp_path, checkpoint, my_stories), monkeypatch)
    inputs, labels, loss = batches[0]
    assert loss == pytest.approx(parent_loss(parent, inputs, labels), rel=1e-6)  # best/ is step 16's weights


# What the parent fixes --------------------------------------------------------------------------------------------


def test_the_parent_fills_the_shape_and_the_tokenizer_and_block_size_may_be_lowered(parent, my_stories, tmp_path):
    argv = finetune_args(tmp_path, parent, my_stories, "--block_size", "16", "--tokenizer", str(parent))
    model_args, data_args, _ = parse_args(argv)
    assert (model_args.n_layer, model_args.bias, data_args.tokenizer) == (None, None, str(parent))
    model = load_parent(model_args, data_args).eval()
    assert (model_args.n_layer, model_args.n_head, model_args.n_embd, model_args.bias) == (2, 2, 32, True)
    assert (model_args.block_size, model_args.vocab_size, model_args.dropout) == (16, 513, 0.0)
    assert model.config.block_size == 16 and model.transformer.wpe.weight.shape == (16, 32)
    original = TinyStoriesGPTForCausalLM.from_pretrained(parent).eval()
    input_ids = torch.arange(16).unsqueeze(0)
    with torch.no_grad():  # the first 16 positions are the parent's own
        torch.testing.assert_close(model(input_ids).logits, original(input_ids).logits, rtol=0, atol=0)


def test_a_fresh_model_keeps_its_defaults():
    model_args, data_args, _ = parse_args([])
    assert (model_args.n_layer, model_args.n_embd, model_args.block_size, model_args.dropout) == (6, 384, 128, 0.1)
    assert model_args.bias is True and data_args.tokenizer == "gpt2" and model_args.lora_r == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--n_layer", "3"], r"--n_layer 3 contradicts the parent .*, which has n_layer=2: .* drop --n_layer"),
        (["--n_embd", "64", "--n_head", "2"], r"--n_embd 64 contradicts the parent"),
        (["--bias", "false"], r"--bias False contradicts the parent .*, which has bias=True"),
        (["--vocab_size", "1024"], r"--vocab_size 1024 contradicts the parent .*, which has vocab_size=513"),
        (["--block_size", "64"], r"--block_size 64 is more than the context of the parent .* \(32 tokens\)"),
        (["--tokenizer", "gpt2"], r"--tokenizer gpt2 is not the tokenizer of the parent .*: drop --tokenizer"),
        (["--tokenizer", "bpe:512"], r"--tokenizer bpe:512 would train a new tokenizer"),
        (["--lora_alpha", "16"], r"--lora_alpha only applies to LoRA: add --lora_r"),
        (["--lora_r", "4", "--lora_target_modules", "c_attn,lm_head"], r"names lm_head: pick from c_attn"),
        (["--lora_r", "-1"], r"lora_r must not be negative"),
    ],
)
def test_arguments_that_contradict_the_parent_are_refused_by_name(parent, my_stories, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        train(*parse_args(finetune_args(tmp_path, parent, my_stories, *extra)))
    assert not (tmp_path / "run" / "best").exists() and not (tmp_path / "token-cache").exists()  # before any work


def test_parents_that_cannot_be_used_are_refused(my_stories, tmp_path):
    with pytest.raises(ValueError, match="--lora_r trains adapters on top of a trained model: pass --init_from"):
        parse_args(["--lora_r", "8"])
    with pytest.raises(FileNotFoundError, match="--init_from ./no-such-run/best: no such file or folder"):
        train(*parse_args(finetune_args(tmp_path, "./no-such-run/best", my_stories)))
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="holds a 'llama' model"):
        train(*parse_args(finetune_args(tmp_path, llama, my_stories)))
    with pytest.raises(FileNotFoundError, match="holds no config.json"):
        train(*parse_args(finetune_args(tmp_path, tmp_path, my_stories)))


@pytest.mark.slow
def test_cli_refuses_a_contradicting_flag_in_one_line(parent, my_stories, tmp_path):
    result = run_cli(*finetune_args(tmp_path, parent, my_stories, "--n_head", "4"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"train.py: error: --n_head 4 contradicts the parent {parent}, which has n_head=2: the architecture comes "
        "from the parent, so drop --n_head."
    ]


# LoRA: a run, then what it left -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(parent, my_stories, tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("lora")
    train(*parse_args(finetune_args(tmp_path, parent, my_stories, "--lora_r", "4", "--learning_rate", "2e-2")))
    return tmp_path / "run"


def peft_names_to_ours(weights: dict) -> dict:
    """A PeftModel's base weights under the plain model's names (base_model.model.x.c_attn.base_layer.weight)."""
    return {
        name.removeprefix("base_model.model.").replace(".base_layer.", "."): tensor
        for name, tensor in weights.items()
        if ".lora_" not in name
    }


@pytest.mark.slow
def test_lora_trains_only_the_adapters(lora_run, parent):
    weights = load_file(lora_run / "checkpoints" / "step_8" / "model.safetensors")
    adapters = {name: tensor for name, tensor in weights.items() if ".lora_" in name}
    assert len(adapters) == 2 * 4 * 2  # 2 blocks x (c_attn, attn.c_proj, c_fc, mlp.c_proj) x (A, B)
    assert all(torch.count_nonzero(tensor) for name, tensor in adapters.items() if ".lora_B." in name)  # B starts at 0
    frozen = peft_names_to_ours(weights)
    original = load_file(parent / "model.safetensors")
    assert frozen.keys() == original.keys()
    assert_same_tensors(original, frozen)
    records = metrics(lora_run)
    assert records[-1]["val_loss"] < records[0]["val_loss"]


def test_lora_best_is_the_merged_model_and_matches_base_plus_adapter(lora_run, parent):
    best = lora_run / "best"
    assert not (best / "adapter_config.json").exists()  # else from_pretrained(best) would want peft and the parent
    assert {path.name for path in (best / "adapter").iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    merged = AutoModelForCausalLM.from_pretrained(best).eval()
    assert type(merged) is TinyStoriesGPTForCausalLM
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(parent), best / "adapter").eval()
    original = AutoModelForCausalLM.from_pretrained(parent).eval()
    input_ids = torch.randint(513, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids).logits, adapted(input_ids).logits, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(merged(input_ids).logits, original(input_ids).logits, atol=1e-3)
    card = ModelCard.load(best / "README.md")
    assert "through LoRA adapters (r=4, alpha=4, dropout=0.0, on c_attn, c_proj, c_fc) merged" in card.text
    config = json.loads((best / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["base_model_name_or_path"], config["peft_type"]) == (4, str(parent), "LORA")


@pytest.mark.slow
def test_lora_best_loads_where_peft_is_not_installed(lora_run):
    code = (
        "import sys; sys.modules['peft'] = None\n"  # importing peft now raises ImportError
        "import tinystories_gpt, torch\nfrom transformers import AutoModelForCausalLM\n"
        f"model = AutoModelForCausalLM.from_pretrained({str(lora_run / 'best')!r})\n"
        "print(type(model).__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "TinyStoriesGPTForCausalLM"


def test_a_lora_checkpoint_is_not_a_parent(lora_run, my_stories, tmp_path):
    with pytest.raises(ValueError, match="is a checkpoint of a LoRA run .* start from that run's best/"):
        train(*parse_args(finetune_args(tmp_path, lora_run / "checkpoints" / "step_8", my_stories)))
    train(*parse_args(finetune_args(tmp_path, lora_run / "best", my_stories, "--max_iters", "1")))  # its best/ is


def test_lora_under_fsdp_is_refused_before_any_work(parent, my_stories, tmp_path, monkeypatch):
    from tinystories_gpt.training import run

    monkeypatch.setattr(run, "is_sharded", lambda accelerator: True)  # as under an FSDP launch
    with pytest.raises(ValueError, match="--lora_r under FSDP"):
        train(*parse_args(finetune_args(tmp_path, parent, my_stories, "--lora_r", "4")))
    assert not (tmp_path / "token-cache").exists()


def test_resume_refuses_a_checkpoint_with_other_adapters(lora_run, parent, my_stories):
    tmp_path = lora_run.parent
    with pytest.raises(ValueError, match=r"other settings: lora_r 4 -> 8; lora_alpha 4 -> 8"):
        train(*parse_args(finetune_args(tmp_path, parent, my_stories, "--lora_r", "8", "--resume")))
    with pytest.raises(ValueError, match=r"other settings: lora_r 4 -> 0; lora_alpha 4 -> None"):
        train(*parse_args(finetune_args(tmp_path, parent, my_stories, "--resume")))


@pytest.mark.slow
def test_lora_resumes_bit_for_bit_after_sigterm(parent, my_stories, tmp_path):
    """As test_training's SIGTERM test, with adapters: the same adapter weights, optimizer state and losses."""
    recipe = ["--lora_r", "4", "--lora_dropout", "0.1", "--max_iters", "12", "--checkpoint_interval", "2"]
    recipe += ["--eval_interval", "6"]
    run_args = lambda folder: finetune_args(folder, parent, my_stories, *recipe)  # noqa: E731
    assert_sigterm_resumes_bit_for_bit(run_args, tmp_path, last_step=12)


# PEFT's own APIs on our model -------------------------------------------------------------------------------------


@pytest.fixture
def tiny_model() -> TinyStoriesGPTForCausalLM:
    torch.manual_seed(0)
    config = TinyStoriesGPTConfig(vocab_size=96, block_size=32, n_layer=2, n_head=2, n_embd=32, bos_token_id=0)
    return TinyStoriesGPTForCausalLM(config).eval()


def adapted(model: TinyStoriesGPTForCausalLM):
    """Our model under LoRA adapters that are not zero (PEFT starts B at zero, which would hide every bug)."""
    config = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=False)
    return get_peft_model(model, config).eval()


PROMPTS = torch.tensor([[5, 6, 7, 8, 9], [0, 0, 11, 12, 13]])  # the second left-padded
MASK = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])


def test_get_peft_model_wraps_every_block_linear_and_freezes_the_rest(tiny_model):
    peft_model = adapted(tiny_model)
    trainable = {name for name, parameter in peft_model.named_parameters() if parameter.requires_grad}
    assert trainable and all(".lora_" in name for name in trainable)
    assert len(trainable) == 2 * 2 * 4  # 2 blocks x (c_attn, attn.c_proj, c_fc, mlp.c_proj) x (A, B)
    trainable_count, total = peft_model.get_nb_trainable_parameters()
    assert trainable_count == peft_model.num_parameters(only_trainable=True) < total


def test_merge_and_unload_gives_our_class_with_the_same_logits(tiny_model):
    peft_model = adapted(tiny_model)
    with torch.no_grad():
        expected = peft_model(PROMPTS, attention_mask=MASK).logits
        merged = peft_model.merge_and_unload()
        assert type(merged) is TinyStoriesGPTForCausalLM
        torch.testing.assert_close(merged(PROMPTS, attention_mask=MASK).logits, expected, rtol=1e-5, atol=1e-5)


def test_an_adapter_saved_alone_reloads_onto_the_base(tiny_model, tmp_path):
    base = tmp_path / "base"
    tiny_model.save_pretrained(base)
    peft_model = adapted(tiny_model)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    reloaded = PeftModel.from_pretrained(TinyStoriesGPTForCausalLM.from_pretrained(base), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(PROMPTS).logits, peft_model(PROMPTS).logits, rtol=0, atol=0)


def test_generate_on_a_peft_model_is_the_same_with_and_without_the_cache(tiny_model):
    peft_model = adapted(tiny_model)
    settings = dict(attention_mask=MASK, do_sample=False, max_new_tokens=12, pad_token_id=0)
    settings |= dict(output_scores=True, return_dict_in_generate=True)
    cached = peft_model.generate(input_ids=PROMPTS, use_cache=True, **settings)
    uncached = peft_model.generate(input_ids=PROMPTS, use_cache=False, **settings)
    assert torch.equal(cached.sequences, uncached.sequences)
    for with_cache, without in zip(cached.scores, uncached.scores, strict=True):
        torch.testing.assert_close(with_cache, without, rtol=1e-4, atol=1e-4)


# PEFT's prompt-learning methods (and older callers) hand the cache back as past_key_values=
@pytest.mark.parametrize("keyword", ["cache", "past_key_values"])
def test_a_peft_model_continues_from_its_cache(tiny_model, keyword):
    """A step given the cache of the steps before extends it, as one forward over the whole sequence would."""
    peft_model = adapted(tiny_model)
    input_ids = torch.arange(1, 9).unsqueeze(0)
    with torch.no_grad():
        whole = peft_model(input_ids).logits
        prefix = peft_model(input_ids[:, :5], use_cache=True)
        rest = peft_model(input_ids[:, 5:], use_cache=True, **{keyword: prefix.cache})
    torch.testing.assert_close(rest.logits, whole[:, 5:], rtol=1e-5, atol=1e-5)


# The preset --------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_finetune_preset_runs_shortened(parent, tmp_path):
    """The README's fine-tuning command, from the tiny parent instead of the quickstart's, cut to a few steps."""
    result = run_cli(
        "--config",
        str(REPO / "configs" / "finetune.yaml"),
        "--init_from",
        str(parent),
        "--max_iters",
        "4",
        "--warmup_steps",
        "1",
        "--eval_interval",
        "2",
        "--eval_iters",
        "2",
        "--output_dir",
        str(tmp_path / "finetune"),
        "--cache_dir",
        str(tmp_path / "cache"),
    )
    assert result.returncode == 0, result.stderr
    size = TinyStoriesGPTForCausalLM.from_pretrained(parent).num_parameters()
    assert f"starting from {parent}, training every weight: {size:,} of {size:,} parameters (100.00%)" in result.stdout
    assert "step 0: train loss" in result.stdout and "bits per byte" in result.stdout
    card = (tmp_path / "finetune" / "best" / "README.md").read_text()
    assert "data/my_stories.jsonl" in card
