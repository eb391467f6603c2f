"""`mapo-data import`: each layout on small inputs built here with PIL/pandas/pyarrow, the image
rules (kept bytes, PNG re-encoding, bad files skipped), bad input as one-line errors, resume, and
that every output verifies, loads with `datasets` and trains."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mapo_data.build import chosen_column
from mapo_data.images import UndecodableImage, decode_image
from mapo_data.importer import ImportConfig, prepare_image, run_import
from mapo_data.verify import verify_dataset
from tests.hostile.images import image_cases
from tests.mapo_data.test_build import run_cli

QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "train" / "quickstart-tiny.yaml"


def encoded(
    value: int, fmt: str = "PNG", size: tuple[int, int] = (64, 64), mode: str = "RGB", **save
) -> bytes:
    """A flat image whose first channel is ``value`` (so each image is recognisable by its pixels)."""
    colour = {"RGB": (value, 10, 20), "L": value, "CMYK": (value, 10, 20, 0), "RGBA": (value, 10, 20, 128)}[
        mode
    ]
    buffer = io.BytesIO()
    Image.new(mode, size, colour).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def read_rows(out: Path) -> list[dict]:
    files = sorted((out / "data").glob("*.parquet"))
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def shard_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((out / "data").glob("*.parquet"))}


def manifest_step(out: Path) -> dict:
    manifest = json.loads((out / "manifest.json").read_text())
    assert isinstance(manifest["provenance"], list) and len(manifest["provenance"]) == 1
    return manifest["provenance"][0]


def chosen_and_rejected(row: dict) -> tuple[bytes, bytes]:
    """The chosen and rejected bytes of an output row, by its labels (never by position)."""
    assert {row["label_0"], row["label_1"]} == {0, 1}
    return (row["jpg_0"], row["jpg_1"]) if row["label_0"] == 1 else (row["jpg_1"], row["jpg_0"])


def assert_position_coin(rows: list[dict], seed: int = 0) -> None:
    for row in rows:
        assert row["label_1"] == chosen_column(seed, row["pair_id"]), row["pair_id"]


# --- folder ---------------------------------------------------------------------------------------


@pytest.fixture
def wl_folder(tmp_path) -> Path:
    """w/ + l/ with .txt captions beside the chosen image: a JPEG, a PNG, a CMYK JPEG, a 16-bit PNG."""
    root = tmp_path / "handranked"
    (root / "w").mkdir(parents=True)
    (root / "l").mkdir()
    (root / "w" / "a.jpg").write_bytes(encoded(200, "JPEG", quality=90))
    (root / "l" / "a.png").write_bytes(encoded(50))
    (root / "w" / "a.txt").write_text("a red fox\n")
    (root / "w" / "b.png").write_bytes(encoded(180, "PNG", mode="L"))
    (root / "l" / "b.webp").write_bytes(encoded(60, "WEBP", lossless=True))
    (root / "w" / "b.txt").write_text("a blue whale")
    (root / "w" / "c.jpg").write_bytes(encoded(150, "JPEG", mode="CMYK"))
    grey16 = Image.fromarray(np.full((64, 64), 40000, np.uint16))  # I;16, decodes to 40000 >> 8 = 156
    buffer = io.BytesIO()
    grey16.save(buffer, format="PNG")
    (root / "l" / "c.png").write_bytes(buffer.getvalue())
    (root / "w" / "c.txt").write_text("a green frog")
    return root


def test_folder_keeps_clean_bytes_and_reencodes_the_rest_as_png(wl_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code, _, err = run_cli(["import", str(wl_folder), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    rows = sorted(read_rows(out), key=lambda r: r["pair_id"])
    assert [r["caption"] for r in rows] == ["a red fox", "a blue whale", "a green frog"]
    assert [r["pair_id"] for r in rows] == [0, 1, 2]
    assert_position_coin(rows)
    chosen, rejected = zip(*(chosen_and_rejected(r) for r in rows), strict=True)
    # JPEG, PNG (RGB and greyscale) and lossless WebP keep their bytes exactly.
    assert chosen[0] == (wl_folder / "w" / "a.jpg").read_bytes()
    assert rejected[0] == (wl_folder / "l" / "a.png").read_bytes()
    assert chosen[1] == (wl_folder / "w" / "b.png").read_bytes()
    assert rejected[1] == (wl_folder / "l" / "b.webp").read_bytes()
    # CMYK and 16-bit become PNGs holding exactly the shared decode's pixels.
    for stored, original in (
        (chosen[2], wl_folder / "w" / "c.jpg"),
        (rejected[2], wl_folder / "l" / "c.png"),
    ):
        assert Image.open(io.BytesIO(stored)).format == "PNG"
        assert np.array_equal(
            np.asarray(decode_image(stored)), np.asarray(decode_image(original.read_bytes()))
        )
    assert np.asarray(decode_image(rejected[2]))[0, 0].tolist() == [156, 156, 156]
    assert [(r["source_0"], r["source_1"])[r["label_0"] == 0] for r in rows] == [
        "w/a.jpg",
        "w/b.png",
        "w/c.jpg",
    ]
    step = manifest_step(out)
    assert step["method"] == "import" and step["layout"] == "folder" and step["source"] == str(wl_folder)
    assert step["counts"] == {"rows_read": 3, "pairs_written": 3, "dropped": {}, "reencoded_png": 2}
    assert step["pairing"] is None and step["min_margin"] is None and "score_gaps" not in step
    assert "done: 3 pairs in 1 shard " in err


def test_folder_captions_from_metadata_and_bad_images_skipped(tmp_path, capsys):
    root = tmp_path / "src"
    for side in ("chosen", "rejected"):
        (root / side).mkdir(parents=True)
        for k, stem in enumerate(("one", "two", "three")):
            (root / side / f"{stem}.png").write_bytes(encoded(10 * k + (side == "chosen")))
    (root / "rejected" / "two.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "chosen" / "three.caption").write_text("from the caption file")
    lines = [
        {"file_name": "chosen/one.png", "caption": "from metadata"},
        {"file_name": "two.png", "text": "t"},
    ]
    (root / "metadata.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    out = tmp_path / "out"
    code, _, err = run_cli(["import", str(root), "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    rows = sorted(read_rows(out), key=lambda r: r["pair_id"])
    # Pairs are planned in stem order (one, three, two); the bad one keeps its id, its row is dropped.
    assert [(r["pair_id"], r["caption"]) for r in rows] == [
        (0, "from metadata"),
        (1, "from the caption file"),
    ]
    assert f"{root / 'rejected' / 'two.png'}" in err and "skipped pair 2" in err
    step = manifest_step(out)
    assert step["counts"]["dropped"] == {"undecodable": 1} and step["counts"]["pairs_written"] == 2
    assert verify_dataset(out).ok


# --- tables ---------------------------------------------------------------------------------------


@pytest.fixture
def winner_jsonl(tmp_path) -> Path:
    """A labelling tool's export: prompt, image_a, image_b (paths relative to the file), winner."""
    root = tmp_path / "export"
    (root / "img").mkdir(parents=True)
    winners = ["a", "b", 0, 1, "B", None]
    rows = []
    for i, winner in enumerate(winners):
        (root / "img" / f"{i}a.png").write_bytes(encoded(2 * i))
        (root / "img" / f"{i}b.jpg").write_bytes(encoded(2 * i + 1, "JPEG"))
        rows.append(
            {
                "prompt": f"prompt {i}",
                "image_a": f"img/{i}a.png",
                "image_b": f"img/{i}b.jpg",
                "winner": winner,
            }
        )
    path = root / "labels.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_jsonl_with_a_winner_column(winner_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    mapping = "caption=prompt,jpg_0=image_a,jpg_1=image_b,winner=winner"
    code, _, err = run_cli(
        ["import", str(winner_jsonl), "--map", mapping, "--out", str(out), "--seed", "3"], capsys
    )
    assert code == 0, err
    rows = sorted(read_rows(out), key=lambda r: r["pair_id"])
    assert [r["caption"] for r in rows] == [f"prompt {i}" for i in range(5)]
    assert_position_coin(rows, seed=3)
    folder = winner_jsonl.parent / "img"
    expected_winner = ["a", "b", "a", "b", "b"]
    for i, row in enumerate(rows):
        chosen, rejected = chosen_and_rejected(row)
        win, lose = ("a", "b") if expected_winner[i] == "a" else ("b", "a")
        ext = {"a": "png", "b": "jpg"}
        assert chosen == (folder / f"{i}{win}.{ext[win]}").read_bytes(), i
        assert rejected == (folder / f"{i}{lose}.{ext[lose]}").read_bytes(), i
    step = manifest_step(out)
    assert step["layout"] == "table"
    assert step["column_map"] == {
        "caption": "prompt",
        "jpg_0": "image_a",
        "jpg_1": "image_b",
        "winner": "winner",
    }
    assert step["counts"] == {
        "rows_read": 6,
        "pairs_written": 5,
        "dropped": {"missing_preference": 1},
        "reencoded_png": 0,
    }
    assert set(pq.read_schema(next((out / "data").glob("*.parquet"))).names) == {
        "caption", "jpg_0", "jpg_1", "label_0", "label_1", "pair_id", "source_0", "source_1"
    }  # fmt: skip


