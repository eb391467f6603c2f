"""`mapo-data curate` end to end: counts per reason, IN untouched, OUT complete or not at all, resume."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mapo_data.curate import CurateConfig, curate
from mapo_data.verify import verify_dataset
from tests.mapo_data.pairs_factory import (
    Pair,
    assert_one_line_error,
    black,
    encode,
    good_pairs,
    noise,
    run_cli,
    write_labels_parquet,
    write_mapo_dataset,
    write_pickapic_parquet,
)

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "train" / "quickstart-tiny.yaml"


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def mixed_pairs() -> list[Pair]:
    """Four good pairs and one of each defect, spread over shards of 4."""
    pairs = good_pairs(4)
    pairs += [
        Pair("a black frame", encode(black()), encode(noise(500))),  # blank
        Pair("no change", encode(noise(501)), encode(noise(501))),  # near-identical
        Pair("broken", b"garbage bytes", encode(noise(502))),  # undecodable
        Pair("copy", pairs[0].chosen, encode(noise(503))),  # duplicate of pair 0's chosen image
        Pair(
            "A photo of thing number 1", encode(noise(504)), encode(noise(505)), chosen_pos=1
        ),  # 2nd of caption
    ]
    return pairs


def test_curate_counts_reasons_and_writes_a_complete_dataset(tmp_path, capsys):
    src = write_mapo_dataset(tmp_path / "in", mixed_pairs(), shard_size=4)
    before = tree_digest(src)
    out = tmp_path / "out"
    code, stdout, _ = run_cli(
        capsys, "curate", str(src), "--out", str(out), "--max-per-caption", "1", "--no-progress"
    )
    assert code == 0, stdout
    assert "kept 4 of 9 pairs" in stdout
    assert tree_digest(src) == before  # IN never edited

    report = json.loads((out / "curation_report.json").read_text())
    assert report["dropped"] == {
        "null_caption": 0,
        "undecodable": 1,
        "invalid_labels": 0,
        "labels_contradict_prompts": 0,
        "tie": 0,
        "blank": 1,
        "near_identical": 1,
        "duplicate_image": 1,
        "caption_cap": 1,
    }
    assert report["kept"] == 4 and report["filters"]["blank"] == {"min_std": 4.0}
    md = (out / "curation_report.md").read_text()
    assert "| near_identical | 1 | 11.1% |" in md and "min_std=4.0" in md

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_pairs"] == 4 and len(manifest["shards"]) == 3  # one output shard per input shard
    assert [p["step"] for p in manifest["provenance"]] == ["build", "curate"]
    assert manifest["provenance"][1]["settings"]["caption_cap"] == {"max_per_caption": 1}
    assert manifest["provenance"][1]["command"] == f"mapo-data curate {src} --out {out} --max-per-caption 1"
    assert manifest["preset"]["name"] == "pick-style" and manifest["config"]["steps"] == 4
    assert verify_dataset(out).ok
    captions = [
        c for s in manifest["shards"] for c in pq.read_table(out / s["path"]).column("caption").to_pylist()
    ]
    assert captions == [f"a photo of thing number {i}" for i in range(4)]


def test_pickapic_input_ties_and_float_labels(tmp_path, capsys):
    pairs = good_pairs(4)
    pairs[1].chosen_pos = 1
    pairs[2].tie = True
    src = write_pickapic_parquet(tmp_path / "pap.parquet", pairs)
    code, stdout, _ = run_cli(capsys, "curate", str(src), "--out", str(tmp_path / "drop"), "--no-progress")
    assert code == 0 and "kept 3 of 4" in stdout and "ties seen: 1" in stdout
    table = pq.read_table(tmp_path / "drop" / "data" / "train-00000.parquet")
    assert table.column("label_0").to_pylist() == [1.0, 0.0, 1.0]  # labels and positions as they were
    assert "ranking_id" in table.column_names  # extra source columns are carried
    manifest = json.loads((tmp_path / "drop" / "manifest.json").read_text())
    assert manifest["source"]["paths"] == [str(src)] and manifest["provenance"][0]["step"] == "curate"

    code, stdout, _ = run_cli(
        capsys, "curate", str(src), "--out", str(tmp_path / "keep"), "--ties", "keep", "--no-progress"
    )
    assert code == 0 and "kept 4 of 4" in stdout


def test_labels_that_are_not_a_preference_are_dropped_not_fatal(tmp_path, capsys):
    # Foreign files can hold nulls, NaN or 1/1: reported and dropped, never read as a tie or a crash.
    labels = [(1.0, 0.0), (None, 0.0), (float("nan"), 1.0), (1.0, 1.0), (0.5, 0.5), (0.0, 1.0)]
    src = write_labels_parquet(tmp_path / "odd.parquet", labels)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "curate", str(src), "--out", str(out), "--ties", "keep", "--no-progress"
    )
    assert code == 0, err
    assert "kept 3 of 6" in stdout and "invalid_labels 3" in stdout and "ties seen: 1" in stdout
    table = pq.read_table(out / "data" / "train-00000.parquet")
    labels = zip(table.column("label_0").to_pylist(), table.column("label_1").to_pylist(), strict=True)
    assert list(labels) == [
        (1.0, 0.0),
        (0.5, 0.5),
        (0.0, 1.0),
    ]
    assert verify_dataset(out).ok


def test_unwritable_out_is_a_one_line_error(tmp_path, capsys):
    src = write_mapo_dataset(tmp_path / "in", 2)
    (tmp_path / "a-file").write_text("x")
    assert_one_line_error(
        *run_cli(capsys, "curate", str(src), "--out", str(tmp_path / "a-file" / "out"), "--no-progress"),
        "Not a directory",
    )


def test_rerun_skips_completed_shards_and_remembers_state(tmp_path, capsys):
    src = write_mapo_dataset(tmp_path / "in", mixed_pairs(), shard_size=4)
    out = tmp_path / "out"
    args = ["curate", str(src), "--out", str(out), "--max-per-caption", "1", "--no-progress"]
    assert run_cli(capsys, *args)[0] == 0
    complete = tree_digest(out)

    # Same settings: nothing redone.
    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0 and "3 shards already done" in stdout

    # As after a crash in shard 1: its output and marker are gone, and so is the manifest. The rerun
    # must still drop pair 7 as a duplicate of an image kept in shard 0 (state restored from disk).
    (out / "data" / "train-00001.parquet").unlink()
    (out / ".mapo" / "completions" / "00001.json").unlink()
    (out / "manifest.json").unlink()
    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0 and "2 shards already done" in stdout and "duplicate_image 1" in stdout
    again = tree_digest(out)
    volatile = {"manifest.json", "curation_report.json", ".mapo/completions/00001.json"}  # timestamps
    assert {k: v for k, v in again.items() if k not in volatile} == {
        k: v for k, v in complete.items() if k not in volatile
    }


def test_rerun_with_other_settings_is_refused_unless_overwrite(tmp_path, capsys):
    src = write_mapo_dataset(tmp_path / "in", 4)
    out = tmp_path / "out"
    assert run_cli(capsys, "curate", str(src), "--out", str(out), "--no-progress")[0] == 0
    code, stdout, err = run_cli(
        capsys, "curate", str(src), "--out", str(out), "--min-std", "9", "--dedup", "phash"
    )
    differing = (
        "filters.blank.min_std, filters.duplicate_image.max_phash_distance, filters.duplicate_image.mode"
    )
    assert_one_line_error(code, stdout, err, differing)
    assert (out / "manifest.json").exists()  # a refused rerun leaves the finished output alone
    code, stdout, _ = run_cli(
        capsys, "curate", str(src), "--out", str(out), "--min-std", "9", "--overwrite", "--no-progress"
    )
    assert code == 0
    assert json.loads((out / "curation_report.json").read_text())["filters"]["blank"]["min_std"] == 9.0


def test_bad_inputs_are_one_line_errors_and_leave_no_complete_out(tmp_path, capsys):
    src = write_mapo_dataset(tmp_path / "in", 8, shard_size=4)
    assert_one_line_error(*run_cli(capsys, "curate", str(src), "--out", str(src)), "overwrite the input")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    assert_one_line_error(
        *run_cli(capsys, "curate", str(src), "--out", str(tmp_path / "junk")), "not a curate output"
    )
    assert (tmp_path / "junk" / "notes.txt").read_text() == "mine"
    assert_one_line_error(
        *run_cli(capsys, "curate", str(tmp_path / "junk"), "--out", str(tmp_path / "o")),
        "not a dataset folder",
    )
    assert_one_line_error(
        *run_cli(capsys, "curate", str(src), "--out", str(tmp_path / "o1"), "--judge", "clipp:tiny"),
        "unknown judge",
    )
    assert_one_line_error(
        *run_cli(capsys, "curate", str(src), "--out", str(tmp_path / "o2"), "--judge", "clip:/no/such/model"),
        "the clip judge's model /no/such/model: no such local file or folder",
    )
    assert_one_line_error(
        *run_cli(
            capsys,
            "curate",
            str(src),
            "--out",
            str(tmp_path / "o3"),
            "--judge",
            "clip:tiny",
            "--device",
            "gpu0",
        ),
        "not a torch device",
    )
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))

    # Shard 1's first page header is damaged (footer intact, so opening works): curate fails
    # mid-run and OUT has no manifest.
    shard = src / "data" / "train-00001.parquet"
    data = bytearray(shard.read_bytes())
    for i in range(4, 60):
        data[i] = 0x55
    shard.write_bytes(bytes(data))
    out = tmp_path / "half"
    code, stdout, err = run_cli(capsys, "curate", str(src), "--out", str(out), "--no-progress")
    assert_one_line_error(code, stdout, err, "train-00001.parquet")
    # Shard 0 is finished but waits in staging: nothing in data/ looks like a dataset yet.
    assert (out / ".mapo" / "staged" / "data" / "train-00000.parquet").exists()
    assert not (out / "manifest.json").exists() and not list(out.glob("data/*.parquet"))
    assert not list(out.rglob(".*.tmp"))


def test_clip_judge_scores_go_into_the_output(tmp_path, capsys):
    src = write_mapo_dataset(tmp_path / "in", 6, shard_size=3)
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys,
        "curate",
        str(src),
        "--out",
        str(out),
        "--judge",
        "clip:tiny",
        "--judge-margin",
        "1",
        "--no-progress",
    )
    assert code == 0, err
    assert "kept 6 of 6" in stdout  # margin 1: the judge may never drop
    table = pq.read_table(out / "data" / "train-00000.parquet")
    chosen = table.column("judge_chosen_pref_prob").to_pylist()
    rejected = table.column("judge_rejected_pref_prob").to_pylist()
    assert len(chosen) == 3 and all(0 <= p <= 1 for p in chosen + rejected)
    report = json.loads((out / "curation_report.json").read_text())
    # pick-style/pixel: the judge's side descriptions come from the preset.
    assert report["filters"]["judge"]["preferred"] == "pixel art style image"
    assert report["columns_added"] == ["judge_chosen_pref_prob", "judge_rejected_pref_prob"]
    assert verify_dataset(out).ok

    # Margin -1: every pair disagrees "by more than the margin"; re-thresholding is a choice of margin.
    code, stdout, _ = run_cli(
        capsys,
        "curate",
        str(src),
        "--out",
        str(tmp_path / "strict"),
        "--judge",
        "clip:tiny",
        "--judge-margin",
        "-1",
        "--no-progress",
    )
    # Nothing kept: the run says so and fails (an empty dataset would verify and load silently).
    assert code == 1 and "kept 0 of 6" in stdout and "judge_disagrees 6" in stdout


def test_judge_on_input_without_preset_needs_descriptions(tmp_path, capsys):
    src = write_pickapic_parquet(tmp_path / "pap.parquet", good_pairs(2))
    assert_one_line_error(
        *run_cli(capsys, "curate", str(src), "--out", str(tmp_path / "o"), "--judge", "clip:tiny"),
        "--judge-preferred",
    )


def _noise_png(seed: int, size: int) -> bytes:
    return encode(noise(seed, size), "PNG")


def test_row_groups_are_sized_by_the_bytes_written_not_the_first_row_group(tmp_path):
    """Scaled down from a real failure: 10 small pairs, then many pairs of large PNGs, came out as
    one row group of 305 MiB (the Hub viewer's limit is 286 MiB)."""
    small = [(_noise_png(2 * i, 8), _noise_png(2 * i + 1, 8)) for i in range(10)]
    large = [(_noise_png(100 + 2 * i, 64), _noise_png(101 + 2 * i, 64)) for i in range(40)]
    images = small + large
    table = pa.table(
        {
            "caption": [f"pair number {i}" for i in range(len(images))],
            "jpg_0": pa.array([a for a, _ in images], pa.binary()),
            "jpg_1": pa.array([b for _, b in images], pa.binary()),
            "label_0": pa.array([1.0] * len(images)),
            "label_1": pa.array([0.0] * len(images)),
        }
    )
    src = tmp_path / "hostile.parquet"
    pq.write_table(table, src, row_group_size=10)  # first row group: the 10 small pairs
    assert pq.ParquetFile(src).metadata.row_group(0).num_rows == 10

    target = 100_000
    one_row = max(len(a) + len(b) for a, b in images) + 200  # values plus offsets, caption, labels
    out = tmp_path / "out"
    result = curate(CurateConfig(inputs=[src], out=out, row_group_bytes=target, progress=False))
    assert result.report["kept"] == 50
    meta = pq.ParquetFile(out / "data" / "train-00000.parquet").metadata
    sizes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
    assert all(size <= target + one_row for size in sizes), sizes
    assert sum(meta.row_group(g).num_rows for g in range(meta.num_row_groups)) == 50
    assert verify_dataset(out).ok


PIXEL = ("Pixel art style image.", "Realistic 8k image.")


def _row(caption, jpg_0, jpg_1, label_0, label_1, prompts=None) -> dict:
    """One row as a build writes it, with the prompts following the labels unless given."""
    chosen, rejected = (f"{PIXEL[0]} {caption or ''}".strip(), f"{PIXEL[1]} {caption or ''}".strip())
    if prompts is None:
        prompts = (rejected, chosen) if label_1 == 1 else (chosen, rejected)
    return {
        "caption": caption,
        "jpg_0": jpg_0,
        "jpg_1": jpg_1,
        "label_0": label_0,
        "label_1": label_1,
        "prompt_0": prompts[0],
        "prompt_1": prompts[1],
    }


def test_whatever_verify_rejects_curate_drops_with_its_reason(tmp_path, capsys):
    """One pair of each kind verify rejects, in a mapo folder written with pyarrow and json alone:
    curate drops exactly those, each counted under its reason, and its output passes verify."""
    img = iter(encode(noise(700 + k)) for k in range(100))
    rows = [
        _row("good pair 0", next(img), next(img), 1.0, 0.0),
        _row("good pair 1", next(img), next(img), 0.0, 1.0),
        _row(None, next(img), next(img), 1.0, 0.0),  # null caption
        _row("garbage bytes", b"not an image", next(img), 1.0, 0.0),
        _row("empty bytes", next(img), b"", 0.0, 1.0),
        _row("no bytes", None, next(img), 1.0, 0.0),
        _row("truncated", encode(noise(1))[:300], next(img), 1.0, 0.0),
        _row("null label", next(img), next(img), None, 0.0),
        _row("nan label", next(img), next(img), float("nan"), 1.0),
        _row("both chosen", next(img), next(img), 1.0, 1.0),
        _row("out of range", next(img), next(img), 2.0, -1.0),
        _row(
            "swapped", next(img), next(img), 1.0, 0.0, prompts=(f"{PIXEL[1]} swapped", f"{PIXEL[0]} swapped")
        ),
        _row("a tie", next(img), next(img), 0.5, 0.5),
        _row("good pair 2", next(img), next(img), 1.0, 0.0),
    ]
    src = tmp_path / "in"
    (src / "data").mkdir(parents=True)
    shard = src / "data" / "train-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows), shard)
    manifest = {
        "format": "mapo-pairs",
        "format_version": 1,
        "num_pairs": len(rows),
        "shards": [
            {
                "path": "data/train-00000.parquet",
                "rows": len(rows),
                "bytes": shard.stat().st_size,
                "sha256": hashlib.sha256(shard.read_bytes()).hexdigest(),
            }
        ],
        "preset": {
            "name": "pick-style",
            "split": "pixel",
            "chosen_prefix": PIXEL[0],
            "rejected_prefix": PIXEL[1],
        },
    }
    (src / "manifest.json").write_text(json.dumps(manifest))
    # Verify on the input: exactly one problem for each planted row (rows 2 to 11).
    code, found, _ = run_cli(capsys, "verify", str(src), "--no-progress")
    assert code == 1 and [int(line.split(" row ")[1].split(":")[0]) for line in found.splitlines()] == list(
        range(2, 12)
    )

    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "curate", str(src), "--out", str(out), "--ties", "keep", "--no-progress"
    )
    assert code == 0, err
    assert "kept 4 of 14 pairs" in stdout
    report = json.loads((out / "curation_report.json").read_text())
    assert {k: v for k, v in report["dropped"].items() if v} == {
        "null_caption": 1,
        "undecodable": 4,
        "invalid_labels": 4,
        "labels_contradict_prompts": 1,
    }
    kept = pq.read_table(out / "data" / "train-00000.parquet").column("caption").to_pylist()
    assert kept == ["good pair 0", "good pair 1", "a tie", "good pair 2"]
    code, stdout, _ = run_cli(capsys, "verify", str(out), "--no-progress")
    assert code == 0 and stdout.strip() == "ok: 4 pairs in 1 shard, 8 images decoded"


