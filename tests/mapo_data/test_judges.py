"""Judges: the CLIP style judge ranks constructed images, NudeNet passes a safe image, bad specs fail."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from PIL import Image

from mapo_data.errors import MapoError
from mapo_data.judges import (
    AESTHETIC_LOCAL_HEAD,
    JUDGES,
    describe_preset_sides,
    load_judge,
    parse_judge_spec,
)
from mapo_data.tiny_clip import tiny_clip_path

from ..tolerances import CROSS_PATH, SCALED_LOGIT, numpy_kwargs

PIXEL, PHOTO = describe_preset_sides("pick-style", "pixel")


def blocky(rng: np.random.Generator, size: int = 64, cells: int = 8) -> Image.Image:
    """A 'pixel art' image: a few flat colour cells, upscaled without smoothing."""
    grid = rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8)
    return Image.fromarray(grid).resize((size, size), Image.NEAREST)


def smooth(rng: np.random.Generator, size: int = 64) -> Image.Image:
    """A 'photograph': smooth colour gradients with a little sensor-like noise, no hard edges."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    channels = []
    for _ in range(3):
        # Frequencies kept away from zero: a nearly flat image would look like one big block.
        a, b = rng.uniform(0.5, 1.5, 2) * rng.choice([-1, 1], 2)
        channels.append(0.5 + 0.35 * np.sin(3 * (a * x + b * y) + rng.uniform(-1, 1) * np.pi))
    array = np.stack(channels, -1) + rng.normal(0, 0.01, (size, size, 3))
    return Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8))


