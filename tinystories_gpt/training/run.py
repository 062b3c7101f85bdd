"""A run as the loop holds it (`Run`), and how one is set up: the data, the model and optimizer, the state to resume.

`set_up` is the first stage of `loop.train`: it tokenizes the data (once, by the main process; the others reuse the
cache), builds the model (fresh, or `--init_from`'s parent with LoRA adapters if asked), prepares model and
optimizer with Accelerate, loads the newest checkpoint on `--resume`, and prints what the run will do.
"""

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from datasets import Dataset
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerFast

from ..configuration_tinystories_gpt import TinyStoriesGPTConfig
from ..data.batches import DeviceBatches, WindowSampler, fixed_eval_batches
from ..data.token_files import TokenFile, prepare_data
from ..evaluation.stories import check_seed_prompt_fits
from ..modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .arguments import DataArguments, ModelArguments, TrainingArguments
from .budget import TimeBudget, format_seconds, measure_costs
from .checkpoints import RunState, newest_checkpoint, prepare_output_dir, save_checkpoint
from .distributed import engine_name, is_sharded
from .hardware import can_compile, peak_flops
from .memory import check_fits_in_memory
from .optimization import build_optimizer, decay_start
from .parent import build_model, describe_start, load_parent
from .recipe import check_same_recipe, recipe, write_recipe
from .records import PhaseClock, Throughput, model_flops_per_token, truncate_metrics
from .shape import choose_shape

FINAL_STORIES = 20  # stories the final pass writes from held-out openings (and the seed prompt), for their figures


@dataclass
class TrainingData:
    """The tokenized splits as the loop uses them."""

    tokenizer: PreTrainedTokenizerFast
    train_tokens: int
    train_sampler: WindowSampler
    train_eval_batches: list
    held_out_batches: list  # fixed windows of the dev split if there is one, else of the validation split
    held_out_name: str  # "dev" or "val", the records' key prefix
    held_out_source: str  # the held-out split in words, for the card
    val_split: TokenFile
    train_texts: Dataset  # the training stories, whose words are the vocabulary the story figures measure against
    held_out_stories: list[str]  # the first stories of the held-out split, whose openings the final stories continue
    checksums: dict[str, str]  # the SHA-256 of each split's token file, for the recipe
    hub_id: str | None
    validation_source: str
    seconds: dict[str, float]


