"""Several processes on this machine's CPUs (gloo): DDP, FSDP really sharded, two launchers as two machines, and a
NaN on one rank stopping every rank. Each run is a tiny model for a few steps."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from runs import REPO, launch, tiny_args
from safetensors.torch import load_file

from tinystories_gpt import TinyStoriesGPTForCausalLM

# 4 steps of 2 processes x 1 micro-batch: the windows of 1 process x 2 micro-batches
RECIPE = ("--max_iters", "4", "--eval_interval", "4", "--checkpoint_interval", "2", "--dropout", "0")
RECIPE += ("--gradient_accumulation_steps", "1")


def checkpoint_weights(run: Path, step: int) -> dict:
    return load_file(run / "checkpoints" / f"step_{step}" / "model.safetensors")


def best_logits(run: Path) -> torch.Tensor:
    model = TinyStoriesGPTForCausalLM.from_pretrained(run / "best").eval()
    with torch.no_grad():
        return model(torch.arange(32).view(1, 32)).logits


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> tuple[Path, str]:
    """The shipped DDP config with 2 processes: (its output folder, its stdout)."""
    work = tmp_path_factory.mktemp("ddp")
    result = launch("ddp", 2, *tiny_args(work, *RECIPE), port=29517)
    assert result.returncode == 0, result.stderr
    return work / "run", result.stdout


@pytest.mark.slow
def test_two_processes_match_one_process_with_accumulation(ddp_run, tmp_path):
    """2 processes x accumulation 1 update the weights as 1 process x accumulation 2 does, on the same windows."""
    run, stdout = ddp_run
    assert "engine: DDP (CPU, gloo), processes: 2" in stdout and "x 2 processes" in stdout
    single = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *tiny_args(tmp_path, *RECIPE, "--gradient_accumulation_steps", "2")],
        capture_output=True,
        text=True,
    )
    assert single.returncode == 0, single.stderr
    expected, actual = checkpoint_weights(tmp_path / "run", 4), checkpoint_weights(run, 4)
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6, msg=key)
    # only the main process wrote the run's files: one metrics line per evaluation
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


@pytest.mark.slow
def test_fsdp_really_shards_and_trains_what_ddp_trains(ddp_run, tmp_path):
    """The shipped FSDP config on CPUs is FSDP2 (not a silent DDP): sharded checkpoints, the same model as DDP,
    best/ gathered into one loadable folder, and --resume from a sharded checkpoint."""
    result = launch("fsdp", 2, *tiny_args(tmp_path, *RECIPE, "--mixed_precision", "no"), port=29518)
    assert result.returncode == 0, result.stderr
    assert "engine: FSDP2, processes: 2" in result.stdout
    run = tmp_path / "run"
    checkpoint = run / "checkpoints" / "step_4"
    assert sorted(path.name for path in (checkpoint / "pytorch_model_fsdp_0").glob("*.distcp")) == [
        "__0_0.distcp",
        "__1_0.distcp",
    ]  # one shard per process
    assert not (checkpoint / "model.safetensors").exists()
    # best/ is one plain folder, and it is the model DDP trained on the same windows
    ddp, _ = ddp_run
    torch.testing.assert_close(best_logits(run), best_logits(ddp), rtol=0, atol=1e-4)
    final = json.loads((run / "final_metrics.json").read_text())
    assert final["tokens"] == json.loads((ddp / "final_metrics.json").read_text())["tokens"]  # the whole split, once

    # resume from the sharded step_2: the same best/ as the uninterrupted run
    uninterrupted = load_file(run / "best" / "model.safetensors")
    shutil.rmtree(run / "checkpoints" / "step_4")
    resumed = launch("fsdp", 2, *tiny_args(tmp_path, *RECIPE, "--mixed_precision", "no", "--resume"), port=29519)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {run / 'checkpoints' / 'step_2'} at step 2" in resumed.stdout
    for name, tensor in load_file(run / "best" / "model.safetensors").items():
        assert torch.equal(tensor, uninterrupted[name]), name


@pytest.mark.slow
def test_two_launchers_as_two_machines_match_two_processes(ddp_run, tmp_path):
    """The multi-node launch the README documents, as two launchers on this machine (one process each)."""
    argv = tiny_args(tmp_path, *RECIPE)
    nodes = []
    for machine_rank in (0, 1):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file"]
        command += [
            str(REPO / "configs/accelerate/ddp.yaml"),
            "--num_machines",
            "2",
            "--machine_rank",
            str(machine_rank),
        ]
        command += ["--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", "29520"]
        command += [str(REPO / "train.py"), *argv]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        nodes.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stderr
    assert "processes: 2" in outputs[0][0]
    expected, actual = checkpoint_weights(ddp_run[0], 4), checkpoint_weights(tmp_path / "run", 4)
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


NAN_ON_RANK_1 = """
import os, sys
from tinystories_gpt.training import loop
from tinystories_gpt.cli.train import main

real_loss, calls = loop.next_token_loss, []

def loss(model, input_ids, labels):  # rank 1's 4th optimizer step (step 3) sees NaN; rank 0 never does
    calls.append(None)
    value = real_loss(model, input_ids, labels)
    return value * float("nan") if os.environ["RANK"] == "1" and len(calls) > 3 else value

loop.next_token_loss = loss
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_with_the_same_message(tmp_path):
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1"]
    command += ["--master_port", "29521", str(script), *tiny_args(tmp_path, *RECIPE)]
    result = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert result.returncode != 0
    good = tmp_path / "run" / "checkpoints" / "step_2"
    message = (
        f"The training loss became nan at step 3; the weights were not updated. The last good checkpoint is {good}"
    )
    assert result.stderr.count(message) == 2, result.stderr  # each rank says it, neither hangs
    assert not (tmp_path / "run" / "checkpoints" / "step_4").exists()


@pytest.mark.parametrize("name, distributed_type", [("ddp", "MULTI_GPU"), ("fsdp", "FSDP")])
def test_shipped_accelerate_configs_load(name, distributed_type):
    from accelerate.commands.config.config_args import load_config_from_file

    from tinystories_gpt import modeling_tinystories_gpt

    config = load_config_from_file(str(REPO / "configs" / "accelerate" / f"{name}.yaml"))
    assert config.distributed_type.value == distributed_type and config.mixed_precision == "bf16"
    if name == "fsdp":  # the block class FSDP wraps must exist under that name
        assert hasattr(modeling_tinystories_gpt, config.fsdp_config["fsdp_transformer_layer_cls_to_wrap"])


@pytest.mark.slow
def test_processes_that_do_not_form_one_group_stop_at_once(tmp_path):
    """The shipped multi-GPU config without --cpu on a machine without GPUs: each process would run alone."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine these processes form a group")
    argv = [argument for argument in tiny_args(tmp_path) if argument != "--cpu"]
    result = launch("ddp", 2, *argv, port=29522)
    assert result.returncode != 0
    message = "train.py: error: the launcher started 2 processes (WORLD_SIZE=2) but each one runs alone"
    assert result.stderr.count(message) == 2, result.stderr  # both say so, neither trains
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_deepspeed_launch_is_refused_by_name(tmp_path):
    command = [sys.executable, str(REPO / "train.py"), *tiny_args(tmp_path)]
    environment = {**os.environ, "ACCELERATE_USE_DEEPSPEED": "true"}  # what `accelerate launch` sets for DeepSpeed
    result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("train.py: error: this launch asks for DeepSpeed, which the training loop"), (
        result.stderr
    )