def test_csv_with_two_scores_and_a_min_margin(tmp_path, capsys):
    root = tmp_path / "scored"
    root.mkdir()
    scores = [(0.9, 0.1), (0.5, 0.45), (0.2, 0.8), (0.3, 0.3), (1.0, 2.5)]
    for i in range(len(scores)):
        (root / f"{i}_0.png").write_bytes(encoded(3 * i))
        (root / f"{i}_1.png").write_bytes(encoded(3 * i + 1))
    frame = pd.DataFrame(
        {
            "caption": [f"c{i}" for i in range(len(scores))],
            "jpg_0": [f"{i}_0.png" for i in range(len(scores))],
            "jpg_1": [f"{i}_1.png" for i in range(len(scores))],
            "score_0": [s[0] for s in scores],
            "score_1": [s[1] for s in scores],
        }
    )
    frame.to_csv(root / "scores.csv", index=False)
    out = tmp_path / "out"
    code, _, err = run_cli(
        ["import", str(root / "scores.csv"), "--min-margin", "0.1", "--out", str(out)], capsys
    )
    assert code == 0, err
    rows = sorted(read_rows(out), key=lambda r: r["pair_id"])
    assert [r["caption"] for r in rows] == ["c0", "c2", "c4"]
    winners = {"c0": "0_0.png", "c2": "2_1.png", "c4": "4_1.png"}
    for row in rows:
        chosen, _ = chosen_and_rejected(row)
        assert chosen == (root / winners[row["caption"]]).read_bytes()
        # Scores follow their image: the chosen image's score is the higher one.
        chosen_score = row["score_0"] if row["label_0"] == 1 else row["score_1"]
        rejected_score = row["score_1"] if row["label_0"] == 1 else row["score_0"]
        assert chosen_score > rejected_score
    assert sorted((r["score_0"], r["score_1"]) for r in rows) == sorted(
        tuple(s if chosen_column(0, k) == 0 else s[::-1])
        for k, s in enumerate([(0.9, 0.1), (0.8, 0.2), (2.5, 1.0)])
    )
    step = manifest_step(out)
    assert step["min_margin"] == 0.1
    assert step["counts"]["dropped"] == {"below_margin": 1, "tie": 1}
    assert step["score_gaps"] == [0.9 - 0.1, 0.8 - 0.2, 2.5 - 1.0]


