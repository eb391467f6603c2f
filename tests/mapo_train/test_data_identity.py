"""Local pair files are known by their content: a file rewritten in place with its old mtime loads
its new rows under a new fingerprint and a new latent cache key (`datasets` alone knows local files by
path and mtime, and would return the old Arrow rows), while unchanged files reuse the Arrow cache."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from mapo_train.cache import locate_cache
from mapo_train.config import config_from_dict


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_pairs(path: Path, labels_0: list[int], colour: tuple[int, int, int]) -> None:
    """Pairs written with pyarrow directly (not mapo's writer)."""
    n = len(labels_0)
    table = pa.table(
        {
            "caption": pa.array([f"pair {i}" for i in range(n)], pa.string()),
            "jpg_0": pa.array([_png(colour)] * n, pa.binary()),
            "jpg_1": pa.array([_png((0, 0, 255))] * n, pa.binary()),
            "label_0": pa.array(labels_0, pa.int64()),
            "label_1": pa.array([1 - x for x in labels_0], pa.int64()),
        }
    )
    pq.write_table(table, path)


def _cfg(tmp_path: Path):
    data = {
        "model": "tiny",
        "data": {"path": str(tmp_path / "pairs"), "cache_dir": str(tmp_path / "hf"), "cache": "auto"},
        "train": {"mixed_precision": "no"},
        "validation": {"enabled": False},
    }
    return config_from_dict(data)


def _arrow_files(tmp_path: Path) -> dict[str, int]:
    return {str(p.relative_to(tmp_path)): p.stat().st_mtime_ns for p in (tmp_path / "hf").rglob("*.arrow")}


def test_a_file_rewritten_in_place_with_its_old_mtime_loads_the_new_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPO_CACHE", str(tmp_path / "mapo-cache"))
    (tmp_path / "pairs").mkdir()
    shard = tmp_path / "pairs" / "train-00000.parquet"
    _write_pairs(shard, [1, 0, 1, 0], (255, 0, 0))
    before = os.stat(shard)
    first = locate_cache(_cfg(tmp_path))
    assert first.table["label_0"][:] == [1, 0, 1, 0]

    _write_pairs(shard, [0, 1, 1, 0], (0, 255, 0))
    os.utime(shard, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(shard).st_mtime_ns == before.st_mtime_ns
    second = locate_cache(_cfg(tmp_path))
    assert second.table["label_0"][:] == [0, 1, 1, 0]
    assert Image.open(io.BytesIO(second.table[0]["jpg_0"])).getpixel((0, 0)) == (0, 255, 0)
    assert second.table._fingerprint != first.table._fingerprint
    assert second.key != first.key and second.identity["dataset"] == second.table._fingerprint


def test_unchanged_files_reuse_the_arrow_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPO_CACHE", str(tmp_path / "mapo-cache"))
    (tmp_path / "pairs").mkdir()
    _write_pairs(tmp_path / "pairs" / "train-00000.parquet", [1, 0, 0, 1], (255, 0, 0))
    first = locate_cache(_cfg(tmp_path))
    converted = _arrow_files(tmp_path)
    assert len(converted) == 1
    again = locate_cache(_cfg(tmp_path))
    assert _arrow_files(tmp_path) == converted  # nothing converted or rewritten
    assert again.table._fingerprint == first.table._fingerprint and again.key == first.key
