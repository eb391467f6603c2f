"""The pair format: the contract between mapo_data and mapo_train (see DESIGN.md).

One row per pair, compatible with Pick-a-Pic v2 and the MaPO authors' Hub datasets:
``caption`` (context prompt, no prefix), ``jpg_0``/``jpg_1`` (encoded image bytes), ``label_0``/
``label_1`` (1 marks the chosen image, 0.5/0.5 is a tie). Readers decide chosen/rejected from the
labels, never from the position. Extra columns carry provenance.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

CAPTION = "caption"
IMAGE_COLUMNS = ("jpg_0", "jpg_1")
LABEL_COLUMNS = ("label_0", "label_1")
REQUIRED_COLUMNS = (CAPTION, *IMAGE_COLUMNS, *LABEL_COLUMNS)

# Provenance columns written by `mapo-data build` (other datasets may lack them).
PAIR_ID = "pair_id"
PROMPT_COLUMNS = ("prompt_0", "prompt_1")
SEED_COLUMNS = ("seed_0", "seed_1")

MANIFEST_NAME = "manifest.json"
DATA_DIR = "data"
FORMAT_NAME = "mapo-pairs"
FORMAT_VERSION = 1

BUILD_SCHEMA = pa.schema(
    [
        pa.field(CAPTION, pa.string()),
        pa.field("jpg_0", pa.binary()),
        pa.field("jpg_1", pa.binary()),
        pa.field("label_0", pa.int64()),
        pa.field("label_1", pa.int64()),
        pa.field(PAIR_ID, pa.int64()),
        pa.field("prompt_0", pa.string()),
        pa.field("prompt_1", pa.string()),
        pa.field("seed_0", pa.int64()),
        pa.field("seed_1", pa.int64()),
    ]
)


class PairFormatError(ValueError):
    """A table or row does not follow the pair format."""


def shard_name(index: int, split: str = "train") -> str:
    """Relative path of shard ``index``; the ``data/{split}-*.parquet`` layout the Hub infers splits from."""
    return f"{DATA_DIR}/{split}-{index:05d}.parquet"


def check_columns(column_names: list[str] | tuple[str, ...], source: str = "table") -> None:
    """Raise PairFormatError naming every required column that is missing."""
    missing = [c for c in REQUIRED_COLUMNS if c not in column_names]
    if missing:
        raise PairFormatError(
            f"{source} is not in the pair format: missing column(s) {', '.join(missing)} "
            f"(expected {', '.join(REQUIRED_COLUMNS)})"
        )


@dataclass(frozen=True)
class Preference:
    """Which position holds the chosen image, decided from the labels."""

    chosen: int  # 0 or 1; for a tie, 0 (callers decide what a tie means)
    tie: bool


def preference_from_labels(label_0: float, label_1: float) -> Preference:
    """Decide chosen/rejected from a pair's labels (int or float, 0.5/0.5 is a tie)."""
    l0, l1 = float(label_0), float(label_1)
    if l0 != l0 or l1 != l1:  # NaN
        raise PairFormatError(f"labels must be numbers, got {label_0!r}, {label_1!r}")
    if l0 == l1:
        return Preference(chosen=0, tie=True)
    return Preference(chosen=0 if l0 > l1 else 1, tie=False)
