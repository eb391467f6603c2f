"""Each curation step on hand-made lists with exact outputs and counts, and the default prompt set."""

from __future__ import annotations

import re

import pytest

from mapo_data.errors import MapoError
from mapo_data.presets import PRESETS, assemble_prompt
from mapo_data.prompts import PromptCurationConfig, curate_prompts, load_prompts, load_tokenizers
from mapo_data.prompts.curation import duplicate_key
from mapo_data.prompts.style_words import StyleWordMatcher, read_style_words

STEP_NAMES = [
    "normalise_whitespace",
    "drop_empty",
    "drop_duplicates",
    "style_words",
    "require_words",
    "max_chars",
    "max_tokens",
    "sample",
]
ALL_PRESET_PREFIXES = tuple(p for splits in PRESETS.values() for pair in splits.values() for p in pair if p)
OFF = PromptCurationConfig(style_words="off")


def _step(result, name: str) -> dict:
    return next(s for s in result.steps if s["step"] == name)


@pytest.fixture(scope="module")
def tiny_tokenizers(tiny_model_path):
    return load_tokenizers("tiny")


def test_every_step_is_recorded_in_order_with_consistent_counts():
    result = curate_prompts(["a cat", "a dog"], OFF)
    assert [s["step"] for s in result.steps] == STEP_NAMES
    for before, after in zip(result.steps, result.steps[1:], strict=False):
        assert before["after"] == after["before"]
    for step in result.steps:
        assert step["dropped"] == step["before"] - step["after"]


def test_normalise_whitespace_and_drop_empty():
    result = curate_prompts(["  a  cat\ton a\nmat ", "", "   ", "a dog"], OFF)
    assert result.prompts == ["a cat on a mat", "a dog"]
    assert _step(result, "normalise_whitespace") == {
        "step": "normalise_whitespace",
        "before": 4,
        "after": 4,
        "dropped": 0,
        "changed": 2,
    }
    assert (_step(result, "drop_empty")["before"], _step(result, "drop_empty")["after"]) == (4, 2)


def test_duplicates_exact_and_case_whitespace_keep_first_in_order():
    prompts = ["A Cat", "a dog", "a cat", "A Cat", "a  DOG ", "a bird", "a cat"]
    result = curate_prompts(prompts, OFF)
    assert result.prompts == ["A Cat", "a dog", "a bird"]
    step = _step(result, "drop_duplicates")
    assert (step["before"], step["after"], step["dropped"]) == (7, 3, 4)
    # "A Cat" and "a cat" repeated verbatim are exact; "a cat" after "A Cat" and "a  DOG " are not.
    assert step["exact_duplicates"] == 2
    assert step["case_whitespace_duplicates"] == 2
    assert step["examples"] == ["a cat", "A Cat", "a DOG"]


def test_style_words_drop():
    prompts = [
        "a castle at night, 8K",
        "a man painting a fence",
        "Pixar dog",
        "an anime girl",
        "a quiet lake",
    ]
    result = curate_prompts(prompts, PromptCurationConfig(style_words="drop"))
    assert result.prompts == ["a man painting a fence", "a quiet lake"]
    step = _step(result, "style_words")
    assert (step["before"], step["after"], step["dropped"], step["mode"]) == (5, 2, 3, "drop")
    assert step["top_words"] == {"8k": 1, "anime": 1, "pixar": 1}


def test_style_words_whole_words_only():
    matcher = StyleWordMatcher(read_style_words())
    assert matcher.find("a hdrive next to a photobooth in a cartoonist's studio") == []
    assert matcher.find("HDR 3D-Render, 8 bit, Oil  Painting") == [
        "hdr",
        "3d-render",
        "8 bit",
        "oil  painting",
    ]


@pytest.mark.parametrize(
    ("prompt", "stripped"),
    [
        ("a cat wearing a hat, digital art, trending on artstation, 8k", "a cat wearing a hat"),
        ("a cat in pixar style", "a cat"),
        ("a woman reading in the style of Van Gogh", "a woman reading"),
        ("An oil painting of an apple", "an apple"),
        ("a 3D-render of a house", "a house"),
        ("a pixar-style fox", "a fox"),
        ("castle, 8K, HDR.", "castle."),
        ("realistic photo of a dog (8k)", "a dog"),
        # A kept article is fitted to the word that now follows it.
        ("an anime girl waving", "a girl waving"),
        ("A realistic 8k owl", "An owl"),
        ("the cartoon castle", "the castle"),
    ],
)
def test_style_words_strip_leaves_a_readable_prompt(prompt, stripped):
    result = curate_prompts([prompt], PromptCurationConfig(style_words="strip"))
    assert result.prompts == [stripped]


