"""Hub Spaces for the story demo, written as folders and checked before they take their names.

    python convert.py space out/quickstart/best space-static/ --sdk static --dataset data/tinystories
    python convert.py space your-name/tinystories-gpt space-gradio/ --sdk gradio
    python convert.py push space-static/ your-name/tinystories-stories --space      (export/hub.py's push_space)

A static Space runs the model in the visitor's browser, from files it serves itself (no CDN, no Hub at run time):

    README.md          the Space card: `sdk: static`, and each graph's download and bits per byte
    index.html         the page (demo/static/), and story.js, its script
    demo.json          what story.js reads: the model's folder and context, the examples, the two graphs
    transformers/      transformers.min.js and onnxruntime-web's WebAssembly build, copied from their npm packages
    model/             the ONNX export (export/onnx.py) less its safetensors: config, tokenizer,
                       onnx/model.onnx (float32) and onnx/model_quantized.onnx (8-bit)

A Gradio Space runs demo/app.py on the Space's machine, for the model's Hub id:

    README.md          `sdk: gradio` at the Gradio version that wrote it, `app_file: app.py`, `python_version`
    app.py             the demo, pointed at the Hub id
    story_demo.py      demo/app.py, copied as it is (it needs only gradio, torch and transformers)
    requirements.txt   torch and transformers, pinned to the versions that wrote the folder
"""

import importlib.metadata
import json
import shutil
import sys
from pathlib import Path

from huggingface_hub import SpaceCard, SpaceCardData

from ..data.sources import load_text_splits
from ..evaluation.stories import EXAMPLE_PROMPTS
from ..export.checks import save_checked
from ..export.hub import LICENSE, TAGS, check_model_folder
from ..export.onnx import ONNX_PATH, QUANTIZED_PATH, export_onnx
from ..export.onnx_scores import score_onnx_folder
from ..files import check_output, remove

HERE = Path(__file__).resolve().parent
PAGE_FILES = ("index.html", "story.js")  # in demo/static/
APP_SOURCE = HERE / "app.py"
MODEL_FOLDER, BROWSER_FOLDER = "model", "transformers"
# What story.js imports, from the npm packages @huggingface/transformers pulls in: its browser bundle (ONNX Runtime's
# JavaScript inside) and the WebAssembly build story.js names in `wasmPaths`, with transformers.js's licence
BROWSER_FILES = {
    "transformers.min.js": "@huggingface/transformers/dist/transformers.min.js",
    "ort-wasm-simd-threaded.mjs": "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
    "LICENSE-transformers.js": "@huggingface/transformers/LICENSE",
}
TRANSFORMERS_JS = "4.3.1"  # the release the browser tests run; story.js uses its 4.x API
NPM_INSTALL = f"npm install --ignore-scripts @huggingface/transformers@{TRANSFORMERS_JS}"
GRAPH_LABELS = {"fp32": "float32", "q8": "8-bit"}
EXPORT_LEFT_OUT = ("model.safetensors", "manifest.json")  # the page reads the graphs, not the torch weights
CARD_STYLE = {"emoji": "🎃", "colorFrom": "yellow", "colorTo": "red", "pinned": False}
PINNED = ("torch", "transformers")  # the Space installs gradio itself, at the card's sdk_version


# 1. The static page -----------------------------------------------------------------------------------------


