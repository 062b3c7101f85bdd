"""ONNX with a KV cache, laid out as transformers.js and optimum load it: a GPT-2 folder with `onnx/model.onnx`.

    OUT_DIR/
      config.json, generation_config.json, tokenizer.json, ...   the GPT-2 export (gpt2.export_gpt2's files)
      onnx/model.onnx                                            one decoder graph, weights inside
      onnx/model_quantized.onnx                                  with `quantize`: the same graph, 8-bit weights

The graph takes `input_ids`, `attention_mask`, `position_ids` and `past_key_values.{i}.key/value` (batch, heads,
past length, head size; length 0 on the first step) and returns `logits` and `present.{i}.key/value`: the names
optimum gives a GPT-2 decoder "with past", which transformers.js expects.

It is traced by Transformers' own ONNX exporter (`transformers.exporters.OnnxExporter`, torch.export underneath)
in the project's environment. optimum-onnx would do the same from a GPT-2 folder but pins Transformers < 4.58, so
it cannot be installed beside this package. Before the folder takes its name, ONNX Runtime runs the graph, from an
empty cache and then one cached step, and its logits must match the model's.

The 8-bit graph is ONNX Runtime's own dynamic quantization (`quantize_dynamic`, int8 weights, activations quantized
as they come): about a quarter of the size, where transformers.js finds it (`dtype: "q8"`). Its logits are checked
on the same probe, by their root-mean-square difference from the model's.
"""

import logging
import re
from pathlib import Path

import numpy as np
import onnx_ir
import onnxruntime
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from transformers.exporters import OnnxConfig, OnnxExporter

from ..configuration_tinystories_gpt import TinyStoriesGPTConfig
from ..files import check_output
from ..modeling_tinystories_gpt import TinyStoriesGPTForCausalLM
from .checks import check_logits, probe_input_ids, save_checked
from .gpt2 import load_as_ours, to_gpt2, write_gpt2_folder

ONNX_PATH = "onnx/model.onnx"
QUANTIZED_PATH = "onnx/model_quantized.onnx"  # the name transformers.js loads for dtype "q8"
# The exporter names the cache by its path in the model's inputs and outputs; optimum's names replace them.
EXPORTER_CACHE_NAME = re.compile(r"(input|output)\.cache\.layers\.(\d+)\.(key|value)s")
OPTIMUM_CACHE_PREFIX = {"input": "past_key_values", "output": "present"}
# ONNX Runtime against torch, both float32: measured ~5e-7 relative to the largest logit; the issue allows 1e-3.
LOGITS_TOLERANCE = 1e-4
# 8-bit weights: the probe's logits' root-mean-square error, relative to theirs, measured 1.6% on the trained
# quickstart and 1.1% on a 2 x 2 x 64 story model (whose largest single error is 13% of the largest logit, which is
# why the check is not on the largest); a graph that lost its weights is off by ~100%
QUANTIZED_LOGITS_TOLERANCE = 0.05


def export_onnx(
    model_dir: str | Path, output_dir: str | Path, *, overwrite: bool = False, quantize: bool = False
) -> Path:
    """Write the model in `model_dir` (ours or a GPT-2 export) as an ONNX folder for transformers.js / optimum;
    with `quantize`, the 8-bit graph beside the float32 one."""
    check_output(output_dir, overwrite)
    model, tokenizer = load_as_ours(model_dir)
    graph = onnx_graph(model)

    def write(folder: Path) -> None:
        write_gpt2_folder(to_gpt2(model), tokenizer, folder, source_dir=model_dir)
        (folder / ONNX_PATH).parent.mkdir()
        onnx_ir.save(graph, folder / ONNX_PATH)  # weights inside: transformers.js reads one file by default
        if quantize:
            quantize_onnx(folder / ONNX_PATH, folder / QUANTIZED_PATH)

    def check(folder: Path) -> None:
        check_onnx_logits(folder / ONNX_PATH, model)
        if quantize:
            check_quantized_logits(folder / QUANTIZED_PATH, model)

    return save_checked(output_dir, overwrite, write, check)


def quantize_onnx(source: Path, target: Path) -> None:
    """ONNX Runtime's dynamic 8-bit quantization of the graph at `source`: int8 weights for every MatMul.

    Its warning advises pre-processing first (shape inference and graph optimisation); on our graphs that gives
    larger files (19.0 and 4.8 MB against 16.2 and 4.3 at the quickstart's shapes), so it is not done, nor shown.
    """
    logging.disable(logging.WARNING)
    try:
        quantize_dynamic(source, target, weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)


def onnx_graph(model: TinyStoriesGPTForCausalLM) -> onnx_ir.Model:
    """One decoder step with a cache of any length, traced from sample inputs, its cache named as optimum's."""
    exported = OnnxExporter().export(model, sample_inputs(model), OnnxConfig(dynamic=True))
    graph = exported.program
    for value in (*graph.graph.inputs, *graph.graph.outputs):
        if match := EXPORTER_CACHE_NAME.fullmatch(value.name):
            side, layer, kind = match.groups()
            value.name = f"{OPTIMUM_CACHE_PREFIX[side]}.{layer}.{kind}"
    expected = {
        f"{prefix}.{layer}.{kind}"
        for prefix in OPTIMUM_CACHE_PREFIX.values()
        for layer in range(model.config.n_layer)
        for kind in ("key", "value")
    }
    missing = expected - {value.name for value in (*graph.graph.inputs, *graph.graph.outputs)}
    if missing:
        raise RuntimeError(f"the ONNX exporter named the cache differently; missing {', '.join(sorted(missing))}")
    declare_axes(graph, model.config)
    return graph


