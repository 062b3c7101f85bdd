"""The story demo (demo/app.py, tinystories-demo): the stories it streams against our own generate(), its messages
for bad input, and, in a real Chromium against a real server, the page, its request log and a queue of visitors."""

import ast
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from browsers import STORY_TIMEOUT_MS, page_with_log, visible_text
from servers import free_port
from transformers import AutoTokenizer, DistilBertConfig, DistilBertForMaskedLM

from tinystories_gpt.cli import demo as demo_cli
from tinystories_gpt.data.tokenization import GPT2_TOKENIZER_DIR
from tinystories_gpt.demo import app
from tinystories_gpt.evaluation.stories import EXAMPLE_PROMPTS, SEED_PROMPT
from tinystories_gpt.export.gpt2 import export_gpt2

REPO = Path(__file__).resolve().parents[1]
# The README's picture of the page: rewritten by the page test under TINYSTORIES_UPDATE_SCREENSHOTS=1, of the model
# in TINYSTORIES_DEMO_MODEL where that is set (docs/demo.md: the quickstart's), else of the test's story model
SCREENSHOT = REPO / "docs" / "demo.png"
NEW_TOKENS = 40
VISITORS = 8


@pytest.fixture(scope="module")
def not_a_causal_lm(tmp_path_factory) -> Path:
    """A fill-mask model (DistilBERT), which Transformers cannot load as a causal LM."""
    folder = tmp_path_factory.mktemp("distilbert")
    config = DistilBertConfig(vocab_size=50257, dim=32, n_layers=1, n_heads=2, hidden_dim=64)
    DistilBertForMaskedLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(GPT2_TOKENIZER_DIR).save_pretrained(folder)
    return folder


def our_greedy_story(model, tokenizer, prompt: str, new_tokens: int = NEW_TOKENS) -> str:
    """What tinystories-generate prints for the prompt with greedy decoding: our generate(do_sample=False)."""
    inputs = tokenizer(prompt, return_tensors="pt")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return tokenizer.decode(output[0], skip_special_tokens=True)


# 1. The writer, without a server --------------------------------------------------------------------------------


def test_the_demo_keeps_the_seed_prompt_and_the_examples():
    assert app.SEED_PROMPT == SEED_PROMPT == app.EXAMPLES[0]
    assert tuple(app.EXAMPLES) == EXAMPLE_PROMPTS


def test_the_demo_file_needs_only_gradio_torch_and_transformers():
    """A Gradio Space runs demo/app.py where this package is not installed (convert.py space copies it)."""
    tree = ast.parse(Path(app.__file__).read_text())
    imported = {
        alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names
    }
    imported |= {
        node.module.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 0
    }
    assert not any(isinstance(node, ast.ImportFrom) and node.level > 0 for node in ast.walk(tree))
    assert imported - set(sys.stdlib_module_names) == {"gradio", "torch", "transformers"}


@pytest.mark.parametrize("kind", ["ours", "gpt2 export"])
def test_the_streamed_story_ends_as_our_greedy_story(tiny_model, tmp_path, kind):
    folder = tiny_model if kind == "ours" else export_gpt2(tiny_model, tmp_path / "gpt2")
    writer = app.StoryWriter.load(str(folder))
    stories = list(writer.stream(SEED_PROMPT, NEW_TOKENS, greedy=True))
    assert len(stories) > 2 and not any(story.done for story in stories[:-1]) and stories[-1].done
    assert all(
        later.text.startswith(earlier.text[: len(SEED_PROMPT)])
        for earlier, later in zip(stories, stories[1:], strict=False)
    )
    assert stories[-1].text == our_greedy_story(writer.model, writer.tokenizer, SEED_PROMPT)
    assert stories[-1].new_tokens == NEW_TOKENS and stories[-1].first_token_seconds is not None
    assert "tokens/s" in stories[-1].speed()


def test_a_seed_repeats_a_sampled_story(tiny_model):
    writer = app.StoryWriter.load(str(tiny_model))
    first, second, other = (
        list(writer.stream(SEED_PROMPT, 20, temperature=1.0, top_k=50, top_p=0.9, seed=seed))[-1].text
        for seed in (3, 3, 4)
    )
    assert first == second != other


