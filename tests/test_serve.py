"""The OpenAI-compatible servers, through the openai client: Transformers' own (`tinystories-serve` for our folder,
`transformers serve` for the GPT-2 export, each with and without continuous batching) and llama.cpp's
(`python -m llama_cpp.server`) for the GGUF file, on the trained story model of exports.py (context 64).

Each server is a real subprocess on 127.0.0.1, stopped at the end also when a test fails (servers.py); each load is
a fixed number of requests with a time limit, and stops by itself.
"""

import json
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import psutil
import pytest
import torch
from exports import DATA, GGUF_LOGITS_TOLERANCE, REPO, llama_cpp_pythonpath, our_greedy
from servers import free_port, serving

pytestmark = pytest.mark.slow

TOKENIZER = "bpe"  # the story model that writes varied greedy stories (the GPT-2-vocabulary one mostly repeats)
NEW_TOKENS = 24
LOAD_REQUESTS, LOAD_CLIENTS = 64, 16
LOAD_SECONDS = 300  # the whole load must end within this: a bound, not a speed
REQUEST_SECONDS = 60  # no request waits longer: a server that stops answering fails the test instead of hanging it
# The server's memory (its processes' resident set) after the load, against before it: Python allocators keep some of
# what the requests used, but a leak per request would grow with the 64 requests past this.
MEMORY_GROWTH_BOUND = 96 * 2**20
# What each server answers a prompt longer than the context: Transformers names the model's context (64); llama.cpp
# the one it rounds up to a multiple of 256 (see the xfail test below)
TRANSFORMERS_REFUSAL = "but the model takes at most 64, prompt and answer"
LLAMA_CPP_REFUSAL = "This model's maximum context length is 256 tokens"
SERVER_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


@dataclass
class Server:
    url: str  # the OpenAI API's base URL, .../v1
    model: str  # the model name requests give
    process: object
    greedy: dict  # what makes a request greedy, beside temperature 0

    def client(self, timeout: float = REQUEST_SECONDS) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key="unused", timeout=timeout, max_retries=0)

    def complete(self, prompt: str, **settings) -> openai.types.Completion:
        settings = {"max_tokens": NEW_TOKENS, "temperature": 0, **self.greedy, **settings}
        return self.client().completions.create(model=self.model, prompt=prompt, **settings)

    def chat(self, messages: list[dict]) -> str:
        """The greedy reply to `messages`."""
        settings = {"max_tokens": NEW_TOKENS, "temperature": 0, **self.greedy}
        reply = self.client().chat.completions.create(model=self.model, messages=messages, **settings)
        return reply.choices[0].message.content

    def memory(self) -> int:
        """The resident memory of the server and every process it started."""
        root = psutil.Process(self.process.pid)
        return sum(process.memory_info().rss for process in [root, *root.children(recursive=True)])


def transformers_command(folder: Path, port: int, *options: str) -> list[str]:
    """`tinystories-serve` (our folder) or Transformers' own `transformers serve` (a GPT-2 export), as installed."""
    ours = (folder / "modeling_tinystories_gpt.py").exists()
    command = Path(sys.executable).with_name("tinystories-serve" if ours else "transformers")
    address = ["--host", "127.0.0.1", "--port", str(port)]
    return [str(command), *([] if ours else ["serve"]), str(folder), *address, *options]


def llama_cpp_command(gguf_file: Path, port: int) -> list[str]:
    # --n_ctx 0: the context the file gives (the model's); two threads, as everywhere else on these machines;
    # --interrupt_requests False: by default a new request cuts a streaming one short (200 OK, one token)
    options = ["--n_ctx", "0", "--n_threads", "2", "--interrupt_requests", "False"]
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_file), *options] + [
        *("--host", "127.0.0.1", "--port", str(port))
    ]


