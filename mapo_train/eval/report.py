"""Summaries of judge scores and the report files (Markdown for a model card, JSON for tools).

``summarize`` is a pure function of the per-image score table, so the numbers in a report can be
checked against hand-computed ones without rendering anything.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mapo_train.eval.winrate import (
    best_model_shares,
    bootstrap_interval,
    head_to_head,
    per_prompt_means,
    share,
)

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
SCORES_CSV = "scores.csv"
SCORES_JSON = "scores.json"


@dataclass(frozen=True)
class JudgeInfo:
    """What the summary needs to know about a judge (not the model itself)."""

    spec: str
    name: str
    keys: tuple[str, ...]
    primary_key: str
    higher_is_better: bool
    verdict_label: str | None
    settings: dict[str, Any]
    columns: dict[str, str]  # judge key -> column name in the score table


def summarize(
    table: dict[str, dict[str, np.ndarray]],
    verdicts: dict[str, dict[str, np.ndarray | None]],
    judges: Sequence[JudgeInfo],
    prompt_index: np.ndarray,
    num_prompts: int,
    labels: Sequence[str],
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Per judge: each model's mean score and verdict share, each tuned model's win rate over base.

    ``table[label][column]`` holds one value per image, images in the same (prompt, seed) order for
    every model; ``verdicts[label][judge.spec]`` the per-image yes/no of judges that have one.
    Win rates compare prompts: a prompt's score is the mean over its seeds.
    """
    base, tuned = labels[0], list(labels[1:])
    results: dict[str, Any] = {}
    for judge in judges:
        column = judge.columns[judge.primary_key]
        per_prompt = {
            label: per_prompt_means(table[label][column], prompt_index, num_prompts) for label in labels
        }
        per_model: dict[str, Any] = {}
        for label in labels:
            values = per_prompt[label]
            low, high = bootstrap_interval(values, confidence)
            entry: dict[str, Any] = {
                "mean": float(np.mean(values)),
                "ci": [low, high],
                "key_means": {key: float(np.mean(table[label][judge.columns[key]])) for key in judge.keys},
            }
            verdict = verdicts[label].get(judge.spec)
            entry["verdict"] = share(verdict, confidence).to_dict() if verdict is not None else None
            per_model[label] = entry
        versus = {
            label: head_to_head(
                per_prompt[label], per_prompt[base], judge.higher_is_better, confidence
            ).to_dict()
            for label in tuned
        }
        result = {
            "judge": judge.spec,
            "primary_key": judge.primary_key,
            "higher_is_better": judge.higher_is_better,
            "verdict_label": judge.verdict_label,
            "per_model": per_model,
            "versus_base": versus,
        }
        if verdicts[base].get(judge.spec) is not None:
            result["verdict_change"] = {
                label: verdict_change(
                    verdicts[label][judge.spec],
                    verdicts[base][judge.spec],
                    prompt_index,
                    num_prompts,
                    confidence,
                )
                for label in tuned
            }
        if len(labels) > 2:
            result["best_of_all"] = best_model_shares(per_prompt, judge.higher_is_better)
        results[judge.spec] = result
    return results


def verdict_change(
    tuned: np.ndarray, base: np.ndarray, prompt_index: np.ndarray, num_prompts: int, confidence: float
) -> dict[str, float]:
    """The tuned model's verdict share minus the base's, in points (0-100), with an interval.

    Both models drew the same (prompt, seed) images, so the difference is paired: the interval is
    a percentile bootstrap over prompts of the per-prompt share differences.
    """
    difference = per_prompt_means(np.asarray(tuned, float), prompt_index, num_prompts) - per_prompt_means(
        np.asarray(base, float), prompt_index, num_prompts
    )
    low, high = bootstrap_interval(difference, confidence)
    return {"points": 100 * float(np.mean(difference)), "low": 100 * low, "high": 100 * high}


def write_scores(rows: list[dict[str, Any]], out: Path) -> tuple[Path, Path]:
    """Per-image scores as CSV (for spreadsheets) and JSON (for scripts)."""
    csv_path, json_path = out / SCORES_CSV, out / SCORES_JSON
    fields = list(rows[0]) if rows else []
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return csv_path, json_path


def _pct(value: float) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"
    )