@dataclass
class Run:
    """One training run: what it was told, the engine, the data, the model, and the state a checkpoint keeps."""

    model_args: ModelArguments
    data_args: DataArguments
    args: TrainingArguments  # under --max_time, max_iters is None until the run has chosen it
    accelerator: Accelerator
    data: TrainingData
    config: TinyStoriesGPTConfig
    model: torch.nn.Module  # prepared by Accelerate: wrapped under DDP and FSDP
    optimizer: torch.optim.Optimizer
    state: RunState
    budget: TimeBudget | None
    throughput: Throughput
    clock: PhaseClock
    from_parent: bool  # --init_from: the parent is evaluated at step 0
    recipe: dict  # what the run computes (recipe.py), saved with every checkpoint
    ema: AveragedModel | None = None  # the moving average of the weights (--ema_decay)
    progress: tqdm | None = None
    steps_at_last_evaluation: int = 0  # this process's steps timed before its last evaluation

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def tokens_per_step(self) -> int:
        return self.throughput.tokens_per_step

    def done(self) -> bool:
        return self.args.max_iters is not None and self.state.step >= self.args.max_iters

    def evaluation_due(self) -> bool:
        return self.state.step % self.args.eval_interval == 0 or self.state.step == self.args.max_iters

    def checkpoint_due(self) -> bool:
        return self.state.step % self.args.checkpoint_interval == 0 or self.state.step == self.args.max_iters

    def save_checkpoint(self) -> Path:
        """A checkpoint of this step, with what --resume and convert.py read without loading its weights."""
        if self.budget:
            self.state.budget_spent = self.budget.elapsed()

        def describe(folder: Path) -> None:
            self.config.save_pretrained(folder)  # the shape, for convert.py
            self.data.tokenizer.save_pretrained(folder / "tokenizer")
            write_recipe(folder, self.recipe)

        return save_checkpoint(self.accelerator, self.state.step, self.args, describe)

    # --max_time: the first decision, after the warm-up's first steps, then a re-plan at every evaluation

    def budget_decides_now(self) -> bool:
        return self.budget is not None and self.budget.decides_at(self.state.step, self.args.max_iters)

    def budget_replans_now(self) -> bool:
        """Whether to re-plan after this step's evaluation: planned, and a plan still open (a wsd schedule's decay
        not begun; a cosine or linear one not ended)."""
        return (
            self.budget is not None
            and self.args.max_iters is not None
            and self.evaluation_due()
            and self.state.step < self.last_replan_step()
        )

    def last_replan_step(self) -> int:
        """wsd decays over a fixed share of the plan, so the plan holds from its decay on; a cosine or linear decay
        stretches or shrinks with the plan up to its end (the rate moves by as much as the plan does)."""
        return decay_start(self.args) if self.args.lr_scheduler_type == "wsd" else self.args.max_iters

    def decide_budget(self, evaluation_costs: dict[str, float]) -> None:
        # The first plan leaves out the final pass's stories, which every re-plan counts: they are costed from one
        # story, and the first is written right after compiling, where a machine busy at the start (another training
        # beside it) made it 26 s and the 21 stories alone more than the budget left, so the run refused to start.
        # (A run with no evaluation after this one keeps only the budget's reserve, SAFETY, for them.)
        measured = self.measured_costs(evaluation_costs, since=0, final_stories=0)
        self.fix_max_iters(self.budget.choose_max_iters(measured, self.state.step, self.args, self.accelerator))

    def replan_budget(self, evaluation_costs: dict[str, float], since: int) -> None:
        """Plan again from the steps timed since the last evaluation (this process's `since`-th on) and the one just
        run: an earlier evaluation's costs may be stale (the first, on a machine busy at the start, cost 3x)."""
        measured = self.measured_costs(evaluation_costs, since=since)
        step = self.state.step
        floor = step + 1  # the shortest plan still open: one more step
        if self.args.lr_scheduler_type == "wsd":  # or one whose decay has not begun (the plan in force is one)
            floor = next(
                m for m in range(floor, self.args.max_iters + 1) if decay_start(replace(self.args, max_iters=m)) > step
            )
        self.fix_max_iters(self.budget.replan(measured, step, self.args, self.accelerator, floor))

    def measured_costs(self, evaluation_costs: dict[str, float], since: int, final_stories: int = FINAL_STORIES + 1):
        """The costs from the steps this process timed from its `since`-th on, and from an evaluation's parts; the
        final pass writes `final_stories` (held-out openings and the seed prompt)."""
        return measure_costs(
            self.throughput.typical_step(since),
            evaluation_costs,
            final_pass_batches(self),
            final_stories,
            self.args.eval_iters,
            self.accelerator.num_processes,
        )

    def fix_max_iters(self, max_iters: int) -> None:
        """From here on, exactly the run that was given this max_iters (saved with the checkpoints)."""
        if max_iters != self.state.chosen_max_iters:
            self.state.plans.append([self.state.step, max_iters])
        self.state.chosen_max_iters = max_iters
        self.args = replace(self.args, max_iters=max_iters)
        if self.progress is not None:
            self.progress.total = max_iters