def declare_axes(graph: onnx_ir.Model, config: TinyStoriesGPTConfig) -> None:
    """Declare the inputs' and outputs' shapes with optimum's axis names and the fixed sizes as numbers.

    transformers.js sizes the first step's empty cache from the declared shape of each `past_key_values` input:
    it fills in `batch_size`, keeps numbers and makes every other axis 0. The exporter names every axis by a
    symbol (s0, s1, ...), the fixed ones too ("2" heads), which would give a cache of shape (0, 0, 0, 0).
    """
    total = "past_sequence_length + sequence_length"
    heads, head_size = config.n_head, config.n_embd // config.n_head
    shapes = {
        "input_ids": ["batch_size", "sequence_length"],
        "position_ids": ["batch_size", "sequence_length"],
        "attention_mask": ["batch_size", total],
        "logits": ["batch_size", "sequence_length", config.vocab_size],
    }
    for value in (*graph.graph.inputs, *graph.graph.outputs):
        if value.name.startswith(OPTIMUM_CACHE_PREFIX["input"]):
            shapes[value.name] = ["batch_size", heads, "past_sequence_length", head_size]
        elif value.name.startswith(OPTIMUM_CACHE_PREFIX["output"]):
            shapes[value.name] = ["batch_size", heads, total, head_size]
        value.shape = onnx_ir.Shape(shapes[value.name])


def sample_inputs(model: TinyStoriesGPTForCausalLM) -> dict:
    """A cached step of 2 new tokens after 3, batch 2: every size above 1, so torch.export keeps each axis dynamic."""
    batch, past, new = 2, 3, 2
    input_ids = torch.randint(model.config.vocab_size, (batch, past + new), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache = model(input_ids[:, :past], use_cache=True).cache
    return {
        "input_ids": input_ids[:, past:],
        "attention_mask": torch.ones(batch, past + new, dtype=torch.long),
        "position_ids": torch.arange(past, past + new).expand(batch, new),
        "cache": cache,
        "use_cache": True,
    }


def check_onnx_logits(path: Path, model: TinyStoriesGPTForCausalLM) -> float:
    """ONNX Runtime's logits for a probe, from an empty cache and then a cached step, against the model's."""
    actual, expected = probe_logits(path, model)
    return check_logits(
        actual,
        expected,
        "ONNX Runtime's run of the exported graph",
        relative_tolerance=LOGITS_TOLERANCE,
        hint="the ONNX export is wrong; please report it",
    )


def check_quantized_logits(path: Path, model: TinyStoriesGPTForCausalLM) -> float:
    """The 8-bit graph's logits for the probe against the model's, by their root-mean-square difference: 8-bit
    weights move every logit a little, and its largest move, on one of the probe's random tokens, says little."""
    actual, expected = probe_logits(path, model)
    error = ((actual - expected).square().mean().sqrt() / expected.square().mean().sqrt()).item()
    if not error <= QUANTIZED_LOGITS_TOLERANCE:  # also catches NaN
        raise ValueError(
            f"logits check failed: ONNX Runtime's run of the 8-bit graph is off by {error:.1%} of the logits' size "
            f"(root mean square; at most {QUANTIZED_LOGITS_TOLERANCE:.0%} expected); nothing was written. The 8-bit "
            "quantization is wrong for this model; please report it, and export without --quantize meanwhile"
        )
    return error


def probe_logits(path: Path, model: TinyStoriesGPTForCausalLM) -> tuple[torch.Tensor, torch.Tensor]:
    """(ONNX Runtime's logits of the graph at `path`, the model's) for the probe tokens, the graph's in two steps."""
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    input_ids = probe_input_ids(model.config.vocab_size, model.config.block_size)
    split = input_ids.shape[1] // 2
    first = run_step(session, input_ids[:, :split], empty_cache(model.config, input_ids.shape[0]))
    second = run_step(session, input_ids[:, split:], first)
    with torch.no_grad():
        expected = model(input_ids).logits
    return torch.cat([torch.from_numpy(first["logits"]), torch.from_numpy(second["logits"])], dim=1), expected


def empty_cache(config: TinyStoriesGPTConfig, batch_size: int) -> dict[str, np.ndarray]:
    """The `present.*` of a zero-length past, as transformers.js passes on its first step."""
    shape = (batch_size, config.n_head, 0, config.n_embd // config.n_head)
    return {
        f"present.{layer}.{kind}": np.zeros(shape, dtype=np.float32)
        for layer in range(config.n_layer)
        for kind in ("key", "value")
    }


def run_step(session: onnxruntime.InferenceSession, input_ids: torch.Tensor, previous: dict) -> dict[str, np.ndarray]:
    """One decoder step after the step whose outputs are `previous` (their `present.*` become the past)."""
    past = {name.replace("present.", "past_key_values."): value for name, value in previous.items() if name != "logits"}
    past_length = next(iter(past.values())).shape[2]
    batch_size, length = input_ids.shape
    feed = {
        "input_ids": input_ids.numpy(),
        "attention_mask": np.ones((batch_size, past_length + length), dtype=np.int64),
        "position_ids": np.tile(np.arange(past_length, past_length + length), (batch_size, 1)),
        **past,
    }
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


__all__ = ["export_onnx"]
