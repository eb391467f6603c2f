"""`mapo-data stats`: the numbers of a constructed dataset, for people and as JSON."""

from __future__ import annotations

import json

from mapo_data.stats import dataset_stats
from tests.mapo_data.pairs_factory import (
    Pair,
    encode,
    good_pairs,
    noise,
    run_cli,
    write_mapo_dataset,
    write_pickapic_parquet,
)


def test_stats_of_a_mapo_folder(tmp_path, capsys):
    pairs = good_pairs(4)
    pairs.append(Pair("one two three", encode(noise(90, size=48), "PNG"), encode(noise(91, size=48), "PNG")))
    pairs[0].chosen_pos = 1
    root = write_mapo_dataset(tmp_path / "ds", pairs, shard_size=3)
    stats = dataset_stats(root)
    assert stats["pairs"] == 5 and stats["shards"] == 2
    assert stats["bytes"] == sum(p.stat().st_size for p in (root / "data").glob("*.parquet"))
    assert stats["images"]["formats"] == {"JPEG": 8, "PNG": 2}
    assert stats["images"]["sizes"] == {"32x32": 8, "48x48": 2}
    assert stats["labels"] == {
        "dtype": ["int64"],
        "chosen_in_jpg_0": 4,
        "chosen_in_jpg_1": 1,
        "ties": 0,
        "invalid": 0,
    }
    assert stats["captions"]["unique"] == 5
    assert stats["captions"]["words"]["min"] == 3 and stats["captions"]["words"]["max"] == 6
    assert (
        stats["captions"]["words_histogram"]["0-5"] == 1 and stats["captions"]["words_histogram"]["6-10"] == 4
    )
    assert stats["provenance"]["preset"]["split"] == "pixel"
    assert [s["step"] for s in stats["provenance"]["steps"]] == ["build"]
    assert [c["name"] for c in stats["columns"]][:5] == ["caption", "jpg_0", "jpg_1", "label_0", "label_1"]

    code, out, _ = run_cli(capsys, "stats", str(root), "--json")
    assert code == 0 and json.loads(out)["pairs"] == 5
    code, out, _ = run_cli(capsys, "stats", str(root))
    assert code == 0
    assert "pairs        5" in out and "JPEG 8, PNG 2" in out and "chosen in jpg_0: 4, in jpg_1: 1" in out
    assert "preset pick-style/pixel" in out and "build:" in out


def test_stats_of_pickapic_parquet_with_ties_and_duplicate_captions(tmp_path, capsys):
    pairs = good_pairs(4)
    pairs[1].tie = True
    pairs[3].caption = "  A photo of thing NUMBER 0"
    path = write_pickapic_parquet(tmp_path / "pap.parquet", pairs)
    stats = dataset_stats(path)
    assert stats["labels"] == {
        "dtype": ["double"],
        "chosen_in_jpg_0": 3,
        "chosen_in_jpg_1": 0,
        "ties": 1,
        "invalid": 0,
    }
    assert stats["captions"]["unique"] == 3
    assert stats["provenance"] is None
    code, out, _ = run_cli(capsys, "stats", str(path))
    assert code == 0 and "provenance   none (no manifest)" in out