def _num(value: float) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{value:.4g}"


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown, with image links relative to the report's folder."""
    settings = report["settings"]
    prompts = report["prompts"]
    labels = [m["label"] for m in report["models"]]
    conf = int(round(100 * settings["confidence"]))
    lines = [
        f"# Evaluation: {' vs '.join(labels)}",
        "",
        f"Every model drew the same {prompts['num_prompts']} prompts with the same seeds "
        f"({settings['images_per_prompt']} image(s) per prompt), from the context prompt alone: no style "
        "prefix, so what shows is what the model adopted by itself. Scores come from automatic judges; "
        f"intervals are {conf}% (Wilson for shares and win rates, bootstrap over prompts for means).",
        "",
        "## Models",
        "",
        "| label | model | form |",
        "| --- | --- | --- |",
    ]
    for model in report["models"]:
        lines.append(f"| {model['label']} | `{_md_cell(model['source'])}` | {model['kind']} |")
    lines += ["", "## Results", ""]
    for spec, result in report["results"].items():
        judge = next(j for j in report["judges"] if j["spec"] == spec)
        direction = "higher is better" if result["higher_is_better"] else "lower is better"
        lines += [f"### `{spec}`", ""]
        described = {k: v for k, v in judge["settings"].items() if k not in ("judge", "classes")}
        if described:
            lines += ["; ".join(f"{k}: {_md_cell(v)}" for k, v in described.items()), ""]
        verdict = result["verdict_label"]
        header = f"| model | mean {result['primary_key']} ({direction}) [{conf}% CI] |"
        rule = "| --- | --- |"
        if verdict:
            header += f" share {verdict} [{conf}% CI] |"
            rule += " --- |"
        lines += [header, rule]
        for label in labels:
            entry = result["per_model"][label]
            low, high = entry["ci"]
            row = f"| {label} | {_num(entry['mean'])} [{_num(low)}, {_num(high)}] |"
            if verdict:
                v = entry["verdict"]
                row += f" {_pct(v['rate'])} ({v['count']}/{v['n']}) [{_pct(v['low'])}, {_pct(v['high'])}] |"
            lines.append(row)
        lines += [
            "",
            f"Prompts won against {labels[0]} (by {result['primary_key']}; ties count half):",
            "",
            f"| model | win rate [{conf}% CI] | wins / ties / losses | sign test p |",
            "| --- | --- | --- | --- |",
        ]
        for label, h2h in result["versus_base"].items():
            lines.append(
                f"| {label} | {_pct(h2h['win_rate'])} [{_pct(h2h['low'])}, {_pct(h2h['high'])}] "
                f"| {h2h['wins']} / {h2h['ties']} / {h2h['losses']} | {h2h['p_value']:.3g} |"
            )
        if "verdict_change" in result:
            lines += [
                "",
                f"Change in the share {verdict}, against {labels[0]} (points, paired over prompts):",
                "",
            ]
            for label, change in result["verdict_change"].items():
                lines.append(
                    f"- {label}: {change['points']:+.1f} [{change['low']:+.1f}, {change['high']:+.1f}]"
                )
        if "best_of_all" in result:
            shares = ", ".join(f"{label} {_pct(v)}" for label, v in result["best_of_all"].items())
            lines += ["", f"Share of prompts each model scores best on: {shares}."]
        lines.append("")
    lines += ["## Side by side", ""]
    for grid in report["files"]["grids"]:
        lines += [
            f"**{grid['left']}** (left) vs **{grid['right']}** (right)",
            "",
            f"![{grid['left']} vs {grid['right']}]({grid['path']})",
            "",
        ]
    lines += ["## Prompts", ""]
    held = prompts.get("held_out_checked_against")
    if held:
        excluded = len(prompts.get("excluded_as_trained", []))
        kept = prompts.get("trained_prompts_kept", 0)
        note = f"Checked against the training data `{held}`: {excluded} prompt(s) found there were left out"
        note += f", {kept} kept on request." if kept else "."
    else:
        note = "Not checked against the training data (give --dataset to leave trained prompts out)."
    lines += [f"From {prompts['source']}. {note}", "", "<details><summary>prompts and seeds</summary>", ""]
    for i, prompt in enumerate(prompts["prompts"]):
        seeds = ", ".join(str(s) for s in report["seeds"][i])
        lines.append(f"{i + 1}. {_md_cell(prompt)} (seed {seeds})")
    lines += ["", "</details>", ""]
    if report.get("warnings"):
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""]
    lines += [
        "## Settings",
        "",
        f"steps {settings['steps']}, guidance {settings['guidance_scale']}, size {settings['size']}, "
        f"dtype {settings['dtype']}, scheduler {settings['scheduler'] or 'the model default'}, "
        f"device {settings['device']}, first seed {settings['seed']}.",
        "",
    ]
    if report.get("command"):
        lines += ["Reproduce with:", "", "```", report["command"], "```", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    md_path, json_path = out / REPORT_MD, out / REPORT_JSON
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(render_markdown(report), encoding="utf-8")
    return md_path, json_path