def test_pairs_of_one_prompt_may_share_images_but_not_across_prompts(tmp_path, capsys):
    """A judged build's `all` pairing pairs candidates A, B, C of one prompt as (A,B), (A,C), (B,C):
    curate keeps all three (same prompt_id); an image of prompt 0 reused under prompt 1 is still a
    duplicate. Across shards too, from the state a rerun restores."""
    a, b, c, d, e, f = (encode(noise(900 + k)) for k in range(6))

    def row(caption, first, second, prompt_id):
        return {
            "caption": caption,
            "jpg_0": first,
            "jpg_1": second,
            "label_0": 1.0,
            "label_1": 0.0,
            "prompt_id": prompt_id,
        }

    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(
        pa.Table.from_pylist([row("p0", a, b, 0), row("p0", a, c, 0), row("p0", b, c, 0)]),
        src / "train-00000.parquet",
    )
    pq.write_table(
        pa.Table.from_pylist([row("p1", d, e, 1), row("p1", a, f, 1), row("p1", d, f, 1)]),
        src / "train-00001.parquet",
    )
    out = tmp_path / "out"
    args = ["curate", str(src), "--out", str(out), "--max-per-caption", "0", "--no-progress"]
    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0 and "duplicate_image 1" in stdout
    kept = pq.read_table(out / "data").to_pylist()
    assert [(r["caption"], r["prompt_id"]) for r in kept] == [("p0", 0)] * 3 + [("p1", 1)] * 2
    assert all(r["jpg_0"] != a for r in kept if r["prompt_id"] == 1)
    # Shard 1 redone after a crash: the images shard 0 kept come back with their prompt ids.
    (out / "data" / "train-00001.parquet").unlink()
    (out / ".mapo" / "completions" / "00001.json").unlink()
    (out / "manifest.json").unlink()
    code, stdout, _ = run_cli(capsys, *args)
    assert code == 0 and "duplicate_image 1" in stdout
    assert pq.read_table(out / "data").to_pylist() == kept