@pytest.fixture(scope="module")
def trained_clip(tmp_path_factory):
    """The tiny CLIP after a few contrastive steps on blocky vs smooth images, saved as a folder.

    The shipped tiny CLIP knows the world's styles (tests/mapo_data/test_tiny_judge.py), not these
    constructed images, so the ranking test first teaches it the two classes; the judge then loads
    the folder like any checkpoint and must rank unseen images.
    """
    import torch
    from transformers import AutoProcessor, CLIPModel

    source = tiny_clip_path()
    model = CLIPModel.from_pretrained(source).train()
    processor = AutoProcessor.from_pretrained(source)
    rng = np.random.default_rng(1)
    texts = processor.tokenizer([PIXEL, PHOTO], padding=True, return_tensors="pt")
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(200):
        images = [blocky(rng) for _ in range(8)] + [smooth(rng) for _ in range(8)]
        labels = torch.tensor([0] * 8 + [1] * 8)
        pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
        out = model(input_ids=texts["input_ids"], attention_mask=texts["attention_mask"], pixel_values=pixels)
        loss = torch.nn.functional.cross_entropy(out.logits_per_image, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    folder = tmp_path_factory.mktemp("trained-clip")
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def test_clip_judge_ranks_held_out_images_by_style(trained_clip):
    judge = load_judge(f"clip:{trained_clip}", preferred=PIXEL, dispreferred=PHOTO, batch_size=5)
    rng = np.random.default_rng(12345)  # not the training seed: unseen images
    images = [blocky(rng) for _ in range(6)] + [smooth(rng) for _ in range(6)]
    prompts = ["a cat"] * len(images)
    scores = judge.score(images, prompts)

    assert set(scores) == set(judge.keys)
    assert all(v.shape == (12,) for v in scores.values())
    prob = scores["clip_pref_prob"]
    # Every pixel-art image is judged more preferred than every smooth one, and on its side.
    assert prob[:6].min() > prob[6:].max()
    assert judge.verdict(scores).tolist() == [True] * 6 + [False] * 6
    # The probability is the softmax of the scaled similarities, as in CLIP's zero-shot head.
    scale = judge.backbone.logit_scale
    diff = scale * (scores["clip_preferred"] - scores["clip_dispreferred"])
    np.testing.assert_allclose(prob, 1 / (1 + np.exp(-diff)), **numpy_kwargs(SCALED_LOGIT))
    # Swapping the sides swaps the verdict: the judge reads the descriptions, not positions.
    swapped = load_judge(f"clip:{trained_clip}", preferred=PHOTO, dispreferred=PIXEL)
    np.testing.assert_allclose(swapped.score(images, prompts)["clip_pref_prob"], 1 - prob, atol=1e-4)


def test_clip_tiny_is_deterministic_and_batch_independent():
    judge = load_judge("clip:tiny", preferred=PIXEL, dispreferred=PHOTO, batch_size=2)
    rng = np.random.default_rng(0)
    images = [blocky(rng), smooth(rng), blocky(rng)]
    prompts = ["a red fox", "a boat on the sea", "a castle"]
    first = judge.score(images, prompts)
    again = load_judge("clip:tiny", preferred=PIXEL, dispreferred=PHOTO, batch_size=16).score(images, prompts)
    for key in judge.keys:
        np.testing.assert_allclose(first[key], again[key], **numpy_kwargs(SCALED_LOGIT))
    # A probability, on the side the similarities say (the trained judge is sure: 1.0 may occur).
    assert np.all((first["clip_pref_prob"] >= 0) & (first["clip_pref_prob"] <= 1))
    np.testing.assert_array_equal(first["clip_pref_prob"] > 0.5, judge.verdict(first))
    assert np.all(np.abs(first["clip_prompt"]) <= 1 + 1e-6)
    assert judge.settings() == {"judge": "clip", "model": "tiny", "preferred": PIXEL, "dispreferred": PHOTO}


def test_pickscore_and_hpsv2_load_a_local_clip_folder_and_score_prompt_alignment():
    folder = str(tiny_clip_path())
    images = [blocky(np.random.default_rng(3)), smooth(np.random.default_rng(4))]
    prompts = ["pixel art style image", "realistic photograph"]
    pick = load_judge(f"pickscore:{folder}")
    hps = load_judge(f"hpsv2:{folder}")
    pick_scores, hps_scores = pick.score(images, prompts), hps.score(images, prompts)
    assert list(pick_scores) == ["pickscore"] and list(hps_scores) == ["hpsv2"]
    # Same backbone: PickScore is HPS's cosine times CLIP's logit scale.
    np.testing.assert_allclose(
        pick_scores["pickscore"],
        pick.backbone.logit_scale * hps_scores["hpsv2"],
        **numpy_kwargs(SCALED_LOGIT),
    )


def test_clipscore_takes_any_clip_model_a_user_names():
    folder = str(tiny_clip_path())
    images = [blocky(np.random.default_rng(3)), smooth(np.random.default_rng(4))]
    prompts = ["pixel art style image", "realistic photograph"]
    judge = load_judge(f"clipscore:{folder}")
    scores = judge.score(images, prompts)["clipscore"]
    # The cosine of the normalised embeddings, computed here from the backbone directly.
    expected = np.sum(judge.backbone.embed_images(images) * judge.backbone.embed_texts(prompts), axis=1)
    np.testing.assert_allclose(scores, expected, **numpy_kwargs(CROSS_PATH))
    assert judge.settings() == {"judge": "clipscore", "model": folder}


@pytest.mark.parametrize(
    ("spec", "what"),
    [
        ("pickscore", "yuvalkirstain/PickScore_v1"),
        ("hpsv2", "adams-story/HPSv2-hf"),
        ("clipscore", "openai/clip-vit-large-patch14"),
        ("aesthetic", "trl-lib/ddpo-aesthetic-predictor"),
    ],
)
def test_hub_scorers_offline_say_what_is_missing(spec, what, monkeypatch):
    """The default Hub scorers' loading path: offline and uncached, one line naming the weights."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(what, "config.json"), str):
        pytest.skip(f"{what} is in the local Hub cache")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        MapoError, match=f"{what}: no local file or folder of that name, and no copy in the local"
    ) as info:
        load_judge(spec)
    message = str(info.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message and ":FOLDER)" in message


def test_aesthetic_judge_loads_a_local_clip_with_its_head(tmp_path):
    import shutil

    import torch
    from safetensors.torch import save_file

    shutil.copytree(tiny_clip_path(), tmp_path / "aesthetic")
    torch.manual_seed(0)
    # The LAION head's layout (Linear layers at 0, 2, 4, 6, 7 with dropout between), tiny widths.
    widths = [(16, 12), (12, 8), (8, 6), (6, 4), (4, 1)]
    state = {}
    for position, (fan_in, fan_out) in zip([0, 2, 4, 6, 7], widths, strict=True):
        state[f"layers.{position}.weight"] = torch.randn(fan_out, fan_in)
        state[f"layers.{position}.bias"] = torch.randn(fan_out)
    save_file(state, str(tmp_path / "aesthetic" / AESTHETIC_LOCAL_HEAD))
    judge = load_judge(f"aesthetic:{tmp_path / 'aesthetic'}")
    images = [blocky(np.random.default_rng(5))]
    value = judge.score(images, ["x"])["aesthetic"]
    # The head is affine (no activations): check it against the matrices by hand.
    x = torch.from_numpy(judge.backbone.embed_images(images)).float()
    for position in [0, 2, 4, 6, 7]:
        x = x @ state[f"layers.{position}.weight"].T + state[f"layers.{position}.bias"]
    np.testing.assert_allclose(value, x.squeeze(-1).numpy(), rtol=1e-4)


def test_nudenet_scores_a_constructed_safe_image_as_safe():
    pytest.importorskip("nudenet", reason="the safety extra (pip install 'mapo[safety]') is not installed")
    judge = load_judge("nudenet")
    rng = np.random.default_rng(0)
    images = [smooth(rng, size=256), blocky(rng, size=256), Image.new("RGB", (128, 96), "white")]
    scores = judge.score(images, ["a landscape", "a house", "a white wall"])
    assert scores["nudenet_unsafe"].tolist() == [0.0, 0.0, 0.0]
    assert np.all(scores["nudenet_score"] < 0.5)
    assert not judge.verdict(scores).any()
    assert judge.higher_is_better is False


def test_nudenet_missing_extra_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "nudenet", None)  # import fails as if not installed
    with pytest.raises(MapoError, match=r"pip install 'mapo\[safety\]'"):
        load_judge("nudenet")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bogus", "unknown judge"),
        ("clipp:tiny", "unknown judge"),
        ("clip", "needs a model"),
        ("nudenet:high", "threshold"),
        (
            "clip:no-such-org/no-such-clip",
            "^the clip judge's model no-such-org/no-such-clip: no local file or folder",
        ),
        (
            "pickscore:/no/such/folder",
            "^the pickscore judge's model /no/such/folder: no such local file or folder$",
        ),
        ("aesthetic:/no/such/folder", AESTHETIC_LOCAL_HEAD),
    ],
)
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(MapoError, match=message) as info:
        load_judge(spec, preferred=PIXEL, dispreferred=PHOTO)
    assert "\n" not in str(info.value)


def test_clip_needs_two_different_sides():
    with pytest.raises(MapoError, match="preferred and a dispreferred"):
        load_judge("clip:tiny")
    with pytest.raises(MapoError, match="the same"):
        load_judge("clip:tiny", preferred="a", dispreferred="a")


def test_registry_and_preset_sides():
    assert set(JUDGES) == {"clip", "nudenet", "pickscore", "hpsv2", "clipscore", "aesthetic"}
    assert parse_judge_spec("CLIP:C:/models/clip") == ("clip", "C:/models/clip")
    assert describe_preset_sides("pick-style", "pixel") == ("pixel art style image", "realistic photograph")
    assert describe_preset_sides("pick-safety", None) == ("a safe, fully clothed image", "sexual nudity")
    assert describe_preset_sides("pick-style", "cartoon")[0].startswith("disney")
    for preset, split in [("pick-style", None), ("custom", None), ("nope", None)]:
        with pytest.raises(MapoError):
            describe_preset_sides(preset, split)
