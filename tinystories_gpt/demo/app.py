"""The story demo: a Gradio page that writes a story from a model folder or Hub id while you watch.

    tinystories-demo out/quickstart/best          (or python -m tinystories_gpt.demo out/quickstart/best)

A prompt (the seed's pumpkin prompt and a few others as examples), the length and sampling settings, a seed and a
greedy switch; the story streams in as `generate()` writes it (TextIteratorStreamer, generate in a thread), a Stop
button ends it, and the speed is shown under it. Visitors wait in Gradio's queue, `concurrency` stories at a time.
Bad input is a message on the page, never a traceback; a model that cannot write stories is said so on the page.

The page runs offline: no analytics, and the default theme's fonts are served by Gradio itself. This file is
self-contained (gradio, torch, transformers), like the model files: `convert.py space MODEL_ID OUT --sdk gradio`
copies it into a Space, beside an app.py that points it at a Hub id.
"""

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import gradio as gr
import torch
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    StoppingCriteria,
    StoppingCriteriaList,
    TextIteratorStreamer,
)

# evaluation/stories.py's seed prompt and examples (EXAMPLE_PROMPTS); a test keeps the copies equal
SEED_PROMPT = "Once upon a time there was a pumpkin."
EXAMPLES = [
    SEED_PROMPT,
    "Lily found a red ball in the park.",
    "Tom wanted to fly like a bird.",
    "The little dog was sad because",
]
# Sampling defaults where the model's generation_config.json has none: nanoGPT's sample.py, as training uses
TEMPERATURE, TOP_K, TOP_P = 0.8, 200, 1.0
# One story at a time per process: two share the same CPU cores (each then runs at half speed or worse) and torch's
# global random state (so a seed would no longer repeat a story). The queue holds every other visitor in turn.
CONCURRENCY = 1
THEME = gr.themes.Default(primary_hue="orange")  # its fonts are local (LocalFont): nothing fetched from outside
CSS = "#story textarea { font-size: 1.1em; line-height: 1.5; }"


@dataclass
class Story:
    """A story as it is written: the text so far, and how fast it came."""

    text: str
    new_tokens: int
    seconds: float  # since generate() started
    first_token_seconds: float | None  # prefill and the first new token
    done: bool

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0

    def speed(self) -> str:
        """The line under the story: tokens/s, and the latency to the first token."""
        if self.first_token_seconds is None:
            return "writing..."
        state = "" if self.done else "writing... "
        return (
            f"{state}**{self.tokens_per_second:.0f} tokens/s**: {self.new_tokens} new tokens in {self.seconds:.2f} s, "
            f"the first after {self.first_token_seconds:.2f} s"
        )


class Progress(StoppingCriteria):
    """Counts generate()'s new tokens and times the first one; stops it once nobody is reading the story."""

    def __init__(self, prompt_length: int):
        self.prompt_length = prompt_length
        self.started = time.perf_counter()
        self.new_tokens = 0
        self.first_token_seconds: float | None = None
        self.stop = threading.Event()

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        self.new_tokens = input_ids.shape[1] - self.prompt_length
        if self.first_token_seconds is None:
            self.first_token_seconds = self.seconds()
        return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool, device=input_ids.device)

    def seconds(self) -> float:
        return time.perf_counter() - self.started