# --- ranked ---------------------------------------------------------------------------------------


def ranked_parquet(path: Path, with_scores: bool = False) -> Path:
    """Two captions, four images each, with ranks (1 = best) or scores; images as bytes in a list."""
    rows = [
        {"caption": "cap A", "images": [encoded(v) for v in (10, 11, 12, 13)], "ranks": [2, 1, 4, 3]},
        {"caption": "cap B", "images": [encoded(v) for v in (20, 21, 22, 23)], "ranks": [1, 2, 3, 4]},
    ]
    if with_scores:
        rows[0]["scores"], rows[1]["scores"] = [0.5, 0.9, 0.1, 0.3], [1.0, 1.0, 0.0, 0.0]
    for row in rows:
        if with_scores:
            del row["ranks"]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def first_channel(data: bytes) -> int:
    return int(np.asarray(decode_image(data))[0, 0, 0])


@pytest.mark.parametrize(
    ("pairing", "expected"),
    [
        ("best-worst", {"cap A": [(11, 12)], "cap B": [(20, 23)]}),
        ("adjacent", {"cap A": [(11, 10), (10, 13), (13, 12)], "cap B": [(20, 21), (21, 22), (22, 23)]}),
        (
            "all",
            {
                "cap A": [(11, 10), (11, 13), (11, 12), (10, 13), (10, 12), (13, 12)],
                "cap B": [(20, 21), (20, 22), (20, 23), (21, 22), (21, 23), (22, 23)],
            },
        ),
    ],
)
def test_ranked_list_of_four_makes_exact_pairs(tmp_path, capsys, pairing, expected):
    source = ranked_parquet(tmp_path / "ranked.parquet")
    out = tmp_path / "out"
    code, _, err = run_cli(["import", str(source), "--pairs", pairing, "--out", str(out)], capsys)
    assert code == 0, err
    rows = sorted(read_rows(out), key=lambda r: r["pair_id"])
    got: dict[str, list] = {}
    for row in rows:
        chosen, rejected = chosen_and_rejected(row)
        got.setdefault(row["caption"], []).append((first_channel(chosen), first_channel(rejected)))
    assert got == expected
    step = manifest_step(out)
    assert step["layout"] == "ranked" and step["pairing"] == pairing
    assert step["counts"]["rows_read"] == 2 and step["counts"]["pairs_written"] == len(rows)
    assert len(rows) == {"best-worst": 2, "adjacent": 6, "all": 12}[pairing]
    assert verify_dataset(out).ok