def set_up(accelerator: Accelerator, model_args: ModelArguments, data_args: DataArguments, args) -> Run:
    """Everything before the first step, in order; the output folder is already held by this run."""
    clock = PhaseClock()
    prepare_output_dir(args, accelerator.is_main_process)
    accelerator.wait_for_everyone()
    set_seed(args.seed)
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    if model_args.lora_r and is_sharded(accelerator):  # merging and resuming adapters need the whole model
        raise ValueError(
            "--lora_r under FSDP is not supported: LoRA trains a few adapters on a model that fits one device, so "
            "launch it with configs/accelerate/ddp.yaml or as one process."
        )
    if args.ema_decay and is_sharded(accelerator):  # the average is of whole weights, which one process holds
        raise ValueError(
            "--ema_decay averages every weight of a model one process holds: launch it with "
            "configs/accelerate/ddp.yaml or as one process, not under FSDP."
        )

    # the data and tokenizer (built once by the main process, reused from the cache by the others); a parent
    # (--init_from) fixes the model's shape and the tokenizer first
    with accelerator.main_process_first():
        parent = load_parent(model_args, data_args)  # fills in the shape flags a parent fixes
        check_fits_in_memory(model_args, data_args, args, accelerator.device)  # before any data work
        data = load_training_data(data_args, model_args, args, accelerator)
    for phase, seconds in data.seconds.items():
        clock.add(phase, seconds)

    # the model's shape: the preset's, or the smaller one a machine that affords it few steps trains (--small_shape)
    budget = TimeBudget(args.max_time, args.warmup_steps, step_cap=args.max_iters) if args.max_time else None
    shape_choice = None
    if model_args.small_shape and parent is None:
        model_args, shape_choice = choose_shape(model_args, args, data.tokenizer, accelerator, budget)

    # the model and optimizer, prepared by Accelerate
    model = build_model(model_args, data.tokenizer, parent)
    if parent is not None:
        accelerator.print(describe_start(model, model_args))
    config, n_params = model.config, model.num_parameters()
    optimizer = build_optimizer(model, args, fused=accelerator.device.type == "cuda")
    if args.compile and can_compile(accelerator):
        model.compile()  # in place, unlike torch.compile(model): checkpoints keep their plain key names
    model, optimizer = accelerator.prepare(model, optimizer)
    state = RunState(DeviceBatches(data.train_sampler, accelerator.device))
    state.shape_choice = asdict(shape_choice) if shape_choice else None  # a resumed run loads its checkpoint's
    accelerator.register_for_checkpointing(state)
    ema = moving_average(accelerator.unwrap_model(model), args.ema_decay) if args.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)  # resumed with the rest, so --resume stays exact
    tokens_per_step = args.batch_size * args.gradient_accumulation_steps * config.block_size * accelerator.num_processes

    run = Run(
        model_args=model_args,
        data_args=data_args,
        args=replace(args, max_iters=None) if budget else args,  # chosen after the warm-up's first steps
        accelerator=accelerator,
        data=data,
        config=config,
        model=model,
        optimizer=optimizer,
        state=state,
        budget=budget,
        throughput=Throughput(tokens_per_step, model_flops_per_token(config, n_params), peak_flops(accelerator.device)),
        clock=clock,
        from_parent=parent is not None,
        ema=ema,
        recipe=recipe(
            (model_args, data_args, args),
            config,
            {"processes": accelerator.num_processes, "precision": accelerator.mixed_precision, **data.checksums},
        ),
    )
    print_plan(run, n_params)
    if args.resume:
        resume(run)
    if budget and state.chosen_max_iters is not None:  # as the resumed run chose it, its budget going on
        run.budget = TimeBudget(args.max_time, args.warmup_steps, step_cap=args.max_iters, spent=state.budget_spent)
        run.fix_max_iters(state.chosen_max_iters)
    elif budget:
        budget.check_started_in_time()
    accelerator.init_trackers("tinystories-gpt", config={**asdict(model_args), **asdict(data_args), **asdict(args)})
    return run


