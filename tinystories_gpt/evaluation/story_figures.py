"""Figures of the stories a model writes, beside its loss: whether they end, repeat themselves, differ from one
another, how long they run, and how many of their words the training stories never used.

    ended               share of stories that wrote the end-of-story token within the context
    repeated_4grams     share of a story's word 4-grams that repeat an earlier one of the same story, over all stories
    distinct_1, _2      distinct words (word pairs) over all words (pairs) of all the stories (Li et al., 2016)
    mean_words          words per story, the prompt left out
    made_up_words       share of the stories' words that no training story contains

No maintained library computes these offline: `evaluate`'s community "distinct" and repetition metrics load their
scripts from the Hub, and nltk would add a dependency for its n-gram iterator alone. So they are the few lines
below, on words as `WORD` finds them (lower case, letters and inner apostrophes).
"""

import re
from collections.abc import Iterable

from .stories import SEED_PROMPT, write_stories

WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def story_figures(continuations: list[str], ended: list[bool], vocabulary: set[str]) -> dict[str, float]:
    """The figures of `continuations` (the stories without their prompts); `ended[i]` says whether story i wrote
    the end-of-story token; `vocabulary` is the set of words of the training stories."""
    if not continuations:
        raise ValueError("story figures need at least one story")
    per_story = [words(story) for story in continuations]
    every_word = [word for story in per_story for word in story]
    pairs = [pair for story in per_story for pair in ngrams(story, 2)]
    fourgrams = [ngrams(story, 4) for story in per_story]
    total_fourgrams = sum(len(grams) for grams in fourgrams)
    repeated = sum(len(grams) - len(set(grams)) for grams in fourgrams)
    return {
        "stories": len(continuations),
        "ended": sum(ended) / len(ended),
        "repeated_4grams": repeated / total_fourgrams if total_fourgrams else 0.0,
        "distinct_1": len(set(every_word)) / len(every_word) if every_word else 0.0,
        "distinct_2": len(set(pairs)) / len(pairs) if pairs else 0.0,
        "mean_words": len(every_word) / len(continuations),
        "made_up_words": sum(word not in vocabulary for word in every_word) / len(every_word) if every_word else 0.0,
    }


def vocabulary_of(stories: Iterable[str], batch: int = 10_000) -> set[str]:
    """Every word of `stories` (a list, or a datasets split's text column read in batches)."""
    if hasattr(stories, "iter"):  # a datasets split: its text column, batch by batch, without loading it all
        batches = (rows["text"] for rows in stories.select_columns("text").iter(batch_size=batch))
    else:
        stories = list(stories)
        batches = (stories[start : start + batch] for start in range(0, len(stories), batch))
    found: set[str] = set()
    for texts in batches:
        found.update(WORD.findall("\n".join(texts).lower()))
    return found


def opening(story: str, max_words: int = 12) -> str:
    """A story's first sentence, or its first `max_words` words when the sentence runs longer: a prompt to continue."""
    first = re.split(r"(?<=[.!?])\s", story.strip(), maxsplit=1)[0]
    kept = first.split()
    return " ".join(kept[:max_words])


def stories_of(model, tokenizer, held_out_stories: list[str], training_stories: Iterable[str], seed: int = 0) -> dict:
    """The figures of the stories `model` writes from the seed prompt and the openings of `held_out_stories`."""
    written = write_stories(model, tokenizer, [SEED_PROMPT, *map(opening, held_out_stories)], seed)
    vocabulary = vocabulary_of(training_stories)
    return story_figures([text for text, _ in written], [ended for _, ended in written], vocabulary)


def describe(figures: dict[str, float]) -> str:
    """One line for a log: 'stories: 21, ended 81%, repeated 4-grams 3.2%, ...'"""
    return (
        f"stories: {figures['stories']}, ended {figures['ended']:.0%}, repeated 4-grams "
        f"{figures['repeated_4grams']:.1%}, distinct-1 {figures['distinct_1']:.3f}, distinct-2 "
        f"{figures['distinct_2']:.3f}, {figures['mean_words']:.0f} words each, made-up words "
        f"{figures['made_up_words']:.1%}"
    )