class StoryWriter:
    """A causal language model and its tokenizer: the checks the page's settings get, and the streamed story."""

    def __init__(self, model: torch.nn.Module, tokenizer):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.context = model.config.max_position_embeddings  # the context under the name every causal LM has
        defaults = model.generation_config
        self.temperature = defaults.temperature if defaults.do_sample and defaults.temperature else TEMPERATURE
        self.top_k = defaults.top_k if defaults.do_sample and defaults.top_k is not None else TOP_K
        self.top_p = defaults.top_p if defaults.do_sample and defaults.top_p is not None else TOP_P
        self.max_new_tokens = min(defaults.max_new_tokens or self.context * 3 // 4, self.context - 1)

    @classmethod
    def load(cls, model_id: str, trust_remote_code: bool = False, device: str = "cpu") -> "StoryWriter":
        """The writer for a saved folder or a Hub id, refusing (by name) a model that cannot write stories."""
        try:
            config = AutoConfig.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise FileNotFoundError(
                f"cannot load a model from {model_id!r} ({error}). Pass a model folder (train.py's "
                "out/quickstart/best, or its GPT-2 export) or a Hub id"
            ) from None
        auto_map = getattr(config, "auto_map", None) or {}  # remote code: the classes it names
        if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING and "AutoModelForCausalLM" not in auto_map:
            kind = ", ".join(config.architectures or []) or f"a {config.model_type!r} model"
            raise ValueError(
                f"{model_id} holds {kind}, which is not a causal language model, so it cannot write stories: point "
                "the demo at one (train.py's out/quickstart/best, its GPT-2 export, or their Hub ids)"
            )
        model = AutoModelForCausalLM.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(model_id, trust_remote_code=trust_remote_code)
        return cls(model.to(device), tokenizer)

    def prompt_ids(self, prompt: str, max_new_tokens: int) -> torch.Tensor:
        """The prompt's token ids, once it and the story after it are known to fit the context."""
        if not prompt.strip():
            raise ValueError("The prompt is empty: type the story's first words, e.g. 'Once upon a time'.")
        input_ids = self.tokenizer(prompt, return_tensors="pt").input_ids
        length, room = input_ids.shape[1], self.context - input_ids.shape[1]
        if room <= 0:
            raise ValueError(
                f"The prompt is {length} tokens and the model's context is {self.context}: shorten the prompt, "
                "leaving room for the story."
            )
        if max_new_tokens > room:
            raise ValueError(
                f"The prompt is {length} tokens and the model's context is {self.context}: ask for at most "
                f"{room} new tokens, or shorten the prompt."
            )
        return input_ids

    def sampling(self, temperature: float, top_k: int, top_p: float, greedy: bool) -> dict:
        """generate()'s sampling keywords, once each value is known to be one it takes."""
        if greedy:
            return {"do_sample": False}
        if not temperature > 0:
            raise ValueError(f"The temperature must be above 0 (got {temperature}): or switch on greedy.")
        if not 0 < top_p <= 1:
            raise ValueError(f"Top-p is the share of probability to sample from, in (0, 1]; got {top_p}.")
        if top_k < 0:
            raise ValueError(f"Top-k must be 0 (no limit) or more, got {top_k}.")
        return {"do_sample": True, "temperature": float(temperature), "top_k": int(top_k), "top_p": float(top_p)}

    def stream(
        self,
        prompt: str,
        max_new_tokens: int,
        *,
        temperature: float = TEMPERATURE,
        top_k: int = TOP_K,
        top_p: float = TOP_P,
        seed: int | None = None,
        greedy: bool = False,
    ) -> Iterator[Story]:
        """The story as it is written, then once more, whole, as `generate()` returned it.

        The last text is the tokenizer's decoding of every id, prompt included, exactly as `tinystories-generate`
        prints it; the ones before it are the prompt and the text streamed so far. Closing the iterator (the Stop
        button) stops generate() at its next token.
        """
        if max_new_tokens < 1:
            raise ValueError(f"Ask for at least 1 new token, got {max_new_tokens}.")
        input_ids = self.prompt_ids(prompt, int(max_new_tokens))
        sampling = self.sampling(temperature, top_k, top_p, greedy)
        if seed is not None:
            torch.manual_seed(int(seed))
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        progress = Progress(input_ids.shape[1])
        finished: dict = {}
        pad_token_id = self.tokenizer.pad_token_id  # 0 is a valid pad id: test for None, not falsiness
        keywords = dict(
            input_ids=input_ids.to(self.model.device),
            attention_mask=torch.ones_like(input_ids).to(self.model.device),
            max_new_tokens=int(max_new_tokens),
            pad_token_id=self.tokenizer.eos_token_id if pad_token_id is None else pad_token_id,
            streamer=streamer,
            stopping_criteria=StoppingCriteriaList([progress]),
            **sampling,
        )

        def write() -> None:
            try:
                with torch.no_grad():
                    finished["ids"] = self.model.generate(**keywords)
            except BaseException as error:  # handed to the page's thread, which raises it there
                finished["error"] = error
                streamer.end()  # the page's loop is waiting for text: let it go

        thread = threading.Thread(target=write, daemon=True, name="generate")
        thread.start()
        try:
            text = prompt
            for piece in streamer:
                text += piece
                yield Story(text, progress.new_tokens, progress.seconds(), progress.first_token_seconds, False)
            thread.join()
            if "error" in finished:
                raise finished["error"]
            story = self.tokenizer.decode(finished["ids"][0], skip_special_tokens=True)
            yield Story(story, progress.new_tokens, progress.seconds(), progress.first_token_seconds, True)
        finally:
            progress.stop.set()  # the visitor pressed Stop or left: generate() ends at its next token


def build_demo(model_id: str, *, trust_remote_code: bool = False, writer: StoryWriter | None = None) -> gr.Blocks:
    """The page for a model folder or Hub id; a model that cannot be loaded gets a page that says why.

    `writer` is a model already loaded (the command line loads it first, to refuse a bad one before serving).
    """
    problem = None
    if writer is None:
        try:
            writer = StoryWriter.load(model_id, trust_remote_code=trust_remote_code)
        except (ValueError, FileNotFoundError) as error:
            problem = str(error)
    with gr.Blocks(title="TinyStories GPT: a story demo", analytics_enabled=False) as demo:
        gr.Markdown(f"# A story from `{model_id}`")
        if problem is not None:
            gr.Markdown(f"**The demo cannot start.** {problem}", elem_id="problem")
            return demo
        story_page(writer)
    return demo


def story_page(writer: StoryWriter) -> None:
    """The prompt, the settings, the story and its speed, and what the buttons do (inside a gr.Blocks)."""
    parameters = sum(parameter.numel() for parameter in writer.model.parameters())
    gr.Markdown(f"A {parameters / 1e6:.1f}M-parameter model with a context of {writer.context} tokens.")
    prompt = gr.Textbox(value=SEED_PROMPT, label="The story's first words", lines=2, elem_id="prompt")
    gr.Examples([[example] for example in EXAMPLES], inputs=[prompt], label="Try one of these")
    with gr.Row():
        write = gr.Button("Write the story", variant="primary", elem_id="write")
        stop = gr.Button("Stop", variant="stop", elem_id="stop")
    story = gr.Textbox(label="The story", lines=8, interactive=False, elem_id="story")
    speed = gr.Markdown(elem_id="speed")
    with gr.Accordion("Settings", open=True):
        with gr.Row():
            max_new_tokens = gr.Slider(
                1, writer.context, value=writer.max_new_tokens, step=1, label="New tokens", elem_id="new-tokens"
            )
            greedy = gr.Checkbox(False, label="Greedy: always the likeliest next token", elem_id="greedy")
        with gr.Row():
            temperature = gr.Slider(0.05, 2.0, value=writer.temperature, step=0.05, label="Temperature")
            most = min(len(writer.tokenizer), 1000)
            top_k = gr.Slider(0, most, value=min(writer.top_k, most), step=1, label="Top-k (0: no limit)")
            top_p = gr.Slider(0.05, 1.0, value=writer.top_p, step=0.05, label="Top-p")
            seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")

    def write_story(prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy) -> Iterator[tuple[str, str]]:
        try:
            stories = writer.stream(
                prompt, int(max_new_tokens), temperature=temperature, top_k=int(top_k), top_p=top_p,
                seed=None if seed is None else int(seed), greedy=bool(greedy),
            )  # fmt: skip
            for written in stories:
                yield written.text, written.speed()
        except ValueError as error:  # bad input: its message, on the page, with no traceback in the log
            raise gr.Error(str(error), duration=None, print_exception=False) from None

    settings = [prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy]
    writing = write.click(write_story, settings, [story, speed], api_name="story")
    stop.click(None, cancels=[writing])


def launch(
    demo: gr.Blocks,
    *,
    host: str | None = None,
    port: int | None = None,
    concurrency: int = CONCURRENCY,
    block: bool = True,
) -> str:
    """Serve the page, visitors queued and `concurrency` stories written at a time; returns its URL.

    `host` and `port` default to Gradio's own (GRADIO_SERVER_NAME and GRADIO_SERVER_PORT, else 127.0.0.1:7860),
    which is how a Space serves it. With `block`, it serves until the process is stopped (Ctrl-C); without, it
    returns at once and `demo.close()` stops it.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1 (stories written at once), got {concurrency}")
    demo.queue(default_concurrency_limit=concurrency)
    _, url, _ = demo.launch(
        server_name=host, server_port=port, theme=THEME, css=CSS, prevent_thread_lock=not block, quiet=not block
    )
    return url