def test_ranked_scores_ties_and_cap_per_caption(tmp_path):
    source = ranked_parquet(tmp_path / "scored.parquet", with_scores=True)
    out = tmp_path / "out"
    config = ImportConfig(source=str(source), out=str(out), pairs="all", max_pairs_per_caption=2)
    result = run_import(config, progress=False)
    rows = sorted(read_rows(out), key=lambda r: r["pair_id"])
    got = [(r["caption"], *map(first_channel, chosen_and_rejected(r))) for r in rows]
    # cap A: six strict pairs, the two largest gaps kept (0.9-0.1, 0.9-0.3); cap B: 1,1,0,0 gives
    # four strict pairs (gap 1 each, kept in rank order) and two ties.
    assert got == [("cap A", 11, 12), ("cap A", 11, 13), ("cap B", 20, 22), ("cap B", 20, 23)]
    assert result.dropped == {"over_cap": 6, "tie": 2}
    step = manifest_step(out)
    assert step["score_gaps"] == [0.9 - 0.1, 0.9 - 0.3, 1.0, 1.0]
    assert [sorted((r["score_0"], r["score_1"])) for r in rows] == [
        [0.1, 0.9],
        [0.3, 0.9],
        [0.0, 1.0],
        [0.0, 1.0],
    ]


def test_parquet_table_with_image_bytes_and_a_preference_column(tmp_path):
    table = pa.table(
        {
            "text": ["p0", "p1", "p2"],
            "image_a": [{"bytes": encoded(1), "path": None}, {"bytes": encoded(3), "path": None}, None],
            "image_b": [encoded(2), encoded(4), encoded(6)],
            "preference": ["+", "\u2212", "+"],
        }
    )
    path = tmp_path / "prefs.parquet"
    pq.write_table(table, path)
    out = tmp_path / "out"
    config = ImportConfig(source=str(path), out=str(out), column_map={"jpg_0": "image_a", "jpg_1": "image_b"})
    result = run_import(config, progress=False)
    rows = sorted(read_rows(out), key=lambda r: r["pair_id"])
    assert [(r["caption"], *map(first_channel, chosen_and_rejected(r))) for r in rows] == [
        ("p0", 1, 2),
        ("p1", 4, 3),
    ]
    assert result.dropped == {"missing_image": 1}
    assert manifest_step(out)["column_map"] == {
        "caption": "text",
        "jpg_0": "image_a",
        "jpg_1": "image_b",
        "preference": "preference",
    }


