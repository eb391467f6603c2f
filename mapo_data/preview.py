"""`mapo-data preview`: a contact sheet of sampled pairs, chosen beside rejected, captions under them.

People judge a style dataset by looking at it, so the sheet makes the preference obvious: each
pair is a block of two tiles, labelled "chosen" and "rejected" (decided from the labels, never the
position), with the caption wrapped underneath. When the data records the full prompts
(``prompt_0``/``prompt_1``, as `mapo-data build` writes), each tile also says what its prompt added
to the caption, so a reader sees which prefix made which image. The sheet's size depends only on
the layout, the number of pairs and whether prompts are shown, never on the images or captions.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont, ImageOps

from mapo_data.errors import MapoError
from mapo_data.reader import PairDataset, PairRow, decode_image, open_dataset, rows_of
from mapo_data.schema import PROMPT_COLUMNS, REQUIRED_COLUMNS

CHOSEN_COLOUR = (22, 128, 60)
REJECTED_COLOUR = (180, 35, 35)
TIE_COLOUR = (110, 110, 110)


@dataclass(frozen=True)
class Layout:
    """Geometry of the sheet (pixels)."""

    tile: int = 256
    columns: int = 2  # pairs per row of the sheet
    pad: int = 8
    font_size: int = 14
    caption_lines: int = 3
    prompt_lines: int = 2  # under each tile, when the data has prompt_0/prompt_1

    def __post_init__(self):
        if self.tile < 16 or self.columns < 1 or self.caption_lines < 1 or self.prompt_lines < 1:
            raise MapoError("preview layout: --tile must be >= 16, --columns and caption/prompt lines >= 1")

    @property
    def line_height(self) -> int:
        return self.font_size + 4

    @property
    def block_width(self) -> int:
        return 2 * self.tile + self.pad

    def block_height(self, prompts: bool = False) -> int:
        prompt_rows = self.prompt_lines * self.line_height if prompts else 0
        return self.line_height + self.tile + prompt_rows + self.pad + self.caption_lines * self.line_height

    def sheet_size(self, n_pairs: int, prompts: bool = False) -> tuple[int, int]:
        cols = max(1, min(self.columns, n_pairs))
        rows = max(1, math.ceil(n_pairs / cols))
        gap = 3 * self.pad  # wider between pairs than inside one, so blocks read as units
        return (
            2 * self.pad + cols * self.block_width + (cols - 1) * gap,
            2 * self.pad + rows * self.block_height(prompts) + (rows - 1) * gap,
        )


def sample_pairs(ds: PairDataset, n: int, seed: int) -> list[PairRow]:
    """``n`` pairs drawn uniformly without replacement, reading only the shards that hold them."""
    if n < 1:
        raise MapoError("--n must be at least 1")
    counts = [ds.shard_rows(s) for s in ds.shards]
    total = sum(counts)
    if total == 0:
        raise MapoError(f"{ds.root}: the dataset has no pairs to preview")
    wanted = sorted(random.Random(seed).sample(range(total), min(n, total)))
    picked: list[PairRow] = []
    offset = 0
    for shard, rows in zip(ds.shards, counts, strict=True):
        local = [w - offset for w in wanted if offset <= w < offset + rows]
        offset += rows
        if not local:
            continue
        position = 0
        todo = iter(local)
        target = next(todo)
        names = ds.parquet_file(shard).schema_arrow.names
        columns = [*REQUIRED_COLUMNS, *(c for c in PROMPT_COLUMNS if c in names)]
        for batch in ds.iter_batches(shard, batch_size=64, columns=columns):
            end = position + batch.num_rows
            while target is not None and target < end:
                picked.append(next(rows_of(batch.slice(target - position, 1))))
                target = next(todo, None)
            position = end
            if target is None:
                break
    return picked


def _font(size: int) -> ImageFont.ImageFont:
    try:
        # Pillow's bundled scalable font: the same glyphs on every machine, no system fonts needed.
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):
        return ImageFont.load_default()


def wrap_caption(text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; the last line ends in an ellipsis when text is cut."""
    words = " ".join(text.split()).split(" ") if text.strip() else []
    lines: list[str] = []
    current = ""
    for word in words:
        # A word wider than the line is broken into pieces that fit.
        while font.getlength(word) > width and len(word) > 1:
            cut = max(1, len(word) - 1)
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            if current:
                lines.append(current)
                current = ""
            lines.append(word[:cut])
            word = word[cut:]
        candidate = f"{current} {word}".strip()
        if font.getlength(candidate) <= width:
            current = candidate
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and font.getlength(last + "…") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + "…"
    return lines