def write_static_space(
    model_dir: str | Path,
    output_dir: str | Path,
    *,
    node_modules: str | Path = "node_modules",
    dataset: str | Path | None = None,
    title: str | None = None,
    overwrite: bool = False,
) -> Path:
    """A static Space that runs the model in the browser, from its ONNX export (float32 and 8-bit); with
    `dataset`, both graphs' bits per byte on its validation split go into the card and the page."""
    browser_files = find_browser_files(Path(node_modules))
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(
            f"model folder {model_dir} does not exist: --sdk static exports a folder to ONNX (train.py's best/, a "
            "GPT-2 export, or a Hub model downloaded with `hf download REPO --local-dir FOLDER`)"
        )
    check_model_folder(model_dir)
    check_output(output_dir, overwrite)
    # loaded first, so that a bad --dataset is refused before the export's minutes
    validation = None if dataset is None else load_text_splits(dataset, splits=("validation",))["validation"]

    def write(folder: Path) -> None:
        export = export_onnx(model_dir, folder / ".onnx-export", quantize=True)
        scores = score_onnx_folder(export, validation) if validation is not None else {}
        for path in sorted(export.rglob("*")):
            if path.is_file() and path.name not in EXPORT_LEFT_OUT:
                target = folder / MODEL_FOLDER / path.relative_to(export)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
        context = json.loads((export / "config.json").read_text())["n_positions"]
        remove(export)
        for name in PAGE_FILES:
            shutil.copyfile(HERE / "static" / name, folder / name)
        (folder / BROWSER_FOLDER).mkdir()
        for name, source in browser_files.items():
            shutil.copyfile(source, folder / BROWSER_FOLDER / name)
        graphs = {"q8": QUANTIZED_PATH, "fp32": ONNX_PATH}  # the page offers the smaller download first
        described = {
            dtype: {
                "label": GRAPH_LABELS[dtype],
                "file": f"{MODEL_FOLDER}/{path}",
                "bytes": (folder / MODEL_FOLDER / path).stat().st_size,
                "download_bytes": download_bytes(folder, leaving_out=[g for g in graphs.values() if g != path]),
                "bits_per_byte": scores.get(dtype, {}).get("bits_per_byte"),
            }
            for dtype, path in graphs.items()
        }
        demo = {
            "model": MODEL_FOLDER,
            "context": context,
            "new_tokens": max(1, context * 3 // 4),
            "examples": list(EXAMPLE_PROMPTS),
            "graphs": described,
            "default_dtype": "q8",
            "scored_on": None if dataset is None else f"the validation split of {dataset}",
            "transformers_js": package_version(Path(node_modules) / "@huggingface/transformers"),
            "onnxruntime_web": package_version(Path(node_modules) / "onnxruntime-web"),
        }
        (folder / "demo.json").write_text(json.dumps(demo, indent=2) + "\n")
        static_card(demo, title or f"{model_dir.absolute().name} stories").save(folder / "README.md")

    return save_checked(output_dir, overwrite, write, check_static_space)


def find_browser_files(node_modules: Path) -> dict[str, Path]:
    """Where each file the page needs lies in `node_modules`, refusing a missing or older transformers.js."""
    package = node_modules / "@huggingface" / "transformers"
    if not (package / "package.json").is_file():
        raise FileNotFoundError(
            f"transformers.js is not installed in {node_modules}: run `{NPM_INSTALL}` (no Node needed after it), "
            "or pass --node_modules where it is"
        )
    version = package_version(package)
    if version.split(".")[0] != TRANSFORMERS_JS.split(".")[0]:
        raise ValueError(f"{package} is transformers.js {version}; the page is written for 4.x: run `{NPM_INSTALL}`")
    files = {name: node_modules / source for name, source in BROWSER_FILES.items()}
    missing = [str(path) for path in files.values() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"transformers.js {version} lacks {', '.join(missing)}: run `{NPM_INSTALL}`")
    return files


def package_version(package: Path) -> str:
    return json.loads((package / "package.json").read_text())["version"]


def download_bytes(folder: Path, leaving_out: list[str]) -> int:
    """What a visitor's browser fetches: the page, its scripts and the model with one of the two graphs."""
    skipped = {folder / "README.md", folder / "manifest.json", *(folder / MODEL_FOLDER / path for path in leaving_out)}
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and path not in skipped)


def static_card(demo: dict, title: str) -> SpaceCard:
    """The static Space's card: its YAML (`sdk: static`), and what each graph costs to download and in quality."""
    rows = "\n".join(
        f"| {graph['label']} | `{graph['file']}` | {graph['bytes'] / 1e6:.1f} MB "
        f"| {graph['download_bytes'] / 1e6:.1f} MB | {score(graph['bits_per_byte'])} |"
        for graph in demo["graphs"].values()
    )
    body = f"""# {title}

Stories written in your browser: the page runs the model with
[transformers.js](https://github.com/huggingface/transformers.js) {demo["transformers_js"]} and ONNX Runtime Web
{demo["onnxruntime_web"]} (WebAssembly, one thread), from files this Space serves itself: no CDN, no Hub, no server
at run time. It loads the 8-bit weights (ONNX Runtime's dynamic quantization), the smaller download; choose float32
for the model exactly as it was trained (or open the page as `index.html?dtype=fp32`).

| weights | graph | graph size | whole download | bits per byte |
|---|---|---|---|---|
{rows}

Bits per byte: {demo["scored_on"] or "not scored"}, run in ONNX Runtime (lower is better). Written by tinystories-gpt's
`convert.py space --sdk static`; any static file server shows it: `python -m http.server --bind 127.0.0.1` here.

transformers.js is Apache-2.0 (`transformers/LICENSE-transformers.js`), ONNX Runtime Web MIT.
"""
    return space_card("static", title, body, app_file="index.html")


def score(bits_per_byte: float | None) -> str:
    return "not scored" if bits_per_byte is None else f"{bits_per_byte:.4f}"


