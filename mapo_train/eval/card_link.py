"""Link an evaluation from the model card of each run it evaluated.

`mapo-train` writes a run's card (README.md) when training ends, before any evaluation exists, so
the card carries an Evaluation section between two markers and ``mapo-train eval`` rewrites only
that span: the headline numbers and a link to the full report. Everything else in the card (and
anything a user added around the markers) is left as it is.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from mapo_train.card import EVAL_END, EVAL_START
from mapo_train.eval.prompts import run_config_file

CARD = "README.md"


def run_folder(spec: str) -> Path | None:
    """The mapo-train run folder a --tuned spec points into (the run, its unet/ or its LoRA file):
    the same folder whose training_config.yaml the held-out prompt check reads."""
    config = run_config_file(spec)
    if config is not None and (config.parent / CARD).is_file():
        return config.parent
    return None


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def eval_section(report: dict[str, Any], label: str, report_link: str) -> str:
    """The card's Evaluation text for the model ``label`` of ``report`` (Markdown, no heading)."""
    base = report["models"][0]
    prompts, settings = report["prompts"], report["settings"]
    conf = int(round(100 * settings["confidence"]))
    others = [m["label"] for m in report["models"][1:] if m["label"] != label]
    held = prompts.get("held_out_checked_against")
    held_note = (
        f"none of them in the training data {held}" if held else "not checked against the training data"
    )
    mine_kind = next((m.get("kind") for m in report["models"] if m["label"] == label), None)
    scale = settings.get("lora_scale", 1.0)
    # Numbers measured at another strength than trained must not read as the run's own.
    scale_note = (
        f" The LoRA was applied at {scale:g} times its trained strength (`--lora-scale {scale:g}`), "
        "not as trained."
        if mine_kind == "LoRA" and scale != 1.0
        else ""
    )
    lines = [
        f"Evaluated with `mapo-train eval` against the base `{base['source']}` on {prompts['num_prompts']} "
        f"prompts ({held_note}), {settings['images_per_prompt']} image(s) per prompt, the same seeds for "
        "every model, the context prompt alone (no style prefix)."
        + scale_note
        + (f" Compared in the same run: {', '.join(others)}." if others else ""),
        "",
        f"| judge | this model | base | prompts won against the base [{conf}% CI] |",
        "| --- | --- | --- | --- |",
    ]
    for spec, result in report["results"].items():
        mine, theirs = result["per_model"][label], result["per_model"][base["label"]]
        if result["verdict_label"]:
            what = result["verdict_label"]
            cells = (f"{what} {_pct(mine['verdict']['rate'])}", _pct(theirs["verdict"]["rate"]))
        else:
            what = f"mean {result['primary_key']}"
            cells = (f"{what} {mine['mean']:.4g}", f"{theirs['mean']:.4g}")
        h2h = result["versus_base"][label]
        won = f"{_pct(h2h['win_rate'])} [{_pct(h2h['low'])}, {_pct(h2h['high'])}]"
        direction = "higher is better" if result["higher_is_better"] else "lower is better"
        lines.append(
            f"| `{spec}` (by {result['primary_key']}, {direction}) | {cells[0]} | {cells[1]} | {won} |"
        )
    lines += [
        "",
        f"Full report with side-by-side grids, per-image scores and settings: [{report_link}]({report_link}).",
    ]
    return "\n".join(lines)


def update_card_text(card: str, body: str) -> str:
    """``card`` with its Evaluation span replaced by ``body``.

    Cards carry the markers; one without them gets the paragraph under its Evaluation heading
    replaced, or a new section at the end, so a hand-edited card still gets the link.
    """
    block = f"{EVAL_START}\n{body}\n{EVAL_END}"
    span = re.compile(re.escape(EVAL_START) + r".*?" + re.escape(EVAL_END), re.DOTALL)
    if span.search(card):
        return span.sub(lambda _: block, card, count=1)
    heading = re.compile(r"^## Evaluation[ \t]*\n(?:[ \t]*\n)*(?:(?!#)[^\n]*\S[^\n]*\n)*", re.MULTILINE)
    if heading.search(card):
        return heading.sub(lambda _: f"## Evaluation\n\n{block}\n", card, count=1)
    return card.rstrip("\n") + f"\n\n## Evaluation\n\n{block}\n"


def link_report_in_cards(
    report: dict[str, Any], specs: list[str], labels: list[str], report_md: Path
) -> list[Path]:
    """Update the card of every evaluated run folder; returns the cards written."""
    written = []
    for spec, label in zip(specs, labels, strict=True):
        run = run_folder(spec)
        if run is None:
            continue
        link = Path(os.path.relpath(report_md.resolve(), run.resolve())).as_posix()
        card = run / CARD
        card.write_text(update_card_text(card.read_text(), eval_section(report, label, link)))
        written.append(card)
    return written
