"""The pair format: the contract between mapo_data and mapo_train (see DESIGN.md).

One row per pair, compatible with Pick-a-Pic v2 and the MaPO authors' Hub datasets:
``caption`` (context prompt, no prefix), ``jpg_0``/``jpg_1`` (encoded image bytes), ``label_0``/
``label_1`` (1 marks the chosen image, 0.5/0.5 is a tie). Readers decide chosen/rejected from the
labels, never from the position, by the one label rule here (``classify_labels`` for a row,
``classify_label_columns`` for whole columns). Extra columns carry provenance.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

CAPTION = "caption"
IMAGE_COLUMNS = ("jpg_0", "jpg_1")
LABEL_COLUMNS = ("label_0", "label_1")
REQUIRED_COLUMNS = (CAPTION, *IMAGE_COLUMNS, *LABEL_COLUMNS)

# Provenance columns written by `mapo-data build` (other datasets may lack them).
PAIR_ID = "pair_id"
# Pairs made from one prompt's candidates (`build judged`, ranked imports) share this id.
PROMPT_ID = "prompt_id"
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
# `mapo-data build judged`: each image's combined judge score (higher is better), which of the
# prompt's candidates it is, and the prompt's index (mapo_data.judged).
JUDGED_SCHEMA = pa.schema(
    [
        *BUILD_SCHEMA,
        pa.field("score_0", pa.float64()),
        pa.field("score_1", pa.float64()),
        pa.field("candidate_0", pa.int64()),
        pa.field("candidate_1", pa.int64()),
        pa.field(PROMPT_ID, pa.int64()),
    ]
)
# The ranked layout (`build judged --keep-candidates`, `import --layout ranked`): one row per prompt.
RANKED_SCHEMA = pa.schema(
    [
        pa.field(CAPTION, pa.string()),
        pa.field("images", pa.list_(pa.binary())),
        pa.field("scores", pa.list_(pa.float64())),
        pa.field("seeds", pa.list_(pa.int64())),
    ]
)


class PairFormatError(ValueError):
    """A table or row does not follow the pair format."""


def shard_name(index: int, split: str = "train") -> str:
    """Relative path of shard ``index``; the ``data/{split}-*.parquet`` layout the Hub infers splits from."""
    return f"{DATA_DIR}/{split}-{index:05d}.parquet"


def _missing(columns: list[str]) -> str:
    return f"missing column(s) {', '.join(columns)} (expected {', '.join(REQUIRED_COLUMNS)})"


def is_caption_type(dtype: pa.DataType) -> bool:
    """Text, or null (a column of only nulls; verify and curate then flag each row)."""
    if pa.types.is_dictionary(dtype):  # pandas categoricals
        return is_caption_type(dtype.value_type)
    return (
        pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_string_view(dtype)
        or pa.types.is_null(dtype)
    )


def is_image_type(dtype: pa.DataType) -> bool:
    """Encoded bytes (binary, as we write), or a `datasets` Image struct with a binary ``bytes``."""
    if pa.types.is_struct(dtype):
        index = dtype.get_field_index("bytes")
        return index >= 0 and _is_bytes_type(dtype.field(index).type)
    return _is_bytes_type(dtype)


def _is_bytes_type(dtype: pa.DataType) -> bool:
    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or pa.types.is_binary_view(dtype)


def schema_problems(schema: pa.Schema) -> list[str]:
    """Every way ``schema`` breaks the pair format, one phrase each; empty when it is usable.

    Each required column must be present exactly once (a duplicate makes "the caption" ambiguous,
    and pyarrow and datasets refuse to pick one), with a usable type: ``caption`` text (or all-null),
    ``jpg_0``/``jpg_1`` encoded bytes (binary, or a `datasets` Image struct with ``bytes``),
    ``label_0``/``label_1`` numbers (integers, floats, or bools read as 1/0). Extra columns are free.
    """
    names = schema.names
    problems = []
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        problems.append(_missing(missing))
    kinds = {
        CAPTION: (is_caption_type, "text (string)"),
        **dict.fromkeys(
            IMAGE_COLUMNS,
            (is_image_type, "encoded image bytes (binary, or a datasets Image struct with bytes)"),
        ),
        **dict.fromkeys(LABEL_COLUMNS, (is_label_type, "numbers (int, float or bool)")),
    }
    for column, (usable, wanted) in kinds.items():
        count = names.count(column)
        if count > 1:
            problems.append(f"column {column} appears {count} times")
        elif count == 1 and not usable(schema.field(column).type):
            problems.append(f"column {column} has type {schema.field(column).type}, expected {wanted}")
    return problems


def check_schema(schema: pa.Schema, source: str) -> None:
    """Raise PairFormatError naming ``source`` and every problem of :func:`schema_problems`."""
    problems = schema_problems(schema)
    if problems:
        raise PairFormatError(f"{source} is not in the pair format: {'; '.join(problems)}")


# --- the label rule: labels -> chosen / tie / invalid ----------------------------------------
#
# The one place that decides what a pair's labels mean; verify, curate, stats, preview, the
# trainer (indexed, streamed, cached), eval and the cards all ask it. Pick-a-Pic writes 1/0, 0/1
# and 0.5/0.5. Any two numbers in [0, 1] that sum to 1 are a preference: the larger label marks the
# chosen image (0.7/0.3 chooses jpg_0), equal labels (then necessarily 0.5/0.5) are a tie.
# Everything else is invalid and never trained: a null, NaN or infinite label, a label that is not
# a number (strings, decimals; bools count as 1/0), one outside [0, 1], or a sum other than 1
# (1/1, 0/0, 2/-1).

#: Outcomes of the label rule. CHOSEN_0 and CHOSEN_1 are the chosen image's position (0 or 1).
CHOSEN_0, CHOSEN_1, TIE, INVALID = 0, 1, 2, 3
#: How far from 1 the sum of two labels may be (float labels such as 0.7/0.3 do not sum exactly).
LABEL_SUM_TOLERANCE = 1e-6
#: Bumped whenever the rule changes what any labels mean: what was stored from it (a latent cache's
#: index of trained rows and chosen sides) is then rebuilt, never reused. 1 was the trainer's old
#: rule (any unequal finite labels were a preference, 1/1 a tie).
LABEL_RULE_VERSION = 2


@dataclass(frozen=True)
class Preference:
    """What a pair's labels say: ``outcome`` is CHOSEN_0, CHOSEN_1, TIE or INVALID."""

    outcome: int
    #: Why the labels are invalid (one line, for reports); None unless the outcome is INVALID.
    reason: str | None = None

    @property
    def tie(self) -> bool:
        return self.outcome == TIE

    @property
    def invalid(self) -> bool:
        return self.outcome == INVALID

    @property
    def chosen(self) -> int | None:
        """Position of the chosen image (0 or 1); None for a tie or invalid labels."""
        return self.outcome if self.outcome in (CHOSEN_0, CHOSEN_1) else None


