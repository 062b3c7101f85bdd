"""Training: what a run is told, the loop, and everything the loop asks for, each in a room of its own.

arguments.py      the flags and YAML presets, every check made before any work
memory.py         whether the shapes fit in memory, estimated before any data work
hardware.py       mixed precision, torch.compile, peak FLOP/s for MFU
distributed.py    the Accelerator and the engine it really runs (DDP, FSDP)
optimization.py   AdamW and the learning-rate schedule
budget.py         --max_time: max_iters chosen from the measured speed
checkpoints.py    the output folder: one run at a time, atomic checkpoints, verified on resume
records.py        what people read: metrics.jsonl, the loss curve, samples.md, throughput
lora.py           LoRA adapters through PEFT; best/ merged
parent.py         --init_from: the trained model a run starts from
run.py            a run as the loop holds it, and how one is set up
evaluations.py    evaluations during training and the final pass
loop.py           train(): set up, the steps, the end
"""
