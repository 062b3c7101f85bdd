"""Which engine runs the loop, said out loud: the Accelerator, checked against what the launcher asked for.

A launch can ask for more than Accelerate does on this machine. Two traps it would otherwise fall into silently:
- processes that do not form one group (a launcher's WORLD_SIZE > 1, but each process alone: on a machine without
  GPUs, Accelerate only groups CPU processes when told `--cpu`), which would train side by side into one folder;
- an FSDP launch on CPUs, which Accelerate 1.15 turns into plain DDP (it enables FSDP for accelerator devices
  only). torch's FSDP2 runs on gloo, so there the loop switches Accelerate to FSDP with the launch's own plugin.
"""

import os

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from .arguments import TrainingArguments
from .hardware import resolve_mixed_precision

ENGINES = {
    DistributedType.NO: "single process",
    DistributedType.MULTI_CPU: "DDP (CPU, gloo)",
    DistributedType.MULTI_GPU: "DDP",
    DistributedType.FSDP: "FSDP",
    DistributedType.DEEPSPEED: "DeepSpeed",
}


def make_accelerator(args: TrainingArguments) -> Accelerator:
    """The Accelerator for this run, refusing launches it would get wrong (see the module docstring)."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ValueError(
            "this launch asks for DeepSpeed, which the training loop does not support (it was never run or tested "
            "here); use configs/accelerate/fsdp.yaml to shard, or configs/accelerate/ddp.yaml"
        )
    use_cuda = torch.cuda.is_available() and not args.cpu
    accelerator = Accelerator(
        cpu=args.cpu,
        mixed_precision=resolve_mixed_precision(args.mixed_precision, use_cuda),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_dir=os.path.join(args.output_dir, "logs"),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ValueError(
            f"the launcher started {launched} processes (WORLD_SIZE={launched}) but each one runs alone, so they "
            "would train side by side into one output folder. On a machine without GPUs pass --cpu to train.py "
            "(the processes then form one group over gloo); on GPUs check that each process sees one"
        )
    if fsdp_requested() and accelerator.distributed_type == DistributedType.MULTI_CPU:
        use_fsdp_on_cpu(accelerator)
    return accelerator


def fsdp_requested() -> bool:
    """Whether the launch (accelerate launch --config_file with distributed_type: FSDP) asked for FSDP."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def use_fsdp_on_cpu(accelerator: Accelerator) -> None:
    """Make an FSDP launch on CPUs really FSDP: Accelerate's plugin from the launch, and its FSDP code paths.

    Accelerate has no public switch for this (its state enables FSDP only for accelerator devices), so this is
    the one place that writes its shared state; both copies must agree, as Accelerate re-reads one from the other.
    """
    plugin = FullyShardedDataParallelPlugin()  # from the launcher's FSDP_* environment variables
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    for shared in (PartialState._shared_state, AcceleratorState._shared_state):
        shared["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def engine_name(accelerator: Accelerator) -> str:
    """The distributed engine Accelerate really uses, for the start-up lines."""
    name = ENGINES.get(accelerator.distributed_type, str(accelerator.distributed_type))
    if accelerator.distributed_type == DistributedType.FSDP:
        name = f"FSDP{accelerator.state.fsdp_plugin.fsdp_version}"
    return name


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether no single process holds the whole model (its weights must be gathered to save or sample it)."""
    return accelerator.distributed_type == DistributedType.FSDP


def full_state_dict(accelerator: Accelerator, model: torch.nn.Module) -> dict | None:
    """The whole model's weights on the main process (gathered from every process under FSDP: all must call)."""
    state_dict = accelerator.get_state_dict(model)
    return state_dict if accelerator.is_main_process else None