def moving_average(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of `model`'s weights (torch's AveragedModel), of a plain uncompiled copy."""
    plain = TinyStoriesGPTForCausalLM(model.config).to(next(model.parameters()).device)
    plain.load_state_dict(model.state_dict())
    return AveragedModel(plain, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


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
        dev_stories=data_args.dev_stories,
        check_tokenizer=lambda tokenizer: check_seed_prompt_fits(tokenizer, model_args.block_size),
    )
    train_tokens, held_out_tokens = prepared.train.tokens(), (prepared.dev or prepared.validation).tokens()
    block_size, batch_size, eval_batch_size = model_args.block_size, args.batch_size, args.eval_batch_size
    return TrainingData(
        tokenizer=prepared.tokenizer,
        train_tokens=prepared.train.num_tokens,
        train_sampler=WindowSampler(
            train_tokens, block_size, batch_size, args.seed, accelerator.process_index, accelerator.num_processes
        ),
        # every process builds the same fixed lists; estimate_loss gives each its share
        train_eval_batches=fixed_eval_batches(
            train_tokens, block_size, eval_batch_size, args.eval_iters, args.seed + 1
        ),
        held_out_batches=fixed_eval_batches(
            held_out_tokens, block_size, eval_batch_size, args.eval_iters, args.seed + 2
        ),
        held_out_name="dev" if prepared.dev else "val",
        held_out_source=(
            f"the dev split (the last {data_args.dev_stories} train stories of {data_args.dataset}, held out)"
            if prepared.dev
            else prepared.validation_source
        ),
        val_split=prepared.validation,
        train_texts=prepared.texts["train"],
        held_out_stories=prepared.texts["dev" if prepared.dev else "validation"]["text"][:FINAL_STORIES],
        checksums={
            f"{name}_tokens_sha256": split.sha256
            for name, split in (("train", prepared.train), ("dev", prepared.dev), ("validation", prepared.validation))
            if split is not None
        },
        hub_id=prepared.hub_id,
        validation_source=prepared.validation_source,
        seconds=prepared.seconds,
    )


def final_pass_batches(run: Run) -> int:
    """The batches of the final pass over the whole validation split."""
    return math.ceil(run.data.val_split.num_tokens / (run.config.block_size * run.args.eval_batch_size))


def print_plan(run: Run, n_params: int) -> None:
    """The model, the effective batch, the token budget and the device, before the first step."""
    config, args, accelerator = run.config, run.args, run.accelerator
    if run.budget:
        cap = run.budget.step_cap
        plan = (
            f"time budget: {format_seconds(args.max_time)} from the start of the process; max_iters is chosen after "
            f"{run.budget.decision_step} steps from the measured speed" + (f" (at most {cap:,})" if cap else "")
        )
    else:
        plan = f"token budget: {token_budget(args.max_iters, run.tokens_per_step, run.data.train_tokens)}"
    accelerator.print(
        f"model: {n_params / 1e6:.2f}M parameters, {config.n_layer} layers x {config.n_head} heads x "
        f"{config.n_embd} wide, context {config.block_size}, vocabulary {config.vocab_size}\n"
        f"effective batch: {args.batch_size} sequences x {args.gradient_accumulation_steps} accumulation x "
        f"{accelerator.num_processes} processes = {run.tokens_per_step:,} tokens per optimizer step\n"
        f"{plan}\n"
        f"device: {accelerator.device}, mixed precision: {accelerator.mixed_precision}, "
        f"engine: {engine_name(accelerator)}, processes: {accelerator.num_processes}"
    )


def token_budget(max_iters: int, tokens_per_step: int, train_tokens: int) -> str:
    """'3,400 steps x 2,048 = 6,963,200 tokens (9.5 epochs of 735,360 training tokens)'"""
    tokens = max_iters * tokens_per_step
    return (
        f"{max_iters:,} steps x {tokens_per_step:,} = {tokens:,} tokens "
        f"({tokens / max(train_tokens, 1):.1f} epochs of {train_tokens:,} training tokens)"
    )


def resume(run: Run) -> None:
    """Load the newest checkpoint (model, optimizer, RNGs, run state) and drop the records written after it."""
    checkpoint = newest_checkpoint(run.args.checkpoints_dir)
    check_same_recipe(checkpoint, run.recipe)
    run.accelerator.load_state(str(checkpoint))
    if run.accelerator.is_main_process:
        truncate_metrics(run.output_dir / "metrics.jsonl", run.state.step)
    run.accelerator.print(f"resumed from {checkpoint} at step {run.state.step}")