def test_stop_ends_generate_at_its_next_token(tiny_model):
    writer = app.StoryWriter.load(str(tiny_model))
    closed, steps, generated = threading.Event(), [], []
    forward, generate = writer.model.forward, writer.model.generate

    def gated_forward(*args, **kwargs):  # from the 10th step on, generate() waits for the page to close the story
        steps.append(len(steps))
        if len(steps) >= 10:
            closed.wait(timeout=60)  # a bound, so that a failure here is a failed test rather than a hang
        return forward(*args, **kwargs)

    writer.model.forward = gated_forward
    writer.model.generate = lambda **keywords: generated.append(generate(**keywords)) or generated[-1]
    stories = writer.stream(SEED_PROMPT, 50, greedy=True)
    next(stories)
    stories.close()  # what Gradio does to the page's generator when Stop is pressed
    closed.set()
    for thread in threading.enumerate():
        if thread.name == "generate":
            thread.join()
    prompt_length = len(writer.tokenizer(SEED_PROMPT).input_ids)
    assert generated and generated[0].shape[1] - prompt_length <= 11  # 50 without Stop


@pytest.mark.parametrize(
    "prompt, new_tokens, settings, message",
    [
        ("   ", 10, {}, "The prompt is empty"),
        ("Once upon a time " * 40, 10, {}, "shorten the prompt"),
        (SEED_PROMPT, 64, {}, "ask for at most 55 new tokens"),
        (SEED_PROMPT, 0, {}, "at least 1 new token"),
        (SEED_PROMPT, 10, {"temperature": 0.0}, "temperature must be above 0"),
        (SEED_PROMPT, 10, {"top_p": 1.5}, "Top-p"),
        (SEED_PROMPT, 10, {"top_k": -1}, "Top-k must be 0"),
    ],
)
def test_bad_settings_are_refused_by_name(tiny_model, prompt, new_tokens, settings, message):
    writer = app.StoryWriter.load(str(tiny_model))
    with pytest.raises(ValueError, match=message):
        next(writer.stream(prompt, new_tokens, **settings))


