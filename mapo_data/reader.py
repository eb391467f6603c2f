"""Reading pair datasets: a mapo folder (manifest + shards) or plain Pick-a-Pic-format parquet files.

Everything streams: shards are opened one at a time and read in record batches, so memory stays flat
for a dataset of any size. Chosen and rejected are decided from the labels, never from the position.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mapo_data.errors import MapoError
from mapo_data.schema import (
    CAPTION,
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    MANIFEST_NAME,
    PROMPT_COLUMNS,
    PairFormatError,
    Preference,
    check_columns,
    preference_from_labels,
)
from mapo_data.shards import STATE_DIR


class DatasetError(MapoError):
    """The input is not a readable pair dataset (missing folder, bad manifest, corrupt shard)."""


@dataclass(frozen=True)
class ShardRef:
    """One parquet shard of a dataset, with what the manifest promises about it (if there is one)."""

    path: Path  # absolute
    rel: str  # relative to the dataset root (POSIX), or the file name for loose files
    rows: int | None = None
    bytes: int | None = None
    sha256: str | None = None


@dataclass
class PairDataset:
    """An opened dataset: where it is, its manifest (None for plain parquet) and its shards."""

    root: Path
    shards: list[ShardRef]
    manifest: dict[str, Any] | None = None

    @property
    def has_manifest(self) -> bool:
        return self.manifest is not None

    @property
    def preset(self) -> dict[str, Any] | None:
        return (self.manifest or {}).get("preset") or None

    def parquet_file(self, shard: ShardRef) -> pq.ParquetFile:
        """Open a shard's parquet metadata; a corrupt or truncated file is a one-line DatasetError."""
        return open_parquet(shard.path)

    def shard_rows(self, shard: ShardRef) -> int:
        return self.parquet_file(shard).metadata.num_rows

    def num_pairs(self) -> int:
        """Rows from the parquet footers (cheap: no data pages are read)."""
        return sum(self.shard_rows(s) for s in self.shards)

    def schema(self) -> pa.Schema:
        return self.parquet_file(self.shards[0]).schema_arrow

    def iter_batches(
        self, shard: ShardRef, batch_size: int = 64, columns: list[str] | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Record batches of one shard, read row group by row group."""
        yield from iter_parquet_batches(shard.path, batch_size=batch_size, columns=columns)

    def iter_all(self, batch_size: int = 64, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        for shard in self.shards:
            yield from self.iter_batches(shard, batch_size=batch_size, columns=columns)


def open_parquet(path: Path) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path)
    except FileNotFoundError as err:
        raise DatasetError(f"{path}: shard file is missing") from err
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: not a readable parquet file ({_one_line(err)})") from err


def iter_parquet_batches(
    path: Path, batch_size: int = 64, columns: list[str] | None = None
) -> Iterator[pa.RecordBatch]:
    pf = open_parquet(path)
    try:
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)
    except (pa.ArrowException, OSError) as err:
        raise DatasetError(f"{path}: shard is corrupt or truncated ({_one_line(err)})") from err


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def load_manifest(root: Path) -> dict[str, Any]:
    path = root / MANIFEST_NAME
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError as err:
        raise DatasetError(f"{root}: no {MANIFEST_NAME} (not a complete mapo dataset folder)") from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DatasetError(f"{path}: not valid JSON ({_one_line(err)})") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("shards"), list):
        raise DatasetError(f"{path}: not a mapo manifest (no 'shards' list)")
    return manifest


def manifest_shards(root: Path, manifest: dict[str, Any]) -> list[ShardRef]:
    refs = []
    for i, entry in enumerate(manifest["shards"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise DatasetError(f"{root / MANIFEST_NAME}: shard entry {i} has no 'path'")
        rel = entry["path"]
        refs.append(
            ShardRef(
                path=(root / rel).resolve(),
                rel=rel,
                rows=entry.get("rows"),
                bytes=entry.get("bytes"),
                sha256=entry.get("sha256"),
            )
        )
    return refs


def discover_parquet(root: Path) -> list[Path]:
    """Parquet files under a folder without a manifest, skipping hidden paths (state, temp files)."""
    found = []
    for p in sorted(root.rglob("*.parquet")):
        rel = p.relative_to(root).parts
        if any(part.startswith(".") for part in rel):
            continue
        found.append(p)
    return found


def open_dataset(paths: str | Path | list[str | Path], check: bool = True) -> PairDataset:
    """Open a mapo dataset folder, a folder of parquet files, or parquet files.

    With ``check`` the manifest must agree with the shards on disk (present, same size and row
    count) and every shard must have the pair-format columns; a mismatch is a one-line DatasetError.
    """
    items = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
    if not items:
        raise DatasetError("no input given")
    if len(items) == 1 and items[0].is_dir():
        root = items[0].resolve()
        if (root / MANIFEST_NAME).exists():
            manifest = load_manifest(root)
            ds = PairDataset(root=root, shards=manifest_shards(root, manifest), manifest=manifest)
        elif (root / STATE_DIR).is_dir():
            # Our own tools write the manifest last: state without a manifest is an unfinished run.
            raise DatasetError(
                f"{root}: an unfinished build/curate run (no {MANIFEST_NAME} yet); rerun it to complete the folder"
            )
        else:
            files = discover_parquet(root)
            if not files:
                raise DatasetError(f"{root}: not a dataset folder (no {MANIFEST_NAME} and no parquet files)")
            ds = PairDataset(root=root, shards=[ShardRef(p, p.relative_to(root).as_posix()) for p in files])
    else:
        for p in items:
            if p.is_dir():
                raise DatasetError(f"{p}: give one dataset folder, or parquet files, not a mix")
            if not p.exists():
                raise DatasetError(f"{p}: no such file or folder")
        files = [p.resolve() for p in items]
        root = files[0].parent
        ds = PairDataset(root=root, shards=[ShardRef(p, p.name) for p in files])
    if not ds.shards:
        raise DatasetError(f"{ds.root}: the manifest lists no shards")
    if check:
        check_dataset(ds)
    return ds


def check_dataset(ds: PairDataset) -> None:
    """Cheap consistency checks (file sizes, footers, columns); `verify` does the thorough ones."""
    total = 0
    for shard in ds.shards:
        if not shard.path.is_file():
            raise DatasetError(f"{shard.rel}: listed in the manifest but missing on disk")
        size = shard.path.stat().st_size
        if shard.bytes is not None and size != shard.bytes:
            raise DatasetError(
                f"{shard.rel}: manifest says {shard.bytes} bytes, file has {size} (manifest does not match the shards)"
            )
        pf = ds.parquet_file(shard)
        rows = pf.metadata.num_rows
        if shard.rows is not None and rows != shard.rows:
            raise DatasetError(f"{shard.rel}: manifest says {shard.rows} rows, shard has {rows}")
        try:
            check_columns(pf.schema_arrow.names, source=shard.rel)
        except PairFormatError as err:
            raise DatasetError(str(err)) from err
        total += rows
    if ds.manifest is not None and ds.manifest.get("num_pairs") not in (None, total):
        raise DatasetError(f"manifest says {ds.manifest['num_pairs']} pairs, the shards hold {total}")


# --- rows -----------------------------------------------------------------------------------------


def label_problem(label_0: Any, label_1: Any) -> str | None:
    """Why two labels are not a preference (None when they are: 1/0, 0/1 or a 0.5/0.5 tie).

    Pick-a-Pic-style files from elsewhere can hold nulls, NaN or 1/1; those pairs must be dropped
    or reported, never silently read as a tie (equal labels) or as "jpg_1 chosen"."""
    if label_0 is None or label_1 is None:
        return "label is null"
    try:
        a, b = float(label_0), float(label_1)
    except (TypeError, ValueError):
        return f"labels are not numbers ({label_0!r}, {label_1!r})"
    if not (math.isfinite(a) and math.isfinite(b)):
        return f"labels are not finite ({label_0}, {label_1})"
    if not (0 <= a <= 1 and 0 <= b <= 1) or abs(a + b - 1) > 1e-6:
        return f"labels ({label_0}, {label_1}) are not a preference (expected 1/0, 0/1 or a 0.5/0.5 tie)"
    return None


@dataclass(frozen=True)
class PairRow:
    """One pair with chosen/rejected resolved from the labels."""

    caption: str
    chosen: bytes | None
    rejected: bytes | None
    chosen_pos: int  # 0 or 1
    tie: bool
    #: Why the labels are not a preference (then chosen_pos is 0 and means nothing); None: valid.
    invalid: str | None = None
    #: The full prompts that rendered the chosen and the rejected image, when the data has them.
    chosen_prompt: str | None = None
    rejected_prompt: str | None = None


def rows_of(batch: pa.RecordBatch) -> Iterator[PairRow]:
    """Pairs of a record batch; labels decide which image is the chosen one."""
    has_prompts = all(c in batch.schema.names for c in PROMPT_COLUMNS)
    names = [CAPTION, *IMAGE_COLUMNS, *LABEL_COLUMNS, *(PROMPT_COLUMNS if has_prompts else ())]
    cols = {name: batch.column(name).to_pylist() for name in names}
    for i in range(batch.num_rows):
        invalid = label_problem(cols["label_0"][i], cols["label_1"][i])
        pref = (
            preference_from_labels(cols["label_0"][i], cols["label_1"][i])
            if invalid is None
            else Preference(chosen=0, tie=False)
        )
        images = (cols["jpg_0"][i], cols["jpg_1"][i])
        prompts = (cols["prompt_0"][i], cols["prompt_1"][i]) if has_prompts else (None, None)
        yield PairRow(
            caption=cols[CAPTION][i] or "",
            chosen=images[pref.chosen],
            rejected=images[1 - pref.chosen],
            chosen_pos=pref.chosen,
            tie=pref.tie,
            invalid=invalid,
            chosen_prompt=prompts[pref.chosen],
            rejected_prompt=prompts[1 - pref.chosen],
        )


def decode_image(data: bytes | None):
    """Decode image bytes fully (``load`` catches truncated data that ``open`` alone would not)."""
    from PIL import Image

    if not data:
        raise ValueError("empty image bytes")
    img = Image.open(io.BytesIO(data))
    img.load()
    return img


def is_state_path(rel: str) -> bool:
    """Paths the tools keep for themselves (never uploaded, never part of the dataset)."""
    return rel.startswith(STATE_DIR) or any(part.startswith(".") for part in rel.split("/"))
