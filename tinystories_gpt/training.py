"""The Accelerate training loop: arguments, optimizer, schedule, eval, checkpoints, resume.

Read top to bottom in the order a run goes: arguments are parsed and validated before any work,
then the data and model are built, then the loop runs optimizer steps of
`gradient_accumulation_steps` micro-batches, evaluating, sampling, and checkpointing on the way.
"""

import json
import math
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import HfArgumentParser, PreTrainedTokenizerFast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .configuration_tinystories_gpt import TinyStoriesGPTConfig
from .data import TokenFile, WindowSampler, fixed_eval_batches, prepare_data
from .evaluation import evaluate_split
from .hub import TEMPERATURE, TOP_K, push_to_hub, save_hub_folder
from .modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .tokenization import check_vocab_fits

SEED_PROMPT = "Once upon a time there was a pumpkin."
MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")
LR_SCHEDULER_TYPES = ("cosine", "linear")  # the names Transformers' get_scheduler uses for the same shapes
TRACKERS = ("none", "all", "tensorboard", "wandb", "trackio")
# Transformers' own registry (which the model dispatches through), so new kernels need no change here; the paged
# kernels serve continuous-batching generation only
ATTENTION_CHOICES = ("eager", *(key for key in ALL_ATTENTION_FUNCTIONS.valid_keys() if not key.startswith("paged")))
# bf16 dense matmul peak in FLOP/s, for MFU; GPUs not listed report no MFU rather than a wrong one
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "4090": 165e12}


# 1. Arguments ------------------------------------------------------------------------------------


@dataclass
class ModelArguments:
    """The architecture; names as in the seed table. `vocab_size` defaults to the tokenizer's size."""

    block_size: int = field(default=128, metadata={"help": "Context length in tokens."})
    n_layer: int = field(default=6, metadata={"help": "Number of transformer blocks."})
    n_head: int = field(default=6, metadata={"help": "Attention heads per block."})
    n_embd: int = field(default=384, metadata={"help": "Width of the residual stream."})
    dropout: float = field(default=0.1, metadata={"help": "Dropout probability."})
    bias: bool = field(default=True, metadata={"help": "Biases in Linear and LayerNorm layers."})
    vocab_size: int | None = field(default=None, metadata={"help": "Model vocabulary; default: the tokenizer's."})
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": f"Attention kernel for training: {', '.join(ATTENTION_CHOICES)}. Not saved: a loaded model "
            "picks its own. On a CPU, eager trains small models faster than sdpa's flash kernel."
        },
    )

    def __post_init__(self):
        _require(
            self.attn_implementation in ATTENTION_CHOICES,
            f"attn_implementation must be one of {', '.join(ATTENTION_CHOICES)}, got {self.attn_implementation!r}.",
        )
        # the config's own checks, now rather than after the data is tokenized (vocab_size is known only then)
        self.config(vocab_size=self.vocab_size or 1, bos_token_id=None, eos_token_id=None)

    def config(self, **token_fields) -> TinyStoriesGPTConfig:
        shape = {name: getattr(self, name) for name in ("block_size", "n_layer", "n_head", "n_embd", "dropout", "bias")}
        return TinyStoriesGPTConfig(**shape, **token_fields)


@dataclass
class DataArguments:
    """Where the text comes from and how it becomes tokens."""

    dataset: str = field(
        default="roneneldan/TinyStories",
        metadata={"help": "A Hub dataset name or a local folder/file (.txt, .jsonl, .json, .parquet, save_to_disk)."},
    )
    tokenizer: str = field(
        default="gpt2", metadata={"help": "'gpt2' (bundled), a path or Hub name, or 'bpe:N' to train an N-token BPE."}
    )
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Hold-out carved from train when the dataset has no validation split."}
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenization (default: CPU count)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where token files are cached."})


