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


def row_group_rows(image_bytes_per_row: int, max_group_bytes: int = 100 * 2**20) -> int:
    """Rows per parquet row group so a group stays under the Hub viewer's ~100 MB (uncompressed)."""
    return max(1, min(1000, max_group_bytes // max(1, image_bytes_per_row)))


class DatasetWriter:
    """Owns one output folder: shard files, their completion markers, and the final manifest."""

    def __init__(self, root: Path | str, split: str = "train"):
        self.root = Path(root)
        self.split = split

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
        return info

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

    def write_shard(self, index: int, table: pa.Table, row_group_size: int | None = None) -> ShardInfo:
        """Write ``table`` as shard ``index`` atomically, then record its completion."""
        with self.shard_file(index) as tmp:
            pq.write_table(table, tmp, row_group_size=row_group_size, compression="zstd")
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
