"""Summaries, Markdown report and grids from constructed scores (no rendering)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mapo_train.eval.grid import _font, side_by_side_grid, wrap_text
from mapo_train.eval.report import JudgeInfo, render_markdown, summarize
from mapo_train.eval.winrate import wilson_interval

STYLE = JudgeInfo(
    spec="clip:tiny",
    name="clip",
    keys=("clip_pref_prob",),
    primary_key="clip_pref_prob",
    higher_is_better=True,
    verdict_label="judged preferred",
    settings={"judge": "clip", "model": "tiny"},
    columns={"clip_pref_prob": "clip_pref_prob"},
)
SAFETY = JudgeInfo(
    spec="nudenet",
    name="nudenet",
    keys=("nudenet_unsafe", "nudenet_score"),
    primary_key="nudenet_score",
    higher_is_better=False,
    verdict_label="judged unsafe",
    settings={"judge": "nudenet", "threshold": 0.5},
    columns={"nudenet_unsafe": "nudenet_unsafe", "nudenet_score": "nudenet_score"},
)


@pytest.fixture
def summary():
    # Two prompts, two seeds each: images 0,1 are prompt 0; images 2,3 are prompt 1.
    prompt_index = np.array([0, 0, 1, 1])
    table = {
        "base": {
            "clip_pref_prob": np.array([0.2, 0.4, 0.6, 0.6]),
            "nudenet_unsafe": np.array([1.0, 0.0, 0.0, 0.0]),
            "nudenet_score": np.array([0.9, 0.1, 0.0, 0.0]),
        },
        "mapo": {
            "clip_pref_prob": np.array([0.7, 0.9, 0.5, 0.7]),
            "nudenet_unsafe": np.array([0.0, 0.0, 0.0, 0.0]),
            "nudenet_score": np.array([0.2, 0.0, 0.0, 0.0]),
        },
    }
    verdicts = {
        label: {
            "clip:tiny": table[label]["clip_pref_prob"] > 0.5,
            "nudenet": table[label]["nudenet_unsafe"] > 0.5,
        }
        for label in table
    }
    return summarize(table, verdicts, [STYLE, SAFETY], prompt_index, 2, ["base", "mapo"], 0.95)


def test_summary_numbers_by_hand(summary):
    style = summary["clip:tiny"]
    # Per-prompt means: base (0.3, 0.6), mapo (0.8, 0.6): mapo wins prompt 0, ties prompt 1.
    assert style["per_model"]["base"]["mean"] == pytest.approx(0.45)
    assert style["per_model"]["mapo"]["mean"] == pytest.approx(0.7)
    h2h = style["versus_base"]["mapo"]
    assert (h2h["wins"], h2h["ties"], h2h["losses"]) == (1, 1, 0)
    assert h2h["win_rate"] == pytest.approx(0.75)
    assert [h2h["low"], h2h["high"]] == pytest.approx(list(wilson_interval(1.5, 2)))
    # Shares are per image: base has 2 of 4 images above 0.5, mapo 3 of 4.
    assert style["per_model"]["base"]["verdict"]["count"] == 2
    assert style["per_model"]["mapo"]["verdict"]["rate"] == 0.75
    safety = summary["nudenet"]
    assert safety["per_model"]["base"]["verdict"]["rate"] == 0.25
    assert safety["per_model"]["mapo"]["verdict"]["rate"] == 0.0
    assert safety["per_model"]["base"]["key_means"]["nudenet_score"] == pytest.approx(0.25)
    # Lower NudeNet scores win: mapo (0.1, 0) vs base (0.5, 0): a win and a tie.
    assert safety["versus_base"]["mapo"]["win_rate"] == pytest.approx(0.75)
    assert "best_of_all" not in style  # only with more than one tuned model


def test_verdict_change_is_paired_over_prompts_by_hand(summary):
    # Judged preferred per prompt: base (0/2, 2/2), mapo (2/2, 1/2): differences (+1, -0.5), mean
    # +0.25. Resampling two prompts gives means -0.5, +0.25 or +1 (a quarter of the draws at each
    # end), so the 95% percentile interval is exactly [-50, +100] points.
    change = summary["clip:tiny"]["verdict_change"]["mapo"]
    assert change == pytest.approx({"points": 25.0, "low": -50.0, "high": 100.0})
    # Judged unsafe: base (1/2, 0/2), mapo (0, 0): -25 points, interval [-50, 0].
    assert summary["nudenet"]["verdict_change"]["mapo"] == pytest.approx(
        {"points": -25.0, "low": -50.0, "high": 0.0}
    )


def test_eval_headline_states_share_change_and_win_rate(summary):
    from mapo_train.cli.eval import headline

    report = {"models": [{"label": "base"}, {"label": "mapo"}], "settings": {"confidence": 0.95}}
    lines = headline({**report, "results": summary})
    assert lines[:2] == [
        "clip:tiny: judged preferred: base 50% -> mapo 75% (+25 points, 95% CI [-50, +100])",
        "clip:tiny: mapo wins 75.0% of prompts against base "
        f"[{100 * wilson_interval(1.5, 2)[0]:.1f}%, {100 * wilson_interval(1.5, 2)[1]:.1f}%]",
    ]
    assert lines[2] == "nudenet: judged unsafe: base 25% -> mapo 0% (-25 points, 95% CI [-50, +0])"


def test_markdown_report_carries_the_numbers(summary):
    report = {
        "models": [
            {"label": "base", "source": "tiny", "kind": "base"},
            {"label": "mapo", "source": "runs/mapo", "kind": "full UNet"},
        ],
        "judges": [
            {"spec": "clip:tiny", "settings": STYLE.settings},
            {"spec": "nudenet", "settings": SAFETY.settings},
        ],
        "settings": {
            "confidence": 0.95,
            "images_per_prompt": 2,
            "steps": 2,
            "guidance_scale": 5.0,
            "size": "64x64",
            "dtype": "fp32",
            "scheduler": None,
            "device": "cpu",
            "seed": 0,
        },
        "prompts": {
            "prompts": ["a | pipe", "a fox"],
            "num_prompts": 2,
            "source": "p.txt",
            "held_out_checked_against": "runs/pairs",
            "excluded_as_trained": ["a cat"],
        },
        "seeds": [[0, 1], [2, 3]],
        "results": summary,
        "files": {"grids": [{"left": "base", "right": "mapo", "path": "grids/base_vs_mapo.png"}]},
        "warnings": ["mapo was trained on other"],
        "command": "mapo-train eval --base tiny --tuned runs/mapo",
    }
    md = render_markdown(report)
    assert "| mapo | 75.0% [" in md and "| 1 / 1 / 0 |" in md
    assert "share judged unsafe" in md and "25.0% (1/4)" in md
    assert "lower is better" in md
    assert "![base vs mapo](grids/base_vs_mapo.png)" in md
    assert "1 prompt(s) found there were left out" in md
    assert "a \\| pipe (seed 0, 1)" in md  # table-safe prompt text
    assert "mapo-train eval --base tiny --tuned runs/mapo" in md
    assert "- mapo was trained on other" in md


def test_grid_layout_and_captions():
    red = [Image.new("RGB", (64, 64), "red")] * 5
    blue = [Image.new("RGB", (64, 64), "blue")] * 5
    grid = side_by_side_grid(
        red, blue, [f"prompt {i}" for i in range(5)], left_label="base", right_label="x", cell=32, columns=2
    )
    # 5 pairs in rows of 2: 3 rows; each tile is two cells wide.
    assert grid.width > 2 * 2 * 32 and grid.height > 3 * 32
    pixels = np.asarray(grid)
    assert (pixels == [255, 0, 0]).all(axis=-1).sum() == 5 * 32 * 32  # every left image, scaled to the cell
    assert (pixels == [0, 0, 255]).all(axis=-1).sum() == 5 * 32 * 32
    with pytest.raises(ValueError):
        side_by_side_grid(red, blue, ["only one"], left_label="a", right_label="b")


def test_wrap_text_cuts_long_captions_with_an_ellipsis():
    font = _font(12)
    lines = wrap_text("word " * 200, font, 100, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(font.getlength(line) <= 100 for line in lines)
    assert wrap_text("short", font, 100) == ["short"]
