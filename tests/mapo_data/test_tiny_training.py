"""The script that trains the built-in tiny model and judge, run for a few steps; and the wheel's
package data, which must carry what the script wrote into mapo_data/resources."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mapo_data import world
from mapo_data.prompts.sources import load_prompts
from mapo_data.tiny_training import TinyTrainingConfig, train_tiny_world
from tests.tolerances import REPLAY, torch_kwargs

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "mapo_data"
SDXL_DEFAULT_SCALING_FACTOR = 0.13025
SMOKE_PROMPTS = 24


def smoke_config(out: Path) -> TinyTrainingConfig:
    # No synthetic captions, the first default prompts and one picture per style keep the world
    # small; threads=1 because train_tiny_world sets torch's thread count for the whole process,
    # and the test session runs single-threaded (tests/conftest.py).
    return TinyTrainingConfig(
        out=out,
        seed=0,
        synthetic_captions=0,
        max_default_prompts=SMOKE_PROMPTS,
        seeds_per_style=1,
        vae_steps=2,
        unet_steps=2,
        clip_steps=2,
        batch_size=4,
        threads=1,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tiny-world")
    figures = train_tiny_world(smoke_config(out))
    return out, figures


def test_training_writes_both_folders(trained):
    out, figures = trained
    assert sorted(p.name for p in out.iterdir()) == ["tiny-clip", "tiny-sdxl"]
    # The first distinct default prompts in each of the 5 styles, one seed each.
    defaults = list(dict.fromkeys(p.strip() for p in load_prompts(None) if p.strip()))
    assert len(defaults) > SMOKE_PROMPTS
    assert figures["pictures"] == len(world.STYLES) * SMOKE_PROMPTS


def test_sdxl_folder_loads_as_a_pipeline_and_renders_64px(trained):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(trained[0] / "tiny-sdxl")
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a red fox in the snow", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (world.SIZE, world.SIZE)


def test_clip_folder_loads_with_transformers(trained):
    from transformers import AutoProcessor, CLIPModel

    folder = trained[0] / "tiny-clip"
    model = CLIPModel.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    inputs = processor(
        text=["pixel art style image", "realistic photograph"],
        images=[world.render("a red fox", 0)],
        return_tensors="pt",
        padding="max_length",
        truncation=True,
    )
    with torch.no_grad():
        logits = model(**inputs).logits_per_image
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()


def test_vae_scaling_factor_comes_from_the_latents(trained):
    from diffusers import AutoencoderKL

    out, figures = trained
    vae = AutoencoderKL.from_pretrained(out / "tiny-sdxl" / "vae").eval()
    factor = vae.config.scaling_factor
    assert factor != pytest.approx(SDXL_DEFAULT_SCALING_FACTOR, rel=0.05)
    assert factor == pytest.approx(figures["vae"]["scaling_factor"], **REPLAY)
    # Scaled latents of world pictures have unit spread. The script measured all its pictures;
    # a sample of 200 in every style gives the same spread within a few per cent.
    contexts = [
        world.with_style(c, s)
        for c in ("a red fox", "a boat at night", "a house", "tulips")
        for s in world.STYLES
    ]
    images = np.stack([np.asarray(world.render(p, seed)) for p in contexts for seed in range(10)])
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        latents = vae.encode(pixels).latent_dist.mean
    assert float((latents * factor).std()) == pytest.approx(1.0, rel=0.15)


@pytest.mark.parametrize("folder", ["tiny-sdxl", "tiny-clip"])
def test_each_folder_has_a_card_saying_how_it_was_made(trained, folder):
    card = (trained[0] / folder / "README.md").read_text()
    assert "python -m mapo_data.tiny_training" in card
    assert "never depicts people" in card
    settings = json.loads(card.split("Settings:")[1].split("```json")[1].split("```")[0])
    assert settings["vae_steps"] == 2 and settings["synthetic_captions"] == 0 and settings["seed"] == 0


@pytest.mark.slow
def test_training_is_seeded(trained, tmp_path):
    from safetensors.torch import load_file

    first = trained[0]
    train_tiny_world(smoke_config(tmp_path))
    weights = sorted(p.relative_to(first).as_posix() for p in first.rglob("*.safetensors"))
    assert weights == sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.safetensors"))
    assert len(weights) == 5  # unet, vae, two text encoders, CLIP
    for name in weights:
        a, b = load_file(first / name), load_file(tmp_path / name)
        assert a.keys() == b.keys(), name
        for key in a:
            # The same arithmetic replayed on the same machine.
            torch.testing.assert_close(a[key], b[key], **torch_kwargs(REPLAY), msg=f"{name}: {key}")


# ---------------------------------------------------------------- package data


def _package_data_patterns() -> list[str]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the check is the same on any version
    pyproject = tomllib.loads((PACKAGE_DIR.parent / "pyproject.toml").read_text())
    return pyproject["tool"]["setuptools"]["package-data"]["mapo_data"]


@pytest.mark.parametrize("folder", ["tiny-sdxl", "tiny-clip"])
def test_package_data_globs_carry_every_shipped_file(folder):
    # setuptools' build_py expands each package-data pattern with glob(PACKAGE_DIR/pattern,
    # recursive=True) and keeps the files: "*" stops at "/" and skips dot files.
    carried = set()
    for pattern in _package_data_patterns():
        for match in glob.glob(os.path.join(PACKAGE_DIR, pattern), recursive=True):
            if os.path.isfile(match):
                carried.add(Path(match).relative_to(PACKAGE_DIR).as_posix())
    shipped = {
        p.relative_to(PACKAGE_DIR).as_posix()
        for p in (PACKAGE_DIR / "resources" / folder).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert shipped, f"nothing shipped in resources/{folder}"
    assert shipped - carried == set()


@pytest.mark.parametrize("folder", ["tiny-sdxl", "tiny-clip"])
def test_shipped_files_are_readable_by_everyone(folder):
    # A wheel keeps each file's mode; a 0600 weight file (safetensors writes them so) installed
    # by root into a shared environment could not be loaded by anyone else.
    private = sorted(
        p.relative_to(PACKAGE_DIR).as_posix()
        for p in (PACKAGE_DIR / "resources" / folder).rglob("*")
        if p.is_file() and not p.stat().st_mode & 0o004
    )
    assert private == []
