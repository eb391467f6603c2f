"""The one shard writer policy: row groups sized by the bytes written, whatever the mix of rows."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq

from mapo_data.shards import ROW_GROUP_BYTES, ROW_GROUP_ROWS, DatasetWriter

# Scaled down from the real case (10 small pairs, then 1,000 pairs of ~160 KB PNGs against 100 MB).
SMALL, LARGE, TARGET = 300, 20_000, 100_000


def hostile_table(small: int = 10, large: int = 30) -> pa.Table:
    """``small`` rows of tiny images, then ``large`` rows of big ones (random bytes: incompressible)."""
    sizes = [SMALL] * small + [LARGE] * large
    return pa.table(
        {
            "caption": [f"pair {i}" for i in range(len(sizes))],
            "jpg_0": pa.array([os.urandom(n) for n in sizes], pa.binary()),
            "jpg_1": pa.array([os.urandom(n) for n in sizes], pa.binary()),
            "label_0": pa.array([1] * len(sizes), pa.int64()),
            "label_1": pa.array([0] * len(sizes), pa.int64()),
        }
    )


def one_row_bytes(table: pa.Table, i: int) -> int:
    """Upper bound of one row's uncompressed parquet size: its values, offsets and a little slack."""
    row = table.slice(i, 1).to_pylist()[0]
    return len(row["caption"]) + len(row["jpg_0"]) + len(row["jpg_1"]) + 16 + 3 * 4 + 64


def row_groups(path) -> list[tuple[int, int]]:
    """(rows, uncompressed bytes) of each row group, from the parquet footer."""
    meta = pq.ParquetFile(path).metadata
    return [
        (meta.row_group(g).num_rows, meta.row_group(g).total_byte_size) for g in range(meta.num_row_groups)
    ]


def test_the_documented_policy_fits_the_hub_viewer():
    # The viewer refuses row groups above 300 MB uncompressed; ours aim at 100 MB.
    assert ROW_GROUP_BYTES == 100_000_000 and ROW_GROUP_ROWS == 1000


def test_row_groups_follow_the_bytes_written_not_the_first_rows(tmp_path):
    table = hostile_table()
    info = DatasetWriter(tmp_path, row_group_bytes=TARGET).write_shard(0, table)
    groups = row_groups(tmp_path / ".mapo" / "staged" / info.path)
    row = max(one_row_bytes(table, i) for i in range(table.num_rows))
    assert all(size <= TARGET + row for _, size in groups), groups
    # 10 small rows fit with 2 large ones; then 2 large rows (80 KB) per group: 28 more in 14 groups.
    assert [rows for rows, _ in groups] == [12] + [2] * 14
    assert pq.read_table(tmp_path / ".mapo" / "staged" / info.path).equals(table)


def test_row_cap_and_a_row_larger_than_the_target(tmp_path):
    table = hostile_table(small=7, large=1)
    info = DatasetWriter(tmp_path, row_group_bytes=2 * LARGE, row_group_rows=3).write_shard(0, table)
    # The large row (2 x 20 KB images) cannot join the last small group; it gets a group of its own.
    assert [rows for rows, _ in row_groups(tmp_path / ".mapo" / "staged" / info.path)] == [3, 3, 1, 1]


def test_streamed_writes_give_the_bytes_of_one_write(tmp_path):
    """curate streams batches of any size; the shard must not depend on how the rows arrived."""
    table = hostile_table()
    whole = DatasetWriter(tmp_path / "whole", row_group_bytes=TARGET)
    whole.write_shard(0, table)
    streamed = DatasetWriter(tmp_path / "streamed", row_group_bytes=TARGET)
    with streamed.open_shard(0, table.schema) as out:
        for start in range(0, table.num_rows, 7):
            for batch in table.slice(start, 7).to_batches():
                out.write(batch)
    assert streamed.staged_path(0).read_bytes() == whole.staged_path(0).read_bytes()
