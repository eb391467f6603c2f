"""`mapo-data verify`: a clean dataset passes; each planted defect is listed with file, row and what."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc

from mapo_data.verify import verify_dataset
from tests.mapo_data.pairs_factory import (
    Pair,
    assert_one_line_error,
    encode,
    good_pairs,
    noise,
    rewrite_shard,
    run_cli,
    write_mapo_dataset,
    write_pickapic_parquet,
)


def problems(root) -> list[str]:
    return [str(p) for p in verify_dataset(root).problems]


def test_clean_dataset_passes(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "ds", 6, shard_size=4)
    code, out, _ = run_cli(capsys, "verify", str(root), "--no-progress")
    assert code == 0 and out.strip() == "ok: 6 pairs in 2 shards, 12 images decoded"


def test_undecodable_image_is_reported_with_its_row(tmp_path, capsys):
    pairs = good_pairs(4)
    pairs[2] = Pair("bad", encode(noise(1))[:300], encode(noise(2)))
    root = write_mapo_dataset(tmp_path / "ds", pairs, shard_size=4)
    code, out, err = run_cli(capsys, "verify", str(root), "--no-progress")
    assert code == 1
    (line,) = out.splitlines()
    assert line.startswith("data/train-00000.parquet row 2: jpg_0 does not decode (")
    assert err.strip().splitlines()[-1] == "1 problem in 1 shard"


def test_labels_that_are_not_a_preference(tmp_path):
    root = write_mapo_dataset(tmp_path / "ds", 4, shard_size=4)

    def both_chosen(table: pa.Table) -> pa.Table:
        labels = pa.array([1, 1, 0, 1], pa.int64())
        return table.set_column(table.schema.get_field_index("label_1"), "label_1", labels)

    rewrite_shard(root, 0, both_chosen)
    found = problems(root)
    assert found == [
        "data/train-00000.parquet row 0: labels (1, 1) are not a preference (expected 1/0, 0/1 or a 0.5/0.5 tie)",
        "data/train-00000.parquet row 1: labels (1, 1) are not a preference (expected 1/0, 0/1 or a 0.5/0.5 tie)",
        "data/train-00000.parquet row 3: labels (1, 1) are not a preference (expected 1/0, 0/1 or a 0.5/0.5 tie)",
    ]


def test_null_caption(tmp_path):
    root = write_mapo_dataset(tmp_path / "ds", 2, shard_size=2)

    def null_caption(table: pa.Table) -> pa.Table:
        captions = pa.array([None, "kept"], pa.string())
        return table.set_column(table.schema.get_field_index("caption"), "caption", captions)

    rewrite_shard(root, 0, null_caption)
    assert problems(root)[0] == "data/train-00000.parquet row 0: caption is null"


def test_swapped_labels_contradict_the_prompts(tmp_path):
    root = write_mapo_dataset(tmp_path / "ds", 3, shard_size=3)

    def swap_row_1(table: pa.Table) -> pa.Table:
        flip = pa.array([False, True, False])
        l0, l1 = table.column("label_0"), table.column("label_1")
        table = table.set_column(table.schema.get_field_index("label_0"), "label_0", pc.if_else(flip, l1, l0))
        return table.set_column(table.schema.get_field_index("label_1"), "label_1", pc.if_else(flip, l0, l1))

    rewrite_shard(root, 0, swap_row_1)
    (found,) = problems(root)
    assert found.startswith("data/train-00000.parquet row 1: labels contradict the prompts")


def test_manifest_defects(tmp_path):
    root = write_mapo_dataset(tmp_path / "ds", 6, shard_size=2)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest["num_pairs"] = 7
    manifest["shards"][0]["rows"] = 3
    manifest["shards"][1]["sha256"] = "0" * 64
    manifest["shards"][2]["path"] = "data/train-00099.parquet"
    (root / "manifest.json").write_text(json.dumps(manifest))
    found = problems(root)
    assert "data/train-00000.parquet: 2 rows, manifest says 3" in found
    assert (
        "data/train-00001.parquet: sha256 differs from the manifest (the file changed or is damaged)" in found
    )
    assert "data/train-00099.parquet: listed in the manifest but missing" in found
    assert (
        "data/train-00002.parquet: parquet file not listed in the manifest (datasets would load it)" in found
    )
    assert "manifest.json: num_pairs is 7, the shards hold 4" in found
    assert len(found) == 5


def test_truncated_and_corrupt_shards(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "ds", 4, shard_size=2)
    shard = root / "data" / "train-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-40])
    found = problems(root)
    assert any(p.startswith("data/train-00001.parquet: size") for p in found)
    assert any(p.startswith("data/train-00001.parquet: not a readable parquet file") for p in found)
    code, out, _ = run_cli(capsys, "verify", str(root), "--no-progress")
    assert code == 1 and "Traceback" not in out


def test_missing_manifest_and_missing_columns(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "ds", 2)
    (root / "manifest.json").unlink()  # our state is there: a run that did not finish
    assert problems(root) == ["manifest.json: missing: an unfinished build/curate run (rerun it to complete)"]

    def drop_labels(table: pa.Table) -> pa.Table:
        return table.drop_columns(["label_1"])

    root2 = write_mapo_dataset(tmp_path / "ds2", 2)
    rewrite_shard(root2, 0, drop_labels)
    assert problems(root2) == [
        "data/train-00000.parquet: missing column(s) label_1 (expected caption, jpg_0, jpg_1, label_0, label_1)"
    ]

    (tmp_path / "empty").mkdir()
    assert_one_line_error(*run_cli(capsys, "verify", str(tmp_path / "empty")), "not a dataset folder")


def test_plain_pickapic_parquet_with_ties(tmp_path, capsys):
    pairs = good_pairs(3)
    pairs[1].tie = True
    pairs[2].chosen_pos = 1
    path = write_pickapic_parquet(tmp_path / "pap" / "train-0.parquet", pairs)
    for source in (path, path.parent):  # the file, or its folder (no manifest: nothing promised)
        report = verify_dataset(source)
        assert report.ok and report.pairs == 3 and report.images == 6 and not report.has_manifest
    code, out, _ = run_cli(capsys, "verify", str(path.parent), "--no-progress")
    assert code == 0 and out.startswith("ok: 3 pairs in 1 shard, 6 images decoded (no manifest")