def test_ranked_datasets_folders(tmp_path):
    """A `save_to_disk` folder with a list of `datasets` Images, and a folder of parquet shards in
    the layout `build judged --keep-candidates` writes (caption, images, scores, seeds)."""
    import datasets

    features = datasets.Features(
        {
            "prompt": datasets.Value("string"),
            "images": datasets.List(datasets.Image()),
            "ranking": datasets.List(datasets.Value("int64")),
        }
    )
    rows = {
        "prompt": ["saved"],
        "images": [[Image.open(io.BytesIO(encoded(v))) for v in (30, 31, 32)]],
        "ranking": [[3, 1, 2]],
    }
    saved = tmp_path / "saved"
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(saved))
    out = tmp_path / "out1"
    mapping = {"caption": "prompt", "ranks": "ranking"}
    run_import(
        ImportConfig(source=str(saved), out=str(out), column_map=mapping, pairs="adjacent"), progress=False
    )
    got = [tuple(map(first_channel, chosen_and_rejected(r))) for r in read_rows(out)]
    assert got == [(31, 32), (32, 30)]
    assert manifest_step(out)["layout"] == "ranked"

    kept = tmp_path / "candidates"
    (kept / "data").mkdir(parents=True)
    ranked = [
        {
            "caption": "kept",
            "images": [encoded(v) for v in (40, 41, 42, 43)],
            "scores": [0.1, 0.7, 0.3, 0.7],
            "seeds": [1, 2, 3, 4],
        }
    ]
    pq.write_table(pa.Table.from_pylist(ranked), kept / "data" / "train-00000.parquet")
    (kept / "manifest.json").write_text(json.dumps({"format": "mapo-ranked", "layout": "ranked"}))
    out = tmp_path / "out2"
    run_import(ImportConfig(source=str(kept), out=str(out), pairs="best-worst"), progress=False)
    rows = read_rows(out)
    # Equal best scores keep candidate order: image 41 beats 43 to the top.
    assert [tuple(map(first_channel, chosen_and_rejected(r))) for r in rows] == [(41, 40)]
    assert manifest_step(out)["score_gaps"] == [0.7 - 0.1]
    assert verify_dataset(out).ok


# --- bad input ------------------------------------------------------------------------------------


def one_error_line(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_mismatched_stems_name_the_files(tmp_path, capsys):
    root = tmp_path / "src"
    for side, stems in (("chosen", ("a", "b")), ("rejected", ("a", "c"))):
        (root / side).mkdir(parents=True)
        for stem in stems:
            (root / side / f"{stem}.png").write_bytes(encoded(1))
    code, _, err = run_cli(["import", str(root), "--out", str(tmp_path / "out")], capsys)
    line = one_error_line(code, err)
    assert line == f"error: mismatched stems in {root}: no partner for chosen/b.png, rejected/c.png"
    assert not (tmp_path / "out").exists()


def test_missing_columns_name_the_file(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"prompt": "x", "image_a": "a.png", "winner": "a"}) + "\n")
    code, _, err = run_cli(["import", str(path), "--out", str(tmp_path / "out")], capsys)
    line = one_error_line(code, err)
    assert line.startswith(f"error: {path} has no column for jpg_1;") and "prompt, image_a, winner" in line
    code, _, err = run_cli(
        ["import", str(path), "--map", "caption=title", "--out", str(tmp_path / "o")], capsys
    )
    assert one_error_line(code, err).startswith(f"error: {path} has no column 'title' (--map caption=title)")


def test_unknown_layout_and_url_are_refused(tmp_path, capsys):
    path = tmp_path / "t.csv"
    pd.DataFrame(
        {"caption": ["x"], "jpg_0": ["https://example.com/a.png"], "jpg_1": ["b.png"], "chosen": [0]}
    ).to_csv(path, index=False)
    code, _, err = run_cli(["import", str(path), "--layout", "pile", "--out", str(tmp_path / "out")], capsys)
    assert one_error_line(code, err) == "error: unknown --layout 'pile'; choose folder, table or ranked"
    code, _, err = run_cli(["import", str(path), "--out", str(tmp_path / "out")], capsys)
    line = one_error_line(code, err)
    assert line.startswith(f"error: {path} row 0: https://example.com/a.png is a URL;")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_folder_layout_asked_of_a_file(tmp_path, capsys):
    path = ranked_parquet(tmp_path / "r.parquet")
    code, _, err = run_cli(["import", str(path), "--layout", "folder", "--out", str(tmp_path / "o")], capsys)
    assert one_error_line(code, err) == f"error: {path} has no chosen/ and rejected/ (or w/ and l/) folders"


