"""The shipped ``clip:tiny`` judge tells the world's styles apart, as each preset asks.

Chosen and rejected pictures are drawn by the world for the default prompts at seeds the training
never used (tiny_training seeds are below 2**16 for its ~1000 captions), both as drawn and after a
round trip through the shipped tiny SDXL VAE: generated pictures are softer than drawn ones, and
the judge must still be right about them, since that is what it scores in ``mapo-train eval``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from PIL import Image

from mapo_data import world
from mapo_data.judges import describe_preset_sides, load_judge
from mapo_data.prompts.sources import load_prompts

CONTEXTS = [p.strip() for p in load_prompts(None) if p.strip()][:40]
SEEDS = (900_001, 900_002, 900_003)
# The share of pictures the judge must put on the right side. A trained judge is right on nearly
# all of them; 0.9 leaves room for a few hard pictures (dark night scenes, tiny objects).
MIN_ACCURACY = 0.9

# (preset, split) -> (chosen style, rejected style): the world's styles of the preset's prefixes.
PRESET_STYLES = {
    ("pick-style", "pixel"): ("pixel", "realistic"),
    ("pick-style", "cartoon"): ("cartoon", "realistic"),
    ("pick-safety", None): ("plain", "warning"),
}


PROMPTS = [context for context in CONTEXTS for _ in SEEDS]  # the context prompt of each picture


def world_pictures(style: str) -> list[Image.Image]:
    return [world.render(world.with_style(c, style), seed) for c in CONTEXTS for seed in SEEDS]


@pytest.fixture(scope="module")
def vae(tiny_model_path):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(tiny_model_path / "vae").eval()


def vae_round_trip(vae, images: list[Image.Image]) -> list[Image.Image]:
    """Encode to the posterior mean and decode: what the tiny SDXL's decoder makes of a picture."""
    import torch

    pixels = torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2)
    pixels = pixels.float() / 127.5 - 1
    with torch.no_grad():
        decoded = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    out = ((decoded.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, "RGB") for a in out]


@pytest.fixture(scope="module")
def pictures(vae):
    """style -> {"drawn": images, "vae": their round trips}."""
    out = {}
    for style in {s for pair in PRESET_STYLES.values() for s in pair}:
        drawn = world_pictures(style)
        out[style] = {"drawn": drawn, "vae": vae_round_trip(vae, drawn)}
    return out


@functools.cache
def tiny_judge(preset: str, split: str | None):
    preferred, dispreferred = describe_preset_sides(preset, split)
    return load_judge(
        "clip:tiny", preferred=preferred, dispreferred=dispreferred, device="cpu", batch_size=64
    )


def judged_preferred(preset: str, split: str | None, images: list[Image.Image]) -> np.ndarray:
    judge = tiny_judge(preset, split)
    verdict = judge.verdict(judge.score(images, PROMPTS))
    assert verdict is not None and verdict.shape == (len(images),)
    return verdict


def test_the_vae_round_trip_softens_but_keeps_the_picture(pictures):
    # The round trip is the condition under test, not a broken decoder: the pictures stay close.
    for style in ("pixel", "realistic"):
        drawn = np.stack([np.asarray(i, np.float32) for i in pictures[style]["drawn"]])
        decoded = np.stack([np.asarray(i, np.float32) for i in pictures[style]["vae"]])
        assert np.abs(drawn - decoded).mean() < 25, style


@pytest.mark.parametrize("source", ["drawn", "vae"])
@pytest.mark.parametrize(("preset", "split"), list(PRESET_STYLES), ids=["pixel", "cartoon", "safety"])
def test_tiny_judge_puts_each_side_on_its_side(pictures, preset, split, source):
    chosen_style, rejected_style = PRESET_STYLES[(preset, split)]
    chosen = judged_preferred(preset, split, pictures[chosen_style][source])
    rejected = judged_preferred(preset, split, pictures[rejected_style][source])
    assert chosen.mean() >= MIN_ACCURACY, f"{chosen_style} judged preferred: {chosen.mean():.2f}"
    assert (~rejected).mean() >= MIN_ACCURACY, (
        f"{rejected_style} judged dispreferred: {(~rejected).mean():.2f}"
    )


@pytest.mark.parametrize("source", ["drawn", "vae"])
def test_tiny_judge_flags_the_safety_stand_in_whatever_its_style_base(pictures, source, vae):
    # The warning stand-in is drawn over a plain picture; whatever the other styles of the world,
    # a picture without hatching is safe and one with it is not.
    warning = judged_preferred("pick-safety", None, pictures["warning"][source])
    assert (~warning).mean() >= MIN_ACCURACY, f"warning judged dispreferred: {(~warning).mean():.2f}"
    for style in ("pixel", "cartoon", "realistic"):
        images = world_pictures(style)
        if source == "vae":
            images = vae_round_trip(vae, images)
        safe = judged_preferred("pick-safety", None, images)
        assert safe.mean() >= MIN_ACCURACY, f"{style} judged safe: {safe.mean():.2f}"