@contextmanager
def running(command: list[str], model: str, port: int, env: dict = SERVER_ENV, greedy: dict | None = None):
    with serving(command, f"http://127.0.0.1:{port}/v1/models", env=env, cwd=REPO) as process:
        yield Server(f"http://127.0.0.1:{port}/v1", model, process, greedy or {})


def start_transformers(folder: Path, *options: str):
    port = free_port()
    return running(transformers_command(folder, port, *options), str(folder), port)


def start_llama_cpp(gguf_file: Path):
    port = free_port()
    env = {**SERVER_ENV, "PYTHONPATH": llama_cpp_pythonpath()}
    # greedy there is temperature 0 without the server's default repeat_penalty of 1.1, which lowers repeated tokens
    greedy = {"extra_body": {"repeat_penalty": 1.0}}
    return running(llama_cpp_command(gguf_file, port), str(gguf_file), port, env=env, greedy=greedy)


# What our model writes --------------------------------------------------------------------------------------------


def openings(count: int, tokenizer, longest: int) -> list[str]:
    """The first sentences of `count` validation stories (held out from training), each at most `longest` tokens."""
    stories = (DATA / "validation.txt").read_text().split("<|endoftext|>")
    found = []
    for story in stories:
        sentence = story.strip().split(".")[0] + "."
        if len(sentence) > 1 and len(tokenizer(sentence).input_ids) <= longest and sentence not in found:
            found.append(sentence)
        if len(found) == count:
            return found
    raise AssertionError(f"only {len(found)} validation stories open with a sentence of at most {longest} tokens")


@pytest.fixture(scope="module")
def story(story_models):
    """(our model, its tokenizer, the Hub folder)."""
    model, tokenizer = story_models.ours(TOKENIZER)
    return model, tokenizer, story_models.hub_folder(TOKENIZER)


@pytest.fixture(scope="module")
def prompts(story) -> list[str]:
    model, tokenizer, _ = story
    return openings(LOAD_REQUESTS, tokenizer, model.config.block_size - NEW_TOKENS)


def our_text(story, prompt: str, new_tokens: int = NEW_TOKENS) -> str:
    """Our generate()'s greedy story for `prompt`, to the end-of-story token or `new_tokens`."""
    model, tokenizer, _ = story
    return tokenizer.decode(our_greedy(model, tokenizer(prompt).input_ids, new_tokens))


# Greedy answers, settings, errors -------------------------------------------------------------------------------


def assert_answers_like_our_generate(server: Server, story, prompts: list[str]) -> None:
    """Greedy (temperature 0), streamed and not: our generate()'s text, with the finish reason the API documents."""
    for prompt in prompts[:4]:
        answer = server.complete(prompt)
        expected = our_text(story, prompt)
        assert answer.choices[0].text == expected, prompt
        assert answer.choices[0].finish_reason == "length"
        assert answer.usage.completion_tokens == NEW_TOKENS
        chunks = server.client().completions.create(
            model=server.model, prompt=prompt, max_tokens=NEW_TOKENS, temperature=0, stream=True
        )
        assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == expected


def assert_a_story_ends_at_its_end_token(server: Server, story, prompt: str) -> None:
    """The end-of-story token ends the answer, finish reason "stop". The story model's greedy stories run past
    NEW_TOKENS, so the request makes the greedy story's fifth token its end token, through the server's
    `generation_config` field (what generation_config.json's eos_token_id sets for every request)."""
    model, tokenizer, _ = story
    input_ids = tokenizer(prompt).input_ids
    end = our_greedy(model, input_ids, NEW_TOKENS)[4]
    with torch.no_grad():
        output = model.generate(torch.tensor([input_ids]), max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=end)
    written = output[0, len(input_ids) :].tolist()
    assert written[-1] == end and len(written) <= 5
    answer = server.complete(prompt, extra_body={"generation_config": json.dumps({"eos_token_id": end})})
    assert (answer.choices[0].text, answer.choices[0].finish_reason) == (tokenizer.decode(written), "stop")
    assert answer.usage.completion_tokens == len(written)