def check_static_space(folder: Path) -> None:
    """Every file the page loads is there (the graphs were checked by their logits when exported)."""
    demo = json.loads((folder / "demo.json").read_text())
    needed = [*PAGE_FILES, *(f"{BROWSER_FOLDER}/{name}" for name in BROWSER_FILES)]
    needed += [f"{MODEL_FOLDER}/{name}" for name in ("config.json", "tokenizer.json", "tokenizer_config.json")]
    needed += [graph["file"] for graph in demo["graphs"].values()]
    missing = [name for name in needed if not (folder / name).is_file()]
    if missing:
        raise RuntimeError(f"the static Space lacks {', '.join(missing)}; please report it")


# 2. The Gradio app ------------------------------------------------------------------------------------------


def write_gradio_space(
    model_id: str, output_dir: str | Path, *, title: str | None = None, overwrite: bool = False
) -> Path:
    """A Gradio Space serving demo/app.py for the model at the Hub id `model_id`, with pinned requirements."""
    if Path(model_id).exists() or model_id.count("/") != 1:
        raise ValueError(
            f"--sdk gradio points the Space's app at a Hub model id such as your-name/tinystories-gpt, and "
            f"{model_id!r} is not one: push the model first (convert.py push FOLDER your-name/NAME) and pass its id"
        )
    versions = pinned_versions()
    check_output(output_dir, overwrite)
    title = title or f"{model_id.split('/')[1]} stories"

    def write(folder: Path) -> None:
        shutil.copyfile(APP_SOURCE, folder / "story_demo.py")
        (folder / "app.py").write_text(
            f'"""The story demo for {model_id}, as `convert.py space {model_id} OUT --sdk gradio` wrote it:\n'
            "story_demo.py is tinystories-gpt's demo/app.py, which needs only gradio, torch and transformers.\n"
            '"""\n\nfrom story_demo import build_demo, launch\n\n'
            f"launch(build_demo({model_id!r}, trust_remote_code=True))  # the model's code travels with its weights\n"
        )
        requirements = "".join(f"{name}=={versions[name]}\n" for name in PINNED)
        (folder / "requirements.txt").write_text(f"# the versions convert.py space ran with\n{requirements}")
        body = (
            f"# {title}\n\nStories from [{model_id}](https://huggingface.co/{model_id}), written as you watch: "
            "type the first words, pick the length and the sampling, and press Write. Visitors wait in a queue and "
            "are served one story at a time.\n\nWritten by tinystories-gpt's `convert.py space --sdk gradio`; "
            "`python app.py` here serves it on 127.0.0.1:7860.\n"
        )
        card = space_card(
            "gradio", title, body, sdk_version=versions["gradio"], app_file="app.py", models=[model_id],
            python_version=f"{sys.version_info.major}.{sys.version_info.minor}",
        )  # fmt: skip
        card.save(folder / "README.md")

    def check(folder: Path) -> None:
        for name in ("app.py", "story_demo.py"):  # a Space that cannot even be parsed would only fail on the Hub
            compile((folder / name).read_text(), name, "exec")

    return save_checked(output_dir, overwrite, write, check)


def pinned_versions() -> dict[str, str]:
    """The installed gradio, torch and transformers, without local build labels (torch's `+cpu` is not on PyPI)."""
    try:
        return {name: importlib.metadata.version(name).split("+")[0] for name in ("gradio", *PINNED)}
    except importlib.metadata.PackageNotFoundError as error:
        raise ValueError(
            f"--sdk gradio pins the versions the demo runs with, and {error.name} is not installed: "
            "pip install 'tinystories-gpt[demo]'"
        ) from None


# 3. The card ------------------------------------------------------------------------------------


def space_card(sdk: str, title: str, body: str, **fields) -> SpaceCard:
    """A Space's README.md: the YAML the Hub reads (`sdk`, `app_file`, ...) and the text visitors read."""
    data = SpaceCardData(
        title=title, sdk=sdk, license=LICENSE, tags=TAGS, short_description="Stories from a tiny GPT",
        **CARD_STYLE, **fields,
    )  # fmt: skip
    return SpaceCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def describe_space(folder: str | Path) -> str:
    """One line for the command line: what the folder is, and for a static one each graph's download and score."""
    folder = Path(folder)
    if not (folder / "demo.json").is_file():
        return f"a Gradio Space: app.py serves the demo ({folder / 'requirements.txt'} pins its libraries)"
    graphs = json.loads((folder / "demo.json").read_text())["graphs"].values()
    return "a static Space: " + "; ".join(
        f"{graph['label']} {graph['download_bytes'] / 1e6:.1f} MB to download, "
        f"bits per byte {score(graph['bits_per_byte'])}"
        for graph in graphs
    )


__all__ = ["describe_space", "write_gradio_space", "write_static_space"]