def test_style_words_strip_counts_emptied_and_new_duplicates():
    prompts = ["a cat", "a cat, 8k", "8k, hdr", "anime", "a dog in anime style", "a bird"]
    result = curate_prompts(prompts, PromptCurationConfig(style_words="strip"))
    assert result.prompts == ["a cat", "a dog", "a bird"]
    step = _step(result, "style_words")
    assert (step["before"], step["after"], step["dropped"]) == (6, 3, 3)
    assert (step["stripped"], step["emptied"], step["duplicates_after_strip"]) == (4, 2, 1)


def test_style_words_off_and_custom_file(tmp_path):
    prompts = ["a cat, 8k", "a zorblax dog", "a bird"]
    assert curate_prompts(prompts, OFF).prompts == prompts
    words = tmp_path / "words.txt"
    words.write_text("# my own list\nZorblax  # a made-up style\n\n", encoding="utf-8")
    result = curate_prompts(prompts, PromptCurationConfig(style_words_file=str(words)))
    assert result.prompts == ["a cat, 8k", "a bird"]
    assert _step(result, "style_words")["words_file"] == str(words)


def test_require_words_whole_words_any_case():
    prompts = ["a Woman reading", "two women talking", "girls playing", "a female pilot", "a man", "womanly"]
    config = PromptCurationConfig(style_words="off", require_words=("woman", "women", "girl", "female"))
    result = curate_prompts(prompts, config)
    # "girls" and "womanly" are other words: matching is on whole words, as the MaPO selection was.
    assert result.prompts == ["a Woman reading", "two women talking", "a female pilot"]
    step = _step(result, "require_words")
    assert (step["before"], step["after"], step["dropped"]) == (6, 3, 3)
    assert step["words"] == ["woman", "women", "girl", "female"]


def test_require_phrase():
    config = PromptCurationConfig(style_words="off", require_words=("Train  Station",))
    assert curate_prompts(["a train station", "a train at a station"], config).prompts == ["a train station"]


def test_max_chars():
    result = curate_prompts(["a cat", "a very long prompt"], PromptCurationConfig(max_chars=5))
    assert result.prompts == ["a cat"]
    assert _step(result, "max_chars")["dropped"] == 1


def test_max_tokens_with_the_tiny_tokenizer_and_the_prefix(tiny_tokenizers):
    prefix = "Pixel art style image."
    tokenizer = tiny_tokenizers[0]
    # "cat" is one token in the tiny vocabulary; BOS + EOS + 5 prefix tokens leave room for 70.
    prefix_ids = len(tokenizer(prefix).input_ids) - 2
    room = 77 - 2 - prefix_ids
    fits = " ".join(["cat"] * room)
    over = " ".join(["cat"] * (room + 1))
    assert len(tokenizer(assemble_prompt(prefix, fits)).input_ids) == 77
    assert len(tokenizer(assemble_prompt(prefix, over)).input_ids) == 78

    result = curate_prompts([fits, over], OFF, tokenizers=tiny_tokenizers, prefixes=(prefix, ""))
    assert result.prompts == [fits]
    step = _step(result, "max_tokens")
    assert (step["before"], step["after"], step["dropped"], step["longest_kept"]) == (2, 1, 1, 77)
    assert step["prefixes"] == [prefix]
    # Without the prefix both fit: the prefix is what pushed the second one over.
    assert curate_prompts([fits, over], OFF, tokenizers=tiny_tokenizers).prompts == [fits, over]


def test_max_tokens_uses_the_longest_prefix(tiny_tokenizers):
    short, long = "Realistic 8k image.", "Sexual, nudity, +19 image."
    tokenizer = tiny_tokenizers[0]
    room = 77 - len(tokenizer(long).input_ids)  # prompt tokens that fit behind the long prefix
    prompt = " ".join(["cat"] * (room + 1))
    assert len(tokenizer(assemble_prompt(short, prompt)).input_ids) <= 77
    with pytest.raises(MapoError, match="no prompts left after curation step 'max_tokens'"):
        curate_prompts([prompt], OFF, tokenizers=tiny_tokenizers, prefixes=(short, long))


def test_max_tokens_skipped_without_tokenizers():
    long = " ".join(["cat"] * 200)
    result = curate_prompts([long], OFF, prefixes=("Pixel art style image.",))
    assert result.prompts == [long]
    step = _step(result, "max_tokens")
    assert step["skipped"] is True
    assert "skipped" in step["note"]


