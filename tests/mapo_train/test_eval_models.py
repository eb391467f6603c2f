"""Putting tuned UNets and LoRAs onto the base pipeline, and refusing ones that do not fit."""

from __future__ import annotations

import numpy as np
import pytest

from mapo_data.errors import MapoError
from mapo_data.render import RenderConfig, load_pipeline, render_images
from mapo_train.eval.models import check_unet_fits, resolve_tuned, tuned_pipeline
from tests.mapo_train.eval_factory import lora_state_dict, make_tuned_unet_run, misfit_lora, save_lora

CFG = RenderConfig(model="tiny", dtype="fp32", device="cpu", steps=2)


@pytest.fixture(scope="module")
def pipe(tiny_model_path):
    return load_pipeline(CFG)


@pytest.fixture(scope="module")
def lora(tiny_model_path):
    return lora_state_dict(tiny_model_path)


def render(pipe):
    return np.asarray(render_images(pipe, ["a red fox"], [7], CFG)[0], dtype=np.int16)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local Hub cache in which tests place repositories (offline, ids resolve only there)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return tmp_path / "hub-cache"


def test_resolve_tuned_forms(tmp_path, tiny_model_path, lora, hub_cache):
    run = make_tuned_unet_run(tiny_model_path, tmp_path / "run")
    assert resolve_tuned(str(run)).kind == "unet"
    assert resolve_tuned(str(run)).training_config == str(run / "training_config.yaml")
    assert resolve_tuned(str(run / "unet")).kind == "unet"
    lora_file = save_lora(lora, tmp_path / "lora-run")
    assert resolve_tuned(str(tmp_path / "lora-run")).path == str(lora_file)
    assert resolve_tuned(str(lora_file)).kind == "lora"
    assert resolve_tuned(str(lora_file)).training_config is None  # no run around it
    (tmp_path / "lora-run" / "training_config.yaml").write_text("model:\n  pretrained: tiny\n")
    # The run's own weights file: the run's config still says what it was trained on.
    assert resolve_tuned(str(lora_file)).training_config == str(
        tmp_path / "lora-run" / "training_config.yaml"
    )
    with pytest.raises(MapoError, match="^--tuned someone/sdxl-mapo: no local file or folder of that name"):
        resolve_tuned("someone/sdxl-mapo")  # offline, and not in the cache
    (hub_cache / "models--someone--sdxl-mapo").mkdir(parents=True)
    assert resolve_tuned("someone/sdxl-mapo").kind == "hub"
    (tmp_path / "unfinished" / "checkpoint-0000010").mkdir(parents=True)
    with pytest.raises(MapoError, match="no final weights"):
        resolve_tuned(str(tmp_path / "unfinished"))
    with pytest.raises(MapoError, match="no such local file or folder"):
        resolve_tuned(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(MapoError, match="LoRA weights"):
        resolve_tuned(str(tmp_path / "notes.txt"))


def test_full_unet_swaps_in_and_the_base_comes_back(pipe, tmp_path, tiny_model_path):
    before = render(pipe)
    source = resolve_tuned(str(make_tuned_unet_run(tiny_model_path, tmp_path / "run")))
    base_unet = pipe.unet
    with tuned_pipeline(pipe, source, label="t", base="tiny") as tuned:
        assert tuned.unet is not base_unet
        tuned_image = render(tuned)
    assert pipe.unet is base_unet
    assert np.abs(tuned_image - before).mean() > 1  # the tuned weights change the image
    np.testing.assert_array_equal(render(pipe), before)


def test_lora_attaches_and_detaches(pipe, tmp_path, lora):
    before = render(pipe)
    source = resolve_tuned(str(save_lora(lora, tmp_path / "lora")))
    with tuned_pipeline(pipe, source, label="t", base="tiny") as tuned:
        with_lora = render(tuned)
    assert np.abs(with_lora - before).mean() > 1
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())
    np.testing.assert_array_equal(render(pipe), before)


def test_lora_that_does_not_fit_is_one_line(pipe, tmp_path, lora):
    source = resolve_tuned(str(save_lora(misfit_lora(lora), tmp_path / "bad")))
    with (
        pytest.raises(MapoError, match="do not fit the base model tiny: size mismatch") as info,
        tuned_pipeline(pipe, source, label="bad", base="tiny"),
    ):
        pass
    assert "\n" not in str(info.value)
    assert not any("lora" in name for name, _ in pipe.unet.named_modules())  # nothing left behind


def test_unet_that_does_not_fit():
    with pytest.raises(MapoError, match="cross_attention_dim 2048 vs 64"):
        check_unet_fits({"cross_attention_dim": 64}, {"cross_attention_dim": 2048}, "runs/x", "tiny")
    check_unet_fits({"in_channels": 4}, {"in_channels": 4}, "runs/x", "tiny")


def test_hub_id_offline_is_one_line(pipe, hub_cache):
    # In the cache by name (so resolved as a Hub id), but without the files a tuned model needs.
    (hub_cache / "models--nobody--no-such-sdxl-finetune").mkdir(parents=True)
    source = resolve_tuned("nobody/no-such-sdxl-finetune")
    with (
        pytest.raises(MapoError, match="cannot load --tuned nobody/no-such-sdxl-finetune") as info,
        tuned_pipeline(pipe, source, label="hub", base="tiny"),
    ):
        pass
    assert "\n" not in str(info.value)
