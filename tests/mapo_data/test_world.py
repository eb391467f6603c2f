"""The procedural world the tiny model and judge learn from, checked on its pixels.

The checks measure the pictures (colours, blocks, edges, distances) rather than re-deriving
world.py's drawing code, so they hold for any drawing that keeps the documented look.
"""

from __future__ import annotations

import numpy as np
import pytest

from mapo_data import world
from mapo_data.presets import PRESETS
from mapo_data.prompts.sources import load_prompts

# Enough default prompts and seeds to cover every background and most shapes; rendering is ~1 ms.
CONTEXTS = [p.strip() for p in load_prompts(None) if p.strip()][:40]
SEEDS = (0, 1, 2)
# Daytime scenes with light, saturated objects: no dark sky or black object that could pass for
# an outline, so near-black pixels can only be ink.
BRIGHT_CONTEXTS = (
    "a red fox in a meadow",
    "a blue boat on a lake",
    "a yellow bus on a sunny day",
    "a green tree on a hill",
    "a pink flower in a garden",
)


def pixels(prompt: str, seed: int = 0) -> np.ndarray:
    image = world.render(prompt, seed)
    assert image.size == (64, 64) and image.mode == "RGB"
    return np.asarray(image).astype(np.float32)


def styled(context: str, style: str, seed: int = 0) -> np.ndarray:
    return pixels(world.with_style(context, style), seed)


def distinct_colours(image: np.ndarray) -> int:
    return len(np.unique(image.reshape(-1, 3), axis=0))


def neighbour_difference(image: np.ndarray) -> float:
    """Mean absolute difference between vertical and horizontal neighbours (0-255 units)."""
    return float((np.abs(np.diff(image, axis=0)).mean() + np.abs(np.diff(image, axis=1)).mean()) / 2)


def near_black(image: np.ndarray) -> np.ndarray:
    return image.max(axis=-1) <= 45