def test_a_model_that_is_not_a_causal_lm_is_refused_by_name(not_a_causal_lm, tmp_path):
    with pytest.raises(ValueError, match="DistilBertForMaskedLM, which is not a causal language model"):
        app.StoryWriter.load(str(not_a_causal_lm))
    with pytest.raises(FileNotFoundError, match="cannot load a model from"):
        app.StoryWriter.load(str(tmp_path / "nothing-here"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{distilbert}"], "not a causal language model"),
        (["{missing}"], "cannot load a model from"),
        (["{tiny}", "--concurrency", "0"], "--concurrency must be at least 1"),
    ],
)
def test_the_command_refuses_a_bad_model_before_serving(argv, message, tiny_model, not_a_causal_lm, tmp_path, capsys):
    paths = {"distilbert": not_a_causal_lm, "missing": tmp_path / "missing", "tiny": tiny_model}
    assert demo_cli.main([arg.format(**paths) for arg in argv]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and message in err


def test_without_gradio_the_command_names_the_extra(tiny_model, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, "tinystories_gpt.demo.app")
    monkeypatch.setitem(sys.modules, "gradio", None)  # what `import gradio` meets where it is not installed
    assert demo_cli.main([str(tiny_model)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == "tinystories-demo: error: tinystories-demo needs Gradio: " + demo_cli.DEMO_EXTRA
    )


@pytest.mark.slow
def test_the_package_and_the_core_commands_never_import_gradio():
    code = (
        "import sys, tinystories_gpt, tinystories_gpt.cli.train, tinystories_gpt.cli.generate, "
        "tinystories_gpt.cli.evaluate, tinystories_gpt.cli.convert, tinystories_gpt.cli.demo\n"
        "print(sorted(m for m in ('gradio', 'playwright') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# 2. The page in Chromium, served by Gradio on 127.0.0.1 --------------------------------------------------------


@contextmanager
def serving_the_demo(model_id: str, writer: "app.StoryWriter | None" = None):
    """The demo served by Gradio on a free 127.0.0.1 port for the block, closed also when the block fails."""
    demo = app.build_demo(model_id, writer=writer)
    try:
        yield app.launch(demo, host="127.0.0.1", port=free_port(), block=False)
    finally:
        demo.close()


@pytest.fixture(scope="module")
def story_app(story_models):
    """The demo of a story model trained by train.py (or $TINYSTORIES_DEMO_MODEL), served for the module's tests;
    (url, writer)."""
    folder = os.environ.get("TINYSTORIES_DEMO_MODEL") or story_models.hub_folder("bpe")
    writer = app.StoryWriter.load(str(folder))
    with serving_the_demo(str(folder), writer) as url:
        yield url, writer


def write_on_the_page(page, prompt: str, new_tokens: int | None = None, greedy: bool = True) -> None:
    page.fill("#prompt textarea", prompt)
    if new_tokens is not None:
        page.fill("#new-tokens input[type=number]", str(new_tokens))
        page.press("#new-tokens input[type=number]", "Enter")
    if greedy:
        page.check("#greedy input")
    page.click("#write")


@pytest.mark.slow
def test_the_page_streams_our_greedy_story_and_fetches_nothing_from_outside(story_app, browser, tmp_path):
    url, writer = story_app
    prompt = "Lily and her mom went to the park."
    with page_with_log(browser) as (page, log):
        page.goto(url)
        assert page.input_value("#prompt textarea") == SEED_PROMPT
        # every value the story box shows, polled in the page while the story streams
        page.evaluate(
            "window.seen = []; setInterval(() => { const value = document.querySelector('#story textarea').value; "
            "if (value !== window.seen.at(-1)) window.seen.push(value); }, 10)"
        )
        write_on_the_page(page, prompt, NEW_TOKENS)
        page.wait_for_function(
            "document.querySelector('#speed').innerText.includes('tokens/s') && "
            "!document.querySelector('#speed').innerText.includes('writing')",
            timeout=STORY_TIMEOUT_MS,
        )
        story = page.input_value("#story textarea")
        seen = page.evaluate("window.seen")
        page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
        if os.environ.get("TINYSTORIES_UPDATE_SCREENSHOTS") == "1":
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        assert story == our_greedy_story(writer.model, writer.tokenizer, prompt)
        assert len([value for value in seen if value]) >= 3, seen  # the prompt, parts of the story, the story
        assert f"{NEW_TOKENS} new tokens" in page.inner_text("#speed") or writer.tokenizer.eos_token in story
        assert log and not log.outside(), log.outside()


@pytest.mark.slow
@pytest.mark.parametrize(
    "prompt, new_tokens, message",
    [
        ("", None, "The prompt is empty: type the story's first words"),
        ("Once upon a time " * 50, None, "shorten the prompt"),
        (SEED_PROMPT, "context", "ask for at most {room} new tokens"),
    ],
)
def test_the_page_says_what_is_wrong_without_a_traceback(story_app, browser, prompt, new_tokens, message):
    url, writer = story_app
    if new_tokens == "context":  # all of it, which leaves no room for the prompt
        new_tokens = writer.context
        message = message.format(room=writer.context - len(writer.tokenizer(prompt).input_ids))
    with page_with_log(browser) as (page, log):
        page.goto(url)
        write_on_the_page(page, prompt, new_tokens)
        page.wait_for_selector(".toast-body", timeout=STORY_TIMEOUT_MS)
        assert message in page.inner_text(".toast-body")
        assert "Traceback" not in visible_text(page) and not log.outside()


@pytest.mark.slow
def test_a_model_that_is_not_a_causal_lm_gets_a_page_saying_so(not_a_causal_lm, browser):
    with serving_the_demo(str(not_a_causal_lm)) as url, page_with_log(browser) as (page, log):
        page.goto(url)
        page.wait_for_selector("#problem")
        text = page.inner_text("#problem")
        assert "The demo cannot start" in text and "not a causal language model" in text
        assert page.locator("#write").count() == 0 and not log.outside()


@pytest.mark.slow
def test_eight_visitors_at_once_are_queued_and_all_answered(story_app):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, writer = story_app
    prompts = [EXAMPLE_PROMPTS[index % len(EXAMPLE_PROMPTS)] for index in range(VISITORS)]
    settings = {"temperature": 0.8, "top_k": 200, "top_p": 1.0, "seed": 0, "greedy": True}

    def visit(prompt: str) -> str:
        client = Client(url, verbose=False)  # a visitor of its own: its own session in the queue
        story, speed = client.predict(prompt, NEW_TOKENS, *settings.values(), api_name="/story")
        assert "tokens/s" in speed
        return story

    with ThreadPoolExecutor(VISITORS) as visitors:
        stories = list(visitors.map(visit, prompts))
    assert stories == [our_greedy_story(writer.model, writer.tokenizer, prompt) for prompt in prompts]
    with pytest.raises(AppError, match="The prompt is empty"):  # an API caller gets the page's message too
        Client(url, verbose=False).predict("", NEW_TOKENS, *settings.values(), api_name="/story")
