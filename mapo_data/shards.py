"""Writing a pair-dataset folder: atomic shards, completion markers, the manifest.

Layout::

    OUT/
      data/train-00000.parquet ...   shards, moved here from .mapo/staged/ just before the manifest
      manifest.json                  written last: its presence means the folder is complete
      .mapo/config.json              the resolved config of the run that owns the folder
      .mapo/completions/00000.json   one marker per finished shard (rows, bytes, sha256)
      .mapo/staged/data/...          finished shards of an unfinished run

Finished shards wait in ``.mapo/staged`` until the whole run is done, so that while a run is going
(or after it was killed) ``datasets.load_dataset(OUT)`` finds no partial dataset that looks whole.

Hidden paths (``.mapo``, temporary ``.*.tmp`` files) are ignored by ``datasets`` and by ``push``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mapo_data.schema import MANIFEST_NAME, shard_name

STATE_DIR = ".mapo"


@dataclass(frozen=True)
class ShardInfo:
    index: int
    path: str  # relative to the dataset root, POSIX separators
    rows: int
    bytes: int
    sha256: str


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _umask_mode() -> int:
    # mkstemp creates files readable by the owner only; finished outputs get the usual mode.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def give_umask_mode(*paths: str | Path) -> None:
    """Give each file in ``paths``, and every file under each folder in ``paths``, the mode a plain
    ``open()`` would (0644 under umask 022), and those folders the mode ``mkdir`` would (0755).

    Writers that go through a temporary file or folder create it owner-only: ``mkstemp`` (0600),
    ``mkdtemp`` (0700), and safetensors itself (>= 0.8 writes ``save_file`` / ``save_pretrained`` /
    ``save_state`` that way, 0600). Call this once a finished output is in place. Missing paths
    are skipped; symbolic links are not followed."""
    mask = os.umask(0)
    os.umask(mask)
    for path in map(Path, paths):
        entries = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir():
                os.chmod(entry, 0o777 & ~mask)
            elif entry.is_file():
                os.chmod(entry, 0o666 & ~mask)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a hidden temporary file beside ``path``, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


# The writer policy of every pair shard (build, curate, and anything else that writes one).
ROW_GROUP_BYTES = 100_000_000
"""Target uncompressed bytes of one parquet row group. The Hub dataset viewer refuses a shard whose
row groups exceed 300 MB (286 MiB) uncompressed; 100 MB leaves a wide margin and keeps pages quick."""
ROW_GROUP_ROWS = 1000
"""Most rows in one row group, so that small rows still come in groups a reader can page through."""


def row_nbytes(data: pa.Table | pa.RecordBatch) -> list[int]:
    """Bytes each row occupies in Arrow memory (values plus offsets), one int per row.

    For the plain and dictionary encodings parquet uses, a row group's uncompressed size
    (``total_byte_size`` in the footer) is this sum or less, plus a few bytes of page headers.
    """
    import pyarrow.compute as pc

    sizes = [0] * data.num_rows
    for column in data.columns:
        kind = column.type
        if pa.types.is_binary(kind) or pa.types.is_string(kind):
            offset = 4
        elif pa.types.is_large_binary(kind) or pa.types.is_large_string(kind):
            offset = 8
        else:
            offset = None
        if offset is not None:
            lengths = pc.binary_length(column).fill_null(0).to_pylist()
            sizes = [s + n + offset for s, n in zip(sizes, lengths, strict=True)]
        elif pa.types.is_primitive(kind) and kind.bit_width >= 8:
            width = kind.bit_width // 8
            sizes = [s + width for s in sizes]
        else:  # nested or unusual types: measure each row's slice
            sizes = [s + column.slice(i, 1).nbytes for i, s in enumerate(sizes)]
    return sizes


class RowGroupWriter:
    """Write tables or record batches to one parquet file in row groups sized by what goes in.

    A row group is closed before the row that would take it past ``max_bytes`` (see
    :func:`row_nbytes`) or past ``max_rows`` rows; a single row larger than ``max_bytes`` makes a row
    group of its own. Sizing by the bytes actually written, not by an estimate from the first rows,
    keeps every group under the Hub viewer's limit whatever the mix of small and large images.
    """

    def __init__(
        self,
        where: Path | str,
        schema: pa.Schema,
        max_bytes: int = ROW_GROUP_BYTES,
        max_rows: int = ROW_GROUP_ROWS,
        compression: str = "zstd",
    ):
        if max_bytes < 1 or max_rows < 1:
            raise ValueError("max_bytes and max_rows must be at least 1")
        self.schema = schema
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self._writer = pq.ParquetWriter(where, schema, compression=compression)
        self._pending: list[pa.Table] = []
        self._bytes = 0
        self._rows = 0

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        """Buffer ``data`` (in the writer's schema); full row groups are written as they fill."""
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data], schema=self.schema)
        start = 0
        for i, size in enumerate(row_nbytes(data)):
            if self._rows and (self._bytes + size > self.max_bytes or self._rows >= self.max_rows):
                self._pending.append(data.slice(start, i - start))
                self._flush()
                start = i
            self._bytes += size
            self._rows += 1
        if start < data.num_rows:
            self._pending.append(data.slice(start))

    def _flush(self) -> None:
        if self._rows:
            table = pa.concat_tables(self._pending)
            self._writer.write_table(table, row_group_size=table.num_rows)
        self._pending, self._bytes, self._rows = [], 0, 0

    def close(self) -> None:
        """Write the last row group and the footer."""
        self._flush()
        self._writer.close()

    def __enter__(self) -> RowGroupWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # the file is thrown away; only release it
            self._writer.close()