def test_sample_is_seeded_and_keeps_source_order():
    prompts = [f"prompt number {i}" for i in range(50)]
    first = curate_prompts(prompts, PromptCurationConfig(num_prompts=10, seed=7)).prompts
    again = curate_prompts(prompts, PromptCurationConfig(num_prompts=10, seed=7)).prompts
    other = curate_prompts(prompts, PromptCurationConfig(num_prompts=10, seed=8)).prompts
    assert first == again
    assert first != other
    assert len(first) == 10 and len(set(first)) == 10
    assert first == sorted(first, key=prompts.index)


def test_sample_larger_than_available_keeps_all_and_says_so():
    result = curate_prompts(["a cat", "a dog"], PromptCurationConfig(num_prompts=5))
    assert result.prompts == ["a cat", "a dog"]
    assert "only 2 available" in _step(result, "sample")["note"]


def test_emptied_list_names_the_step():
    with pytest.raises(MapoError) as excinfo:
        curate_prompts(["", "  "], OFF)
    assert str(excinfo.value) == "no prompts left after curation step 'drop_empty' (2 before it)"
    with pytest.raises(MapoError, match="step 'style_words'"):
        curate_prompts(["8k", "anime cat"], PromptCurationConfig())
    with pytest.raises(MapoError, match="step 'require_words'.*woman"):
        curate_prompts(["a cat"], PromptCurationConfig(require_words=("woman",)))
    with pytest.raises(MapoError, match="no prompts to curate"):
        curate_prompts([], OFF)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"style_words": "remove"}, "style_words must be one of drop, strip, off"),
        ({"style_words": "off", "style_words_file": "w.txt"}, "style words are off"),
        ({"max_tokens": 2}, "max_tokens must be at least 3"),
        ({"num_prompts": 0}, "at least 1"),
        ({"max_chars": 0}, "max_chars must be at least 1"),
        ({"require_words": ("woman", " ")}, "empty word"),
    ],
)
def test_config_rejects_contradictions(kwargs, message):
    with pytest.raises(MapoError, match=message):
        PromptCurationConfig(**kwargs)


def test_config_normalises_require_words():
    assert PromptCurationConfig(require_words="Woman").require_words == ("woman",)
    assert PromptCurationConfig(require_words=("Girl", "girl", " female ")).require_words == (
        "girl",
        "female",
    )


def test_report_markdown_table():
    result = curate_prompts(
        ["a cat", "a cat", "a dog | friends"], PromptCurationConfig(num_prompts=1, seed=0)
    )
    lines = result.report_markdown().splitlines()
    assert lines[0] == "| step | before | after | dropped | note |"
    assert len(lines) == 2 + len(STEP_NAMES)
    assert lines[4] == "| drop_duplicates | 3 | 2 | 1 |  |"
    assert lines[-1] == "| sample | 2 | 1 | 1 | 1 sampled with seed 0 |"


def test_style_word_file_is_documented_and_sized():
    entries = read_style_words()
    assert 40 <= len(entries) <= 80
    for word in ("8k", "pixar", "disney", "oil painting", "anime", "pixel art", "realistic", "unreal engine"):
        assert word in entries


# --- the shipped default prompt set ------------------------------------------------------------


@pytest.fixture(scope="module")
def default_prompts():
    return load_prompts(None)


def test_default_set_size_and_uniqueness(default_prompts):
    assert len(default_prompts) >= 200
    keys = [duplicate_key(p) for p in default_prompts]
    assert len(set(keys)) == len(keys)
    assert all(p == " ".join(p.split()) and p for p in default_prompts)
    assert all(4 <= len(p.split()) <= 14 for p in default_prompts)


def test_default_set_survives_curation_untouched(default_prompts, tiny_tokenizers):
    # Style filter on, every preset prefix in front, tiny CLIP tokenizers: nothing may drop.
    result = curate_prompts(
        default_prompts, PromptCurationConfig(), tokenizers=tiny_tokenizers, prefixes=ALL_PRESET_PREFIXES
    )
    assert result.prompts == default_prompts
    assert all(step["dropped"] == 0 for step in result.steps)
    assert "skipped" not in _step(result, "max_tokens")  # the lengths were really measured


def test_default_set_has_no_style_vocabulary(default_prompts):
    banned = re.compile(
        r"\b(photo\w*|paint\w*|8k|realistic|cartoon\w*|art|artistic|render\w*|image|picture|drawing|sketch\w*|"
        r"illustration|style|anime|pixel|3d|hd|cinematic|nude|nudity|sexy|sexual)\b",
        re.IGNORECASE,
    )
    offenders = [p for p in default_prompts if banned.search(p)]
    assert offenders == []


def test_default_set_has_enough_pick_safety_prompts(default_prompts):
    config = PromptCurationConfig(style_words="off", require_words=("woman", "women", "girl", "female"))
    assert len(curate_prompts(default_prompts, config).prompts) >= 30