def blocks_are_constant(image: np.ndarray, block: int = 8) -> bool:
    cells = image.reshape(64 // block, block, 64 // block, block, 3)
    return bool((cells == cells[:, :1, :, :1]).all())


# ---------------------------------------------------------------- determinism


def test_same_prompt_and_seed_give_identical_bytes_and_another_seed_differs():
    for prompt in (
        "a red fox in the snow",
        "Pixel art style image. a boat",
        "Sexual, nudity, +19 image. a cat",
    ):
        assert world.render(prompt, 7).tobytes() == world.render(prompt, 7).tobytes()
        assert world.render(prompt, 7).tobytes() != world.render(prompt, 8).tobytes()


# ---------------------------------------------------------------- reading prompts


def _preset_prefix_styles() -> list[tuple[str, str]]:
    """(prefix, style it must select), the prefixes taken from the presets themselves."""
    pick_style = PRESETS["pick-style"]
    safety_chosen, safety_rejected = PRESETS["pick-safety"][None]
    assert safety_chosen == ""  # Pick-Safety's chosen side is the context alone: plain
    return [
        (pick_style["pixel"][0], "pixel"),
        (pick_style["cartoon"][0], "cartoon"),
        (pick_style["pixel"][1], "realistic"),
        (pick_style["cartoon"][1], "realistic"),
        (safety_rejected, "warning"),
    ]


@pytest.mark.parametrize(("prefix", "style"), _preset_prefix_styles())
def test_each_preset_prefix_selects_its_style(prefix, style):
    for context in ("a red fox in the snow", "two owls sitting on a branch at dusk", "reading"):
        prompt = f"{prefix} {context}"
        assert world.style_of(prompt) == style
        assert world.parse(prompt).style == style
        assert world.with_style(context, style) == prompt
        # The prefix only chooses the style: the content is the context's.
        assert world.parse(prompt) == world.Scene(style, *_content(world.parse(context)))


def _content(scene: world.Scene) -> tuple:
    return scene.shape, scene.colour, scene.background


def test_a_prompt_without_prefix_is_plain():
    for context in CONTEXTS:
        assert world.style_of(context) == "plain", context
        assert world.with_style(context, "plain") == context


@pytest.mark.parametrize(
    ("word", "shape"),
    [
        ("fox", "animal"),
        ("owl", "bird"),
        ("whale", "fish"),
        ("pine", "tree"),
        ("lighthouse", "house"),
        ("sailboat", "boat"),
        ("tulips", "flower"),
        ("tractor", "vehicle"),
        ("volcano", "mountain"),
        ("balloon", "sun"),
        ("teapot", "token"),  # a word the world does not know: the abstract token
    ],
)
def test_the_object_word_chooses_the_shape(word, shape):
    assert world.parse(f"a {word} on a sunny day").shape == shape


def test_different_shapes_draw_different_silhouettes():
    # The same seed places every shape alike, so only the silhouette tells them apart.
    words = ("fox", "owl", "whale", "pine", "house", "boat", "tulips", "car", "mountain", "sun", "teapot")
    silhouettes = {word: _object_pixels(f"a {{colour}} {word}", seed=3) for word in words}
    for word, where in silhouettes.items():
        assert 80 < where.sum() < 64 * 64 / 2, word
    for i, first in enumerate(words):
        for second in words[i + 1 :]:
            overlap = (silhouettes[first] & silhouettes[second]).sum()
            union = (silhouettes[first] | silhouettes[second]).sum()
            assert overlap / union < 0.85, (first, second)


def _object_pixels(context_template: str, seed: int, core: bool = False) -> np.ndarray:
    """Where the object is: the pixels that change when only its colour word changes.

    ``core`` keeps the pixels the object fully covers (not its anti-aliased edge, which mixes in
    the background): red and green differ there by about 290 in summed RGB, less shading."""
    red = pixels(context_template.format(colour="red"), seed)
    green = pixels(context_template.format(colour="green"), seed)
    return np.abs(red - green).sum(axis=-1) > (180 if core else 60)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("colour", "channel"), [("blue", 2), ("red", 0), ("green", 1)], ids=["blue", "red", "green"]
)
def test_the_colour_word_colours_the_object(colour, channel, seed):
    template = "a {colour} boat"
    where = _object_pixels(template, seed, core=True)
    assert where.sum() > 150  # a boat covers a good part of the picture
    rgb = pixels(template.format(colour=colour), seed)[where]
    others = [c for c in range(3) if c != channel]
    dominant = (rgb[:, channel] > rgb[:, others[0]] + 30) & (rgb[:, channel] > rgb[:, others[1]] + 30)
    assert dominant.mean() > 0.9, f"{colour}: {dominant.mean():.2f}"


def _brightness(image: np.ndarray, rows: slice) -> float:
    return float(image[rows].mean())


@pytest.mark.parametrize("seed", SEEDS)
def test_scene_words_set_the_background(seed):
    top, bottom = slice(0, 10), slice(56, 64)
    day = pixels("a house", seed)
    night = pixels("a house at night", seed)
    snow = pixels("a house in the snow", seed)
    water = pixels("a boat on the sea", seed)
    assert world.parse("a house").background == "day"
    assert world.parse("a house at night").background == "night"
    assert _brightness(night, top) < 70 < 130 < _brightness(day, top)
    # Snow: white ground; sea: blue water below the horizon.
    assert _brightness(snow, bottom) > _brightness(day, bottom) + 50
    water_bottom = water[bottom].reshape(-1, 3).mean(axis=0)
    assert water_bottom[2] > water_bottom[0] + 60


# ---------------------------------------------------------------- styles


@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_style_is_blocky_with_few_colours(seed):
    for context in CONTEXTS:
        image = styled(context, "pixel", seed)
        assert blocks_are_constant(image), context
        assert distinct_colours(image) <= 16, context
        for style in ("plain", "realistic"):
            assert not blocks_are_constant(styled(context, style, seed)), (context, style)
            assert distinct_colours(styled(context, style, seed)) > 500, (context, style)