# --- resume, dry run ------------------------------------------------------------------------------


def test_interrupted_import_resumes_to_identical_bytes(winner_jsonl, tmp_path):
    def config(out: Path) -> ImportConfig:
        return ImportConfig(source=str(winner_jsonl), out=str(out), shard_size=2)

    whole = tmp_path / "whole"
    run_import(config(whole), progress=False)
    assert sorted(shard_bytes(whole)) == ["train-00000.parquet", "train-00001.parquet", "train-00002.parquet"]

    # What a kill leaves: shard 0 complete and staged, shard 1 half-written (a temporary file), no
    # manifest. Built from a full run by taking its later pieces away.
    killed = tmp_path / "killed"
    run_import(config(killed), progress=False)
    (killed / "manifest.json").unlink()
    staged = killed / ".mapo" / "staged" / "data"
    staged.mkdir(parents=True, exist_ok=True)
    shutil.move(killed / "data" / "train-00000.parquet", staged / "train-00000.parquet")
    for index in (1, 2):
        (killed / "data" / f"train-0000{index}.parquet").unlink()
        (killed / ".mapo" / "completions" / f"0000{index}.json").unlink()
    (staged / ".train-00001.parquet.abc.tmp").write_bytes(b"partial")
    before = (staged / "train-00000.parquet").stat().st_mtime_ns
    result = run_import(config(killed), progress=False)
    assert result.skipped_shards == 1 and result.num_pairs == 5
    assert shard_bytes(killed) == shard_bytes(whole)
    assert (killed / "data" / "train-00000.parquet").stat().st_mtime_ns == before  # not rewritten
    assert not list(staged.glob(".*.tmp"))
    assert manifest_step(killed)["counts"] == manifest_step(whole)["counts"]


