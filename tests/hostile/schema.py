"""Hostile pair files: parquet whose columns are duplicated, missing or of unusable types, and
files named .parquet that are not parquet at all, each with the message fragment the pair
reader's one opening check must give (written with pyarrow directly, never with mapo's writers).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

ROWS = 4


def png(seed: int, size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def good_columns(seed: int = 0, rows: int = ROWS) -> dict[str, pa.Array]:
    """The five pair-format columns with good values: distinct noise images, jpg_0 chosen."""
    return {
        "caption": pa.array([f"a good caption number {seed}-{i}" for i in range(rows)], pa.string()),
        "jpg_0": pa.array([png(1000 * seed + 2 * i) for i in range(rows)], pa.binary()),
        "jpg_1": pa.array([png(1000 * seed + 2 * i + 1) for i in range(rows)], pa.binary()),
        "label_0": pa.array([1] * rows, pa.int64()),
        "label_1": pa.array([0] * rows, pa.int64()),
    }


def write_good(path: Path, seed: int = 0, rows: int = ROWS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(good_columns(seed, rows)), path)
    return path


def _write(path: Path, names: list[str], arrays: list[pa.Array]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_arrays(arrays, names=names), path)


def duplicate_caption(path: Path) -> None:
    cols = good_columns()
    other = pa.array([f"another caption {i}" for i in range(ROWS)], pa.string())
    _write(
        path,
        ["caption", "caption", "jpg_0", "jpg_1", "label_0", "label_1"],
        [cols["caption"], other, cols["jpg_0"], cols["jpg_1"], cols["label_0"], cols["label_1"]],
    )


def missing_label(path: Path) -> None:
    cols = good_columns()
    del cols["label_1"]
    _write(path, list(cols), list(cols.values()))


def image_as_string(path: Path) -> None:
    cols = good_columns()
    cols["jpg_0"] = pa.array([f"images/{i}.png" for i in range(ROWS)], pa.string())  # a path, not bytes
    _write(path, list(cols), list(cols.values()))


def labels_as_strings(path: Path) -> None:
    cols = good_columns()
    cols["label_0"] = pa.array(["1"] * ROWS, pa.string())
    cols["label_1"] = pa.array(["0"] * ROWS, pa.string())
    _write(path, list(cols), list(cols.values()))


def caption_as_int(path: Path) -> None:
    cols = good_columns()
    cols["caption"] = pa.array(list(range(ROWS)), pa.int64())
    _write(path, list(cols), list(cols.values()))


def empty_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def truncated(path: Path) -> None:
    write_good(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def text_file(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("caption,jpg_0,jpg_1,label_0,label_1\na cat,x,y,1,0\n")


@dataclass(frozen=True)
class SchemaCase:
    name: str
    write: Callable[[Path], None]
    fragment: str  # what the one-line error must say (after the file's name)


SCHEMA_CASES = [
    SchemaCase("duplicate_caption", duplicate_caption, "column caption appears 2 times"),
    SchemaCase("missing_label", missing_label, "missing column(s) label_1"),
    SchemaCase(
        "image_as_string", image_as_string, "column jpg_0 has type string, expected encoded image bytes"
    ),
    SchemaCase(
        "labels_as_strings",
        labels_as_strings,
        "column label_0 has type string, expected numbers (int, float or bool); column label_1 has type string",
    ),
    SchemaCase("caption_as_int", caption_as_int, "column caption has type int64, expected text"),
    SchemaCase("empty_file", empty_file, "not a readable parquet file"),
    SchemaCase("truncated", truncated, "not a readable parquet file"),
    SchemaCase("text_file", text_file, "not a readable parquet file"),
]
