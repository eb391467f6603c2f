"""Reading pair datasets: a mapo folder (manifest + shards) or plain Pick-a-Pic-format parquet files.

Everything streams: shards are opened one at a time and read in record batches, so memory stays flat
for a dataset of any size. Chosen and rejected are decided from the labels, never from the position.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mapo_data.errors import MapoError

# The one image decode (orientation, transparency, bit depth, bomb limit), re-exported for readers.
from mapo_data.images import UndecodableImage, decode_image, image_info  # noqa: F401
from mapo_data.schema import (
    CAPTION,
    IMAGE_COLUMNS,
    LABEL_COLUMNS,
    MANIFEST_NAME,
    PROMPT_COLUMNS,
    PairFormatError,
    check_schema,
    classify_labels,
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


def check_pair_file(path: str | Path, source: str | None = None) -> pq.ParquetFile:
    """Open one pair file and check its columns: the opening check of every command, mapo-train too.

    A file that is not readable parquet (empty, truncated, another format), or whose required
    columns are missing, duplicated or of an unusable type (see ``schema.schema_problems``), is a
    one-line DatasetError naming the file (``source``, default the path) and every problem.
    """
    pf = open_parquet(Path(path))
    check_pair_schema(pf, source=source or str(path))
    return pf


def check_pair_schema(pf: pq.ParquetFile, source: str) -> None:
    try:
        schema = pf.schema_arrow
    except (pa.ArrowException, OSError) as err:  # a parquet schema with no Arrow equivalent
        raise DatasetError(f"{source}: unreadable schema ({_one_line(err)})") from err
    try:
        check_schema(schema, source=source)
    except PairFormatError as err:
        raise DatasetError(str(err)) from err


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
        check_pair_schema(pf, source=shard.rel)
        total += rows
    if ds.manifest is not None and ds.manifest.get("num_pairs") not in (None, total):
        raise DatasetError(f"manifest says {ds.manifest['num_pairs']} pairs, the shards hold {total}")


# --- rows -----------------------------------------------------------------------------------------


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
        pref = classify_labels(cols["label_0"][i], cols["label_1"][i])
        # A tie or an invalid pair has no chosen image; it is shown in file order.
        pos = 0 if pref.chosen is None else pref.chosen
        images = (cols["jpg_0"][i], cols["jpg_1"][i])
        prompts = (cols["prompt_0"][i], cols["prompt_1"][i]) if has_prompts else (None, None)
        yield PairRow(
            caption=cols[CAPTION][i] or "",
            chosen=images[pos],
            rejected=images[1 - pos],
            chosen_pos=pos,
            tie=pref.tie,
            invalid=pref.reason,
            chosen_prompt=prompts[pos],
            rejected_prompt=prompts[1 - pos],
        )


@dataclass(frozen=True)
class RowProblem:
    """Why one row is not a usable pair."""

    reason: str  # a name from ROW_PROBLEM_REASONS: what curate counts it under
    what: str  # one line for people: what verify reports


#: The reasons of :func:`row_problems`, in the order they are checked.
ROW_PROBLEM_REASONS = ("null_caption", "undecodable", "invalid_labels", "labels_contradict_prompts")


def row_problems(
    row: Mapping[str, Any],
    preset: Mapping[str, Any] | None = None,
    decode: Callable[[str, Any], Any] | None = None,
) -> list[RowProblem]:
    """Every reason why one row is not a usable pair; empty when it is one.

    The one row rule: ``verify`` reports each problem it returns, ``curate`` drops the row under the
    first one's reason, so curate's output always passes verify.

    ``row`` maps column names to one row's values as read (nulls as None): ``caption``, ``jpg_0``,
    ``jpg_1``, ``label_0``, ``label_1`` and, when the data has them, ``prompt_0``/``prompt_1``. A
    column the row lacks is not checked (the file-level column check reports it once). ``preset``
    (a manifest's ``preset``) adds the check that the labels agree with the full prompts, as in our
    builds. ``decode(column, data)`` decodes one image and raises on bad bytes; the default is
    :func:`decode_image`. Curate passes one that keeps the decoded image for its later filters.
    """
    problems = []
    if CAPTION in row and row[CAPTION] is None:
        # Trainers tokenize the caption; a null stops them mid-epoch.
        problems.append(RowProblem("null_caption", "caption is null"))
    for column in IMAGE_COLUMNS:
        if column not in row:
            continue
        try:
            if decode is None:
                decode_image(row[column])
            else:
                decode(column, row[column])
        except Exception as err:  # PIL raises many types for bad bytes
            problems.append(RowProblem("undecodable", f"{column} does not decode ({_image_error(err)})"))
    pref = None
    if all(c in row for c in LABEL_COLUMNS):
        pref = classify_labels(row[LABEL_COLUMNS[0]], row[LABEL_COLUMNS[1]])
        if pref.invalid:
            problems.append(RowProblem("invalid_labels", pref.reason or "labels are not a preference"))
    # A null caption is its own problem: there is no context to compare the full prompts with.
    comparable = row.get(CAPTION) is not None and all(c in row for c in PROMPT_COLUMNS)
    if preset and comparable and pref is not None and pref.chosen is not None:
        problem = _prompt_problem(row, preset, pref.chosen)
        if problem:
            problems.append(RowProblem("labels_contradict_prompts", problem))
    return problems


def _prompt_problem(row: Mapping[str, Any], preset: Mapping[str, Any], chosen: int) -> str | None:
    """In our builds the full prompts say which side is which; the labels must agree with them."""
    from mapo_data.presets import assemble_prompt

    caption = row[CAPTION]
    expected = (
        assemble_prompt(preset.get("chosen_prefix") or "", caption),
        assemble_prompt(preset.get("rejected_prefix") or "", caption),
    )
    actual = (row[PROMPT_COLUMNS[chosen]], row[PROMPT_COLUMNS[1 - chosen]])
    if actual != expected:
        return f"labels contradict the prompts: the chosen image's prompt is {actual[0]!r}, expected {expected[0]!r}"
    return None


def _image_error(err: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not a recognised image format"
    return _one_line(err)


def is_state_path(rel: str) -> bool:
    """Paths the tools keep for themselves (never uploaded, never part of the dataset)."""
    return rel.startswith(STATE_DIR) or any(part.startswith(".") for part in rel.split("/"))
