"""`mapo-data verify | preview | stats`: look at a dataset without changing it."""

from __future__ import annotations

import json

import typer

from mapo_data.cli.app import app
from mapo_data.text import plural


@app.command(
    epilog="Examples:\n\n  mapo-data verify runs/pixel-curated\n\n  mapo-data verify pickapic/train-00000.parquet"
)
def verify(
    inputs: list[str] = typer.Argument(..., help="A dataset folder, or parquet files."),
    max_problems: int = typer.Option(200, help="Print at most this many problems (all are counted)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Check schema, manifest, sha256 of every shard, row counts, every image, the labels.

    Exit 0 only when everything holds; otherwise print each problem (file, row, what) and exit 1.
    """
    from mapo_data.verify import verify_dataset

    report = verify_dataset(list(inputs) if len(inputs) > 1 else inputs[0], progress=progress)
    if report.ok:
        note = "" if report.has_manifest else " (no manifest: no sha256 or row counts to compare)"
        typer.echo(
            f"ok: {plural(report.pairs, 'pair')} in {plural(report.shards, 'shard')}, "
            f"{plural(report.images, 'image')} decoded{note}"
        )
        return
    for problem in report.problems[:max_problems]:
        typer.echo(str(problem))
    hidden = len(report.problems) - max_problems
    if hidden > 0:
        typer.echo(f"... and {hidden} more")
    typer.echo(f"{plural(len(report.problems), 'problem')} in {plural(report.shards, 'shard')}", err=True)
    # SystemExit, not typer.Exit: with standalone_mode=False click would return typer.Exit's code
    # from app() instead of exiting with it.
    raise SystemExit(1)


@app.command(epilog="Example:\n\n  mapo-data preview runs/pixel --out pairs.png --n 16 --seed 0")
def preview(
    inputs: list[str] = typer.Argument(..., help="A dataset folder, or parquet files."),
    out: str = typer.Option("preview.png", "--out", "-o", help="PNG file to write."),
    n: int = typer.Option(16, "--n", help="Number of pairs to show."),
    seed: int = typer.Option(0, help="Seed of the pair sample."),
    tile: int = typer.Option(256, help="Tile size of each image (pixels)."),
    columns: int = typer.Option(2, help="Pairs per row of the sheet."),
) -> None:
    """Write a contact sheet: sampled pairs, chosen beside rejected, captions under them.

    When the data records the full prompts (prompt_0/prompt_1), each image says what its prompt added to the caption, so you see which prefix made which side.
    """
    from mapo_data.preview import Layout, make_preview

    result = make_preview(
        list(inputs) if len(inputs) > 1 else inputs[0],
        out,
        n=n,
        seed=seed,
        layout=Layout(tile=tile, columns=columns),
    )
    typer.echo(f"wrote {result.path} ({plural(result.pairs, 'pair')}, {result.size[0]}x{result.size[1]} px)")


@app.command(
    epilog="Examples:\n\n  mapo-data stats runs/pixel\n\n  mapo-data stats runs/pixel --json > stats.json"
)
def stats(
    inputs: list[str] = typer.Argument(..., help="A dataset folder, or parquet files."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON for machines."),
) -> None:
    """Pairs, shards, bytes, image sizes and formats, caption lengths, label balance, provenance."""
    from mapo_data.stats import dataset_stats, format_stats

    result = dataset_stats(list(inputs) if len(inputs) > 1 else inputs[0])
    typer.echo(json.dumps(result, indent=2) if as_json else format_stats(result))
