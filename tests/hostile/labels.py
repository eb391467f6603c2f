"""Hostile labels: every kind of label pair a Pick-a-Pic-format file can hold, each with what the one
label rule must make of it, written with pyarrow only (never with mapo's writers).

``expected`` is ``"jpg_0"`` or ``"jpg_1"`` (the chosen image's column), ``"tie"`` or ``"invalid"``,
decided here from the documented rule, not by asking mapo: two numbers in [0, 1] summing to 1 are a
preference, the larger label marks the chosen image, equal labels (0.5/0.5) are a tie; nulls, NaN,
infinities, non-numbers (strings), labels outside [0, 1] and sums other than 1 (1/1, 0/0, 2/-1) are
invalid. Bools count as 1/0.

A parquet column has one type, so the cases come in groups, one per Arrow type; a dataset of them is
a folder with one parquet file per group. Every row's images are flat colours that say which column
they came from (red 200: ``jpg_0``; green 200: ``jpg_1``) and which row (blue), so a test can tell
from the pixels training receives which image was taken as the chosen one.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SIZE = 32
NAN, INF = math.nan, math.inf
#: The image colours: (red, green) of each column; blue is 8 x the row number within its file.
COLOURS = {"jpg_0": (200, 40), "jpg_1": (40, 200)}
OUTCOMES = ("jpg_0", "jpg_1", "tie", "invalid")


@dataclass(frozen=True)
class LabelCase:
    name: str
    label_0: Any
    label_1: Any
    expected: str  # one of OUTCOMES

    @property
    def trained(self) -> bool:
        """Whether a trainer trains on it under data.ties=drop (under keep, ties too)."""
        return self.expected in ("jpg_0", "jpg_1")


def _cases(*rows: tuple[str, Any, Any, str]) -> list[LabelCase]:
    return [LabelCase(*row) for row in rows]


#: Label cases by the Arrow type of their columns.
GROUPS: dict[str, tuple[pa.DataType, list[LabelCase]]] = {
    "int64": (
        pa.int64(),
        _cases(
            ("int 1/0", 1, 0, "jpg_0"),
            ("int 0/1", 0, 1, "jpg_1"),
            ("int 1/1", 1, 1, "invalid"),
            ("int 0/0", 0, 0, "invalid"),
            ("int 2/-1", 2, -1, "invalid"),
            ("int -1/2", -1, 2, "invalid"),
            ("int null/1", None, 1, "invalid"),
            ("int 0/null", 0, None, "invalid"),
        ),
    ),
    "float64": (
        pa.float64(),
        _cases(
            ("float 1.0/0.0", 1.0, 0.0, "jpg_0"),
            ("float 0.0/1.0", 0.0, 1.0, "jpg_1"),
            ("float 0.5/0.5", 0.5, 0.5, "tie"),
            ("float 0.7/0.3", 0.7, 0.3, "jpg_0"),
            ("float 0.3/0.7", 0.3, 0.7, "jpg_1"),
            ("float 0.5/0.5 again", 0.5, 0.5, "tie"),
            ("float 1.0/1.0", 1.0, 1.0, "invalid"),
            ("float 0.6/0.6", 0.6, 0.6, "invalid"),  # equal, but not a tie: the sum is 1.2
            ("float 1.5/-0.5", 1.5, -0.5, "invalid"),  # sums to 1, outside [0, 1]
            ("float NaN/1.0", NAN, 1.0, "invalid"),
            ("float 1.0/NaN", 1.0, NAN, "invalid"),
            ("float inf/0.0", INF, 0.0, "invalid"),
            ("float -inf/1.0", -INF, 1.0, "invalid"),
            ("float null/1.0", None, 1.0, "invalid"),
        ),
    ),
    "float32": (
        pa.float32(),
        _cases(
            ("float32 0.7/0.3", 0.7, 0.3, "jpg_0"),  # stored inexactly; the sum is within the tolerance
            ("float32 0.5/0.5", 0.5, 0.5, "tie"),
            ("float32 1/1", 1.0, 1.0, "invalid"),
        ),
    ),
    "bool": (
        pa.bool_(),
        _cases(
            ("bool True/False", True, False, "jpg_0"),
            ("bool False/True", False, True, "jpg_1"),
            ("bool True/True", True, True, "invalid"),
            ("bool False/False", False, False, "invalid"),
            ("bool null/True", None, True, "invalid"),
        ),
    ),
    # Not in DATASET_GROUPS: a string label column is also a schema fault (wrong column type), which
    # a reader may refuse as a whole; these cases test the rule itself.
    "string": (
        pa.string(),
        _cases(
            ("string '1'/'0'", "1", "0", "invalid"),
            ("string '0.5'/'0.5'", "0.5", "0.5", "invalid"),
        ),
    ),
}
#: The groups written into one dataset (one file each, in this order).
DATASET_GROUPS = ("int64", "float64", "float32", "bool")

#: The issue's example: 4 preferences, 2 ties and 4 invalid rows (a card once said "6 ties dropped").
CARD_CASES = _cases(
    ("card 1/0", 1.0, 0.0, "jpg_0"),
    ("card 0/1", 0.0, 1.0, "jpg_1"),
    ("card 1/1 a", 1.0, 1.0, "invalid"),
    ("card 0.5/0.5 a", 0.5, 0.5, "tie"),
    ("card 1/0 again", 1.0, 0.0, "jpg_0"),
    ("card 0/0", 0.0, 0.0, "invalid"),
    ("card 0.5/0.5 b", 0.5, 0.5, "tie"),
    ("card 2/-1", 2.0, -1.0, "invalid"),
    ("card 0/1 again", 0.0, 1.0, "jpg_1"),
    ("card 1/1 b", 1.0, 1.0, "invalid"),
)


def all_cases() -> list[LabelCase]:
    return [case for _, cases in GROUPS.values() for case in cases]


def flat_png(column: str, row: int, size: int = SIZE) -> bytes:
    red, green = COLOURS[column]
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (red, green, 8 * row)).save(buf, format="PNG")
    return buf.getvalue()


def column_of(pixels_rgb: np.ndarray) -> tuple[str, int]:
    """Which column and row a flat image of this factory came from, from its RGB uint8 pixels [H, W, 3]."""
    red, green, blue = (int(v) for v in pixels_rgb.reshape(-1, 3)[0])
    assert (pixels_rgb == pixels_rgb.reshape(-1, 3)[0]).all(), "not a flat image of this factory"
    column = next(c for c, (r, g) in COLOURS.items() if (r, g) == (red, green))
    return column, blue // 8


def label_table(cases: list[LabelCase], label_type: pa.DataType) -> pa.Table:
    """One row per case: caption ``label case <name>``, flat images, labels of ``label_type``."""
    return pa.table(
        {
            "caption": pa.array([f"label case {c.name}" for c in cases], pa.string()),
            "jpg_0": pa.array([flat_png("jpg_0", i) for i in range(len(cases))], pa.binary()),
            "jpg_1": pa.array([flat_png("jpg_1", i) for i in range(len(cases))], pa.binary()),
            "label_0": pa.array([c.label_0 for c in cases], label_type),
            "label_1": pa.array([c.label_1 for c in cases], label_type),
        }
    )


def write_group(path: Path, group: str) -> Path:
    label_type, cases = GROUPS[group]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(label_table(cases, label_type), path)
    return path


def write_cases(path: Path, cases: list[LabelCase], label_type: pa.DataType = pa.float64()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(label_table(cases, label_type), path)
    return path


def write_label_dataset(root: Path) -> list[tuple[Path, list[LabelCase]]]:
    """A folder (no manifest) of one parquet file per group of DATASET_GROUPS; returns each file
    with its cases, in row order."""
    files = []
    for i, group in enumerate(DATASET_GROUPS):
        path = write_group(root / "data" / f"train-{i:05d}.parquet", group)
        files.append((path, GROUPS[group][1]))
    return files


def expected_counts(cases: list[LabelCase]) -> dict[str, int]:
    return {outcome: sum(c.expected == outcome for c in cases) for outcome in OUTCOMES}
