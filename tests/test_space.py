"""Space folders (demo/space.py, `convert.py space` and `push --space`): the static page in a real Chromium from
`python -m http.server`, against our generate(); the Gradio Space's app.py served against a Hub on 127.0.0.1; the
upload to a fake Hub; the figures of the 8-bit graph; and every refusal, in one line."""

import importlib.metadata
import json
import os
import sys
from pathlib import Path

import gradio
import pytest
import torch
from browsers import STORY_TIMEOUT_MS, page_with_log, static_server
from exports import side_env
from fake_hub import FakeHub, serve_on_loopback
from huggingface_hub import SpaceCard
from servers import free_port, serving

from tinystories_gpt.cli import convert
from tinystories_gpt.data.sources import load_text_splits
from tinystories_gpt.data.token_files import tokenize_split
from tinystories_gpt.demo import space
from tinystories_gpt.evaluation.losses import evaluate_split
from tinystories_gpt.export.hub import push_space

REPO_ID = "tester/tiny-stories"
NEW_TOKENS = 32
PROMPT = "Tom and his dog went to the park."


def our_greedy_story(model, tokenizer, prompt: str, new_tokens: int = NEW_TOKENS) -> str:
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(output[0], skip_special_tokens=True)


def folder_files(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


# 1. Without a browser: the Gradio Space's files, the upload, the refusals ---------------------------------------


def test_a_gradio_space_points_the_demo_at_the_hub_id_with_pinned_requirements(tmp_path):
    folder = space.write_gradio_space(REPO_ID, tmp_path / "space")
    assert (folder / "story_demo.py").read_bytes() == space.APP_SOURCE.read_bytes()
    app_py = (folder / "app.py").read_text()
    assert f"build_demo({REPO_ID!r}, trust_remote_code=True)" in app_py
    pins = {name: importlib.metadata.version(name).split("+")[0] for name in ("torch", "transformers")}
    requirements = [line for line in (folder / "requirements.txt").read_text().splitlines() if not line.startswith("#")]
    assert requirements == [f"{name}=={version}" for name, version in pins.items()]
    card = SpaceCard.load(folder / "README.md").data
    assert (card.sdk, card.sdk_version, card.app_file) == ("gradio", gradio.__version__, "app.py")
    assert card.models == [REPO_ID] and card.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"


@pytest.mark.parametrize("model", ["{folder}", "just-a-name"])
def test_a_gradio_space_needs_a_hub_id(model, tiny_model, tmp_path):
    with pytest.raises(ValueError, match="points the Space's app at a Hub model id"):
        space.write_gradio_space(model.format(folder=tiny_model), tmp_path / "space")
    assert not (tmp_path / "space").exists()


def test_a_static_space_needs_transformers_js_from_npm(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="npm install --ignore-scripts @huggingface/transformers@4.3.1"):
        space.write_static_space(tiny_model, tmp_path / "space", node_modules=tmp_path / "node_modules")
    package = tmp_path / "old" / "@huggingface" / "transformers"
    package.mkdir(parents=True)
    (package / "package.json").write_text(json.dumps({"version": "3.7.0"}))
    with pytest.raises(ValueError, match="is transformers.js 3.7.0; the page is written for 4.x"):
        space.write_static_space(tiny_model, tmp_path / "space", node_modules=tmp_path / "old")
    assert not (tmp_path / "space").exists()


def test_a_static_space_refuses_a_missing_dataset_before_exporting(tiny_model, tmp_path, monkeypatch):
    node_modules = tmp_path / "node_modules"  # a stand-in for the npm packages: the files, empty
    for source in space.BROWSER_FILES.values():
        (node_modules / source).parent.mkdir(parents=True, exist_ok=True)
        (node_modules / source).write_text("")
    (node_modules / "@huggingface" / "transformers" / "package.json").write_text(json.dumps({"version": "4.3.1"}))
    monkeypatch.setattr(space, "export_onnx", lambda *args, **kwargs: pytest.fail("exported before the checks"))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        space.write_static_space(tiny_model, tmp_path / "space", node_modules=node_modules, dataset=tmp_path / "x")
    assert not (tmp_path / "space").exists()


def test_push_creates_a_space_then_makes_it_hold_exactly_the_folder(tmp_path, fake_hub, capsys):
    folder = space.write_gradio_space(REPO_ID, tmp_path / "space")
    assert convert.main(["push", str(folder), REPO_ID, "--space"]) == 0
    assert f"pushed {folder} to the Space {REPO_ID}" in capsys.readouterr().out
    pushed = fake_hub.repos["space", REPO_ID]
    assert pushed.sdk == "gradio" and pushed.files == folder_files(folder)

    (folder / "requirements.txt").unlink()  # an update: a file gone, a file new
    (folder / "notes.md").write_text("A note.\n")
    push_space(folder, REPO_ID)
    assert pushed.files == folder_files(folder)


@pytest.mark.parametrize(
    "readme, error, message",
    [
        (None, FileNotFoundError, "has no README.md, so it is not a Space folder"),
        ("# A page without metadata\n", ValueError, "names no Space SDK"),
    ],
)
def test_push_refuses_a_folder_that_is_not_a_space(readme, error, message, tmp_path, fake_hub):
    tmp_path.joinpath("index.html").write_text("<p>hello</p>")
    if readme is not None:
        tmp_path.joinpath("README.md").write_text(readme)
    with pytest.raises(error, match=message):
        push_space(tmp_path, REPO_ID)
    assert not fake_hub.repos


@pytest.mark.parametrize(
    "argv, message",
    [
        (["space", "{model}", "{out}", "--sdk", "docker"], "--sdk must be static or gradio, got 'docker'"),
        (["space", REPO_ID, "{out}", "--sdk", "gradio", "--dataset", "data"], "--dataset is for --sdk static"),
        (["space", "{model}", "{out}", "--sdk", "gradio"], "points the Space's app at a Hub model id"),
        (["space", "{model}", "{out}", "--sdk", "static", "--node_modules", "{out}"], "npm install --ignore-scripts"),
        (["push", "{model}", REPO_ID, "--space", "--revision", "dev"], "a Space serves its main branch"),
    ],
)
def test_bad_space_commands_are_one_line(argv, message, tiny_model, tmp_path, capsys):
    argv = [arg.format(model=tiny_model, out=tmp_path / "space") for arg in argv]
    assert convert.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


# 2. The static Space in Chromium ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def static_space(story_models, tmp_path_factory) -> Path:
    """`convert.py space --sdk static` of a story model trained by train.py, scored on its validation split."""
    node_modules = side_env("node/node_modules/@huggingface/transformers", "transformers.js").parents[1]
    folder = story_models.hub_folder("bpe")
    output = tmp_path_factory.mktemp("static") / "space"
    argv = ["space", str(folder), str(output), "--sdk", "static", "--node_modules", str(node_modules)]
    assert convert.main([*argv, "--dataset", str(story_models.root / "data")]) == 0
    return output


@pytest.mark.slow
def test_the_static_space_holds_both_graphs_scored_as_our_evaluation_scores(static_space, story_models, tmp_path):
    demo = json.loads((static_space / "demo.json").read_text())
    fp32, q8 = demo["graphs"]["fp32"], demo["graphs"]["q8"]
    assert q8["bytes"] < fp32["bytes"] / 2 and q8["download_bytes"] < fp32["download_bytes"]
    model, tokenizer = story_models.ours("bpe")
    validation = load_text_splits(story_models.root / "data", splits=("validation",))["validation"]
    ours = evaluate_split(model, tokenize_split(validation, tokenizer, tmp_path, "validation"), progress=False)
    assert fp32["bits_per_byte"] == pytest.approx(ours["bits_per_byte"], rel=1e-5)
    assert q8["bits_per_byte"] == pytest.approx(ours["bits_per_byte"], rel=0.05)  # 8-bit costs a little
    card = SpaceCard.load(static_space / "README.md")
    assert (card.data.sdk, card.data.app_file) == ("static", "index.html")
    assert f"{fp32['bits_per_byte']:.4f}" in card.text and f"{q8['bits_per_byte']:.4f}" in card.text
    assert not (static_space / "model" / "model.safetensors").exists()  # the page reads the graphs only


def write_on_the_static_page(page, prompt: str, dtype: str, new_tokens: int = NEW_TOKENS) -> None:
    page.fill("#prompt", prompt)
    page.fill("#new-tokens", str(new_tokens))
    page.check("#greedy")
    page.select_option("#dtype", dtype)
    page.click("#write")
    page.wait_for_function(
        "['done', 'error'].includes(document.getElementById('status').dataset.state)", timeout=STORY_TIMEOUT_MS
    )


@pytest.mark.slow
def test_the_static_page_writes_our_greedy_story_from_its_own_files(static_space, story_models, browser):
    model, tokenizer = story_models.ours("bpe")
    with static_server(static_space) as url, page_with_log(browser) as (page, log):
        page.goto(url)
        page.wait_for_function("document.getElementById('status').dataset.state === 'ready'", timeout=STORY_TIMEOUT_MS)
        graphs = [request for request in log if request.endswith(".onnx")]
        assert [request.rsplit("/", 1)[1] for request in graphs] == ["model_quantized.onnx"]  # the smaller first
        write_on_the_static_page(page, PROMPT, "fp32")
        assert page.get_attribute("#status", "data-state") == "done", page.inner_text("#status")
        assert page.inner_text("#story") == our_greedy_story(model, tokenizer, PROMPT)

        write_on_the_static_page(page, PROMPT, "q8")  # 8-bit weights: a story, not necessarily the same one
        assert page.get_attribute("#status", "data-state") == "done", page.inner_text("#status")
        assert int(page.get_attribute("#status", "data-new-tokens")) > 0
        assert page.inner_text("#story").startswith(PROMPT) and len(page.inner_text("#story")) > len(PROMPT)

        write_on_the_static_page(page, " ", "fp32")
        assert page.get_attribute("#status", "data-state") == "error"
        assert page.inner_text("#status").startswith("The prompt is empty")
        assert any(request.endswith("model/onnx/model.onnx") for request in log)
        assert log and not log.outside(), log.outside()


# 3. The Gradio Space's app.py, served as a Space would serve it ---------------------------------------------------


@pytest.mark.slow
def test_the_gradio_space_serves_our_greedy_story_for_the_hub_id(story_models, tmp_path):
    from gradio_client import Client

    model, tokenizer = story_models.ours("bpe")
    hub = FakeHub()
    hub.add_repo(REPO_ID, folder_files(story_models.hub_folder("bpe")))
    folder = space.write_gradio_space(REPO_ID, tmp_path / "space")
    port = free_port()
    with serve_on_loopback(hub) as endpoint:
        env = {
            **os.environ,
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_OFFLINE": "0",
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        url = f"http://127.0.0.1:{port}/"
        with serving([sys.executable, "app.py"], url, cwd=folder, env=env):
            story, speed = Client(url, verbose=False).predict(
                PROMPT, NEW_TOKENS, 0.8, 200, 1.0, 0, True, api_name="/story"
            )
    assert story == our_greedy_story(model, tokenizer, PROMPT) and "tokens/s" in speed
    assert any(request.url.path.endswith("modeling_tinystories_gpt.py") for request in hub.requests)