@dataclass
class TrainingArguments:
    """The optimisation recipe and the run's bookkeeping."""

    output_dir: str = field(default="out", metadata={"help": "Folder for best/, checkpoints/, metrics and plots."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per micro-batch per process."})
    gradient_accumulation_steps: int = field(default=32, metadata={"help": "Micro-batches per optimizer step."})
    max_iters: int = field(default=25000, metadata={"help": "Optimizer steps (not micro-batches)."})
    eval_interval: int = field(default=500, metadata={"help": "Optimizer steps between evaluations."})
    eval_iters: int = field(default=500, metadata={"help": "Batches per split in each evaluation."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate, reached after warmup."})
    min_lr: float = field(default=1e-5, metadata={"help": "Learning rate at the end of the decay."})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": f"Decay after warmup: {' or '.join(LR_SCHEDULER_TYPES)}, to min_lr."}
    )
    warmup_steps: int = field(default=1000, metadata={"help": "Linear warmup, in optimizer steps."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay, on 2-D weights only."})
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this; 0 disables."})
    seed: int = 1337
    checkpoint_interval: int = field(default=1000, metadata={"help": "Optimizer steps between resumable checkpoints."})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many recent checkpoints to keep."})
    mixed_precision: str = field(
        default="auto", metadata={"help": "auto (bf16 where supported, fp16 on older CUDA, else fp32), no, bf16, fp16."}
    )
    compile: bool = field(default=False, metadata={"help": "torch.compile the model."})
    cpu: bool = field(default=False, metadata={"help": "Train on the CPU even where a GPU is present."})
    report_to: str = field(default="none", metadata={"help": f"Trackers: {', '.join(TRACKERS)}."})
    resume: bool = field(default=False, metadata={"help": "Continue from the newest complete checkpoint."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Replace another run's files in output_dir."})
    num_samples: int = field(default=2, metadata={"help": "Sample stories written at each evaluation."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload best/ to the Hub when training ends."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repo id for push_to_hub, e.g. user/name."})

    def __post_init__(self):
        for name in ("batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "eval_iters"):
            _require(getattr(self, name) > 0, f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("checkpoint_interval", "keep_checkpoints"):
            _require(getattr(self, name) > 0, f"{name} must be a positive integer, got {getattr(self, name)}.")
        _require(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}.")
        _require(
            0 <= self.min_lr <= self.learning_rate,
            f"min_lr ({self.min_lr}) must lie between 0 and learning_rate ({self.learning_rate}): the "
            "schedule decays from learning_rate down to min_lr, so a larger min_lr would make it rise. "
            "Set --min_lr to about learning_rate / 10.",
        )
        _require(
            self.lr_scheduler_type in LR_SCHEDULER_TYPES,
            f"lr_scheduler_type must be one of {', '.join(LR_SCHEDULER_TYPES)}, got {self.lr_scheduler_type!r}.",
        )
        _require(
            0 <= self.warmup_steps <= self.max_iters,
            f"warmup_steps ({self.warmup_steps}) must lie between 0 and max_iters ({self.max_iters}).",
        )
        _require(self.weight_decay >= 0, f"weight_decay must not be negative, got {self.weight_decay}.")
        _require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must lie in [0, 1).")
        _require(self.grad_clip >= 0, f"grad_clip must not be negative (0 disables it), got {self.grad_clip}.")
        _require(self.num_samples >= 0, f"num_samples must not be negative, got {self.num_samples}.")
        _require(
            self.mixed_precision in MIXED_PRECISION_CHOICES,
            f"mixed_precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}, got {self.mixed_precision!r}.",
        )
        _require(self.report_to in TRACKERS, f"report_to must be one of {', '.join(TRACKERS)}, got {self.report_to!r}.")
        _require(
            not self.push_to_hub or bool(self.hub_model_id),
            "push_to_hub needs --hub_model_id user/name to know where to upload.",
        )
        _require(
            not (self.resume and self.overwrite_output_dir),
            "resume and overwrite_output_dir contradict each other: pick one.",
        )

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Command-line flags over an optional `--config preset.yaml`; unknown keys are refused by name."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    parser.add_argument("--config", type=Path, help="A YAML preset; flags given on the command line override it.")
    known, _ = parser.parse_known_args(argv)
    if known.config is not None:
        parser.set_defaults(**load_preset(known.config, parser))
    *dataclasses, _config = parser.parse_args_into_dataclasses(argv)
    return tuple(dataclasses)


def load_preset(path: Path, parser: HfArgumentParser) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"Config file {path} does not exist; presets live in configs/ (seed.yaml, ...).")
    preset = yaml.safe_load(path.read_text()) or {}
    if not isinstance(preset, dict):
        raise ValueError(f"Config file {path} must hold a mapping of argument names to values.")
    known = {action.dest for action in parser._actions}
    unknown = sorted(set(preset) - known)
    if unknown:
        raise ValueError(f"Config file {path} has unknown keys: {', '.join(unknown)}. Run train.py --help for names.")
    return preset


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def model_config(model_args: ModelArguments, tokenizer: PreTrainedTokenizerFast) -> TinyStoriesGPTConfig:
    """The model's config for this tokenizer; its own validation names any impossible shape."""
    vocab_size = model_args.vocab_size or len(tokenizer)
    check_vocab_fits(tokenizer, vocab_size)
    return model_args.config(
        vocab_size=vocab_size,
        bos_token_id=tokenizer.eos_token_id,  # stories start after an end-of-text, as in the token files
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


# 2. Precision, optimizer and schedule ------------------------------------------------------------


def resolve_mixed_precision(requested: str, use_cuda: bool) -> str:
    """Turn `auto` into what the device can do, and refuse what it would silently ignore."""
    if requested == "fp16" and not use_cuda:
        raise ValueError(
            "mixed_precision=fp16 needs a CUDA GPU: on the CPU Accelerate silently trains in fp32. "
            "Use --mixed_precision bf16 (or auto) on the CPU."
        )
    if requested != "auto":
        return requested
    if use_cuda:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if _cpu_has_bf16() else "no"


def _cpu_has_bf16() -> bool:
    # oneDNN runs bf16 natively on CPUs with AVX512-BF16/AMX; elsewhere autocast would emulate it slowly
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def can_compile(accelerator: Accelerator) -> bool:
    """On a CPU, torch.compile builds C++ kernels: without a compiler, train uncompiled rather than fail later."""
    compiler = os.environ.get("CXX", "g++")  # what Inductor looks for on Linux
    if accelerator.device.type != "cpu" or shutil.which(compiler):
        return True
    accelerator.print(
        f"warning: --compile on a CPU needs a C++ compiler ({compiler!r}, or set CXX) and none was found, so "
        "training runs uncompiled and slower; install one (e.g. apt install g++) to compile"
    )
    return False


def build_optimizer(model: torch.nn.Module, args: TrainingArguments, fused: bool) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices and embeddings only; biases and LayerNorms are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.beta1, args.beta2), fused=fused)


def learning_rate_at(step: int, args: TrainingArguments) -> float:
    """Linear warmup from 0 to learning_rate, then cosine or linear decay to min_lr at max_iters."""
    if step < args.warmup_steps:
        return args.learning_rate * (step + 1) / (args.warmup_steps + 1)
    decay_steps = max(args.max_iters - args.warmup_steps, 1)
    progress = min((step - args.warmup_steps) / decay_steps, 1.0)
    if args.lr_scheduler_type == "linear":
        remaining = 1.0 - progress
    else:
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    return args.min_lr + remaining * (args.learning_rate - args.min_lr)


# 3. Data, run state, checkpoints and the output folder ---------------------------------------------------


@dataclass
class TrainingData:
    """The tokenized splits as the loop uses them."""

    tokenizer: PreTrainedTokenizerFast
    dataset_name: str
    tokenizer_name: str
    train_tokens: int
    train_sampler: WindowSampler
    train_eval_batches: list
    val_eval_batches: list
    val_split: TokenFile


def load_training_data(
    data_args: DataArguments, model_args: ModelArguments, args: TrainingArguments, accelerator: Accelerator
) -> TrainingData:
    """Tokenize (or reuse) both splits; each process samples its own share of every batch."""
    prepared = prepare_data(
        data_args.dataset,
        data_args.tokenizer,
        cache_dir=data_args.cache_dir,
        validation_split_percentage=data_args.validation_split_percentage,
        num_proc=data_args.num_proc,
    )
    train_tokens, val_tokens = prepared.train.tokens(), prepared.validation.tokens()
    block_size, batch_size = model_args.block_size, args.batch_size
    # every process builds the same fixed evaluation lists; estimate_loss splits them between processes
    return TrainingData(
        tokenizer=prepared.tokenizer,
        dataset_name=str(data_args.dataset),
        tokenizer_name=data_args.tokenizer,
        train_tokens=prepared.train.num_tokens,
        train_sampler=WindowSampler(
            train_tokens, block_size, batch_size, args.seed, accelerator.process_index, accelerator.num_processes
        ),
        train_eval_batches=fixed_eval_batches(
            train_tokens, block_size, batch_size, args.eval_iters, seed=args.seed + 1
        ),
        val_eval_batches=fixed_eval_batches(val_tokens, block_size, batch_size, args.eval_iters, seed=args.seed + 2),
        val_split=prepared.validation,
    )


class RunState:
    """What a resumed run needs beyond model, optimizer and RNGs; Accelerate checkpoints it with them."""

    def __init__(self, sampler: Any):
        self.step = 0
        self.tokens_seen = 0
        self.best_val_loss = math.inf
        self.sampler = sampler

    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "best_val_loss": self.best_val_loss,
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.tokens_seen = state["tokens_seen"]
        self.best_val_loss = state["best_val_loss"]
        self.sampler.load_state_dict(state["sampler"])


# What a run writes into output_dir, and what each holds
RUN_FILES = {
    "best": "the best model, Hub-ready: AutoModelForCausalLM.from_pretrained(this folder)",
    "checkpoints": "resumable training state (--resume)",
    "metrics.jsonl": "train/validation loss, lr, tokens/s at every evaluation",
    "final_metrics.json": "loss, perplexity, bits per byte of best/ over the whole validation split",
    "loss_curve.png": "train and validation loss against step",
    "samples.md": "sample stories at every evaluation",
    "logs": "tracker logs (tensorboard, ...)",
}


def prepare_output_dir(args: TrainingArguments, is_main_process: bool) -> None:
    """Refuse to mix two runs in one folder; with overwrite_output_dir, clear only this project's files."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"output_dir {output_dir} is a file; pass a folder.")
    existing = [name for name in RUN_FILES if (output_dir / name).exists()]
    if args.resume:
        if newest_checkpoint(args.checkpoints_dir) is None:
            raise FileNotFoundError(
                f"--resume found no complete checkpoint in {args.checkpoints_dir}. Start a fresh run without --resume."
            )
        return
    if existing and not args.overwrite_output_dir:
        raise ValueError(
            f"output_dir {output_dir} already holds another run ({', '.join(existing)}). Pass --resume to continue "
            "it, --overwrite_output_dir to replace it, or choose another --output_dir."
        )
    if existing and is_main_process:
        for name in existing:
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def newest_checkpoint(checkpoints_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step; partial ones live under a hidden `.tmp` name."""
    if not checkpoints_dir.is_dir():
        return None
    complete = [path for path in checkpoints_dir.glob("step_*") if path.name.removeprefix("step_").isdigit()]
    return max(complete, key=lambda path: int(path.name.removeprefix("step_")), default=None)


def save_checkpoint(accelerator: Accelerator, state: RunState, config: TinyStoriesGPTConfig, tokenizer, args) -> Path:
    """`accelerator.save_state` into a temporary folder, renamed into place once every file is written."""
    final = args.checkpoints_dir / f"step_{state.step}"
    partial = args.checkpoints_dir / f".step_{state.step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(partial, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial), safe_serialization=True)
    if accelerator.is_main_process:
        config.save_pretrained(partial)  # lets convert.py and --resume check shapes without loading weights
        tokenizer.save_pretrained(partial / "tokenizer")
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        for old in sorted(args.checkpoints_dir.glob("step_*"), key=lambda p: int(p.name.removeprefix("step_")))[
            : -args.keep_checkpoints
        ]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


SHAPE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")


def check_checkpoint_matches(checkpoint: Path, config: TinyStoriesGPTConfig) -> None:
    """A resume must not load weights into a model of another shape; say which fields differ."""
    saved = json.loads((checkpoint / "config.json").read_text())
    differences = [
        f"{name}: checkpoint {saved.get(name)} vs now {getattr(config, name)}"
        for name in SHAPE_FIELDS
        if saved.get(name) != getattr(config, name)
    ]
    if differences:
        raise ValueError(
            f"Checkpoint {checkpoint} was trained with another model shape ({'; '.join(differences)}). "
            "Resume with the original settings, or start a new run in another --output_dir."
        )


def set_aside_diverged(checkpoints_dir: Path, step: int, accelerator: Accelerator) -> str:
    """Hide a checkpoint of the weights that just gave a non-finite loss, so --resume takes the one before.

    It is renamed, not deleted: nothing a run wrote is lost. Returns the newest checkpoint left, for the message.
    """
    diverged = checkpoints_dir / f"step_{step}"
    if accelerator.is_main_process and diverged.is_dir():
        os.replace(diverged, checkpoints_dir / f".step_{step}.diverged")
    accelerator.wait_for_everyone()
    return str(newest_checkpoint(checkpoints_dir) or "none (no checkpoint was written yet)")


class StopSignal:
    """Turns SIGINT/SIGTERM into a request to checkpoint and stop at the next optimizer step."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self) -> "StopSignal":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


# 4. Evaluation, samples, plots -----------------------------------------------------------------------


def next_token_loss(model: torch.nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of predicting `targets` (inputs shifted by one), computed in fp32."""
    logits = model(input_ids=inputs).logits
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


@torch.no_grad()
def estimate_loss(model: torch.nn.Module, batches: list, accelerator: Accelerator) -> float:
    """Mean loss over a fixed list of batches, split across processes and averaged over all of them."""
    model.eval()
    totals = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
    for index in range(accelerator.process_index, len(batches), accelerator.num_processes):
        inputs, targets = (tensor.to(accelerator.device) for tensor in batches[index])
        totals[0] += next_token_loss(model, inputs, targets).double() * targets.numel()
        totals[1] += targets.numel()
    model.train()
    totals = accelerator.reduce(totals, reduction="sum")
    return (totals[0] / totals[1]).item()


@torch.no_grad()
def sample_stories(model, tokenizer, num_samples: int, seed: int, prompt: str = SEED_PROMPT) -> list[str]:
    """Sampled continuations of the prompt, drawn from a private RNG so training's random stream is untouched."""
    device = next(model.parameters()).device
    prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    max_new_tokens = model.config.block_size - prompt_ids.shape[1]
    if num_samples == 0 or max_new_tokens <= 0:
        return []
    was_training = model.training
    model.eval()
    # eager even under --compile: each new sequence length would otherwise cost a recompilation
    with (
        torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
        torch.compiler.set_stance("force_eager"),
    ):
        torch.manual_seed(seed)
        generated = model.generate(
            prompt_ids.expand(num_samples, -1),
            attention_mask=torch.ones_like(prompt_ids).expand(num_samples, -1),
            do_sample=True,
            temperature=TEMPERATURE,
            top_k=TOP_K,
            max_new_tokens=max_new_tokens,
            pad_token_id=tokenizer.eos_token_id,
        )
    model.train(was_training)
    return [text.strip() for text in tokenizer.batch_decode(generated, skip_special_tokens=True)]


def append_metrics(path: Path, record: dict) -> None:
    with path.open("a") as metrics_file:
        metrics_file.write(json.dumps(record) + "\n")


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def truncate_metrics(path: Path, last_step: int) -> None:
    """On resume, drop records written after the checkpoint: the resumed run writes them again."""
    kept = [record for record in read_metrics(path) if record["step"] <= last_step]
    path.write_text("".join(json.dumps(record) + "\n" for record in kept))


def plot_loss_curve(metrics: list[dict], path: Path) -> None:
    """Train and validation loss against optimizer step, like the seed's plot; replaced atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [record["step"] for record in metrics]
    figure, axes = plt.subplots(figsize=(7, 4.5))
    axes.plot(steps, [record["train_loss"] for record in metrics], label="train loss", marker=".")
    axes.plot(steps, [record["val_loss"] for record in metrics], label="validation loss", marker=".")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("cross-entropy (nats/token)")
    axes.set_title("TinyStories GPT: loss")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    partial = path.with_name(path.name + ".tmp.png")
    figure.savefig(partial, dpi=110)
    plt.close(figure)
    os.replace(partial, path)


def append_samples(path: Path, step: int, stories: list[str]) -> None:
    with path.open("a") as samples_file:
        samples_file.write(f"## step {step}\n\n")
        samples_file.writelines(f"{story}\n\n---\n\n" for story in stories)


def model_flops_per_token(config: TinyStoriesGPTConfig, n_params: int) -> float:
    """Training FLOPs per token: 6N for the matmuls plus attention's 12 L T C (PaLM appendix B)."""
    return 6 * n_params + 12 * config.n_layer * config.block_size * config.n_embd


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def optimizer_step(model, optimizer, state: RunState, args: TrainingArguments, accelerator: Accelerator) -> float:
    """Accumulate `gradient_accumulation_steps` micro-batches, clip, step; returns the mean loss."""
    for group in optimizer.param_groups:
        group["lr"] = learning_rate_at(state.step, args)
    loss_sum = torch.zeros((), device=accelerator.device)
    for _ in range(args.gradient_accumulation_steps):
        inputs, targets = (tensor.to(accelerator.device) for tensor in state.sampler.next_batch())
        with accelerator.accumulate(model):  # syncs gradients across processes on the last micro-batch only
            loss = next_token_loss(model, inputs, targets)
            accelerator.backward(loss)
        loss_sum += loss.detach()
    step_loss = (loss_sum / args.gradient_accumulation_steps).item()  # one host sync per optimizer step
    if not math.isfinite(step_loss):
        raise TrainingDiverged(
            f"The training loss became {step_loss} at step {state.step}; the weights were not updated. The last "
            f"good checkpoint is {set_aside_diverged(args.checkpoints_dir, state.step, accelerator)}. Lower "
            "--learning_rate or raise --warmup_steps, then start again (or --resume)."
        )
    if args.grad_clip > 0:
        accelerator.clip_grad_norm_(model.parameters(), args.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return step_loss


# 5. The loop ---------------------------------------------------------------------------------------------


def train(model_args: ModelArguments, data_args: DataArguments, args: TrainingArguments) -> dict:
    """Train, evaluate and checkpoint; returns the final metrics and where the best model lies."""
    use_cuda = torch.cuda.is_available() and not args.cpu
    accelerator = Accelerator(
        cpu=args.cpu,
        mixed_precision=resolve_mixed_precision(args.mixed_precision, use_cuda),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=str(Path(args.output_dir) / "logs"),
    )
    prepare_output_dir(args, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    set_seed(args.seed)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    # 1. data and tokenizer (built once by the main process, reused from the cache by the others)
    with accelerator.main_process_first():
        data = load_training_data(data_args, model_args, args, accelerator)
    tokenizer = data.tokenizer

    # 2. model, optimizer
    config = model_config(model_args, tokenizer)
    model = TinyStoriesGPTForCausalLM._from_config(config, attn_implementation=model_args.attn_implementation)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = build_optimizer(model, args, fused=use_cuda)
    if args.compile and can_compile(accelerator):
        model.compile()  # in place, unlike torch.compile(model): checkpoints keep their plain key names
    model, optimizer = accelerator.prepare(model, optimizer)
    state = RunState(data.train_sampler)
    accelerator.register_for_checkpointing(state)

    tokens_per_step = args.batch_size * args.gradient_accumulation_steps * config.block_size
    tokens_per_step *= accelerator.num_processes
    accelerator.print(
        f"model: {n_params / 1e6:.2f}M parameters, {config.n_layer} layers x {config.n_head} heads x "
        f"{config.n_embd} wide, context {config.block_size}, vocabulary {config.vocab_size}\n"
        f"effective batch: {args.batch_size} sequences x {args.gradient_accumulation_steps} accumulation x "
        f"{accelerator.num_processes} processes = {tokens_per_step:,} tokens per optimizer step\n"
        f"token budget: {args.max_iters:,} steps x {tokens_per_step:,} = {args.max_iters * tokens_per_step:,} "
        f"tokens ({args.max_iters * tokens_per_step / max(data.train_tokens, 1):.1f} epochs of "
        f"{data.train_tokens:,} training tokens)\n"
        f"device: {accelerator.device}, mixed precision: {accelerator.mixed_precision}, "
        f"processes: {accelerator.num_processes}"
    )

    metrics_path = output_dir / "metrics.jsonl"
    if args.resume:
        checkpoint = newest_checkpoint(args.checkpoints_dir)
        check_checkpoint_matches(checkpoint, config)
        accelerator.load_state(str(checkpoint))
        if accelerator.is_main_process:
            truncate_metrics(metrics_path, state.step)
        accelerator.print(f"resumed from {checkpoint} at step {state.step}")
    accelerator.init_trackers("tinystories-gpt", config={**asdict(model_args), **asdict(data_args), **asdict(args)})

    peak = peak_flops(accelerator.device)
    flops_per_token = model_flops_per_token(config, n_params)
    progress = tqdm(total=args.max_iters, initial=state.step, disable=not accelerator.is_main_process, desc="training")
    model.train()
    started = time.perf_counter()
    interval_seconds = interval_steps = 0  # training time since the last evaluation, for mean throughput
    with StopSignal() as stop:
        while state.step < args.max_iters:
            # 3. one optimizer step
            step_started = time.perf_counter()  # evaluation and checkpoints are not training throughput
            step_loss = optimizer_step(model, optimizer, state, args, accelerator)
            state.step += 1
            state.tokens_seen += tokens_per_step

            now = time.perf_counter()
            tokens_per_second = tokens_per_step / (now - step_started)
            interval_seconds += now - step_started
            interval_steps += 1
            progress.update(1)
            progress.set_postfix(
                loss=f"{step_loss:.4f}", lr=f"{optimizer.param_groups[0]['lr']:.2e}", tok_s=f"{tokens_per_second:,.0f}"
            )

            # 4. evaluate, sample, keep the best model
            if state.step % args.eval_interval == 0 or state.step == args.max_iters:
                mean_tokens_per_second = interval_steps * tokens_per_step / interval_seconds
                record = {
                    "step": state.step,
                    "tokens_seen": state.tokens_seen,
                    "train_loss": estimate_loss(model, data.train_eval_batches, accelerator),
                    "val_loss": estimate_loss(model, data.val_eval_batches, accelerator),
                    "lr": optimizer.param_groups[0]["lr"],
                    "tokens_per_second": mean_tokens_per_second,
                    "elapsed_seconds": now - started,
                }
                if peak:
                    record["mfu"] = flops_per_token * mean_tokens_per_second / (peak * accelerator.num_processes)
                accelerator.log(record, step=state.step)
                if accelerator.is_main_process:
                    on_evaluation(record, state, accelerator.unwrap_model(model), tokenizer, data, args)
                state.best_val_loss = min(state.best_val_loss, record["val_loss"])
                accelerator.wait_for_everyone()
                interval_seconds = interval_steps = 0

            # 5. resumable checkpoints, also on SIGINT/SIGTERM
            stop_now = stop.requested
            if accelerator.num_processes > 1:
                flag = torch.tensor(float(stop_now), device=accelerator.device)
                stop_now = accelerator.reduce(flag, reduction="sum").item() > 0
            if state.step % args.checkpoint_interval == 0 or stop_now or state.step == args.max_iters:
                save_checkpoint(accelerator, state, config, tokenizer, args)
            if stop_now:
                accelerator.print(f"stopped by signal at step {state.step}; continue with --resume")
                break
    progress.close()
    result = finish(accelerator, state, data, args, interrupted=state.step < args.max_iters)
    accelerator.end_training()  # also ends the process group: last
    return result


def on_evaluation(record: dict, state: RunState, model, tokenizer, data, args: TrainingArguments) -> None:
    """Main process only: metrics line, loss curve, sample stories, and best/ on a new best loss."""
    output_dir = Path(args.output_dir)
    append_metrics(output_dir / "metrics.jsonl", record)
    plot_loss_curve(read_metrics(output_dir / "metrics.jsonl"), output_dir / "loss_curve.png")
    stories = sample_stories(model, tokenizer, args.num_samples, seed=args.seed + state.step)
    append_samples(output_dir / "samples.md", state.step, stories)
    print(
        f"\nstep {record['step']}: train loss {record['train_loss']:.4f}, val loss {record['val_loss']:.4f}"
        + (f"\n{stories[0]}" if stories else "")
    )
    if record["val_loss"] < state.best_val_loss:
        save_hub_folder(
            model,
            tokenizer,
            output_dir / "best",
            metrics={"val_loss": record["val_loss"], "step": record["step"]},
            training=training_summary(state, data, args),
            loss_curve=output_dir / "loss_curve.png",
            samples=stories,
            repo_id=args.hub_model_id,
            overwrite=True,
        )


def training_summary(state: RunState, data, args: TrainingArguments) -> dict:
    """The recipe and progress facts the model card reports."""
    return {
        "dataset": data.dataset_name,
        "tokenizer": data.tokenizer_name,
        "steps": state.step,
        "max_iters": args.max_iters,
        "tokens_seen": state.tokens_seen,
        "batch_size": args.batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "learning_rate": args.learning_rate,
        "min_lr": args.min_lr,
        "lr_scheduler_type": args.lr_scheduler_type,
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "grad_clip": args.grad_clip,
        "seed": args.seed,
    }


def describe_output_dir(output_dir: Path) -> str:
    """What a finished run left, one line each, for the end of the log."""
    lines = [f"{output_dir}/"]
    lines += [f"  {name:<20} {role}" for name, role in RUN_FILES.items() if (output_dir / name).exists()]
    return "\n".join(lines)


def finish(accelerator: Accelerator, state: RunState, data, args: TrainingArguments, interrupted: bool) -> dict:
    """Score best/ over the whole validation split, write the figures into its card, push if asked."""
    best_dir = Path(args.output_dir) / "best"
    result = {"step": state.step, "interrupted": interrupted, "best_dir": str(best_dir)}
    if interrupted or not best_dir.exists():
        return result
    if accelerator.is_main_process:
        best_model = TinyStoriesGPTForCausalLM.from_pretrained(best_dir).to(accelerator.device)
        final = evaluate_split(best_model, data.val_split, batch_size=args.batch_size)
        stories = sample_stories(best_model, data.tokenizer, max(args.num_samples, 1), seed=args.seed)
        result.update(final, stories=stories)
        save_hub_folder(
            best_model,
            data.tokenizer,
            best_dir,
            metrics=final,
            training=training_summary(state, data, args),
            loss_curve=Path(args.output_dir) / "loss_curve.png",
            samples=stories,
            repo_id=args.hub_model_id,
            overwrite=True,
        )
        (Path(args.output_dir) / "final_metrics.json").write_text(json.dumps(final, indent=2) + "\n")
        accelerator.print(
            f"\nvalidation (whole split): loss {final['loss']:.4f}, perplexity {final['perplexity']:.2f}, "
            f"bits per byte {final['bits_per_byte']:.4f}\n\nthe best model's story for {SEED_PROMPT!r}:\n\n"
            f"{stories[0]}\n\n{describe_output_dir(Path(args.output_dir))}"
        )
        if args.push_to_hub:
            push_to_hub(best_dir, args.hub_model_id)
    accelerator.wait_for_everyone()
    return result
