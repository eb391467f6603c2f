"""`mapo-data curate`: options in, CurateConfig out, curate called."""

from __future__ import annotations

import shlex

import typer

from mapo_data.cli.app import app
from mapo_data.errors import MapoError
from mapo_data.text import plural

# Options that change how a run looks, not what it produces: left out of the recorded command.
_COSMETIC = {"progress"}


def command_line(ctx: typer.Context) -> str:
    """The command as it would be retyped: arguments plus every option not at its default.

    Rebuilt from the parsed parameters rather than taken from sys.argv, which holds the caller's
    argv when the CLI runs in-process (tests, notebooks)."""
    parts = ["mapo-data", ctx.info_name or "curate"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        # typer vendors its own click, so parameters are told apart by kind, not by class.
        if param.param_type_name == "argument":
            parts += [str(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
        elif param.name not in _COSMETIC and value != param.default and param.param_type_name == "option":
            if getattr(param, "is_flag", False):
                names = param.opts if value else param.secondary_opts
                parts += names[:1]
            else:
                parts += [max(param.opts, key=len), str(value)]
    return shlex.join(parts)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  mapo-data curate runs/pixel --out runs/pixel-curated\n\n"
        "  mapo-data curate runs/pixel --out runs/pixel-judged --judge clip:openai/clip-vit-large-patch14 --judge-margin 0.1\n\n"
        "  mapo-data curate pickapic/*.parquet --out runs/pickapic-clean --ties drop --dedup phash\n\n"
        "  mapo-data curate runs/safety --out runs/safety-curated --safety-judge nudenet"
    )
)
def curate(
    ctx: typer.Context,
    inputs: list[str] = typer.Argument(..., help="A dataset folder, or Pick-a-Pic-format parquet files."),
    out: str = typer.Option(..., "--out", "-o", help="New output folder (never the input)."),
    ties: str = typer.Option("drop", help="Tied pairs (0.5/0.5): keep or drop. Reported either way."),
    min_std: float = typer.Option(
        4.0, help="Drop pairs with a blank/near-constant image (grey std below this, 0-255); -1: off."
    ),
    max_phash_distance: int = typer.Option(
        4, help="Drop pairs whose two images are this close in perceptual hash (0-64); -1: off."
    ),
    dedup: str = typer.Option("pixels", help="Duplicate images across pairs: pixels, phash or off."),
    max_per_caption: int = typer.Option(4, help="Keep at most N pairs per caption; 0: no cap."),
    judge: str | None = typer.Option(
        None, help="Style judge clip:MODEL (Hub id, local folder, or tiny); scores go into the output."
    ),
    judge_preferred: str | None = typer.Option(
        None, help="Text describing the preferred side [default: from the input's preset]."
    ),
    judge_dispreferred: str | None = typer.Option(
        None, help="Text describing the dispreferred side [default: from the input's preset]."
    ),
    judge_margin: float = typer.Option(
        0.0, help="Drop when P(preferred|rejected) - P(preferred|chosen) exceeds this."
    ),
    safety_judge: str | None = typer.Option(
        None, help="nudenet[:THRESHOLD]: drop pairs whose chosen image is unsafe (pick-safety)."
    ),
    device: str = typer.Option("cpu", help="torch device for the judges."),
    judge_batch_size: int = typer.Option(16, help="Images per judge call."),
    batch_size: int = typer.Option(64, help="Pairs read per step (bounds memory)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Start over in an --out made with other settings."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Filter a pair dataset into a new folder, with a curation report.

    Drops every pair verify would reject (null caption, undecodable image, labels that are not a preference or contradict the prompts), blank and near-identical pairs, duplicate images, captions beyond a cap and (optionally) pairs a CLIP judge disagrees with, each counted by reason. INPUTS are never modified; a rerun resumes.
    """
    from mapo_data.curate import CurateConfig
    from mapo_data.curate import curate as run_curate

    config = CurateConfig(
        inputs=list(inputs),
        out=out,
        ties=ties,
        min_std=None if min_std < 0 else min_std,
        max_phash_distance=None if max_phash_distance < 0 else max_phash_distance,
        dedup=dedup,
        max_per_caption=max_per_caption,
        judge=judge,
        judge_preferred=judge_preferred,
        judge_dispreferred=judge_dispreferred,
        judge_margin=judge_margin,
        safety_judge=safety_judge,
        device=device,
        judge_batch_size=judge_batch_size,
        batch_size=batch_size,
        overwrite=overwrite,
        progress=progress,
        command=command_line(ctx),
    )
    result = run_curate(config)
    report = result.report
    dropped = ", ".join(f"{k} {v}" for k, v in report["dropped"].items() if v) or "none"
    resumed = f" ({plural(result.skipped_shards, 'shard')} already done)" if result.skipped_shards else ""
    typer.echo(
        f"kept {report['kept']} of {plural(report['input']['pairs'], 'pair')} "
        f"in {plural(len(result.shards), 'shard')}{resumed}; "
        f"dropped: {dropped}; ties seen: {report['ties']['seen']}"
    )
    typer.echo(f"wrote {result.out} (report: {result.out / 'curation_report.md'})")
    if report["kept"] == 0 and report["input"]["pairs"] > 0:
        # An empty dataset verifies and loads, so nothing later would say why training has no
        # data: say it here, and fail, so a script stops at the step that emptied it.
        hint = (
            "; the pairs' two images are near-identical (the model barely reacts to the prefixes): "
            "--max-phash-distance -1 keeps them"
            if report["dropped"].get("near_identical")
            else ""
        )
        raise MapoError(f"no pair survived curation (dropped: {dropped}){hint}", exit_code=1)
