"""The one label rule (labels -> chosen / tie / invalid): the rule itself, scalar and vectorised
alike, and every mapo_data reader on one dataset that holds every label kind."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mapo_data.card import card_context, render_card_text
from mapo_data.reader import open_dataset, rows_of
from mapo_data.schema import (
    CHOSEN_0,
    CHOSEN_1,
    INVALID,
    TIE,
    classify_label_columns,
    classify_labels,
)
from mapo_data.stats import dataset_stats
from mapo_data.verify import verify_dataset
from tests.hostile.labels import (
    DATASET_GROUPS,
    GROUPS,
    all_cases,
    column_of,
    expected_counts,
    write_label_dataset,
)
from tests.mapo_data.pairs_factory import run_cli

NAMES = {CHOSEN_0: "jpg_0", CHOSEN_1: "jpg_1", TIE: "tie", INVALID: "invalid"}
DATASET_CASES = [case for group in DATASET_GROUPS for case in GROUPS[group][1]]


def test_every_case_by_the_scalar_rule():
    for case in all_cases():
        pref = classify_labels(case.label_0, case.label_1)
        assert NAMES[pref.outcome] == case.expected, case.name
        assert (pref.reason is not None) == (case.expected == "invalid"), case.name
        assert pref.tie == (case.expected == "tie")
        assert pref.chosen == {"jpg_0": 0, "jpg_1": 1}.get(case.expected)


def test_reasons_name_the_problem():
    assert classify_labels(None, 1).reason == "label is null"
    assert classify_labels(math.nan, 1.0).reason == "labels are not finite (nan, 1.0)"
    assert classify_labels(1, 1).reason == (
        "labels (1, 1) are not a preference (expected 1/0, 0/1 or a 0.5/0.5 tie)"
    )
    assert classify_labels(2, -1).reason == (
        "labels (2, -1) are not a preference (expected 1/0, 0/1 or a 0.5/0.5 tie)"
    )
    assert classify_labels("1", "0").reason == "labels are not numbers ('1', '0')"
    assert classify_labels(10**400, 0).outcome == INVALID  # too large for a float: not finite


@pytest.mark.parametrize("group", list(GROUPS))
def test_vectorised_rule_agrees_with_the_scalar_one_in_every_form(group):
    label_type, cases = GROUPS[group]
    expected = [case.expected for case in cases]
    scalar = [classify_labels(c.label_0, c.label_1).outcome for c in cases]
    assert [NAMES[o] for o in scalar] == expected
    arrays = [pa.array([getattr(c, f"label_{i}") for c in cases], label_type) for i in (0, 1)]
    frame = pa.table({"a": arrays[0], "b": arrays[1]}).to_pandas()
    forms = {
        "arrow": arrays,
        "chunked": [pa.chunked_array([a[:1], a[1:]]) for a in arrays],
        "pandas": [frame["a"], frame["b"]],
        "numpy": [frame["a"].to_numpy(), frame["b"].to_numpy()],
        "list": [[getattr(c, f"label_{i}") for c in cases] for i in (0, 1)],
        "object": [np.array([getattr(c, f"label_{i}") for c in cases], dtype=object) for i in (0, 1)],
    }
    for form, (a, b) in forms.items():
        outcome = classify_label_columns(a, b)
        assert outcome.dtype == np.int8
        assert outcome.tolist() == scalar, form


def test_vectorised_rule_agrees_on_random_and_borderline_labels():
    rng = np.random.default_rng(7)
    pool = [
        0,
        1,
        0.5,
        0.7,
        0.3,
        2,
        -1,
        1.5,
        -0.5,
        1e-7,
        math.nan,
        math.inf,
        -math.inf,
        None,
        True,
        False,
        "1",
    ]
    a = np.array([pool[i] for i in rng.integers(0, len(pool), 2000)], dtype=object)
    b = np.array([pool[i] for i in rng.integers(0, len(pool), 2000)], dtype=object)
    scalar = [classify_labels(x, y).outcome for x, y in zip(a, b, strict=True)]
    assert classify_label_columns(a, b).tolist() == scalar
    # Around the sum tolerance and the [0, 1] bounds, in float64 and float32.
    x = rng.random(2000)
    y = 1 - x + rng.choice([0.0, 5e-7, -5e-7, 2e-6, -2e-6, 1e-3], 2000)
    y[:20] = x[:20]  # equal: a tie only at 0.5
    x[20:40], y[20:40] = 0.5, 0.5
    for dtype in (np.float64, np.float32):
        xs, ys = x.astype(dtype), y.astype(dtype)
        scalar = [classify_labels(p, q).outcome for p, q in zip(xs, ys, strict=True)]
        assert classify_label_columns(xs, ys).tolist() == scalar
    counts = np.bincount(classify_label_columns(x, y), minlength=4)
    assert counts[TIE] == 20 and counts[CHOSEN_0] > 0 and counts[CHOSEN_1] > 0 and counts[INVALID] > 0


def test_the_label_dataset_holds_every_kind():
    assert expected_counts(DATASET_CASES) == {"jpg_0": 5, "jpg_1": 4, "tie": 3, "invalid": 18}


def test_rows_of_every_label_kind(tmp_path):
    write_label_dataset(tmp_path / "ds")
    rows = [row for batch in open_dataset(tmp_path / "ds").iter_all() for row in rows_of(batch)]
    assert [row.caption for row in rows] == [f"label case {c.name}" for c in DATASET_CASES]
    for row, case in zip(rows, DATASET_CASES, strict=True):
        assert (row.invalid is not None, row.tie) == (case.expected == "invalid", case.expected == "tie")
        chosen = np.asarray(Image.open(io.BytesIO(row.chosen)).convert("RGB"))
        # Ties and invalid pairs have no chosen image: they are shown in file order.
        assert column_of(chosen)[0] == (case.expected if case.trained else "jpg_0"), case.name
        assert row.chosen_pos == (1 if case.expected == "jpg_1" else 0)


def test_stats_count_ties_and_invalid_apart(tmp_path, capsys):
    root = tmp_path / "ds"
    write_label_dataset(root)
    assert dataset_stats(root)["labels"] == {
        "dtype": ["bool", "double", "float", "int64"],
        "chosen_in_jpg_0": 5,
        "chosen_in_jpg_1": 4,
        "ties": 3,
        "invalid": 18,
    }
    code, out, _ = run_cli(capsys, "stats", str(root))
    assert code == 0 and "chosen in jpg_0: 5, in jpg_1: 4, ties: 3, invalid: 18" in out


def test_verify_reports_each_invalid_row_and_nothing_else(tmp_path):
    files = write_label_dataset(tmp_path / "ds")
    report = verify_dataset(tmp_path / "ds")
    expected = [
        (f"data/{path.name}", row, classify_labels(case.label_0, case.label_1).reason)
        for path, cases in files
        for row, case in enumerate(cases)
        if case.expected == "invalid"
    ]
    assert len(expected) == 18
    assert [(p.file, p.row, p.what) for p in report.problems] == expected
    assert (
        "data/train-00000.parquet",
        2,
        "labels (1, 1) are not a preference (expected 1/0, 0/1 or a 0.5/0.5 tie)",
    ) in expected


# The factory's images are flat colours, repeated across files: the image filters are not under test.
NO_IMAGE_FILTERS = ("--min-std", "-1", "--max-phash-distance", "-1", "--dedup", "off", "--no-progress")


def test_curate_drops_invalid_and_ties_by_reason(tmp_path, capsys):
    root = tmp_path / "ds"
    write_label_dataset(root)
    out = tmp_path / "drop"
    code, stdout, err = run_cli(capsys, "curate", str(root), "--out", str(out), *NO_IMAGE_FILTERS)
    assert code == 0, err
    report = json.loads((out / "curation_report.json").read_text())
    assert report["kept"] == 9
    assert report["dropped"]["invalid_labels"] == 18 and report["dropped"]["tie"] == 3
    assert sum(report["dropped"].values()) == 21
    assert report["ties"] == {"seen": 3, "policy": "drop"}
    assert "kept 9 of 30" in stdout and "invalid_labels 18" in stdout and "ties seen: 3" in stdout
    kept = [
        c
        for p in sorted((out / "data").glob("*.parquet"))
        for c in pq.read_table(p).column("caption").to_pylist()
    ]
    assert kept == [f"label case {c.name}" for c in DATASET_CASES if c.trained]
    assert verify_dataset(out).ok

    # Under --ties keep the ties stay, the invalid rows still go; the card shows both counts.
    keep = tmp_path / "keep"
    code, stdout, err = run_cli(
        capsys, "curate", str(root), "--out", str(keep), "--ties", "keep", *NO_IMAGE_FILTERS
    )
    assert code == 0, err
    report = json.loads((keep / "curation_report.json").read_text())
    assert (
        report["kept"] == 12 and report["dropped"]["invalid_labels"] == 18 and report["dropped"]["tie"] == 0
    )
    assert dataset_stats(keep)["labels"]["ties"] == 3 and dataset_stats(keep)["labels"]["invalid"] == 0
    code, _, err = run_cli(capsys, "card", str(keep), "--no-preview")
    assert code == 0, err
    card = (keep / "README.md").read_text()
    assert "in `jpg_1`: 4, ties: 3, invalid labels: 0" in card
    assert "| invalid_labels | 18 |" in card and "| tie | 0 |" in card


def test_dataset_card_reports_ties_and_invalid_labels_apart(tmp_path):
    root = tmp_path / "ds"
    write_label_dataset(root)
    text = render_card_text(card_context({}, dataset_stats(root)))
    assert "- chosen image in `jpg_0`: 5, in `jpg_1`: 4, ties: 3, invalid labels: 18\n" in text


def test_float_tie_written_by_pandas_is_a_tie(tmp_path):
    # pandas writes 0.5/0.5 as float64, Pick-a-Pic's own way of marking a tie.
    path = tmp_path / "pap.parquet"
    pd.DataFrame({"label_0": [0.5, 1.0], "label_1": [0.5, 0.0]}).to_parquet(path)
    table = pq.read_table(path)
    assert classify_label_columns(table.column("label_0"), table.column("label_1")).tolist() == [
        TIE,
        CHOSEN_0,
    ]
