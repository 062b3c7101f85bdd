"""Every Python and shell block of the README, DEVELOPING.md and docs/ runs, so no page can drift from the code.

Each page runs top to bottom in a scratch folder of its own, as a reader would in a checkout, with three stand-ins:
- configs/ holds tiny versions of the presets under the same names (a model of seconds; a Hub dataset becomes a
  few hundred bundled stories), so `python train.py --config configs/quickstart.yaml` means what it says, faster;
- out/quickstart/ is the tiny quickstart's run (the README trains its own), and out/ckpt.pt and
  best_model_params.pt are a nanoGPT checkpoint and a bare state dict, for the pages that convert them;
- the Hub is tests/fake_hub.py served on 127.0.0.1 (HF_ENDPOINT), so pushes and pulls by repo id are real.

The environment is the one this suite runs in: commands that make it (`python -m venv`, `pip install`, and the
`npm install` of transformers.js that .ci/side_envs.sh does) are what .ci/run does, checked below, and not run
again; `python -m pytest` is this suite itself. A comment above a block says what else it needs:

    <!-- docs-test: needs N GPUs -->            it runs, alone, only where there are that many
    <!-- docs-test: needs the node side env --> the page runs with node_modules/ from .side-envs/node (else it skips)
    (a page that runs llama_cpp)                the page runs with .side-envs' llama-cpp-python (else it skips)
    <!-- docs-test: serves on port P -->        a server: it runs in the background on a free port instead of P
                                                from when it answers there (at / or, with `at /PATH`, at that
                                                path) to the end of the page; later blocks reach it at P
"""

import os
import re
import shutil
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from exports import llama_cpp_pythonpath, side_env
from fake_hub import FakeHub, serve_on_loopback
from runs import REPO, small_stories
from servers import free_port, serving

from tinystories_gpt.demo.space import TRANSFORMERS_JS

pytestmark = pytest.mark.slow  # every page trains, converts and serves

PAGES = ["README.md", "DEVELOPING.md", *sorted(str(path.relative_to(REPO)) for path in (REPO / "docs").glob("*.md"))]
NEEDS_GPUS = re.compile(r"<!-- docs-test: needs (\d+) GPUs? -->")
NEEDS_NODE = "<!-- docs-test: needs the node side env -->"
SERVES = re.compile(r"<!-- docs-test: serves on port (\d+)(?: at (/\S*))? -->")
# What makes the environment (.ci/run does it) and the suite itself: read, checked against .ci/run, not run
NOT_RUN = [
    r"python -m venv \.venv",
    r"\. \.venv/bin/activate",
    r"pip install [^&\n]*",
    r"npm install [^&\n]*",
    r"python -m pytest[^&\n]*",
]
TINY_SHAPE = {"block_size": 128, "n_layer": 2, "n_head": 2, "n_embd": 32}  # the real context: prompts fit
TINY_RUN = {
    "batch_size": 4,
    "gradient_accumulation_steps": 1,
    "max_iters": 4,
    "warmup_steps": 2,
    "eval_interval": 2,
    "eval_iters": 2,
    "eval_batch_size": 16,
    "checkpoint_interval": 2,
    "num_samples": 1,
    "compile": False,
    "mixed_precision": "no",
}


@dataclass
class Block:
    page: str
    line: int
    language: str
    code: str
    gpus: int  # the CUDA GPUs the block needs (the DDP and FSDP launches: 8, as their configs say)
    node: bool = False  # it needs transformers.js from npm (node_modules/)
    port: int | None = None  # the port of the server it starts
    ready_path: str = "/"  # where the server answers once it is up


