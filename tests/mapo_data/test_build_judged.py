"""`mapo-data build judged` on the tiny model with the offline tiny CLIP judge: pairing rules, the
margin, scores and seeds in columns and provenance, resume, verify/datasets, the ranked layout, and
the dataset card for judged and (hand-made) imported data."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard

from mapo_data.build import BuildConfig, chosen_column, pair_seed, run_build
from mapo_data.judged import JudgedConfig
from mapo_data.render import RenderConfig
from tests.mapo_data.pairs_factory import write_mapo_dataset
from tests.mapo_data.test_build import run_cli
from tests.tolerances import REPLAY

PROMPTS = ["a red apple on a table", "a small boat at sea", "a cat asleep on a sofa", "a lighthouse at dusk"]
CANDIDATES = 4
FAST = [
    "--model",
    "tiny",
    "--dtype",
    "fp32",
    "--steps",
    "2",
    "--height",
    "64",
    "--width",
    "64",
    "--no-progress",
]


def judged_config(out: Path, prompts: Path, **judged) -> BuildConfig:
    options = {"judges": ("clipscore:tiny",), "candidates": CANDIDATES, "pairs": "all", **judged}
    return BuildConfig(
        preset="judged",
        out=str(out),
        prompts=str(prompts),
        shard_size=2,
        batch_size=3,  # images per call: calls straddle prompts
        render=RenderConfig(model="tiny", dtype="fp32", steps=2, height=64, width=64),
        judged=JudgedConfig(**options),
    )


def rows(folder: Path) -> list[dict]:
    return [r for p in sorted((folder / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "data").glob("*.parquet"))}


def candidates(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "candidates.jsonl").read_text().splitlines()]


def proposed(scores: list[float], rule: str) -> list[tuple[int, int]]:
    """The pairs a rule proposes, from the scores alone (ranked highest first, ties by index)."""
    order = sorted(range(len(scores)), key=lambda k: (-scores[k], k))
    if rule == "best-worst":
        return [(order[0], order[-1])]
    if rule == "adjacent":
        return list(zip(order, order[1:], strict=False))
    return [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="module")
def judged_all(tmp_path_factory, prompt_file) -> Path:
    root = tmp_path_factory.mktemp("judged")
    config = judged_config(root / "all", prompt_file, keep_candidates=str(root / "ranked"))
    result = run_build(config, progress=False)
    assert result.manifest is not None and result.num_shards == 2
    return root / "all"


def test_all_pairs_carry_scores_seeds_and_labels(judged_all, prompt_file):
    detail = {rec["prompt_id"]: rec for rec in candidates(judged_all)}
    assert sorted(detail) == [0, 1, 2, 3]
    written = rows(judged_all)
    assert len(written) == 4 * 6  # N(N-1)/2 pairs per prompt, none dropped with margin 0
    for row in written:
        rec = detail[row["prompt_id"]]
        assert row["caption"] == rec["caption"] and row["caption"] in PROMPTS
        chosen = chosen_column(0, row["pair_id"])
        assert (row[f"label_{chosen}"], row[f"label_{1 - chosen}"]) == (1, 0)
        hi, lo = row[f"score_{chosen}"], row[f"score_{1 - chosen}"]
        assert hi > lo and hi >= lo + 0.0
        for side in (0, 1):
            k = row[f"candidate_{side}"]
            assert row[f"score_{side}"] == rec["scores"][k]
            assert row[f"seed_{side}"] == pair_seed(0, row["prompt_id"], f"candidate-{k}") == rec["seeds"][k]
            assert row[f"prompt_{side}"] == row["caption"]
    # Every proposed pair of every prompt is there exactly once.
    for pid, rec in detail.items():
        got = sorted(
            (
                r[f"candidate_{chosen_column(0, r['pair_id'])}"],
                r[f"candidate_{1 - chosen_column(0, r['pair_id'])}"],
            )
            for r in written
            if r["prompt_id"] == pid
        )
        assert got == sorted(proposed(rec["scores"], "all"))
    step = json.loads((judged_all / "manifest.json").read_text())["provenance"][0]
    assert step["method"] == "judged" and step["pairing"] == "all" and step["candidates"] == CANDIDATES
    assert step["judge"]["spec"] == "clipscore:tiny" and step["judge"]["version"][0]["content"]
    assert step["counts"] == {"prompts": 4, "pairs_written": 24, "dropped": {"below_margin": 0}}
    assert len(step["score_gaps"]) == 24 and step["candidates_detail"] == "candidates.jsonl"
    assert step["source"] == str(prompt_file)


def test_output_verifies_and_loads_with_datasets(judged_all, capsys):
    code, out, _ = run_cli(["verify", str(judged_all)], capsys)
    assert code == 0 and out.startswith("ok: 24 pairs in 2 shards")
    from datasets import load_dataset

    ds = load_dataset(str(judged_all), split="train")
    assert ds.num_rows == 24 and {"score_0", "score_1", "jpg_0", "label_1"} <= set(ds.column_names)


def test_keep_candidates_writes_the_ranked_layout(judged_all):
    ranked = judged_all.parent / "ranked"
    table = pa.concat_tables([pq.read_table(p) for p in sorted((ranked / "data").glob("*.parquet"))])
    assert table.schema == pa.schema(
        [
            ("caption", pa.string()),
            ("images", pa.list_(pa.binary())),
            ("scores", pa.list_(pa.float64())),
            ("seeds", pa.list_(pa.int64())),
        ]
    )
    detail = candidates(judged_all)
    assert table.column("caption").to_pylist() == [rec["caption"] for rec in detail]
    assert table.column("scores").to_pylist() == [rec["scores"] for rec in detail]
    assert table.column("seeds").to_pylist() == [rec["seeds"] for rec in detail]
    # The candidates' bytes are those in the pairs.
    images = table.column("images").to_pylist()
    for row in rows(judged_all):
        for side in (0, 1):
            assert row[f"jpg_{side}"] == images[row["prompt_id"]][row[f"candidate_{side}"]]
    assert json.loads((ranked / "manifest.json").read_text())["num_rows"] == 4
    from datasets import load_dataset

    assert load_dataset(str(ranked), split="train").num_rows == 4


@pytest.mark.parametrize("rule, per_prompt", [("best-worst", 1), ("adjacent", CANDIDATES - 1)])
def test_pairing_rules_give_exact_pairs(rule, per_prompt, judged_all, prompt_file, tmp_path):
    out = tmp_path / rule
    run_build(judged_config(out, prompt_file, pairs=rule), progress=False)
    detail = {rec["prompt_id"]: rec for rec in candidates(judged_all)}
    written = rows(out)
    assert len(written) == 4 * per_prompt
    for pid, rec in detail.items():
        mine = [r for r in written if r["prompt_id"] == pid]
        got = [
            (
                r[f"candidate_{chosen_column(0, r['pair_id'])}"],
                r[f"candidate_{1 - chosen_column(0, r['pair_id'])}"],
            )
            for r in sorted(mine, key=lambda r: r["pair_id"])
        ]
        # Rendering and judging replay on the same machine: the same ranking as the `all` build.
        assert got == proposed(rec["scores"], rule)
        assert [r["pair_id"] for r in sorted(mine, key=lambda r: r["pair_id"])] == [
            pid * per_prompt + j for j in range(per_prompt)
        ]


def test_min_margin_drops_are_counted_and_summarised(judged_all, prompt_file, tmp_path, capsys):
    gaps = sorted(json.loads((judged_all / "manifest.json").read_text())["provenance"][0]["score_gaps"])
    margin = round(gaps[len(gaps) // 2], 6)
    detail = candidates(judged_all)
    expected = [
        (rec["scores"][hi], rec["scores"][lo])
        for rec in detail
        for hi, lo in proposed(rec["scores"], "all")
        if rec["scores"][hi] >= rec["scores"][lo] + margin
    ]
    assert 0 < len(expected) < 24
    out = tmp_path / "margin"
    args = [
        "build",
        "judged",
        "--prompts",
        str(prompt_file),
        "--candidates",
        "4",
        "--judge",
        "clipscore:tiny",
    ]
    args += ["--pairs", "all", "--min-margin", str(margin), "--shard-size", "2", "--batch-size", "3"]
    code, _, err = run_cli([*args, *FAST, "--out", str(out)], capsys)
    assert code == 0, err
    written = rows(out)
    assert len(written) == len(expected)
    for row in written:
        chosen = chosen_column(0, row["pair_id"])
        assert row[f"score_{chosen}"] >= row[f"score_{1 - chosen}"] + margin
    step = json.loads((out / "manifest.json").read_text())["provenance"][0]
    assert step["min_margin"] == margin
    assert step["counts"] == {
        "prompts": 4,
        "pairs_written": len(expected),
        "dropped": {"below_margin": 24 - len(expected)},
    }
    kept = [hi - lo for hi, lo in expected]
    assert f"judged 4 prompts: {len(expected)} pairs written, {24 - len(expected)} below the margin" in err
    assert f"score gap min {min(kept):.4g}," in err and f"max {max(kept):.4g}" in err
    # A rerun with another margin into the same folder is refused by name.
    code, _, err = run_cli([*args[:-6], "--min-margin", "0", "--shard-size", "2", "--batch-size", "3", *FAST,
                            "--out", str(out)], capsys)  # fmt: skip
    assert code != 0 and "judged.min_margin" in err and "Traceback" not in err


def test_weighted_sum_of_two_judges(prompt_file, tmp_path):
    out = tmp_path / "weighted"
    config = judged_config(
        out,
        prompt_file,
        judges=("clipscore:tiny", "clip:tiny"),
        weights=(1.0, 0.5),
        preferred="pixel art",
        dispreferred="a photograph",
        candidates=2,
        pairs="best-worst",
    )
    run_build(config, progress=False)
    step = json.loads((out / "manifest.json").read_text())["provenance"][0]
    assert step["judge"]["spec"] == "clipscore:tiny + 0.5*clip:tiny"
    for rec in candidates(out):
        a, b = rec["judge_scores"]["clipscore:tiny"], rec["judge_scores"]["clip:tiny"]
        assert rec["scores"] == pytest.approx([x + 0.5 * y for x, y in zip(a, b, strict=True)], **REPLAY)


def _judged_cmd(out: Path, prompts: Path) -> list[str]:
    return [
        sys.executable, "-m", "mapo_data", "build", "judged", "--prompts", str(prompts), "--candidates", "4",
        "--judge", "clipscore:tiny", "--pairs", "adjacent", "--shard-size", "1", "--batch-size", "2",
        "--keep-candidates", str(out) + "-ranked", *FAST[:-1], "--steps", "4", "--no-progress", "--out", str(out),
    ]  # fmt: skip


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_output(prompt_file, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    ran = subprocess.run(_judged_cmd(reference, prompt_file), env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _judged_cmd(out, prompt_file), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    markers = out / ".mapo" / "completions"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (markers.is_dir() and any(markers.glob("[0-9]*.json"))):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    done_before = len(list(markers.glob("[0-9]*.json")))
    assert 1 <= done_before < 4

    rerun = subprocess.run(_judged_cmd(out, prompt_file), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before} of 4 shards already complete" in rerun.stderr
    assert shard_bytes(out) == shard_bytes(reference) and shard_bytes(out)
    ranked = Path(str(out) + "-ranked")
    assert shard_bytes(ranked) == shard_bytes(Path(str(reference) + "-ranked"))
    assert (out / "candidates.jsonl").read_bytes() == (reference / "candidates.jsonl").read_bytes()
    ref_step = json.loads((reference / "manifest.json").read_text())["provenance"][0]
    step = json.loads((out / "manifest.json").read_text())["provenance"][0]
    assert step["counts"] == ref_step["counts"] and step["score_gaps"] == ref_step["score_gaps"]


def test_an_interrupted_shard_is_redone_to_the_same_bytes(judged_all, prompt_file, tmp_path):
    """Simulated interruption: shard 1 (pairs, ranked shard, side record) lost before the manifest."""
    out = tmp_path / "all"
    shutil.copytree(judged_all, out)
    ranked = tmp_path / "ranked"
    shutil.copytree(judged_all.parent / "ranked", ranked)
    for folder in (out, ranked):
        (folder / "manifest.json").unlink()
        (folder / ".mapo" / "completions" / "00001.json").unlink()
        (folder / "data" / "train-00001.parquet").unlink()
    (out / "candidates.jsonl").unlink()
    logs: list[str] = []
    result = run_build(
        judged_config(out, prompt_file, keep_candidates=str(ranked)), progress=False, log=logs.append
    )
    assert result.rendered_pairs == 2 and result.skipped_shards == 1  # two prompts rendered again
    assert "resuming: 1 of 2 shards already complete" in logs
    assert shard_bytes(out) == shard_bytes(judged_all)
    assert shard_bytes(ranked) == shard_bytes(judged_all.parent / "ranked")
    assert (out / "candidates.jsonl").read_bytes() == (judged_all / "candidates.jsonl").read_bytes()


def test_judged_card_names_judge_pairing_counts_and_histogram(judged_all, tmp_path, capsys):
    folder = tmp_path / "card"
    shutil.copytree(judged_all, folder)
    code, out, _ = run_cli(["card", str(folder), "--repo-id", "me/judged", "--no-preview"], capsys)
    assert code == 0 and "template judged" in out
    card = DatasetCard.load(folder / "README.md")
    assert card.data.license == "apache-2.0"  # rendered by the tiny model, which is mapo's own
    text = card.text
    assert "scored by the judge `clipscore:tiny` (version: content sha256 `" in text
    assert "every two images of a prompt (N(N-1)/2 pairs per prompt)" in text
    assert (
        "| prompts | 4 |" in text
        and "| pairs written | 24 |" in text
        and "| dropped: below margin | 0 |" in text
    )
    assert "Score gaps (24 pairs: every pair the rule proposed, written or dropped): min " in text
    assert "![Histogram of score gaps](score_gaps.png)" in text
    from PIL import Image

    with Image.open(folder / "score_gaps.png") as png:
        assert png.format == "PNG" and png.size == (600, 320)
    assert "| prefix | (none: the context prompt alone) |" in text and "| steps | 2 |" in text


IMPORT_STEP = {
    "step": "import",
    "method": "import",
    "source": "prefs/export.csv",
    "layout": "table",
    "column_map": {"caption": "prompt", "jpg_0": "image_a", "jpg_1": "image_b"},
    "pairing": None,
    "min_margin": 0.25,
    "counts": {"rows_read": 10, "pairs_written": 8, "dropped": {"undecodable": 1, "below_margin": 1}},
    "score_gaps": [0.1, 0.3, 0.5, 0.7, 0.9, 1.1, 1.3, 1.5, 1.7],
}


@pytest.mark.parametrize("shape", ["steps", "dict"])
def test_import_card_from_a_hand_made_manifest(shape, tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "imported", 8)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("preset")
    manifest.pop("config")
    manifest["provenance"] = (
        [IMPORT_STEP] if shape == "steps" else {k: v for k, v in IMPORT_STEP.items() if k != "step"}
    )
    (root / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = run_cli(["card", str(root), "--no-preview"], capsys)
    assert code == 0 and "template import" in out, err
    card = DatasetCard.load(root / "README.md")
    assert card.data.license == "other"
    text = card.text
    assert text.startswith("\n# mapo imported preference pairs") or "# mapo imported preference pairs" in text
    assert "imported with `mapo-data import` from `prefs/export.csv` (table layout)" in text
    assert "Columns used: `caption` ← `prompt`, `jpg_0` ← `image_a`, `jpg_1` ← `image_b`." in text
    assert "Which image is chosen is the source's preference, unchanged." in text
    assert "| rows read | 10 |" in text and "| pairs written | 8 |" in text
    assert "| dropped: below margin | 1 |" in text and "| dropped: undecodable | 1 |" in text
    assert "Score gaps (9 pairs): min 0.1, median 0.9, max 1.7." in text
    assert "![Histogram of score gaps](score_gaps.png)" in text and (root / "score_gaps.png").is_file()


def test_import_card_without_scores_has_no_histogram(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "imported", 4)
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.pop("preset")
    step = {**IMPORT_STEP, "layout": "ranked", "pairing": "best-worst", "score_gaps": []}
    manifest["provenance"] = [step]
    (root / "manifest.json").write_text(json.dumps(manifest))
    code, _, _ = run_cli(["card", str(root), "--no-preview"], capsys)
    text = (root / "README.md").read_text()
    assert code == 0 and "(ranked layout)" in text
    assert "ordered by the source's ranks, and the pairs are the highest- and the lowest-scored image" in text
    assert "score_gaps.png" not in text and not (root / "score_gaps.png").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["build", "judged"], "build judged needs at least one --judge"),
        (
            ["build", "judged", "--judge", "clipscore:tiny", "--candidates", "1"],
            "--candidates must be at least 2",
        ),
        (["build", "judged", "--judge", "clipscore:tiny", "--pairs", "best"], "unknown --pairs 'best'"),
        (
            ["build", "judged", "--judge", "clipscore:tiny", "--weights", "1,x"],
            "--weights takes comma-separated",
        ),
        (
            ["build", "judged", "--judge", "clipscore:tiny", "--weights", "1,2"],
            "--weights has 2 values for 1 --judge",
        ),
        (["build", "judged", "--judge", "clipscore:tiny", "--min-margin", "-1"], "--min-margin must be"),
        (["build", "judged", "--judge", "pickscorex"], "unknown judge 'pickscorex'"),
        (
            ["build", "judged", "--judge", "clip:tiny"],
            "--judge clip:tiny compares each image with two descriptions: give --preferred-text and "
            "--dispreferred-text",
        ),
        (
            ["build", "pick-style", "--split", "pixel", "--judge", "clipscore:tiny"],
            "only apply to build judged",
        ),
        (["build", "judged", "--judge", "clipscore:tiny", "--split", "pixel"], "build judged takes --prefix"),
        (
            ["build", "pick-style", "--split", "pixel", "--prefix", "x", "--min-margin", "1"],
            "--min-margin, --prefix only apply to build judged, not pick-style",
        ),
    ],
)
def test_bad_judged_options_are_one_line_errors(args, message, tmp_path, capsys):
    code, out, err = run_cli([*args, *FAST, "--out", str(tmp_path / "o")], capsys)
    assert code != 0
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_dry_run_lists_prompts_and_writes_nothing(prompt_file, tmp_path, capsys):
    out = tmp_path / "dry"
    args = ["build", "judged", "--prompts", str(prompt_file), "--judge", "clipscore:tiny", "--dry-run"]
    code, stdout, _ = run_cli([*args, *FAST, "--out", str(out)], capsys)
    assert code == 0 and not out.exists()
    assert (
        f"4 prompts x 4 candidates -> {out}; judge clipscore:tiny, pairs best-worst, min margin 0;" in stdout
    )
    assert "[3] a lighthouse at dusk" in stdout


def test_judged_pairs_curate_whole_and_train_with_the_quickstart_recipe(judged_all, tmp_path, capsys):
    """The judged output works downstream: curate keeps the `all` pairing's pairs (their shared
    candidates are not duplicates within one prompt) and the quickstart recipe trains on it."""
    from mapo_train import cli as train_cli

    curated = tmp_path / "curated"
    code, out, _ = run_cli(
        ["curate", str(judged_all), "--out", str(curated), "--max-per-caption", "0", "--no-progress"], capsys
    )
    assert code == 0
    assert len(rows(curated)) == len(rows(judged_all))
    run = tmp_path / "run"
    argv = ["--recipe", str(Path(__file__).parents[2] / "recipes" / "train" / "quickstart-tiny.yaml"),
            f"data.path={judged_all}", f"train.output_dir={run}", "train.max_steps=2",
            "train.report_to=none", "validation.enabled=false"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        train_cli.main(argv)
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert (run / "unet" / "diffusion_pytorch_model.safetensors").is_file()
