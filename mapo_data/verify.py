"""`mapo-data verify`: check a dataset thoroughly and list every problem (file, row, what).

Unlike the quick checks every command does on opening a dataset, verify reads everything: the
sha256 of every shard, every row, every image. It does not stop at the first problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mapo_data.reader import (
    DatasetError,
    ShardRef,
    discover_parquet,
    load_manifest,
    manifest_shards,
    row_problems,
)
from mapo_data.schema import (
    DATA_DIR,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGE_COLUMNS,
    MANIFEST_NAME,
    PROMPT_COLUMNS,
    REQUIRED_COLUMNS,
    schema_problems,
)
from mapo_data.shards import STATE_DIR, sha256_file


@dataclass(frozen=True)
class Problem:
    file: str
    row: int | None  # row within the file, 0-based; None: the whole file
    what: str

    def __str__(self) -> str:
        where = self.file if self.row is None else f"{self.file} row {self.row}"
        return f"{where}: {self.what}"


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    shards: int = 0
    pairs: int = 0
    images: int = 0
    has_manifest: bool = False  # without one there are no sha256 or row counts to compare

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, file: str, row: int | None, what: str) -> None:
        self.problems.append(Problem(file, row, what))


def _check_manifest(manifest: dict[str, Any], report: VerifyReport) -> None:
    if manifest.get("format") != FORMAT_NAME:
        report.add(MANIFEST_NAME, None, f"format is {manifest.get('format')!r}, expected {FORMAT_NAME!r}")
    if manifest.get("format_version") != FORMAT_VERSION:
        report.add(
            MANIFEST_NAME,
            None,
            f"format_version is {manifest.get('format_version')!r}, expected {FORMAT_VERSION}",
        )
    if not isinstance(manifest.get("num_pairs"), int):
        report.add(MANIFEST_NAME, None, "num_pairs is missing or not an integer")
    seen = set()
    for i, entry in enumerate(manifest["shards"]):
        for key in ("path", "rows", "bytes", "sha256"):
            if key not in entry:
                report.add(MANIFEST_NAME, None, f"shard entry {i} has no {key!r}")
        path = entry.get("path")
        if path in seen:
            report.add(MANIFEST_NAME, None, f"shard {path} is listed twice")
        seen.add(path)


def _check_rows(
    pf: pq.ParquetFile, shard: ShardRef, preset: dict[str, Any] | None, report: VerifyReport
) -> int:
    """Read every row of a shard; returns the number of rows actually read."""
    names = pf.schema_arrow.names
    columns = [c for c in (*REQUIRED_COLUMNS, *PROMPT_COLUMNS) if c in names]
    images_per_row = sum(c in names for c in IMAGE_COLUMNS)
    row = 0
    for batch in pf.iter_batches(batch_size=32, columns=columns):
        data = {c: batch.column(c).to_pylist() for c in columns}
        for i in range(batch.num_rows):
            report.images += images_per_row
            # The row rule curate drops by: whatever is reported here, curate never writes.
            for problem in row_problems({c: data[c][i] for c in columns}, preset):
                report.add(shard.rel, row, problem.what)
            row += 1
    return row


def _short(err: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        return "not a recognised image format"
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _shards_to_check(paths: list[Path], report: VerifyReport) -> tuple[list[ShardRef], dict | None, Path]:
    if len(paths) == 1 and paths[0].is_dir():
        root = paths[0].resolve()
        if (root / MANIFEST_NAME).exists():
            try:
                manifest = load_manifest(root)
                shards = manifest_shards(root, manifest)
            except DatasetError as err:
                report.add(MANIFEST_NAME, None, str(err))
                manifest, shards = None, []
            if manifest is not None:
                _check_manifest(manifest, report)
                listed = {s.path for s in shards}
                for extra in discover_parquet(root):
                    if extra.resolve() not in listed:
                        rel = extra.relative_to(root).as_posix()
                        if rel.startswith(f"{DATA_DIR}/"):
                            report.add(
                                rel, None, "parquet file not listed in the manifest (datasets would load it)"
                            )
            else:
                shards = [ShardRef(p, p.relative_to(root).as_posix()) for p in discover_parquet(root)]
            return shards, manifest, root
        files = discover_parquet(root)
        if not files:
            raise DatasetError(f"{root}: not a dataset folder (no {MANIFEST_NAME} and no parquet files)")
        if (root / STATE_DIR).is_dir():
            # Our tools write the manifest last: their state without one is a run that did not finish.
            report.add(MANIFEST_NAME, None, "missing: an unfinished build/curate run (rerun it to complete)")
        # Otherwise a plain Pick-a-Pic-style folder: nothing promised, so only the shards are checked.
        return [ShardRef(p, p.relative_to(root).as_posix()) for p in files], None, root
    shards = []
    for p in paths:
        if not p.exists() or p.is_dir():
            raise DatasetError(f"{p}: not a parquet file (give one dataset folder, or parquet files)")
        shards.append(ShardRef(p.resolve(), str(p)))
    return shards, None, shards[0].path.parent


def check_shard(shard: ShardRef, preset: dict[str, Any] | None, report: VerifyReport) -> int:
    """Check one shard against its manifest entry and read all of it; returns the rows read."""
    if not shard.path.is_file():
        report.add(shard.rel, None, "listed in the manifest but missing")
        return 0
    size = shard.path.stat().st_size
    if shard.bytes is not None and size != shard.bytes:
        report.add(shard.rel, None, f"size {size} bytes, manifest says {shard.bytes}")
    if shard.sha256 is not None and sha256_file(shard.path) != shard.sha256:
        report.add(shard.rel, None, "sha256 differs from the manifest (the file changed or is damaged)")
    try:
        pf = pq.ParquetFile(shard.path)
    except (pa.ArrowException, OSError) as err:
        report.add(shard.rel, None, f"not a readable parquet file ({_short(err)})")
        return 0
    footer_rows = pf.metadata.num_rows
    if shard.rows is not None and footer_rows != shard.rows:
        report.add(shard.rel, None, f"{footer_rows} rows, manifest says {shard.rows}")
    # The reader's one column check (present once, usable types), as every other command opens files.
    try:
        schema_faults = schema_problems(pf.schema_arrow)
    except (pa.ArrowException, OSError) as err:
        schema_faults = [f"unreadable schema ({_short(err)})"]
    for what in schema_faults:
        report.add(shard.rel, None, what)
    if schema_faults:
        # Rows whose columns are ambiguous or unusable cannot be read as pairs; the footer's count
        # stands in, so a manifest's total is not reported as wrong on top.
        return footer_rows
    try:
        rows = _check_rows(pf, shard, preset, report)
    except (pa.ArrowException, OSError) as err:
        report.add(shard.rel, None, f"data pages unreadable ({_short(err)})")
        return 0
    if rows != footer_rows:
        report.add(shard.rel, None, f"read {rows} rows, the footer says {footer_rows}")
    return rows


def verify_dataset(paths: str | Path | list[str | Path], progress: bool = False) -> VerifyReport:
    """Check everything; the report lists each problem, ``report.ok`` only when there are none."""
    from tqdm.auto import tqdm

    items = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
    if len(items) == 1 and not items[0].exists():
        raise DatasetError(f"{items[0]}: no such file or folder")
    report = VerifyReport()
    shards, manifest, _ = _shards_to_check(items, report)
    report.has_manifest = manifest is not None
    preset = (manifest or {}).get("preset") or None
    total = 0
    for shard in tqdm(shards, unit="shard", desc="verify", disable=not progress):
        total += check_shard(shard, preset, report)
        report.shards += 1
    report.pairs = total
    if manifest is not None and isinstance(manifest.get("num_pairs"), int) and manifest["num_pairs"] != total:
        report.add(MANIFEST_NAME, None, f"num_pairs is {manifest['num_pairs']}, the shards hold {total}")
    return report