def blocks(page: str) -> list[Block]:
    """The ```bash and ```python blocks of a page, in order."""
    found, lines = [], (REPO / page).read_text().splitlines()
    fence = re.compile(r"^```(\w*)\s*$")
    index = 0
    while index < len(lines):
        opening = fence.match(lines[index])
        if not opening:
            index += 1
            continue
        end = next(i for i in range(index + 1, len(lines)) if lines[i].startswith("```"))
        if opening.group(1) in ("bash", "python"):
            above = lines[index - 1].strip() if index > 0 else ""
            gpus, serves = NEEDS_GPUS.fullmatch(above), SERVES.fullmatch(above)
            code = "\n".join(lines[index + 1 : end]) + "\n"
            found.append(
                Block(
                    page, index + 1, opening.group(1), code, int(gpus.group(1)) if gpus else 0,
                    node=above == NEEDS_NODE, port=int(serves.group(1)) if serves else None,
                    ready_path=serves.group(2) or "/" if serves else "/",
                )
            )  # fmt: skip
        index = end + 1
    return found


def tiny_preset(preset: dict, stories: Path) -> dict:
    """A preset's tiny version: the same data and parent, a model of seconds, a few steps."""
    budget = ("max_time", "small_shape", "small_shape_below_steps")  # a few steps of one tiny shape instead
    tiny = {key: value for key, value in preset.items() if key not in budget} | TINY_RUN
    if "init_from" not in preset:  # a parent fixes its own shape
        tiny |= TINY_SHAPE
    if not (REPO / str(preset.get("dataset", "data"))).exists():  # a Hub dataset: bundled stories stand in
        tiny["dataset"] = str(stories)
    return tiny


def make_scratch(folder: Path, stories: Path) -> Path:
    """A folder laid out like a checkout, with the tiny presets."""
    folder.mkdir(parents=True)
    for name in ("train.py", "convert.py", "data", "benchmarks"):
        (folder / name).symlink_to(REPO / name)
    for preset in (REPO / "configs").rglob("*.yaml"):
        target = folder / preset.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        if preset.parent.name == "accelerate":
            shutil.copyfile(preset, target)
        else:
            target.write_text(yaml.safe_dump(tiny_preset(yaml.safe_load(preset.read_text()), stories)))
    return folder


def environment(scratch: Path, hub_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # python and the console scripts
        "HF_HOME": str(scratch / ".hf_home"),
        "HF_ENDPOINT": hub_url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": "hf_docs_test",
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
    }


@dataclass
class PageServers:
    """The servers a page started, each on a free port instead of the one the page names, running until the page
    ends (the stack closes): later blocks reach them at the page's port."""

    stack: ExitStack
    ports: dict[int, int] = field(default_factory=dict)  # the page's port -> the free one

    def substitute(self, code: str) -> str:
        for named, port in self.ports.items():
            code = re.sub(rf"\b{named}\b", str(port), code)
        return code