def test_rerun_with_other_settings_is_refused(winner_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    run_import(ImportConfig(source=str(winner_jsonl), out=str(out)), progress=False)
    code, _, err = run_cli(["import", str(winner_jsonl), "--out", str(out), "--seed", "1"], capsys)
    assert "differs in: seed" in one_error_line(code, err)
    # An image the table points to, changed in place: its content is part of the identity.
    (winner_jsonl.parent / "img" / "2a.png").write_bytes(encoded(99))
    code, _, err = run_cli(["import", str(winner_jsonl), "--out", str(out)], capsys)
    assert "differs in: referenced_images" in one_error_line(code, err)


def test_unknown_hub_dataset_offline_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(["import", "nobody/no-such-ranked-set", "--out", str(tmp_path / "o")], capsys)
    line = one_error_line(code, err)
    assert line.startswith("error: SOURCE nobody/no-such-ranked-set: no local file or folder of that name")


def test_dry_run_prints_rows_and_writes_nothing(winner_jsonl, tmp_path, capsys):
    out = tmp_path / "out"
    code, text, err = run_cli(
        ["import", str(winner_jsonl), "--dry-run", "--limit", "2", "--out", str(out)], capsys
    )
    assert code == 0, err
    first = "jpg_1" if chosen_column(0, 0) else "jpg_0"
    lines = text.splitlines()
    assert lines[0] == f"[0] 'prompt 0': chosen {first}"
    assert len(lines) == 6 and "PNG 64x64 from img/0a.png" in text and "JPEG 64x64 from img/0b.jpg" in text
    assert not out.exists()


# --- the output works everywhere ------------------------------------------------------------------


def test_imported_pairs_verify_load_and_train_with_the_quickstart_recipe(wl_folder, tmp_path, capsys):
    import datasets

    from mapo_train import cli as train_cli

    out = tmp_path / "pairs"
    run_import(ImportConfig(source=str(wl_folder), out=str(out)), progress=False)
    report = verify_dataset(out)
    assert report.ok and report.pairs == 3 and report.has_manifest
    by_dir = datasets.load_dataset("parquet", data_dir=str(out), split="train")
    as_hub = datasets.load_dataset(str(out), split="train")
    assert by_dir.num_rows == as_hub.num_rows == 3
    assert sorted(as_hub["caption"]) == ["a blue whale", "a green frog", "a red fox"]
    run = tmp_path / "run"
    argv = [
        "--recipe",
        str(QUICKSTART),
        f"data.path={out}",
        f"train.output_dir={run}",
        "train.max_steps=2",
        "train.batch_size=2",  # the folder holds 3 pairs; the recipe batches 4
        "train.report_to=none",
        "validation.enabled=false",
    ]
    try:
        train_cli.main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    _, err = capsys.readouterr()
    assert code in (0, None), err
    assert (run / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize("case", image_cases(), ids=lambda c: c.name)
def test_every_hostile_image_is_stored_as_the_shared_decode_sees_it(case):
    """Kept bytes or a PNG: either way the stored image decodes to the expected displayed picture;
    an undecodable one raises with its reason (the importer then skips and counts it)."""
    if case.expected is None:
        with pytest.raises(UndecodableImage):
            prepare_image(case.data)
        return
    stored, why = prepare_image(case.data)
    if why is None:
        assert stored == case.data
    else:
        assert Image.open(io.BytesIO(stored)).format == "PNG"
        # The PNG holds exactly the shared decode of the original (lossy cases included).
        assert np.array_equal(np.asarray(decode_image(stored)), np.asarray(decode_image(case.data)))
    diff = np.abs(np.asarray(decode_image(stored)).astype(int) - case.expected.astype(int))
    assert diff.max() <= case.atol, case.name
    # What a reader without mapo's decode sees (Pillow's plain RGB conversion) is the same picture.
    plain = np.asarray(Image.open(io.BytesIO(stored)).convert("RGB"))
    assert np.array_equal(plain, np.asarray(decode_image(stored))), case.name


def test_candidates_kept_by_build_judged_repair_to_the_same_pairs(tmp_path, capsys):
    """`build judged --keep-candidates DIR` then `import DIR` with the same pairing: the same
    (caption, chosen image, rejected image) pairs, without rendering again."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red house\na small boat\n")
    built, kept, imported = tmp_path / "judged", tmp_path / "candidates", tmp_path / "imported"
    judged = [
        "build",
        "judged",
        "--prompts",
        str(prompts),
        "--model",
        "tiny",
        "--dtype",
        "fp32",
        "--steps",
        "2",
    ]
    judged += ["--candidates", "3", "--judge", "clip:tiny", "--preferred-text", "a photo"]
    judged += ["--dispreferred-text", "a drawing", "--pairs", "all", "--no-progress"]
    code, _, err = run_cli([*judged, "--keep-candidates", str(kept), "--out", str(built)], capsys)
    assert code == 0, err
    code, _, err = run_cli(
        ["import", str(kept), "--pairs", "all", "--out", str(imported), "--no-progress"], capsys
    )
    assert code == 0, err

    def pairs(out: Path) -> list[tuple[str, bytes, bytes]]:
        return sorted((r["caption"], *chosen_and_rejected(r)) for r in read_rows(out))

    assert len(pairs(built)) == 6 and pairs(imported) == pairs(built)
    assert manifest_step(imported)["layout"] == "ranked"


def test_a_shard_bigger_than_one_write_batch(tmp_path):
    """70 pairs in one shard go to the file in batches (importer.WRITE_BATCH = 64): every row is
    there once, in pair order, and a second import gives the same bytes."""
    root = tmp_path / "many"
    for side, value in (("chosen", 200), ("rejected", 20)):
        (root / side).mkdir(parents=True)
        for k in range(70):
            (root / side / f"{k:03d}.png").write_bytes(encoded(value, size=(8, 8)))
            if side == "chosen":
                (root / side / f"{k:03d}.txt").write_text(f"caption {k}")
    first, second = tmp_path / "a", tmp_path / "b"
    for out in (first, second):
        run_import(ImportConfig(source=str(root), out=str(out), shard_size=100), progress=False)
    rows = read_rows(first)
    assert [r["pair_id"] for r in rows] == list(range(70))
    assert [r["caption"] for r in rows] == [f"caption {k}" for k in range(70)]
    assert all(first_channel(chosen_and_rejected(r)[0]) == 200 for r in rows)
    assert shard_bytes(first) == shard_bytes(second) and verify_dataset(first).ok