def test_curating_away_every_pair_fails_and_says_why(tmp_path, capsys):
    """Near-identical pairs (as a model that ignores its prefixes renders them) all dropped: the run still
    writes its report but exits 1 naming the reasons and the option that keeps them, and training
    on the empty result says it has no pairs (not datasets' 'corresponds to no data')."""
    from mapo_train import cli as train_cli

    rows = [
        {"caption": f"pair {k}", "jpg_0": encode(noise(950 + k)), "jpg_1": encode(noise(950 + k)),
         "label_0": 1.0, "label_1": 0.0}
        for k in range(3)
    ]  # fmt: skip
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(rows), src / "train-00000.parquet")
    out = tmp_path / "out"
    code, stdout, stderr = run_cli(capsys, "curate", str(src), "--out", str(out), "--no-progress")
    assert code == 1 and "kept 0 of 3 pairs" in stdout
    assert stderr.strip().splitlines() == [
        "error: no pair survived curation (dropped: near_identical 3); the pairs' two images are "
        "near-identical (the model barely reacts to the prefixes): --max-phash-distance -1 keeps them"
    ]
    assert (out / "curation_report.md").is_file()
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(
            ["--recipe", str(QUICKSTART), f"data.path={out}", f"train.output_dir={tmp_path / 'run'}"]
        )
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no pairs to train on: ") and err[-1].endswith(
        "hold 0 rows (a curate run that kept nothing?)"
    )
    assert not (tmp_path / "run").exists()
