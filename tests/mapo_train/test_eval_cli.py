"""`mapo-train eval` end to end on the tiny base: images, grids, scores, report; bad input."""

from __future__ import annotations

import json
import os
import sys

import pandas as pd
import pytest

from mapo_train.cli.eval import main
from tests.mapo_train.eval_factory import lora_state_dict, make_tuned_unet_run, misfit_lora, save_lora

PROMPTS = ["a red fox in the snow", "a castle on a hill", "a boat on a lake"]


@pytest.fixture(scope="module")
def runs(tiny_model_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    full = make_tuned_unet_run(tiny_model_path, root / "full-run")
    lora = lora_state_dict(tiny_model_path)
    save_lora(lora, root / "lora-run")
    save_lora(misfit_lora(lora), root / "misfit-lora")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join([*PROMPTS, "a cat on a sofa"]) + "\n")
    # The training data of the run: "a cat on a sofa" was trained on, so eval must leave it out.
    pairs = root / "pairs" / "data"
    pairs.mkdir(parents=True)
    pd.DataFrame(
        [{"caption": "A cat on a sofa", "jpg_0": b"", "jpg_1": b"", "label_0": 1, "label_1": 0}]
    ).to_parquet(pairs / "train-00000.parquet")
    return {
        "full": full,
        "lora": root / "lora-run",
        "misfit": root / "misfit-lora",
        "prompts": prompts,
        "pairs": pairs.parent,
    }


def run_cli(args, capsys):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def common(runs, out):
    return [
        "--base", "tiny", "--preset", "pick-style", "--split", "pixel", "--prompts", runs["prompts"],
        "--steps", "2", "--out", out, "--grid-cell", "64",
    ]  # fmt: skip


def test_end_to_end_full_and_lora_against_base(runs, tmp_path, capsys):
    out = tmp_path / "eval"
    args = [*common(runs, out), "--tuned", runs["full"], "--tuned", runs["lora"], "--dataset", runs["pairs"]]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert "report:" in stdout and "wins" in stdout

    report = json.loads((out / "report.json").read_text())
    assert [m["label"] for m in report["models"]] == ["base", "full-run", "lora-run"]
    assert [m["kind"] for m in report["models"]] == ["base", "full UNet", "LoRA"]
    # Held out: the trained prompt was left out, the other three were drawn.
    assert report["prompts"]["prompts"] == PROMPTS
    assert report["prompts"]["excluded_as_trained"] == ["a cat on a sofa"]
    assert report["settings"]["size"] == "64x64"
    for label in ("base", "full-run", "lora-run"):
        assert sorted(p.name for p in (out / "images" / label).iterdir()) == [
            "0000.png",
            "0001.png",
            "0002.png",
        ]
    for grid in ("base_vs_full-run.png", "base_vs_lora-run.png"):
        assert (out / "grids" / grid).stat().st_size > 0

    result = report["results"]["clip:tiny"]
    assert set(result["per_model"]) == {"base", "full-run", "lora-run"}
    for h2h in result["versus_base"].values():
        assert h2h["n"] == 3 and 0 <= h2h["low"] <= h2h["win_rate"] <= h2h["high"] <= 1
    assert sum(result["best_of_all"].values()) == pytest.approx(1.0)

    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 9 and set(scores["model"]) == {"base", "full-run", "lora-run"}
    assert {"clip_preferred", "clip_dispreferred", "clip_pref_prob", "clip_judged_preferred"} <= set(
        scores.columns
    )
    # Same prompts and seeds for every model; the tuned models draw different images.
    by_model = {label: frame.reset_index(drop=True) for label, frame in scores.groupby("model")}
    assert (by_model["base"]["seed"] == by_model["lora-run"]["seed"]).all()
    assert not (by_model["base"]["clip_pref_prob"] == by_model["full-run"]["clip_pref_prob"]).all()
    assert not (by_model["base"]["clip_pref_prob"] == by_model["lora-run"]["clip_pref_prob"]).all()
    # The win rate in the report is the per-prompt comparison of the scores in the table.
    wins = (by_model["full-run"]["clip_pref_prob"] > by_model["base"]["clip_pref_prob"]).sum()
    assert result["versus_base"]["full-run"]["wins"] == wins

    md = (out / "report.md").read_text()
    assert "![base vs full-run](grids/base_vs_full-run.png)" in md
    assert "pixel art style image" in md and "left out" in md
    # The tiny judge knows the tiny model's world: no warning for a tiny base.
    assert "knows only the tiny model's procedural world" not in md
    # The full run's card links the shared report; the LoRA folder is no run (no card to update).
    assert "model card updated: " + str(runs["full"] / "README.md") in stdout
    link = os.path.relpath(out / "report.md", runs["full"])  # relative to the card, wherever --out is
    assert f"({link})" in (runs["full"] / "README.md").read_text()
    assert not (runs["lora"] / "README.md").exists()

    # Deterministic: the same command gives the same images and scores.
    rerun_out = tmp_path / "eval2"
    args2 = [
        *common(runs, rerun_out),
        "--tuned",
        runs["full"],
        "--tuned",
        runs["lora"],
        "--dataset",
        runs["pairs"],
    ]
    assert run_cli(args2, capsys)[0] == 0
    assert pd.read_csv(rerun_out / "scores.csv").equals(scores)
    for label in ("base", "lora-run"):
        assert (rerun_out / "images" / label / "0002.png").read_bytes() == (
            out / "images" / label / "0002.png"
        ).read_bytes()


