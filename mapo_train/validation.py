"""Validation grids: fixed prompts and seeds rendered with the current weights.

Rows are prompts, columns are seeds; the same prompts and seeds at every step, so grids from
different steps (and runs) compare like for like.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from mapo_train.config import ValidationConfig


def make_grid(images: list[Image.Image], rows: int, cols: int) -> Image.Image:
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "white")
    for i, img in enumerate(images):
        grid.paste(img, ((i % cols) * w, (i // cols) * h))
    return grid


@torch.no_grad()
def render_grid(components, unet, cfg: ValidationConfig, resolution: int, inference_scheduler) -> Image.Image:
    """Render every (prompt, seed) with ``unet`` and the frozen parts of ``components``."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(
        vae=components.vae,
        text_encoder=components.text_encoder,
        text_encoder_2=components.text_encoder_2,
        tokenizer=components.tokenizer,
        tokenizer_2=components.tokenizer_2,
        unet=unet,
        scheduler=inference_scheduler,
        add_watermarker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    images = []
    try:
        for prompt in cfg.prompts:
            # CPU generators: the same seed gives the same starting noise on any device.
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in cfg.seeds]
            result = pipe(
                prompt=[prompt] * len(cfg.seeds),
                generator=generators,
                num_inference_steps=cfg.num_inference_steps,
                guidance_scale=cfg.guidance_scale,
                height=resolution,
                width=resolution,
                output_type="pil",
            )
            images.extend(result.images)
    finally:
        unet.train(was_training)
    return make_grid(images, rows=len(cfg.prompts), cols=len(cfg.seeds))


def grid_path(out: Path, step: int) -> Path:
    return out / "validation" / f"step-{step:07d}.png"
