"""Tiny "fine-tuned" models for the eval tests: a perturbed full UNet and a LoRA, both on the tiny base."""

from __future__ import annotations

from pathlib import Path

import torch

from mapo_train.card import EVAL_END, EVAL_START


def make_tuned_unet_run(tiny_model_path: Path, out: Path, strength: float = 0.05) -> Path:
    """A run folder like mapo-train writes for full fine-tuning: ``out/unet`` + training_config.yaml."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_model_path, subfolder="unet")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in unet.parameters():
            param.add_(strength * torch.randn(param.shape, generator=generator))
    unet.save_pretrained(out / "unet")
    (out / "training_config.yaml").write_text("model:\n  pretrained: tiny\n")
    # The card's Evaluation span, as mapo-train writes it before any evaluation.
    (out / "README.md").write_text(
        f"# run\n\n## Evaluation\n\n{EVAL_START}\nNot evaluated yet.\n{EVAL_END}\n"
    )
    return out


def lora_state_dict(tiny_model_path: Path, rank: int = 4) -> dict[str, torch.Tensor]:
    """LoRA weights for the tiny UNet's attention, with a non-zero up matrix so they change images."""
    from diffusers import UNet2DConditionModel
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_model_path, subfolder="unet")
    torch.manual_seed(0)
    unet.add_adapter(
        LoraConfig(
            r=rank,
            lora_alpha=rank,
            init_lora_weights="gaussian",
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: the adapter would be a no-op
                param.normal_(0, 0.5)
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


def save_lora(state: dict[str, torch.Tensor], out: Path) -> Path:
    from diffusers import StableDiffusionXLPipeline

    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(out, unet_lora_layers=state)
    return out / "pytorch_lora_weights.safetensors"


def misfit_lora(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same LoRA with down matrices sized for a wider model: it cannot fit the tiny base."""
    return {
        key: torch.randn(value.shape[0], value.shape[1] + 3)
        if ".lora_A." in key or "lora.down" in key
        else value
        for key, value in state.items()
    }