def _tile(data: bytes | None, size: int, font) -> Image.Image:
    try:
        img = decode_image(data)
    except Exception:  # an undecodable image is shown, not fatal: the preview is for looking
        tile = Image.new("RGB", (size, size), (200, 200, 200))
        ImageDraw.Draw(tile).text((4, 4), "undecodable", fill=(0, 0, 0), font=font)
        return tile
    tile = Image.new("RGB", (size, size), (240, 240, 240))
    fitted = ImageOps.contain(img, (size, size))
    tile.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return tile


def prompt_note(prompt: str | None, caption: str) -> str:
    """What a side's prompt added to the caption: the prefix is what differs between the two sides."""
    if prompt is None:
        return ""
    prompt, caption = prompt.strip(), caption.strip()
    if caption and prompt.endswith(caption):
        prefix = prompt[: len(prompt) - len(caption)].strip()
        return f'"{prefix}" + caption' if prefix else "caption alone"
    return f'"{prompt}"'


def _side_label(
    pair: PairRow, name: str, position: int, font, width: int
) -> tuple[str, tuple[int, int, int]]:
    if pair.invalid:
        word, colour = "invalid labels", TIE_COLOUR
    elif pair.tie:
        word, colour = "tie", TIE_COLOUR
    else:
        word, colour = name, CHOSEN_COLOUR if name == "chosen" else REJECTED_COLOUR
    label = f"{word} (jpg_{position})"
    return (word if font.getlength(label) > width else label), colour  # small tiles: the word alone


def contact_sheet(pairs: list[PairRow], layout: Layout | None = None) -> Image.Image:
    layout = layout or Layout()
    font = _font(layout.font_size)
    prompts = any(p.chosen_prompt is not None for p in pairs)
    sheet = Image.new("RGB", layout.sheet_size(len(pairs), prompts), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    cols = max(1, min(layout.columns, len(pairs)))
    gap = 3 * layout.pad
    for k, pair in enumerate(pairs):
        x0 = layout.pad + (k % cols) * (layout.block_width + gap)
        y0 = layout.pad + (k // cols) * (layout.block_height(prompts) + gap)
        sides = [
            ("chosen", pair.chosen, pair.chosen_prompt, pair.chosen_pos),
            ("rejected", pair.rejected, pair.rejected_prompt, 1 - pair.chosen_pos),
        ]
        for s, (name, data, prompt, position) in enumerate(sides):
            x = x0 + s * (layout.tile + layout.pad)
            label, colour = _side_label(pair, name, position, font, layout.tile)
            draw.text((x, y0), label, fill=colour, font=font)
            sheet.paste(_tile(data, layout.tile, font), (x, y0 + layout.line_height))
            if prompts:
                y = y0 + layout.line_height + layout.tile
                note = prompt_note(prompt, pair.caption)
                for line in wrap_caption(note, font, layout.tile, layout.prompt_lines):
                    draw.text((x, y), line, fill=colour, font=font)
                    y += layout.line_height
        y = y0 + layout.block_height(prompts) - layout.caption_lines * layout.line_height
        for line in wrap_caption(pair.caption, font, layout.block_width, layout.caption_lines):
            draw.text((x0, y), line, fill=(0, 0, 0), font=font)
            y += layout.line_height
    return sheet


@dataclass(frozen=True)
class PreviewResult:
    path: Path
    size: tuple[int, int]
    pairs: int


def make_preview(
    inputs: str | Path | list[str | Path],
    out: str | Path,
    n: int = 16,
    seed: int = 0,
    layout: Layout | None = None,
) -> PreviewResult:
    """Sample ``n`` pairs with ``seed`` and write the contact sheet PNG to ``out``."""
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise MapoError(f"--out must be a .png file, not {out}")
    ds = open_dataset(inputs)
    pairs = sample_pairs(ds, n, seed)
    sheet = contact_sheet(pairs, layout)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(out)
    return PreviewResult(out, sheet.size, len(pairs))