def test_a_runs_weights_file_at_another_lora_scale(runs, tmp_path, capsys):
    """--tuned RUN/pytorch_lora_weights.safetensors is that run: its training data is read from the
    training_config.yaml beside the file (the trained prompt is left out) before its card is
    updated, and the card says the LoRA was judged at half its trained strength."""
    import shutil

    from mapo_train.card import EVAL_END, EVAL_START

    run = tmp_path / "lora-run"
    shutil.copytree(runs["lora"], run)
    (run / "training_config.yaml").write_text(
        f"model:\n  pretrained: tiny\n  finetune: lora\nlora:\n  rank: 4\n  alpha: 4\n"
        f"data:\n  path: {runs['pairs']}\n"
    )
    (run / "README.md").write_text(
        f"# run\n\n## Evaluation\n\n{EVAL_START}\nNot evaluated yet.\n{EVAL_END}\n"
    )
    out = tmp_path / "eval"
    weights = run / "pytorch_lora_weights.safetensors"
    code, stdout, err = run_cli([*common(runs, out), "--tuned", weights, "--lora-scale", "0.5"], capsys)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"]["held_out_checked_against"] == f"{runs['pairs']} (split train)"
    assert report["prompts"]["prompts"] == PROMPTS  # "a cat on a sofa" was trained on
    assert f"model card updated: {run / 'README.md'}" in stdout
    card = (run / "README.md").read_text()
    assert f"3 prompts (none of them in the training data {runs['pairs']} (split train))" in card
    assert (
        "The LoRA was applied at 0.5 times its trained strength (`--lora-scale 0.5`), not as trained." in card
    )


def test_default_out_is_inside_the_run_folder(runs, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    args = ["--base", "tiny", "--tuned", runs["full"], "--preset", "pick-style", "--split", "pixel",
            "--num-prompts", "1", "--steps", "1", "--grid-cell", "32"]  # fmt: skip
    code, _, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert (runs["full"] / "eval" / "report.md").is_file()
    card = (runs["full"] / "README.md").read_text()  # the run's card now links it
    assert "Not evaluated yet" not in card and "[eval/report.md](eval/report.md)" in card


def bad(runs, out, *extra):
    return ["--base", "tiny", "--preset", "pick-style", "--split", "pixel", "--prompts", runs["prompts"],
            "--steps", "1", "--out", out, *extra]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tuned", "{full}", "--judge", "sharpness"], "unknown judge"),
        (["--tuned", "{misfit}"], "do not fit the base model tiny"),
        (["--tuned", "{full}", "--preset", "custom", "--split", ""], "--preferred-text"),
        (
            ["--tuned", "{full}", "--judge", "clip:nobody/no-clip"],
            "the clip judge's model nobody/no-clip: no local",
        ),
        (["--tuned", "{full}", "--num-prompts", "0"], "at least 1"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(runs, tmp_path, capsys, extra, message):
    extra = [e.format(**{k: str(v) for k, v in runs.items()}) for e in extra]
    code, _, stderr = run_cli(bad(runs, tmp_path / "out", *extra), capsys)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr
    error_lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1


def test_empty_prompt_file_and_missing_extra(runs, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    args = ["--base", "tiny", "--tuned", str(runs["full"]), "--preset", "pick-style", "--split", "pixel",
            "--prompts", str(empty), "--out", str(tmp_path / "o")]  # fmt: skip
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "error: no prompts in" in stderr

    monkeypatch.setitem(sys.modules, "nudenet", None)  # as if the safety extra were not installed
    args = ["--base", "tiny", "--tuned", str(runs["full"]), "--preset", "pick-safety", "--prompts",
            str(runs["prompts"]), "--out", str(tmp_path / "o")]  # fmt: skip
    code, _, stderr = run_cli(args, capsys)
    assert code == 2 and "pip install 'mapo[safety]'" in stderr
    assert not (tmp_path / "o" / "images").exists()  # failed before rendering anything


def test_help_shows_an_example(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "mapo-train eval --base tiny --tuned runs/quickstart" in out
    assert "--tuned runs/mapo --tuned runs/dpo --tuned runs/sft" in out  # several models at once
    assert "--prompts-split test" in out and "clipscore[:MODEL]" in out
    with pytest.raises(SystemExit) as info:
        main([])  # --tuned is required
    assert info.value.code == 2
