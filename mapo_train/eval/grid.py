"""Side-by-side grid PNGs: for each prompt, model A's image left of model B's, the prompt below."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PAD = 8
CAPTION_LINES = 3
BACKGROUND = "white"
TEXT = (20, 20, 20)


@lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def wrap_text(text: str, font, width: int, max_lines: int = CAPTION_LINES) -> list[str]:
    """Greedy word wrap to ``width`` pixels; the last line ends in an ellipsis when cut."""
    words = text.split()
    lines: list[str] = []
    current = ""
    for i, word in enumerate(words):
        trial = f"{current} {word}".strip()
        if font.getlength(trial) <= width or not current:
            current = trial
            continue
        lines.append(current)
        current = word
        if len(lines) == max_lines:
            current = ""
            rest = " ".join([lines.pop(), *words[i:]])
            while rest and font.getlength(rest + "…") > width:
                rest = rest[:-1]
            lines.append(rest.rstrip() + "…")
            break
    if current:
        lines.append(current)
    return lines[:max_lines]


def _fit(image: Image.Image, cell: int) -> Image.Image:
    """Scale to the cell; small images (the tiny model's 64 px) are enlarged without blurring."""
    image = image.convert("RGB")
    scale = cell / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resample = Image.NEAREST if scale > 1 else Image.LANCZOS
    return image.resize(size, resample)


def side_by_side_grid(
    left: Sequence[Image.Image],
    right: Sequence[Image.Image],
    captions: Sequence[str],
    *,
    left_label: str,
    right_label: str,
    cell: int = 256,
    columns: int = 4,
) -> Image.Image:
    """One tile per item: left image | right image, caption underneath; tiles fill rows of ``columns``."""
    if not (len(left) == len(right) == len(captions)):
        raise ValueError(
            f"grid needs as many captions as image pairs: {len(left)}, {len(right)}, {len(captions)}"
        )
    if not left:
        raise ValueError("grid needs at least one image pair")
    font_size = max(10, cell // 16)
    font = _font(font_size)
    title_font = _font(font_size + 2)
    line_height = font_size + 4
    tile_w = 2 * cell + PAD
    tile_h = cell + PAD + CAPTION_LINES * line_height
    columns = max(1, min(columns, len(left)))
    rows = -(-len(left) // columns)
    header = line_height + 2 * PAD
    width = columns * tile_w + (columns + 1) * PAD * 2
    height = header + rows * (tile_h + PAD * 2) + PAD
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD * 2, PAD), f"left: {left_label}    right: {right_label}", fill=TEXT, font=title_font)
    for index, (a, b, caption) in enumerate(zip(left, right, captions, strict=True)):
        row, col = divmod(index, columns)
        x = PAD * 2 + col * (tile_w + PAD * 2)
        y = header + row * (tile_h + PAD * 2)
        for offset, image in ((0, a), (cell + PAD, b)):
            fitted = _fit(image, cell)
            canvas.paste(fitted, (x + offset + (cell - fitted.width) // 2, y + (cell - fitted.height) // 2))
        for n, line in enumerate(wrap_text(caption, font, tile_w)):
            draw.text((x, y + cell + PAD + n * line_height), line, fill=TEXT, font=font)
    return canvas


def write_grid(image: Image.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", optimize=False)
    return path
