"""Opening datasets: mapo folders, plain Pick-a-Pic parquet, and every kind of bad input."""

from __future__ import annotations

import json
import re

import pytest

from mapo_data.reader import DatasetError, open_dataset, rows_of
from tests.mapo_data.pairs_factory import (
    assert_one_line_error,
    encode,
    good_pairs,
    noise,
    run_cli,
    write_labels_parquet,
    write_mapo_dataset,
    write_pickapic_parquet,
)


def test_mapo_folder_streams_shard_by_shard(tmp_path):
    root = write_mapo_dataset(tmp_path / "ds", 6, shard_size=4)
    ds = open_dataset(root)
    assert ds.has_manifest and ds.preset["name"] == "pick-style"
    assert [s.rel for s in ds.shards] == ["data/train-00000.parquet", "data/train-00001.parquet"]
    assert ds.num_pairs() == 6
    # Row groups of 2 rows: batches never span more than what was asked for.
    batches = list(ds.iter_batches(ds.shards[0], batch_size=2))
    assert [b.num_rows for b in batches] == [2, 2]


def test_labels_decide_chosen_not_position(tmp_path):
    pairs = good_pairs(2)
    pairs[1].chosen_pos = 1
    ds = open_dataset(write_mapo_dataset(tmp_path / "ds", pairs))
    rows = [r for b in ds.iter_all() for r in rows_of(b)]
    assert [r.chosen_pos for r in rows] == [0, 1]
    assert rows[1].chosen == pairs[1].chosen and rows[1].rejected == pairs[1].rejected


def test_pickapic_parquet_float_labels_and_ties(tmp_path):
    pairs = good_pairs(3)
    pairs[0].chosen_pos = 1
    pairs[2].tie = True
    path = write_pickapic_parquet(tmp_path / "pap" / "train-0.parquet", pairs)
    for source in (path, path.parent):
        ds = open_dataset(source)
        assert not ds.has_manifest
        rows = [r for b in ds.iter_all() for r in rows_of(b)]
        assert [(r.chosen_pos, r.tie) for r in rows] == [(1, False), (0, False), (0, True)]
        assert rows[0].chosen == pairs[0].chosen


def test_rows_with_labels_that_are_not_a_preference(tmp_path, capsys):
    labels = [(1.0, 0.0), (None, 0.0), (float("nan"), 1.0), (1.0, 1.0), (2.0, -1.0), (0.5, 0.5)]
    ds = open_dataset(write_labels_parquet(tmp_path / "odd.parquet", labels))
    rows = [r for b in ds.iter_all() for r in rows_of(b)]
    assert [r.invalid for r in rows] == [
        None,
        "label is null",
        "labels are not finite (nan, 1.0)",
        "labels (1.0, 1.0) are not a preference (expected 1/0, 0/1 or a 0.5/0.5 tie)",
        "labels (2.0, -1.0) are not a preference (expected 1/0, 0/1 or a 0.5/0.5 tie)",
        None,
    ]
    assert [r.tie for r in rows] == [False, False, False, False, False, True]  # 1/1 is not a tie
    # Every reader copes: stats counts them, preview draws them, verify names the rows.
    code, out, _ = run_cli(capsys, "stats", str(tmp_path / "odd.parquet"))
    assert code == 0 and "ties: 1, invalid: 4" in out
    code, out, _ = run_cli(
        capsys, "preview", str(tmp_path / "odd.parquet"), "--out", str(tmp_path / "p.png"), "--tile", "32"
    )
    assert code == 0 and "6 pairs" in out
    code, out, _ = run_cli(capsys, "verify", str(tmp_path / "odd.parquet"), "--no-progress")
    assert code == 1 and [line.split(": ", 1)[0].rsplit(" ", 1)[-1] for line in out.splitlines()] == [
        "1",
        "2",
        "3",
        "4",
    ]


def test_not_a_dataset_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="not a dataset folder"):
        open_dataset(tmp_path / "empty")
    assert_one_line_error(*run_cli(capsys, "stats", str(tmp_path / "empty")), "not a dataset folder")
    assert_one_line_error(*run_cli(capsys, "stats", str(tmp_path / "nope")), "no such file")


def test_manifest_that_does_not_match_the_shards(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "ds", 4, shard_size=2)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["shards"][1]["rows"] = 5
    manifest["shards"][1]["bytes"] = (root / manifest["shards"][1]["path"]).stat().st_size
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(*run_cli(capsys, "stats", str(root)), "manifest says 5 rows")

    manifest["shards"][1]["path"] = "data/train-00009.parquet"
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert_one_line_error(*run_cli(capsys, "stats", str(root)), "missing on disk")

    (root / "manifest.json").write_text("{not json")
    assert_one_line_error(*run_cli(capsys, "stats", str(root)), "not valid JSON")


def test_unfinished_run_is_not_read_as_a_dataset(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "ds", 4, shard_size=2)
    (root / "manifest.json").unlink()  # as while build or curate is still writing
    assert_one_line_error(*run_cli(capsys, "stats", str(root)), "unfinished")
    assert_one_line_error(*run_cli(capsys, "curate", str(root), "--out", str(tmp_path / "o")), "unfinished")


def test_corrupt_and_truncated_parquet(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"this is not parquet at all")
    assert_one_line_error(*run_cli(capsys, "stats", str(bad)), "not a readable parquet file")

    good = write_pickapic_parquet(tmp_path / "good.parquet", good_pairs(4))
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert_one_line_error(*run_cli(capsys, "stats", str(truncated)), "not a readable parquet file")

    # A mapo folder whose shard was cut short: the size no longer matches the manifest.
    root = write_mapo_dataset(tmp_path / "ds", 2)
    shard = root / "data" / "train-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:100])
    assert_one_line_error(*run_cli(capsys, "stats", str(root)), "does not match")


def test_missing_pair_columns(tmp_path, capsys):
    import pandas as pd

    path = tmp_path / "x.parquet"
    pd.DataFrame({"caption": ["a"], "jpg_0": [encode(noise(1))]}).to_parquet(path)
    assert_one_line_error(*run_cli(capsys, "stats", str(path)), "missing column(s) jpg_1, label_0, label_1")


@pytest.mark.parametrize("command", ["curate", "verify", "preview", "stats", "card", "push"])
def test_every_command_has_help_with_an_example(command, capsys):
    code, out, _ = run_cli(capsys, command, "--help")
    # One examples section (the epilog), each example a full command line.
    sections = re.split(r"Examples?:", out)
    assert code == 0 and len(sections) == 2
    assert f"mapo-data {command} " in sections[1]
