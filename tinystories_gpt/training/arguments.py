"""What a training run is told: the model's shape, the data, the recipe; from flags over an optional YAML preset.

Every value is checked here, when the arguments are parsed, so a bad one stops the run before any data work.
Names follow the seed table (and nanoGPT); `train.py --help` lists them all.
"""

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ..configuration_tinystories_gpt import TinyStoriesGPTConfig
from .budget import MIN_WARMUP_STEPS
from .presets import load_preset

MIXED_PRECISION_CHOICES = ("auto", "no", "bf16", "fp16")
# Transformers' get_scheduler names for these shapes; ours warm up from learning_rate / (warmup_steps + 1), not 0,
# and decay to min_lr (Transformers' "cosine" and "linear" end at 0: set --min_lr 0 for those)
LR_SCHEDULER_TYPES = ("cosine", "linear", "wsd")
TRACKERS = ("none", "all", "tensorboard", "wandb", "trackio")
SEED_MAX_ITERS = 25_000
# Transformers' own registry (which the model dispatches through), so new kernels need no change here; the paged
# kernels serve continuous-batching generation only
ATTENTION_CHOICES = ("eager", *(key for key in ALL_ATTENTION_FUNCTIONS.valid_keys() if not key.startswith("paged")))

# A fresh model's shape when no flag or preset gives one; with --init_from these come from the parent instead
FRESH_MODEL_DEFAULTS = {"block_size": 128, "n_layer": 6, "n_head": 6, "n_embd": 384, "dropout": 0.1, "bias": True}
DEFAULT_TOKENIZER = "gpt2"
# Every Linear of a block (c_proj names two: attn.c_proj and mlp.c_proj pick one), and PEFT's name for all of them;
# never lm_head, which is tied to the token embedding
LORA_TARGET_CHOICES = ("c_attn", "c_proj", "c_fc", "attn.c_proj", "mlp.c_proj", "all-linear")
DEFAULT_LORA_TARGETS = "c_attn,c_proj,c_fc"


def require(condition: bool, message: str) -> None:
    """Refuse a bad argument with a ValueError whose message names the value and the fix."""
    if not condition:
        raise ValueError(message)