class DatasetWriter:
    """Owns one output folder: shard files, their completion markers, and the final manifest."""

    def __init__(
        self,
        root: Path | str,
        split: str = "train",
        row_group_bytes: int = ROW_GROUP_BYTES,
        row_group_rows: int = ROW_GROUP_ROWS,
    ):
        self.root = Path(root)
        self.split = split
        self.row_group_bytes = row_group_bytes
        self.row_group_rows = row_group_rows

    @property
    def state_dir(self) -> Path:
        return self.root / STATE_DIR

    def marker_path(self, index: int) -> Path:
        return self.state_dir / "completions" / f"{index:05d}.json"

    def shard_path(self, index: int) -> Path:
        """Where shard ``index`` lives in the finished dataset."""
        return self.root / shard_name(index, self.split)

    def staged_path(self, index: int) -> Path:
        """Where shard ``index`` waits until the run is complete."""
        return self.state_dir / "staged" / shard_name(index, self.split)

    def _existing_file(self, index: int) -> Path | None:
        for path in (self.staged_path(index), self.shard_path(index)):
            if path.is_file():
                return path
        return None

    def completed(self, index: int) -> ShardInfo | None:
        """The shard's info if its marker exists and the file on disk (staged or final) matches it."""
        marker = self.marker_path(index)
        if not marker.is_file():
            return None
        info = ShardInfo(**read_json(marker))
        shard = self._existing_file(index)
        if shard is None or shard.stat().st_size != info.bytes:
            return None
        # By content, not size alone: bytes changed in place (a bad disk, a stray write) must not
        # pass as done. The digest is memoised by the file's stat (ctime included), so an
        # untouched shard costs a stat, not a re-read.
        from mapo_data.identity import file_digest

        if file_digest(shard) != info.sha256:
            return None
        return info

    def clear(self, extra: tuple[str, ...] = ()) -> None:
        """Remove what our tools write in this folder (shards, state, manifest, and ``extra``
        top-level files), for ``--overwrite``; anything else the user keeps there stays."""
        for name in ("data", STATE_DIR, MANIFEST_NAME, *extra):
            target = self.root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()

    def remove_stale_temporaries(self) -> int:
        """Delete temporary files a killed run left behind (hidden ``.*.tmp``); returns how many."""
        removed = 0
        folders = (
            self.shard_path(0).parent,
            self.staged_path(0).parent,
            self.marker_path(0).parent,
            self.root,
        )
        for folder in folders:
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return removed

    @contextmanager
    def shard_file(self, index: int) -> Iterator[Path]:
        """Yield a hidden temporary path for shard ``index``; on success it is fsynced and renamed
        into the staging area, on failure removed. Completion is recorded separately
        (``mark_complete``); ``write_manifest`` moves staged shards into ``data/``."""
        final = self.staged_path(index)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        try:
            yield Path(tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.chmod(tmp, _umask_mode())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def shard_info(self, index: int, rows: int) -> ShardInfo:
        """Info of a just-written shard; ``path`` is its place in the finished dataset."""
        written = self._existing_file(index)
        if written is None:
            raise FileNotFoundError(f"shard {index} of {self.root} has not been written")
        return ShardInfo(
            index=index,
            path=self.shard_path(index).relative_to(self.root).as_posix(),
            rows=rows,
            bytes=written.stat().st_size,
            sha256=sha256_file(written),
        )

    def mark_complete(self, info: ShardInfo) -> None:
        atomic_write_json(self.marker_path(info.index), asdict(info))

    @contextmanager
    def open_shard(self, index: int, schema: pa.Schema) -> Iterator[RowGroupWriter]:
        """A :class:`RowGroupWriter` for shard ``index`` with this writer's row-group policy, on a
        temporary file that becomes the staged shard when the block succeeds (see ``shard_file``)."""
        with (
            self.shard_file(index) as tmp,
            RowGroupWriter(tmp, schema, max_bytes=self.row_group_bytes, max_rows=self.row_group_rows) as out,
        ):
            yield out

    def write_shard(self, index: int, table: pa.Table) -> ShardInfo:
        """Write ``table`` as shard ``index`` atomically, then record its completion."""
        with self.open_shard(index, table.schema) as out:
            out.write(table)
        info = self.shard_info(index, table.num_rows)
        self.mark_complete(info)
        return info

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        """Move every staged shard into ``data/``, then write the manifest that marks completion.

        A run killed in between is finished by the rerun: markers accept either location.
        """
        staged_root = self.state_dir / "staged"
        for staged in sorted(staged_root.rglob("*.parquet")) if staged_root.is_dir() else []:
            final = self.root / staged.relative_to(staged_root)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staged, final)
        path = self.root / MANIFEST_NAME
        atomic_write_json(path, manifest)
        return path


def shard_entries(infos: list[ShardInfo]) -> list[dict[str, Any]]:
    """Manifest entries for shards, in index order (``index`` is internal bookkeeping)."""
    return [
        {k: v for k, v in asdict(i).items() if k != "index"} for i in sorted(infos, key=lambda i: i.index)
    ]
