"""Story figures on texts whose answers are known by hand, and on stories a model writes."""

import json

import pytest
import torch
from runs import tiny_args

from tinystories_gpt import TinyStoriesGPTConfig, TinyStoriesGPTForCausalLM
from tinystories_gpt.cli import evaluate as evaluate_cli
from tinystories_gpt.data.tokenization import load_gpt2_tokenizer
from tinystories_gpt.evaluation.stories import write_stories
from tinystories_gpt.evaluation.story_figures import opening, story_figures, vocabulary_of, words
from tinystories_gpt.export.hub import save_hub_folder
from tinystories_gpt.training.loop import parse_args, train

VOCABULARY = vocabulary_of(["The dog ran to the park.", "Tom's cat sat on a mat. The sun was hot."])


def test_a_story_that_repeats_itself_and_one_that_never_ends():
    looping = "the dog ran to the park the dog ran to the park"  # 12 words: 9 4-grams, the last 3 repeat the first 3
    figures = story_figures([looping, "Tom's cat sat on a blorp."], ended=[False, True], vocabulary=VOCABULARY)
    assert figures["stories"] == 2 and figures["ended"] == 0.5
    assert figures["repeated_4grams"] == 3 / 12  # the second story's 3 4-grams are all new
    assert figures["distinct_1"] == 11 / 18  # the, dog, ran, to, park; tom's, cat, sat, on, a, blorp
    assert figures["distinct_2"] == 11 / 16  # 6 of the first story's 11 pairs, the second's 5
    assert figures["mean_words"] == 9
    assert figures["made_up_words"] == 1 / 18  # blorp


def test_words_and_openings():
    assert words('Tom\'s dog said: "Hi!" Then it ran-away.') == [
        "tom's",
        "dog",
        "said",
        "hi",
        "then",
        "it",
        "ran",
        "away",
    ]
    assert opening("Lily saw a cat. The cat was big.") == "Lily saw a cat."
    assert opening("one two three four five six seven eight nine ten eleven twelve thirteen") == (
        "one two three four five six seven eight nine ten eleven twelve"
    )
    with pytest.raises(ValueError, match="at least one story"):
        story_figures([], [], VOCABULARY)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    torch.manual_seed(0)
    model = TinyStoriesGPTForCausalLM(TinyStoriesGPTConfig(block_size=24, n_layer=1, n_head=2, n_embd=16))
    return model, load_gpt2_tokenizer()


def test_written_stories_do_not_depend_on_their_neighbours_and_know_whether_they_ended(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    model.generation_config.do_sample, model.generation_config.eos_token_id = True, tokenizer.eos_token_id
    both = write_stories(model, tokenizer, ["Once upon a time", "Tom"], seed=3)
    assert write_stories(model, tokenizer, ["Once upon a time"], seed=3) == both[:1]
    assert write_stories(model, tokenizer, ["Once upon a time"], seed=4) != both[:1]

    model.generation_config.do_sample = False  # greedy: the same first token every time
    [(text, ended)] = write_stories(model, tokenizer, ["Once upon a time"], seed=0)
    assert not ended and len(text) > 0  # random weights never pick <|endoftext|> here: the story fills the context
    first = tokenizer(text).input_ids[0]
    model.generation_config.eos_token_id = first  # now the first token it writes ends the story
    assert write_stories(model, tokenizer, ["Once upon a time"], seed=0) == [(tokenizer.decode([first]), True)]
    model.generation_config.eos_token_id = tokenizer.eos_token_id


def test_evaluate_reports_story_figures(model_and_tokenizer, tmp_path, capsys):
    model, tokenizer = model_and_tokenizer
    save_hub_folder(model, tokenizer, tmp_path / "model")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.txt").write_text("Tom sat.<|endoftext|>Sue ran to the sea.")
    (tmp_path / "data" / "validation.txt").write_text("Lily saw a dog. It was big.<|endoftext|>Max ate.")
    argv = [str(tmp_path / "model"), "--dataset", str(tmp_path / "data"), "--stories", "2", "--json"]
    assert evaluate_cli.main(argv) == 0
    figures = json.loads(capsys.readouterr().out)["stories"]
    assert figures["stories"] == 3  # the seed prompt and two openings
    assert set(figures) == {
        "stories",
        "ended",
        "repeated_4grams",
        "distinct_1",
        "distinct_2",
        "mean_words",
        "made_up_words",
    }
    assert evaluate_cli.main([*argv[:-1], "--stories", "-1"]) == 2


@pytest.mark.slow
def test_a_run_ends_with_the_figures_of_its_stories(tmp_path):
    result = train(*parse_args(tiny_args(tmp_path)))
    figures = json.loads((tmp_path / "run" / "final_metrics.json").read_text())["story_figures"]
    assert figures == result["story_figures"] and figures["stories"] == 21
    card = (tmp_path / "run" / "best" / "README.md").read_text()
    assert "| repeated word 4-grams inside a story |" in card and f"{figures['mean_words']:.0f} |" in card
