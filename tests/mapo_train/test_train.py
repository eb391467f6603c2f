"""End to end on the tiny model: each objective trains, saves weights that load back into an SDXL
pipeline, resumes exactly, and stops cleanly on a non-finite loss."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mapo_data.errors import MapoError
from mapo_train import losses
from mapo_train.config import config_from_dict
from mapo_train.train import NonFiniteLossError, train

from ..tolerances import CROSS_PATH, REPLAY
from .conftest import write_pairs

WEIGHTS = "diffusion_pytorch_model.safetensors"


def tiny_config(data_path, out, *overrides):
    return config_from_dict(
        {
            "model": "tiny",
            "data": {"path": str(data_path), "resolution": 64, "num_workers": 0},
            "train": {
                "output_dir": str(out),
                "max_steps": 3,
                "batch_size": 2,
                "learning_rate": 1e-3,
                "lr_scheduler": "constant",
                "checkpoint_every": 0,
                "report_to": "none",
            },
            "validation": {"enabled": False},
        },
        list(overrides),
    )


def base_unet(tiny_model_path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_model_path, subfolder="unet")


def pipeline(tiny_model_path, **kwargs):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_path, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def render(pipe):
    g = torch.Generator().manual_seed(0)
    return pipe("a cat", num_inference_steps=2, height=64, width=64, generator=g, output_type="np").images


def assert_common_outputs(result, cfg):
    out = result.output_dir
    assert result.global_step == cfg.train.max_steps
    assert len(result.history) == cfg.train.max_steps
    for row in result.history:
        for key in ("loss", "loss_w", "loss_l", "margin", "accuracy", "grad_norm", "lr", "pairs_per_s"):
            assert math.isfinite(row[key]), (key, row)
    assert (out / "README.md").is_file() and (out / "curves.png").is_file()
    saved = yaml.safe_load((out / "training_config.yaml").read_text())
    assert saved["loss"]["name"] == cfg.loss.name and saved["model"]["pretrained"] == "tiny"
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, cfg.train.max_steps + 1))


@pytest.mark.parametrize("loss_name", ["mapo", "dpo", "sft"])
def test_full_finetune_trains_and_loads_back(tmp_path, tiny_model_path, pairs_parquet, loss_name):
    cfg = tiny_config(pairs_parquet, tmp_path / "out", f"loss.name={loss_name}")
    result = train(cfg)
    assert_common_outputs(result, cfg)
    assert result.weights == tmp_path / "out" / "unet"
    from diffusers import UNet2DConditionModel

    tuned = UNet2DConditionModel.from_pretrained(result.weights)
    base = base_unet(tiny_model_path)
    changed = [
        n
        for (n, p), (_, q) in zip(tuned.named_parameters(), base.named_parameters(), strict=True)
        if not torch.equal(p, q)
    ]
    assert len(changed) > len(list(base.parameters())) // 2
    pipe = pipeline(tiny_model_path, unet=tuned)
    assert pipe.unet is tuned and render(pipe).shape == (1, 64, 64, 3)
    if loss_name == "dpo":
        assert "reward_accuracy" in result.history[0]
        # At the first step the policy is the reference: equal losses, DPO loss log 2 (up to the
        # last float bits, which beta = 5000 magnifies).
        first = result.history[0]
        assert first["ref_loss_w"] == pytest.approx(first["loss_w"], **CROSS_PATH)
        assert first["ref_loss_l"] == pytest.approx(first["loss_l"], **CROSS_PATH)
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-3)


@pytest.mark.parametrize("loss_name", ["mapo", "dpo"])
def test_lora_trains_and_loads_with_load_lora_weights(tmp_path, tiny_model_path, pairs_parquet, loss_name):
    cfg = tiny_config(
        pairs_parquet, tmp_path / "out", "model.finetune=lora", "lora.rank=4", f"loss.name={loss_name}"
    )
    result = train(cfg)
    assert_common_outputs(result, cfg)
    weights = load_file(result.weights)
    assert weights and all("lora" in k for k in weights)
    assert any(k.endswith("lora.up.weight") or "lora_B" in k for k in weights)
    # LoRA's up matrices start at zero; after training they are not.
    ups = [v for k, v in weights.items() if "lora_B" in k or "lora.up" in k]
    assert any(v.abs().sum() > 0 for v in ups)
    pipe = pipeline(tiny_model_path)
    before = render(pipe)
    pipe.load_lora_weights(result.output_dir)
    after = render(pipe)
    assert not torch.allclose(torch.from_numpy(before), torch.from_numpy(after))
    if loss_name == "dpo":
        # Adapters disabled = the reference, and the adapters start as a no-op: log 2 at step 1.
        first = result.history[0]
        assert first["ref_loss_w"] == pytest.approx(first["loss_w"], **CROSS_PATH)
        assert first["loss"] == pytest.approx(math.log(2), abs=1e-3)


@pytest.mark.parametrize("finetune", ["full", "lora"])
def test_resume_gives_the_same_losses_as_an_uninterrupted_run(tmp_path, pairs_parquet, finetune):
    settings = (
        f"model.finetune={finetune}",
        "train.max_steps=4",
        "train.checkpoint_every=2",
        "train.gradient_accumulation_steps=2",
        "train.ema=true",
        "train.ema_decay=0.9",
        "train.lr_scheduler=cosine",
        "train.lr_warmup_steps=1",
        "data.random_crop=true",
        "data.proportion_empty_prompts=0.3",
    )
    full = train(tiny_config(pairs_parquet, tmp_path / "a", *settings))
    # The logged rate is the one each step used: 0 for the warmup step, then cosine from the
    # peak 1e-3 over the remaining 3 steps (1, 0.75, 0.25 of it).
    assert [r["lr"] for r in full.history] == pytest.approx([0.0, 1e-3, 7.5e-4, 2.5e-4])
    checkpoint = tmp_path / "a" / "checkpoint-0000002"
    assert checkpoint.is_dir() and (tmp_path / "a" / "checkpoint-0000004").is_dir()
    # A second run picks up from step 2 of the first (as after a crash) and trains to the end.
    resumed = train(tiny_config(pairs_parquet, tmp_path / "b", *settings), resume=str(checkpoint))
    assert [r["step"] for r in resumed.history] == [3, 4]
    for a, b in zip(full.history[2:], resumed.history, strict=True):
        for key in ("loss", "loss_w", "loss_l", "margin", "accuracy", "lr", "grad_norm"):
            assert b[key] == pytest.approx(a[key], **REPLAY), key
    wa, wb = (
        load_file(full.weights if finetune == "lora" else full.weights / WEIGHTS),
        load_file(resumed.weights if finetune == "lora" else resumed.weights / WEIGHTS),
    )
    assert wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    if finetune == "lora":  # checkpoints hold the adapters only, not the frozen base
        assert (checkpoint / "unet_lora.safetensors").is_file() and not list(
            checkpoint.glob("model*.safetensors")
        )
    other = "full" if finetune == "lora" else "lora"
    with pytest.raises(
        MapoError, match=f"saved with model.finetune={finetune}, but this run has model.finetune={other}"
    ):
        train(
            tiny_config(pairs_parquet, tmp_path / "c", *settings, f"model.finetune={other}"),
            resume=str(checkpoint),
        )
    # --resume latest in the original folder: already at max_steps, nothing more to do.
    again = train(tiny_config(pairs_parquet, tmp_path / "a", *settings), resume="latest")
    assert again.global_step == 4 and [r["step"] for r in again.history] == [1, 2, 3, 4]


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, pairs_parquet, monkeypatch):
    calls = {"n": 0}
    real = losses.LOSSES["mapo"]

    def poisoned(p, **kw):
        calls["n"] += 1
        loss, metrics = real.compute(p, **kw)
        return (loss * float("nan") if calls["n"] == 3 else loss), metrics

    monkeypatch.setitem(losses.LOSSES, "mapo", losses.LossSpec(poisoned, False, 0.1))
    out = tmp_path / "out"
    cfg = tiny_config(pairs_parquet, out, "train.max_steps=5", "train.checkpoint_every=2")
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3 .*checkpoint-0000002"):
        train(cfg)
    assert (out / "checkpoint-0000002").is_dir()
    assert not (out / "checkpoint-0000003").exists() and not (out / "unet").exists()
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]
    # Running again into the same folder without --resume would mix two runs.
    with pytest.raises(MapoError, match="already holds checkpoints.*--resume latest"):
        train(cfg)


def test_validation_grids_checkpoint_pruning_and_bad_images(tmp_path):
    data = write_pairs(tmp_path / "p.parquet", n=12, bad=1)
    out = tmp_path / "out"
    cfg = tiny_config(
        data,
        out,
        "train.max_steps=4",
        "train.checkpoint_every=1",
        "train.checkpoints_keep=2",
        "validation.enabled=true",
        "validation.every_n_steps=2",
        "validation.num_inference_steps=2",
        "validation.prompts=[a cat, a dog]",
        "validation.seeds=[0, 1, 2]",
        "data.num_workers=1",
    )
    result = train(cfg)
    grids = sorted(p.name for p in (out / "validation").glob("*.png"))
    assert grids == ["step-0000000.png", "step-0000002.png", "step-0000004.png"]
    from PIL import Image

    from mapo_train.validation import grid_size

    assert Image.open(out / "validation" / "step-0000004.png").size == grid_size(2, 3, (64, 64))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000003", "checkpoint-0000004"]
    assert "validation/step-0000004.png" in (out / "README.md").read_text()
    assert result.history[-1]["bad_pairs"] >= 0


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize(("finetune", "loss_name"), [("full", "mapo"), ("lora", "dpo")])
def test_mixed_precision_on_cuda(tmp_path, pairs_parquet, precision, finetune, loss_name):
    """The GPU paths: autocast, a low-precision frozen base under fp32 adapters, the VAE dtype
    rule, gradient checkpointing and the validation pipeline under autocast."""
    cfg = tiny_config(
        pairs_parquet,
        tmp_path / "out",
        f"train.mixed_precision={precision}",
        f"model.finetune={finetune}",
        f"loss.name={loss_name}",
        "train.gradient_checkpointing=true",
        "validation.enabled=true",
        "validation.num_inference_steps=2",
    )
    result = train(cfg)
    assert all(math.isfinite(r["loss"]) for r in result.history)
    assert result.validation_grid is not None and result.validation_grid.is_file()


def test_prediction_type_override_reaches_training_and_validation(tmp_path, pairs_parquet):
    """model.prediction_type=v_prediction on an epsilon base: the loss target and the
    validation sampler both follow the override (a mismatch renders noise)."""
    from mapo_train.train import setup

    run = setup(tiny_config(pairs_parquet, tmp_path / "out", "model.prediction_type=v_prediction"))
    try:
        assert run.components.noise_scheduler.config.prediction_type == "epsilon"  # the base's own
        assert run.components.prediction_type == "v_prediction"
        assert run.inference_scheduler.config.prediction_type == "v_prediction"
    finally:
        run.accelerator.end_training()