@dataclass
class ModelArguments:
    """The architecture, or the trained model to start from, and LoRA; shape names as in the seed table.

    A shape field left unset (None) takes the fresh-model default, or with `init_from` the parent's value.
    """

    init_from: str | None = field(
        default=None,
        metadata={
            "help": "Start from a trained model instead of random weights: a folder train.py or convert.py wrote "
            "(e.g. out/quickstart/best), a Hub id, a GPT-2 export (GPT2LMHeadModel folder or Hub id), a training "
            "checkpoint folder, or a nanoGPT/seed checkpoint file (.pt). Its architecture and tokenizer are used: "
            "shape flags may only repeat them, except block_size, which may be lowered."
        },
    )
    block_size: int | None = field(
        default=None, metadata={"help": "Context length in tokens (default 128; with --init_from, up to the parent's)."}
    )
    n_layer: int | None = field(default=None, metadata={"help": "Number of transformer blocks (default 6)."})
    n_head: int | None = field(default=None, metadata={"help": "Attention heads per block (default 6)."})
    n_embd: int | None = field(default=None, metadata={"help": "Width of the residual stream (default 384)."})
    dropout: float | None = field(
        default=None, metadata={"help": "Dropout probability (default 0.1; with --init_from, the parent's)."}
    )
    bias: bool | None = field(
        default=None, metadata={"help": "Biases in Linear and LayerNorm layers (default true; --bias false: none)."}
    )
    vocab_size: int | None = field(default=None, metadata={"help": "Model vocabulary; default: the tokenizer's."})
    attn_implementation: str = field(
        default="sdpa",
        metadata={
            "help": f"Attention kernel for training: {', '.join(ATTENTION_CHOICES)}. Not saved: a loaded model "
            "picks its own. On a CPU, eager trains small models faster than sdpa's flash kernel."
        },
    )
    small_shape: str | None = field(
        default=None,
        metadata={
            "help": "LAYERSxWIDTH (e.g. 2x288): under --max_time, the model to train instead where the machine affords "
            "the given shape fewer than --small_shape_below_steps steps (timed uncompiled before the run starts, in a "
            "few seconds). Heads stay --n_head; the choice is printed, saved, and kept by --resume. Not used with "
            "--init_from, whose parent fixes the shape."
        },
    )
    small_shape_below_steps: int | None = field(
        default=None,
        metadata={"help": "With --small_shape: the steps of the given shape below which it is used (0: never)."},
    )
    lora_r: int = field(
        default=0,
        metadata={
            "help": "LoRA rank: train low-rank adapters of this rank (through peft) instead of every weight; needs "
            "--init_from. 0 trains every weight."
        },
    )
    lora_alpha: int | None = field(
        default=None, metadata={"help": "LoRA scale numerator: updates are scaled by alpha / r (default: r, scale 1)."}
    )
    lora_dropout: float | None = field(default=None, metadata={"help": "Dropout on the adapters' input (default 0)."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": f"Comma-separated layers to adapt, of {', '.join(LORA_TARGET_CHOICES)} (default "
            f"{DEFAULT_LORA_TARGETS}: every Linear of every block)."
        },
    )

    def __post_init__(self):
        require(
            self.attn_implementation in ATTENTION_CHOICES,
            f"attn_implementation must be one of {', '.join(ATTENTION_CHOICES)}, got {self.attn_implementation!r}.",
        )
        if self.init_from is None:
            for name, default in FRESH_MODEL_DEFAULTS.items():
                if getattr(self, name) is None:
                    setattr(self, name, default)
            # the config's own checks, now rather than after the data is tokenized (vocab_size is known only then)
            self.config(vocab_size=self.vocab_size or 1, bos_token_id=None, eos_token_id=None)
        else:  # the rest is checked against the parent, which is loaded before any data work
            for name in ("block_size", "n_layer", "n_head", "n_embd", "vocab_size"):
                value = getattr(self, name)
                require(value is None or value > 0, f"{name} must be a positive integer, got {value}.")
            require(self.dropout is None or 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}.")
        self._check_lora()
        self._check_small_shape()

    def _check_small_shape(self) -> None:
        if self.small_shape is None:
            require(
                self.small_shape_below_steps is None,
                "--small_shape_below_steps only applies with --small_shape LAYERSxWIDTH: add one, or drop it.",
            )
            return
        require(
            self.small_shape_below_steps is not None and self.small_shape_below_steps >= 0,
            f"--small_shape {self.small_shape} needs --small_shape_below_steps N: the steps of the given shape "
            "below which the small one is trained (e.g. 2700; 0 never trains it).",
        )
        n_embd = parse_shape(self.small_shape)[1]
        require(
            self.n_head is None or n_embd % self.n_head == 0,
            f"--small_shape {self.small_shape}: its width {n_embd} must be a multiple of n_head ({self.n_head}).",
        )

    def _check_lora(self) -> None:
        require(self.lora_r >= 0, f"lora_r must not be negative (0 trains every weight), got {self.lora_r}.")
        if self.lora_r == 0:
            for name in ("lora_alpha", "lora_dropout", "lora_target_modules"):
                require(
                    getattr(self, name) is None, f"--{name} only applies to LoRA: add --lora_r R (e.g. 8), or drop it."
                )
            return
        require(
            self.init_from is not None,
            "--lora_r trains adapters on top of a trained model: pass --init_from MODEL (e.g. out/quickstart/best), "
            "or drop --lora_r to train every weight.",
        )
        require(
            importlib.util.find_spec("peft") is not None,
            "--lora_r needs the peft package: pip install 'tinystories-gpt[peft]' (or pip install peft).",
        )
        self.lora_alpha = self.lora_r if self.lora_alpha is None else self.lora_alpha
        self.lora_dropout = 0.0 if self.lora_dropout is None else self.lora_dropout
        self.lora_target_modules = self.lora_target_modules or DEFAULT_LORA_TARGETS
        require(self.lora_alpha > 0, f"lora_alpha must be positive, got {self.lora_alpha}.")
        require(0 <= self.lora_dropout < 1, f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        unknown = [name for name in self.lora_targets if name not in LORA_TARGET_CHOICES]
        require(
            "all-linear" not in self.lora_targets or len(self.lora_targets) == 1,
            "lora_target_modules all-linear already names every Linear of every block: pass it alone.",
        )
        require(
            not unknown and self.lora_targets,
            f"lora_target_modules {self.lora_target_modules!r} names {', '.join(unknown) or 'no layer'}: pick from "
            f"{', '.join(LORA_TARGET_CHOICES)}, comma-separated.",
        )

    @property
    def lora_targets(self) -> list[str]:
        """The layers LoRA adapts, as a list (the flag takes them comma-separated)."""
        return [name.strip() for name in (self.lora_target_modules or "").split(",") if name.strip()]

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
    tokenizer: str | None = field(
        default=None,
        metadata={
            "help": "'gpt2' (bundled, the default), a path or Hub name, or 'bpe:N' to train an N-token BPE. With "
            "--init_from the parent's tokenizer is used: this may only name the same one (a nanoGPT checkpoint "
            "carries none: name the one it was trained with, default gpt2)."
        },
    )
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Hold-out carved from train when the dataset has no validation split."}
    )
    dev_stories: int = field(
        default=0,
        metadata={
            "help": "Hold the last N train stories out as a dev split: evaluations and best/ choose on it, and the "
            "validation split is scored once, by the final pass (tune on dev, report validation)."
        },
    )
    num_proc: int | None = field(default=None, metadata={"help": "Processes for tokenization (default: CPU count)."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where token files are cached."})


@dataclass
class TrainingArguments:
    """The optimisation recipe and the run's bookkeeping."""

    output_dir: str = field(default="out", metadata={"help": "Folder for best/, checkpoints/, metrics and plots."})
    batch_size: int = field(default=32, metadata={"help": "Sequences per micro-batch per process."})
    gradient_accumulation_steps: int = field(default=32, metadata={"help": "Micro-batches per optimizer step."})
    max_iters: int | None = field(
        default=None,
        metadata={
            "help": f"Optimizer steps (not micro-batches); default {SEED_MAX_ITERS:,}, the seed's. With --max_time, "
            "an upper bound on the number the run chooses."
        },
    )
    max_time: float | None = field(
        default=None,
        metadata={
            "help": "A wall-clock budget in seconds for the whole run, from the start of the process to the final "
            "story: after a few warm-up steps the run measures its own speed and fixes max_iters so that training, "
            "evaluations, checkpoints and the final pass all fit. The number it chooses is saved with the "
            "checkpoints, so --resume continues the same run."
        },
    )
    eval_interval: int = field(default=500, metadata={"help": "Optimizer steps between evaluations."})
    eval_iters: int = field(default=500, metadata={"help": "Batches per split in each evaluation."})
    eval_batch_size: int | None = field(
        default=None,
        metadata={"help": "Sequences per evaluation batch (the fixed windows and the final pass); default batch_size."},
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate, reached after warmup."})
    min_lr: float = field(default=1e-5, metadata={"help": "Learning rate at the end of the decay."})
    lr_scheduler_type: str = field(
        default="cosine",
        metadata={
            "help": f"Decay after warmup: {', '.join(LR_SCHEDULER_TYPES)}, to min_lr. wsd (warmup-stable-decay) holds "
            "learning_rate until the last decay_fraction of max_iters, then decays along a cosine. Under --max_time "
            "the run re-plans max_iters at every evaluation from the speed it measured since the last one (wsd: until "
            "its decay begins)."
        },
    )
    decay_fraction: float = field(
        default=0.2, metadata={"help": "With --lr_scheduler_type wsd: the share of max_iters the final decay takes."}
    )
    warmup_steps: int = field(default=1000, metadata={"help": "Linear warmup, in optimizer steps."})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay, on 2-D weights only."})
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this; 0 disables."})
    ema_decay: float = field(
        default=0.0,
        metadata={
            "help": "Keep an exponential moving average of the weights with this decay (e.g. 0.999; 0: none), "
            "through torch.optim.swa_utils.AveragedModel: evaluations score it beside the weights, and best/ takes "
            "whichever has the lower held-out loss."
        },
    )
    seed: int = 1337
    checkpoint_interval: int = field(default=1000, metadata={"help": "Optimizer steps between resumable checkpoints."})
    keep_checkpoints: int = field(default=2, metadata={"help": "How many recent checkpoints to keep."})
    mixed_precision: str = field(
        default="auto",
        metadata={"help": "auto (bf16 on CUDA and on CPUs with AMX, fp16 on older CUDA, else fp32), no, bf16, fp16."},
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
        if self.max_iters is None and self.max_time is None:
            self.max_iters = SEED_MAX_ITERS
        if self.eval_batch_size is None:
            self.eval_batch_size = self.batch_size
        require(
            self.max_time is None or self.max_time > 0,
            f"max_time must be a positive number of seconds, got {self.max_time}.",
        )
        require(
            self.max_time is None or self.warmup_steps >= MIN_WARMUP_STEPS,
            f"--max_time measures the run's speed during the warm-up, which needs at least {MIN_WARMUP_STEPS} "
            f"steps; got warmup_steps={self.warmup_steps}. Raise --warmup_steps.",
        )
        require(
            self.max_iters is None or self.max_iters > 0, f"max_iters must be a positive integer, got {self.max_iters}."
        )
        for name in ("batch_size", "gradient_accumulation_steps", "eval_interval", "eval_iters", "eval_batch_size"):
            require(getattr(self, name) > 0, f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("checkpoint_interval", "keep_checkpoints"):
            require(getattr(self, name) > 0, f"{name} must be a positive integer, got {getattr(self, name)}.")
        require(self.learning_rate > 0, f"learning_rate must be positive, got {self.learning_rate}.")
        require(
            0 <= self.min_lr <= self.learning_rate,
            f"min_lr ({self.min_lr}) must lie between 0 and learning_rate ({self.learning_rate}): the "
            "schedule decays from learning_rate down to min_lr, so a larger min_lr would make it rise. "
            "Set --min_lr to about learning_rate / 10.",
        )
        require(
            self.lr_scheduler_type in LR_SCHEDULER_TYPES,
            f"lr_scheduler_type must be one of {', '.join(LR_SCHEDULER_TYPES)}, got {self.lr_scheduler_type!r}.",
        )
        require(0 < self.decay_fraction <= 1, f"decay_fraction must lie in (0, 1], got {self.decay_fraction}.")
        require(
            0 <= self.warmup_steps <= (self.max_iters or self.warmup_steps),
            f"warmup_steps ({self.warmup_steps}) must lie between 0 and max_iters ({self.max_iters}).",
        )
        require(self.weight_decay >= 0, f"weight_decay must not be negative, got {self.weight_decay}.")
        require(0 <= self.beta1 < 1 and 0 <= self.beta2 < 1, "beta1 and beta2 must lie in [0, 1).")
        require(self.grad_clip >= 0, f"grad_clip must not be negative (0 disables it), got {self.grad_clip}.")
        require(0 <= self.ema_decay < 1, f"ema_decay must lie in [0, 1) (0: no moving average), got {self.ema_decay}.")
        require(self.num_samples >= 0, f"num_samples must not be negative, got {self.num_samples}.")
        require(
            self.mixed_precision in MIXED_PRECISION_CHOICES,
            f"mixed_precision must be one of {', '.join(MIXED_PRECISION_CHOICES)}, got {self.mixed_precision!r}.",
        )
        require(self.report_to in TRACKERS, f"report_to must be one of {', '.join(TRACKERS)}, got {self.report_to!r}.")
        require(
            not self.push_to_hub or bool(self.hub_model_id),
            "push_to_hub needs --hub_model_id user/name to know where to upload.",
        )
        require(
            not (self.resume and self.overwrite_output_dir),
            "resume and overwrite_output_dir contradict each other: pick one.",
        )

    @property
    def checkpoints_dir(self) -> Path:
        return Path(self.output_dir) / "checkpoints"


ARGUMENT_CLASSES = (ModelArguments, DataArguments, TrainingArguments)


def parse_args(argv: list[str] | None = None) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """Command-line flags over an optional `--config preset.yaml`; unknown keys are refused by name."""
    parser = HfArgumentParser(ARGUMENT_CLASSES)
    parser.add_argument("--config", type=Path, help="A YAML preset; flags given on the command line override it.")
    known, _ = parser.parse_known_args(argv)
    if known.config is not None:
        parser.set_defaults(**load_preset(known.config, ARGUMENT_CLASSES))
    model_args, data_args, training_args, _config = parser.parse_args_into_dataclasses(argv)
    require(
        not (training_args.ema_decay and model_args.lora_r),
        "--ema_decay averages every weight, and LoRA trains a few adapters: drop --ema_decay with --lora_r.",
    )
    require(
        model_args.small_shape is None or training_args.max_time is not None,
        f"--small_shape {model_args.small_shape} is chosen from the steps a time budget affords: add --max_time "
        "SECONDS, or drop --small_shape.",
    )
    check_tokenizer_choice(model_args, data_args)
    return model_args, data_args, training_args


def parse_shape(text: str) -> tuple[int, int]:
    """'2x288' -> (2, 288): layers x width."""
    layers, _, width = text.lower().partition("x")
    require(
        layers.isdigit() and width.isdigit() and int(layers) > 0 and int(width) > 0,
        f"A shape is LAYERSxWIDTH, e.g. 2x288; got {text!r}.",
    )
    return int(layers), int(width)


def check_tokenizer_choice(model_args: ModelArguments, data_args: DataArguments) -> None:
    """A fresh model gets the default tokenizer; a parent brings its own, which no new BPE can equal."""
    if model_args.init_from is None:
        data_args.tokenizer = data_args.tokenizer or DEFAULT_TOKENIZER
        return
    require(
        not (data_args.tokenizer or "").startswith("bpe:"),
        f"--tokenizer {data_args.tokenizer} would train a new tokenizer, whose ids the parent "
        f"{model_args.init_from} never learnt: drop --tokenizer (the parent's comes with it).",
    )