def _as_float(value: Any) -> float | None:
    """A label cell as a float (an int too large for a float is infinite); None: not a number."""
    if not isinstance(value, numbers.Real | np.bool_):
        return None
    try:
        return float(value)
    except OverflowError:
        return math.inf


def classify_labels(label_0: Any, label_1: Any) -> Preference:
    """The label rule for one pair (see the comment above); never raises."""
    if label_0 is None or label_1 is None:
        return Preference(INVALID, "label is null")
    a, b = _as_float(label_0), _as_float(label_1)
    if a is None or b is None:
        return Preference(INVALID, f"labels are not numbers ({label_0!r}, {label_1!r})")
    if not (math.isfinite(a) and math.isfinite(b)):
        return Preference(INVALID, f"labels are not finite ({label_0}, {label_1})")
    if not (0 <= a <= 1 and 0 <= b <= 1) or abs(a + b - 1) > LABEL_SUM_TOLERANCE:
        return Preference(
            INVALID,
            f"labels ({label_0}, {label_1}) are not a preference (expected 1/0, 0/1 or a 0.5/0.5 tie)",
        )
    if a == b:
        return Preference(TIE)
    return Preference(CHOSEN_0 if a > b else CHOSEN_1)


def is_label_type(dtype: pa.DataType) -> bool:
    """Whether an Arrow column type can hold labels the rule accepts (integers, floats, bools)."""
    return pa.types.is_integer(dtype) or pa.types.is_floating(dtype) or pa.types.is_boolean(dtype)


def _label_values(column: Any) -> np.ndarray:
    """A label column as float64, with NaN wherever the scalar rule sees no number (null, string...)."""
    if isinstance(column, pa.ChunkedArray | pa.Array):
        if is_label_type(column.type):
            # Nulls come out as NaN.
            return np.asarray(pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        return np.full(len(column), np.nan)
    values = np.asarray(column)
    if values.dtype.kind in "biuf":
        return values.astype(np.float64)
    if values.dtype.kind == "O":
        cells = [_as_float(v) for v in values.ravel()]
        return np.array([np.nan if v is None else v for v in cells], dtype=np.float64)
    return np.full(values.shape, np.nan)  # strings, bytes, dates, complex: not labels


def classify_label_columns(label_0: Any, label_1: Any) -> np.ndarray:
    """The label rule for whole columns: int8 outcomes, one per row, equal to ``classify_labels``
    row by row. Takes numpy arrays, lists, pandas Series or pyarrow (chunked) arrays of one length."""
    a, b = _label_values(label_0), _label_values(label_1)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"label columns must be 1-d and of one length, got shapes {a.shape} and {b.shape}")
    with np.errstate(invalid="ignore"):  # NaN compares false: such rows stay INVALID
        valid = (
            np.isfinite(a)
            & np.isfinite(b)
            & (a >= 0)
            & (a <= 1)
            & (b >= 0)
            & (b <= 1)
            & ~(np.abs(a + b - 1) > LABEL_SUM_TOLERANCE)
        )
    outcome = np.full(a.shape, INVALID, dtype=np.int8)
    outcome[valid & (a > b)] = CHOSEN_0
    outcome[valid & (a < b)] = CHOSEN_1
    outcome[valid & (a == b)] = TIE
    return outcome
