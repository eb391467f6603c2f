"""A LoRA trained with alpha != rank reloads at the strength it was trained with: through diffusers'
``load_lora_weights`` on a fresh pipeline, through ``mapo-train eval``'s loader, and through the
model card's snippet. Without the adapter settings in the file diffusers applies alpha = rank
(scale 1.0), a 4x weaker adapter here; the tests show that difference too, so they can fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from mapo_data.errors import MapoError
from mapo_train.config import config_from_dict
from mapo_train.eval.models import resolve_tuned, tuned_pipeline
from mapo_train.model import save_weights
from mapo_train.train import finish, fit, setup

from ..tolerances import CROSS_PATH, torch_kwargs
from .conftest import write_pairs

WEIGHTS = "pytorch_lora_weights.safetensors"
TARGETS = ["to_k", "to_out.0", "to_v"]  # not the default set: the file must say which modules


def fresh_pipeline(tiny_model_path):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_path)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def unet_inputs(unet) -> dict:
    """One fixed UNet call at the 32x32 training resolution (latents 4x4), built from a seed."""
    g = torch.Generator().manual_seed(0)
    c = unet.config
    text_embeds = c.projection_class_embeddings_input_dim - 6 * c.addition_time_embed_dim
    return {
        "sample": torch.randn(2, c.in_channels, 4, 4, generator=g),
        "timestep": torch.tensor([999, 250]),
        "encoder_hidden_states": torch.randn(2, 77, c.cross_attention_dim, generator=g),
        "added_cond_kwargs": {
            "text_embeds": torch.randn(2, text_embeds, generator=g),
            "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32], [48.0, 40, 4, 2, 32, 32]]),
        },
    }


def unet_output(unet) -> torch.Tensor:
    unet.eval()  # lora.dropout is off at inference
    with torch.no_grad():
        return unet(**unet_inputs(unet)).sample


def strip_metadata(weights: Path, out: Path) -> Path:
    """The same tensors in a file without adapter metadata, as mapo saved LoRAs before."""
    out.mkdir(parents=True, exist_ok=True)
    save_file(load_file(str(weights)), str(out / WEIGHTS), metadata={"format": "pt"})
    return out / WEIGHTS


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_path):
    """A LoRA run (rank 4, alpha 16, dropout, three target modules) and its trained UNet's output."""
    from accelerate.state import AcceleratorState, GradientState

    tmp = tmp_path_factory.mktemp("lora-run")
    pairs = write_pairs(tmp / "pairs" / "train-00000.parquet", n=4, size=32)
    cfg = config_from_dict(
        {
            "model": {"pretrained": "tiny", "finetune": "lora"},
            "lora": {"rank": 4, "alpha": 16, "dropout": 0.1, "target_modules": TARGETS},
            "data": {"path": str(pairs), "resolution": 32, "num_workers": 0},
            "train": {
                "output_dir": str(tmp / "out"),
                "max_steps": 2,
                "batch_size": 2,
                # LoRA's B matrices start at zero; a large rate makes the adapter's effect measurable.
                "learning_rate": 1e-2,
                "lr_scheduler": "constant",
                "checkpoint_every": 0,
                "report_to": "none",
            },
            "validation": {"enabled": False},
        }
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = setup(cfg)
        fit(run)
        result = finish(run)
        output = unet_output(run.accelerator.unwrap_model(run.unet))
    finally:
        torch.set_num_threads(threads)
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    base = unet_output(fresh_pipeline(tiny_model_path).unet)
    return {"out": result.output_dir, "weights": result.weights, "output": output, "base": base}


def test_weights_carry_the_adapter_settings(trained):
    with safe_open(str(trained["weights"]), framework="pt") as f:
        metadata = json.loads(f.metadata()["lora_adapter_metadata"])
    assert metadata == {
        "unet.r": 4,
        "unet.lora_alpha": 16.0,
        "unet.lora_dropout": 0.1,
        "unet.target_modules": TARGETS,
        "unet.rank_pattern": {},
        "unet.alpha_pattern": {},
        "unet.use_dora": False,
    }
    ups = [v for k, v in load_file(str(trained["weights"])).items() if "lora.up" in k or "lora_B" in k]
    assert ups and all(v.abs().sum() > 0 for v in ups)  # trained: the adapter is not a no-op
    card = (trained["out"] / "README.md").read_text()
    assert "| finetune | `lora (rank 4, alpha 16)` |" in card


def test_fresh_pipeline_reproduces_the_trained_unet(trained, tiny_model_path, tmp_path):
    pipe = fresh_pipeline(tiny_model_path)
    pipe.load_lora_weights(str(trained["out"]))
    assert pipe.unet.peft_config["default_0"].lora_alpha == 16
    torch.testing.assert_close(unet_output(pipe.unet), trained["output"], **torch_kwargs(CROSS_PATH))

    # The same tensors without the metadata load at scale 1.0: a clearly weaker adapter.
    stripped = fresh_pipeline(tiny_model_path)
    stripped.load_lora_weights(str(strip_metadata(trained["weights"], tmp_path / "legacy").parent))
    weak = unet_output(stripped.unet)
    effect = (trained["output"] - trained["base"]).abs().mean()
    assert effect > 1e-3
    assert (weak - trained["output"]).abs().mean() > 0.5 * effect


def test_the_card_snippet_reproduces_the_trained_unet(trained):
    card = (trained["out"] / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0]
    assert f'pipe.load_lora_weights("{trained["out"]}")' in snippet  # no manual scale
    namespace: dict = {}
    exec(snippet.rsplit("image = ", 1)[0], namespace)  # everything up to rendering
    torch.testing.assert_close(
        unet_output(namespace["pipe"].unet), trained["output"], **torch_kwargs(CROSS_PATH)
    )


def test_eval_loader_applies_the_trained_strength(trained, tiny_model_path, tmp_path):
    pipe = fresh_pipeline(tiny_model_path)
    for spec in (trained["out"], trained["weights"]):
        with tuned_pipeline(pipe, resolve_tuned(str(spec)), label="t", base="tiny") as tuned:
            torch.testing.assert_close(unet_output(tuned.unet), trained["output"], **torch_kwargs(CROSS_PATH))
        # The base comes back unchanged.
        torch.testing.assert_close(unet_output(pipe.unet), trained["base"], rtol=0, atol=0)
    # --lora-scale is relative to the trained strength: 0 is the base model.
    with tuned_pipeline(
        pipe, resolve_tuned(str(trained["out"])), label="t", base="tiny", lora_scale=0.0
    ) as t:
        torch.testing.assert_close(unet_output(t.unet), trained["base"], **torch_kwargs(CROSS_PATH))


def test_eval_reads_the_alpha_of_an_older_run_from_its_training_config(trained, tiny_model_path, tmp_path):
    """An older mapo saved no metadata; the run's training_config.yaml says rank 4, alpha 16."""
    legacy = tmp_path / "legacy-run"
    strip_metadata(trained["weights"], legacy)
    shutil.copy(trained["out"] / "training_config.yaml", legacy / "training_config.yaml")
    pipe = fresh_pipeline(tiny_model_path)
    for spec in (legacy, legacy / WEIGHTS):
        with tuned_pipeline(pipe, resolve_tuned(str(spec)), label="t", base="tiny") as tuned:
            torch.testing.assert_close(unet_output(tuned.unet), trained["output"], **torch_kwargs(CROSS_PATH))

    # A LoRA from elsewhere (no metadata, no run folder) keeps diffusers' reading: scale 1.0.
    foreign = strip_metadata(trained["weights"], tmp_path / "foreign")
    reference = fresh_pipeline(tiny_model_path)
    reference.load_lora_weights(str(foreign.parent))
    with tuned_pipeline(pipe, resolve_tuned(str(foreign)), label="t", base="tiny") as tuned:
        torch.testing.assert_close(
            unet_output(tuned.unet), unet_output(reference.unet), **torch_kwargs(CROSS_PATH)
        )


def test_eval_refuses_an_older_run_whose_rank_does_not_match_its_config(trained, tiny_model_path, tmp_path):
    legacy = tmp_path / "legacy-run"
    strip_metadata(trained["weights"], legacy)
    saved = yaml.safe_load((trained["out"] / "training_config.yaml").read_text())
    saved["lora"]["rank"] = 8
    (legacy / "training_config.yaml").write_text(yaml.safe_dump(saved))
    pipe = fresh_pipeline(tiny_model_path)
    with (
        pytest.raises(MapoError) as err,
        tuned_pipeline(pipe, resolve_tuned(str(legacy)), label="t", base="tiny"),
    ):
        pass
    assert str(err.value) == (
        f"the LoRA weights {legacy / WEIGHTS} carry no adapter settings and their rank 4 is not "
        f"the lora.rank 8 of {legacy / 'training_config.yaml'}: the strength they were trained with is unknown"
    )
    assert not hasattr(pipe.unet, "peft_config") or not pipe.unet.peft_config  # nothing left attached
    torch.testing.assert_close(unet_output(pipe.unet), trained["base"], rtol=0, atol=0)


def test_rank_and_alpha_patterns_and_dora_reload(tiny_model_path, tmp_path):
    """Settings mapo's config does not expose yet still round-trip: the file holds the whole config."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig

    unet = UNet2DConditionModel.from_pretrained(tiny_model_path, subfolder="unet")
    torch.manual_seed(0)
    unet.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=16,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
            rank_pattern={"to_q": 2},
            alpha_pattern={"to_k": 1},
            use_dora=True,
            init_lora_weights="gaussian",
        )
    )
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:  # B starts at zero: make each adapter matter
                param.normal_(0, 0.3)
    expected = unet_output(unet)
    save_weights(unet, tmp_path, "lora")
    pipe = fresh_pipeline(tiny_model_path)
    pipe.load_lora_weights(str(tmp_path))
    loaded = pipe.unet.peft_config["default_0"]
    assert (loaded.r, loaded.lora_alpha, loaded.use_dora) == (4, 16, True)
    assert loaded.rank_pattern == {"to_q": 2} and loaded.alpha_pattern == {"to_k": 1}
    torch.testing.assert_close(unet_output(pipe.unet), expected, **torch_kwargs(CROSS_PATH))


def test_eval_refuses_a_training_checkpoint(tmp_path):
    """A checkpoint's LoRA file is resume state (peft keys, no adapter settings): refused by name."""
    checkpoint = tmp_path / "run" / "checkpoint-0000002"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text('{"global_step": 2}')
    save_file(
        {"down_blocks.0.attn.to_k.lora_A.weight": torch.zeros(4, 8)},
        str(checkpoint / "unet_lora.safetensors"),
    )
    with pytest.raises(MapoError) as err:
        resolve_tuned(str(checkpoint))
    assert str(err.value) == (
        f"--tuned {checkpoint}: a training checkpoint (for --resume), not final weights; "
        "point at the run folder once training has finished"
    )