def run_block(block: Block, scratch: Path, env: dict[str, str], servers: PageServers | None = None) -> None:
    code = servers.substitute(block.code) if servers is not None else block.code
    if block.language == "python":
        command, stdin = [sys.executable, "-"], code
    else:
        script = code
        for pattern in NOT_RUN:
            script = re.sub(pattern, "true", script)
        command, stdin = ["bash", "-euo", "pipefail", "-c", script], None
    # a block about the checkout itself (the linters) runs in the checkout
    cwd = (
        REPO
        if block.language == "bash" and re.fullmatch(r"(\s|true|ruff [^\n&]*|&&|#[^\n]*)*", command[-1])
        else scratch
    )
    if block.port is not None:  # a server: on a free port, until it answers there
        port = free_port()
        command[-1] = re.sub(rf"\b{block.port}\b", str(port), command[-1])
        server = serving(command, f"http://127.0.0.1:{port}{block.ready_path}", cwd=cwd, env=env)
        if servers is None:
            with server:
                return
        servers.stack.enter_context(server)
        servers.ports[block.port] = port
        return
    result = subprocess.run(command, input=stdin, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (
        f"{block.page} line {block.line} failed ({result.returncode}):\n{code}\n--- stdout\n"
        f"{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
    )


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    """The tiny quickstart's out/ (trained once, by the page's own command), a nanoGPT ckpt.pt, a bare state dict."""
    root = tmp_path_factory.mktemp("stand-ins")
    stories = small_stories(root / "small-stories")
    scratch = make_scratch(root / "quickstart", stories)
    env = environment(scratch, "http://127.0.0.1:9")  # nothing here talks to the Hub
    run_block(Block("stand-ins", 0, "bash", "python train.py --config configs/quickstart.yaml\n", 0), scratch, env)
    from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM

    nanogpt = TinyStoriesGPTForCausalLM(TinyStoriesGPTConfig(block_size=32, n_layer=2, n_head=6, n_embd=48))
    weights = {name: tensor for name, tensor in nanogpt.state_dict().items() if name != "lm_head.weight"}
    model_args = {"n_layer": 2, "n_head": 6, "n_embd": 48, "block_size": 32, "bias": True, "vocab_size": 50257}
    torch.save({"model": weights, "model_args": model_args}, scratch / "out" / "ckpt.pt")
    torch.save(weights, scratch / "best_model_params.pt")
    return scratch


def test_the_commands_not_run_are_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert 'pip install --quiet -e ".[dev]"' in ci and "\npython -m pytest -q\n" in ci
    readme = (REPO / "README.md").read_text()
    assert 'pip install -e ".[dev]"' in readme and "python -m pytest -q" in readme
    side_envs = (REPO / ".ci" / "side_envs.sh").read_text()
    assert (
        f"TRANSFORMERS_JS={TRANSFORMERS_JS}\n" in side_envs
        and '"@huggingface/transformers@$TRANSFORMERS_JS"' in side_envs
    )
    npm_installs = [
        line for page in PAGES for block in blocks(page) for line in block.code.splitlines() if "npm install" in line
    ]
    assert all(f"@huggingface/transformers@{TRANSFORMERS_JS}" in line for line in npm_installs), npm_installs


@pytest.mark.parametrize("page", [page for page in PAGES if any(not block.gpus for block in blocks(page))])
def test_every_block_of_the_page_runs(page, stand_ins, tmp_path):
    page_blocks = [block for block in blocks(page) if not block.gpus]
    scratch = make_scratch(tmp_path / "checkout", small_stories(tmp_path / "small-stories"))
    if any(block.node for block in page_blocks):  # what the page's `npm install` makes
        package = side_env("node/node_modules/@huggingface/transformers", "transformers.js")
        (scratch / "node_modules").symlink_to(package.parents[1])
    if page != "README.md":  # the README trains the quickstart itself
        shutil.copytree(stand_ins / "out", scratch / "out")
        shutil.copyfile(stand_ins / "best_model_params.pt", scratch / "best_model_params.pt")
    with serve_on_loopback(FakeHub()) as hub_url, ExitStack() as stack:
        env = environment(scratch, hub_url)
        if any("llama_cpp" in block.code for block in page_blocks):  # what `pip install llama-cpp-python[server]` makes
            env["PYTHONPATH"] = llama_cpp_pythonpath()
        servers = PageServers(stack)
        for block in page_blocks:
            run_block(block, scratch, env, servers)


GPU_BLOCKS = [block for page in PAGES for block in blocks(page) if block.gpus]


@pytest.mark.cuda
@pytest.mark.parametrize("block", GPU_BLOCKS, ids=[f"{block.page}:{block.line}" for block in GPU_BLOCKS])
def test_gpu_blocks_run_where_there_are_the_gpus(block, request, tmp_path):
    if torch.cuda.device_count() < block.gpus:
        pytest.skip(f"needs {block.gpus} CUDA GPUs; this machine has {torch.cuda.device_count()}")
    stand_ins = request.getfixturevalue("stand_ins")
    scratch = make_scratch(tmp_path / "checkout", small_stories(tmp_path / "small-stories"))
    shutil.copytree(stand_ins / "out", scratch / "out")
    with serve_on_loopback(FakeHub()) as hub_url:
        run_block(block, scratch, environment(scratch, hub_url))