def assert_refuses_a_prompt_past_the_context(server: Server, story, prompts: list[str], refusal: str) -> None:
    """A prompt longer than the context: a 400 that says so (`refusal`), and the next request is answered."""
    model, tokenizer, _ = story
    too_long = " ".join(prompts)
    assert len(tokenizer(too_long).input_ids) > 256
    with pytest.raises(openai.BadRequestError) as refused:
        server.complete(too_long)
    assert refusal in refused.value.response.text, refused.value.response.text
    expected = our_text(story, prompts[0])
    assert server.complete(prompts[0]).choices[0].text[:20] == expected[:20]


def test_tinystories_serve_answers_as_our_generate_does(story, prompts):
    """Our folder under Transformers' server (tinystories-serve): /v1/models, greedy completions streamed and not,
    max_tokens, stop, top_p, temperature with a seed, the end of a story, a prompt too long."""
    model, tokenizer, folder = story
    with start_transformers(folder) as server:
        assert [listed.id for listed in server.client().models.list()] == [str(folder)]
        assert_answers_like_our_generate(server, story, prompts)
        assert_a_story_ends_at_its_end_token(server, story, prompts[1])

        prompt = prompts[0]
        expected = our_text(story, prompt)
        few = server.complete(prompt, max_tokens=5)
        assert (few.usage.completion_tokens, few.choices[0].finish_reason) == (5, "length")
        assert expected.startswith(few.choices[0].text)
        # stop: generation ends once the stop text is written; the text keeps it (Transformers' stop_strings)
        stop = expected.split()[3]
        stopped = server.complete(prompt, stop=[stop]).choices[0].text
        assert stopped == expected[: expected.index(stop) + len(stop)]
        # top_p so small that only the likeliest token is left: greedy, whatever the temperature
        assert server.complete(prompt, temperature=1.0, top_p=1e-6, seed=3).choices[0].text == expected
        sampled = [server.complete(prompt, temperature=1.0, seed=seed).choices[0].text for seed in (1, 1, 2)]
        assert sampled[0] == sampled[1] != sampled[2]
        # no max_tokens: the server asks for 1,024 new tokens; the story stops at the end of the context
        whole = server.complete(prompt, max_tokens=None)
        assert whole.usage.prompt_tokens + whole.usage.completion_tokens <= model.config.block_size
        assert whole.choices[0].text.startswith(expected)

        assert_refuses_a_prompt_past_the_context(server, story, prompts, TRANSFORMERS_REFUSAL)


def test_the_chat_template_makes_the_last_user_message_the_opening(story, prompts):
    """/v1/chat/completions: the system message and earlier turns are not part of the story; the reply is our
    greedy continuation of the last user message."""
    _, _, folder = story
    messages = [
        {"role": "system", "content": "You are a storyteller."},
        {"role": "user", "content": prompts[1]},
        {"role": "assistant", "content": "It was a sunny day."},
        {"role": "user", "content": prompts[0]},
    ]
    with start_transformers(folder) as server:
        assert server.chat(messages) == our_text(story, prompts[0])


def test_transformers_serve_answers_for_the_gpt2_export(story_models, story, prompts):
    """Plain `transformers serve` on the GPT-2 export (no code of ours): the same answers, and chat."""
    with start_transformers(story_models.gpt2_export(TOKENIZER)) as server:
        assert_answers_like_our_generate(server, story, prompts)
        assert server.chat([{"role": "user", "content": prompts[2]}]) == our_text(story, prompts[2])
        assert_refuses_a_prompt_past_the_context(server, story, prompts, TRANSFORMERS_REFUSAL)