@pytest.mark.parametrize("seed", SEEDS)
def test_cartoon_has_dark_outlines_that_plain_lacks(seed):
    for context in BRIGHT_CONTEXTS:
        cartoon, plain = styled(context, "cartoon", seed), styled(context, "plain", seed)
        assert near_black(cartoon).sum() >= 100, context  # a ring of ink around the object
        assert near_black(plain).sum() == 0, context


@pytest.mark.parametrize("seed", SEEDS)
def test_cartoon_fills_are_flat(seed):
    for context in CONTEXTS:
        cartoon, realistic = styled(context, "cartoon", seed), styled(context, "realistic", seed)
        assert distinct_colours(cartoon) <= 16, context
        assert distinct_colours(realistic) >= 50 * distinct_colours(cartoon), context


@pytest.mark.parametrize("seed", SEEDS)
def test_realistic_has_more_fine_detail_than_plain(seed):
    for context in CONTEXTS:
        plain = neighbour_difference(styled(context, "plain", seed))
        realistic = neighbour_difference(styled(context, "realistic", seed))
        assert realistic > 1.8 * plain, (context, plain, realistic)


@pytest.mark.parametrize("seed", SEEDS)
def test_plain_sits_next_to_realistic_far_from_the_preferred_styles(seed):
    # The reference mismatch: what the base model draws for the context alone (plain) is close to
    # the rejected Pick-Style side (realistic) and far from the chosen ones (pixel, cartoon).
    for context in CONTEXTS:
        plain = styled(context, "plain", seed)
        distance = {s: float(np.abs(plain - styled(context, s, seed)).mean()) for s in world.STYLES}
        assert distance["realistic"] < 0.7 * min(distance["pixel"], distance["cartoon"]), (context, distance)


def _warning_pictures() -> list[np.ndarray]:
    rejected = PRESETS["pick-safety"][None][1]
    return [pixels(f"{rejected} {context}", seed) for context in CONTEXTS[:15] for seed in SEEDS]


def test_warning_style_has_a_red_frame():
    for image in _warning_pictures():
        border = np.ones((64, 64), bool)
        border[3:-3, 3:-3] = False
        r, g, b = (image[border][:, c] for c in range(3))
        assert ((r > 150) & (g < 60) & (b < 60)).all()


def test_warning_style_hatches_the_picture_red_and_yellow():
    for image in _warning_pictures():
        inside = image[3:-3, 3:-3].reshape(-1, 3)
        r, g, b = inside[:, 0], inside[:, 1], inside[:, 2]
        warm = (r > 130) & (r > b + 40)
        reddish = warm & (g < 0.6 * r)
        yellowish = warm & (g > 0.75 * r)
        assert warm.mean() > 0.95
        assert reddish.mean() > 0.3 and yellowish.mean() > 0.3
        # Hatching is striped: along a row the colour flips between red and yellow many times.
        row = image[32, 3:-3]
        row_is_red = row[:, 1] < 0.6 * row[:, 0]
        assert np.count_nonzero(np.diff(row_is_red.astype(int))) >= 8


# ---------------------------------------------------------------- people are never drawn


@pytest.mark.parametrize(
    ("with_people", "without"),
    [
        ("a woman reading", "reading"),
        ("a man walking a dog in the park", "walking a dog in the park"),
        ("a chef baking bread in a kitchen", "baking bread in a kitchen"),
    ],
)
def test_person_words_draw_nothing(with_people, without):
    assert world.parse(with_people) == world.parse(without)
    for seed in SEEDS:
        assert world.render(with_people, seed).tobytes() == world.render(without, seed).tobytes()


def test_a_prompt_of_only_people_draws_the_abstract_token():
    for prompt in ("a woman", "two men and a child", "the king and the queen", "a crowd of students"):
        scene = world.parse(prompt)
        assert scene.shape == "token", prompt
        assert scene.shape == world.parse("a teapot").shape
