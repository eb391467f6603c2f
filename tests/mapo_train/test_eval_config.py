"""EvalConfig: defaults from the preset, labels, and contradictions refused before any rendering."""

from __future__ import annotations

import pytest

from mapo_data.errors import MapoError
from mapo_train.eval.config import DEFAULT_STYLE_CLIP, EvalConfig, resolve_labels


def test_preset_picks_judges_and_sides():
    style = EvalConfig(tuned=["runs/a"], base="tiny", preset="pick-style", split="pixel")
    assert style.resolved_judges() == ["clip:tiny"]  # the tiny base gets the tiny CLIP: offline
    assert style.sides() == ("pixel art style image", "realistic photograph")
    sdxl = EvalConfig(tuned=["runs/a"], preset="pick-safety")
    assert sdxl.resolved_judges() == ["nudenet", f"clip:{DEFAULT_STYLE_CLIP}"]
    custom = EvalConfig(
        tuned=["runs/a"], preset="custom", preferred_text="watercolor painting", dispreferred_text="photo"
    )
    assert custom.sides() == ("watercolor painting", "photo")
    overridden = EvalConfig(tuned=["x"], preset="pick-style", split="pixel", preferred_text="8-bit sprite")
    assert overridden.sides() == ("8-bit sprite", "realistic photograph")
    assert EvalConfig(tuned=["x"], judges=["pickscore"]).resolved_judges() == ["pickscore"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(tuned=[]), "at least one --tuned"),
        (dict(tuned=["x"]), "no judges"),
        (dict(tuned=["x"], judges=["clip:tiny"]), "--preferred-text"),
        (dict(tuned=["x"], preset="pick-style"), "needs a split"),
        (dict(tuned=["x"], preset="custom"), "--preferred-text"),
        (dict(tuned=["x"], judges=["bogus"]), "unknown judge"),
        (dict(tuned=["x"], preset="pick-stile"), "unknown preset"),
        (dict(tuned=["x", "y"], names=["one"], judges=["nudenet"]), "one per model"),
        (dict(tuned=["x"], judges=["nudenet"], confidence=1.0), "--confidence"),
        (dict(tuned=["x"], judges=["nudenet"], dtype="fp8"), "unknown dtype"),
    ],
)
def test_contradictions_are_refused(kwargs, message):
    with pytest.raises(MapoError, match=message):
        EvalConfig(**kwargs)


def test_labels_unique_and_file_safe():
    assert resolve_labels(
        ["runs/mapo", "runs/dpo/unet", "out/lora/pytorch_lora_weights.safetensors"], None
    ) == [
        "base",
        "mapo",
        "dpo",
        "lora",
    ]
    assert resolve_labels(["a/run", "b/run", "me/sdxl-pixel"], None) == ["base", "run", "run-2", "sdxl-pixel"]
    assert resolve_labels(["x", "y"], ["MaPO β=0.1", "base"]) == ["base", "MaPO-0.1", "base-2"]