@pytest.mark.xfail(
    strict=True,
    reason="Transformers 5.25's server finds the model class as getattr(transformers, architectures[0]), which names "
    "no remote-code class (AttributeError: module transformers has no attribute TinyStoriesGPTForCausalLM); "
    "tinystories-serve exists for this. A pass here means Transformers fixed it: update docs/serving.md.",
)
def test_transformers_serve_with_trust_remote_code_alone(story, prompts):
    _, _, folder = story
    port = free_port()
    command = [str(Path(sys.executable).with_name("transformers")), "serve", str(folder), "--trust-remote-code"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    with running(command, str(folder), port) as server:
        assert server.complete(prompts[0]).choices[0].text == our_text(story, prompts[0])


# Load: 64 requests from 16 clients ------------------------------------------------------------------------------


def one_at_a_time(server: Server, prompts: list[str]) -> list[str]:
    return [server.complete(prompt).choices[0].text for prompt in prompts]


def all_at_once(server: Server, prompts: list[str], clients: int = LOAD_CLIENTS) -> list:
    """Every prompt's answer (or the error it got), from `clients` concurrent clients, every other one streamed;
    ends within LOAD_SECONDS."""

    def answer(prompt: str, stream: bool):
        try:
            if not stream:
                return server.complete(prompt).choices[0].text
            return "".join(chunk.choices[0].text for chunk in server.complete(prompt, stream=True) if chunk.choices)
        except openai.APIError as error:
            return error

    with ThreadPoolExecutor(clients) as pool:
        futures = [pool.submit(answer, prompt, index % 2 == 1) for index, prompt in enumerate(prompts)]
        _, unfinished = wait(futures, timeout=LOAD_SECONDS)
        assert not unfinished, f"{len(unfinished)} of {len(prompts)} requests unanswered after {LOAD_SECONDS} s"
        return [future.result() for future in futures]


def assert_holds_the_load(server: Server, story, prompts: list[str], alone: list[str] | None = None) -> None:
    """Each of the 64 answers under load equals that prompt's answer from a single client alone, and the server's
    memory after the load is within MEMORY_GROWTH_BOUND of before."""
    if alone is None:
        alone = one_at_a_time(server, prompts)
    before = server.memory()
    under_load = all_at_once(server, prompts)
    after = server.memory()
    failed = [answer for answer in under_load if not isinstance(answer, str)]
    assert not failed, failed[:3]
    mixed = [prompt for prompt, answer, single in zip(prompts, under_load, alone, strict=True) if answer != single]
    assert not mixed, f"{len(mixed)} answers under load differ from the same prompt's alone, e.g. {mixed[:3]}"
    assert after - before <= MEMORY_GROWTH_BOUND, f"memory grew {(after - before) / 2**20:.0f} MiB under the load"


def test_tinystories_serve_holds_64_requests_from_16_clients(story, prompts):
    _, _, folder = story
    with start_transformers(folder) as server:
        alone = one_at_a_time(server, prompts)
        assert alone[:8] == [our_text(story, prompt) for prompt in prompts[:8]]
        assert_holds_the_load(server, story, prompts, alone)


def test_continuous_batching_answers_as_one_request_at_a_time(story, prompts):
    """--continuous-batching (paged attention over our model's attention): greedy answers equal our generate()'s,
    under 16 concurrent clients too."""
    _, _, folder = story
    with start_transformers(folder, "--continuous-batching") as server:
        alone = one_at_a_time(server, prompts)
        assert alone == [our_text(story, prompt) for prompt in prompts]
        assert_holds_the_load(server, story, prompts, alone)
        assert_refuses_a_prompt_past_the_context(server, story, prompts, TRANSFORMERS_REFUSAL)


def test_a_server_killed_under_load_fails_its_clients_and_a_restarted_one_serves(story, prompts):
    """kill -9 during the load: every request ends with an error within its timeout (none hangs); a server started
    again on the same port answers as before."""
    _, _, folder = story
    port = free_port()
    command = transformers_command(folder, port)
    with running(command, str(folder), port) as server:
        with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
            futures = [pool.submit(server.complete, prompt) for prompt in prompts]
            deadline = time.monotonic() + LOAD_SECONDS
            while sum(future.done() for future in futures) < 4 and time.monotonic() < deadline:
                time.sleep(0.05)
            os.killpg(server.process.pid, signal.SIGKILL)
            _, unfinished = wait(futures, timeout=REQUEST_SECONDS + 30)
            assert not unfinished, f"{len(unfinished)} requests still waiting after the server was killed"
        errors = [future.exception() for future in futures if future.exception() is not None]
        assert errors and all(isinstance(error, openai.APIConnectionError) for error in errors), errors[:3]
    with running(command, str(folder), port) as server:
        assert server.complete(prompts[0]).choices[0].text == our_text(story, prompts[0])


# llama.cpp's server on the GGUF file ----------------------------------------------------------------------------


def clear_greedy(story, prompts: list[str], tolerance: float) -> list[int]:
    """The prompts whose greedy story has no near-tie: at every step the likeliest token leads the next by more than
    twice `tolerance` (relative to the largest logit), so an engine within it must pick the same tokens."""
    model, tokenizer, _ = story
    clear = []
    for index, prompt in enumerate(prompts):
        with torch.no_grad():
            steps = model.generate(
                torch.tensor([tokenizer(prompt).input_ids]), max_new_tokens=NEW_TOKENS, do_sample=False,
                output_logits=True, return_dict_in_generate=True,
            ).logits  # fmt: skip
        gaps = [(logits[0].topk(2).values.diff().abs() / logits[0].abs().max()).item() for logits in steps]
        if min(gaps) > 2 * tolerance:
            clear.append(index)
    return clear


def test_llama_cpp_server_answers_as_our_generate_does_and_holds_the_load(story_models, story, prompts):
    """The f32 GGUF under llama-cpp-python's server: greedy completions and chat equal ours (on every prompt whose
    story has no near-tie within llama.cpp's measured logit difference), its context is the model's (a prompt past
    it is a 400), and it holds the load of 64 requests from 16 clients."""
    clear = clear_greedy(story, prompts, GGUF_LOGITS_TOLERANCE["f32"])
    assert len(clear) >= len(prompts) // 2, f"only {len(clear)} prompts without a near-tie"
    with start_llama_cpp(story_models.gguf_file(TOKENIZER, "f32")) as server:
        alone = one_at_a_time(server, prompts)
        assert [alone[index] for index in clear] == [our_text(story, prompts[index]) for index in clear]
        opening = prompts[clear[0]]
        assert server.chat([{"role": "user", "content": opening}]) == our_text(story, opening)
        assert_refuses_a_prompt_past_the_context(server, story, prompts, LLAMA_CPP_REFUSAL)
        assert_holds_the_load(server, story, prompts, alone)


@pytest.mark.xfail(
    strict=True,
    reason="llama.cpp rounds every context up to a multiple of 256 (llama-context.cpp, GGML_PAD(n_ctx, 256)), past "
    "the 64 learned positions of this model: a request that runs past them aborts the server (GGML_ASSERT in "
    "get_rows) instead of a 400. A pass here means llama.cpp fixed it: update docs/serving.md.",
)
def test_llama_cpp_server_refuses_a_request_past_the_models_context(story_models, story, prompts):
    model, tokenizer, _ = story
    with start_llama_cpp(story_models.gguf_file(TOKENIZER, "f32")) as server:
        assert len(tokenizer(prompts[1]).input_ids) + 64 > model.config.block_size
        with pytest.raises(openai.BadRequestError):
            server.complete(prompts[1], max_tokens=64)
        assert server.complete(prompts[0]).choices[0].text == our_text(story, prompts[0])


@pytest.mark.parametrize("outtype", ["f16", "q8_0"])
def test_llama_cpp_server_writes_stories_from_smaller_files(story_models, prompts, outtype):
    with start_llama_cpp(story_models.gguf_file(TOKENIZER, outtype)) as server:
        answer = server.complete(prompts[0])
    assert answer.usage.completion_tokens > 0 and len(answer.choices[0].text.split()) >= 3
