"""Validation grids: fixed prompts and seeds rendered with the current weights.

Rows are prompts, columns are seeds; the same prompts and seeds at every step, so grids from
different steps (and runs) compare like for like.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from mapo_train.config import ValidationConfig

MIN_CELL = 128  # the tiny model's 64 px images are enlarged (without blurring) to stay legible
LABEL_WIDTH = 200
TITLE_HEIGHT = 28
PAD = 6


def grid_size(rows: int, cols: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """Pixel size of a labelled grid of ``rows`` x ``cols`` images of ``image_size``."""
    cell = _cell(image_size)
    return LABEL_WIDTH + cols * (cell[0] + PAD) + PAD, TITLE_HEIGHT + rows * (cell[1] + PAD) + PAD


def _cell(image_size: tuple[int, int]) -> tuple[int, int]:
    scale = max(1, -(-MIN_CELL // max(image_size)))
    return image_size[0] * scale, image_size[1] * scale


def make_grid(
    images: list[Image.Image],
    rows: int,
    cols: int,
    row_labels: list[str] | None = None,
    title: str = "",
) -> Image.Image:
    """Rows of images (one row per prompt), the prompt written left of its row, a title on top."""
    from PIL import ImageDraw

    from mapo_train.eval.grid import _font, wrap_text

    cell = _cell(images[0].size)
    grid = Image.new("RGB", grid_size(rows, cols, images[0].size), "white")
    draw = ImageDraw.Draw(grid)
    font = _font(13)
    draw.text((PAD, PAD), title, fill=(20, 20, 20), font=_font(15))
    for i, img in enumerate(images):
        row, col = divmod(i, cols)
        x = LABEL_WIDTH + PAD + col * (cell[0] + PAD)
        y = TITLE_HEIGHT + PAD + row * (cell[1] + PAD)
        grid.paste(img.convert("RGB").resize(cell, Image.NEAREST), (x, y))
        if col == 0 and row_labels:
            lines = wrap_text(row_labels[row], font, LABEL_WIDTH - 2 * PAD, max_lines=max(1, cell[1] // 16))
            for n, line in enumerate(lines):
                draw.text((PAD, y + n * 16), line, fill=(20, 20, 20), font=font)
    return grid


@torch.no_grad()
def render_grid(
    components, unet, cfg: ValidationConfig, resolution: int, inference_scheduler, step: int | None = None
) -> Image.Image:
    """Render every (prompt, seed) with ``unet`` and the frozen parts of ``components``."""
    pipe = components.pipeline(unet, inference_scheduler)
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
    seeds = ", ".join(str(s) for s in cfg.seeds)
    title = (f"step {step}   " if step is not None else "") + f"columns: seeds {seeds}"
    return make_grid(
        images, rows=len(cfg.prompts), cols=len(cfg.seeds), row_labels=list(cfg.prompts), title=title
    )


def grid_path(out: Path, step: int) -> Path:
    return out / "validation" / f"step-{step:07d}.png"
