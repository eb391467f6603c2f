"""`mapo-data import`: options in, ImportConfig out, run_import called. Nothing else lives here."""

from __future__ import annotations

import typer

from mapo_data.cli.app import app
from mapo_data.text import plural


@app.command(
    name="import",
    epilog=(
        "Examples:\n\n"
        "  mapo-data import ./my-ranking --out runs/mine\n\n"
        "  mapo-data import labels.jsonl --map caption=prompt,jpg_0=image_a,jpg_1=image_b,winner=winner "
        "--out runs/labels\n\n"
        "  mapo-data import scores.csv --min-margin 0.5 --out runs/scored\n\n"
        "  mapo-data import owner/ranked-set --layout ranked --pairs adjacent --max-pairs-per-caption 2 "
        "--out runs/ranked\n\n"
        "  mapo-data import labels.jsonl --dry-run"
    ),
)
def import_pairs(
    source: str = typer.Argument(
        ..., help="chosen/rejected folder, .jsonl/.csv/.parquet table, datasets folder or Hub dataset id."
    ),
    out: str | None = typer.Option(None, help="Output folder (required unless --dry-run)."),
    layout: str | None = typer.Option(None, help="folder, table or ranked (default: detected)."),
    map: str | None = typer.Option(
        None,
        "--map",
        help="ROLE=COLUMN,... Table roles: caption, jpg_0, jpg_1, winner (a/b or 0/1), chosen (0/1), "
        "preference (+/-/=), score_0, score_1. Ranked roles: caption, images, ranks (1 = best), scores.",
    ),
    pairs: str = typer.Option("best-worst", help="ranked: best-worst, adjacent or all."),
    max_pairs_per_caption: int | None = typer.Option(
        None, help="ranked: most pairs per caption, largest gaps first (default: no cap)."
    ),
    min_margin: float | None = typer.Option(None, help="Scores only: drop pairs with a smaller score gap."),
    split: str | None = typer.Option(None, help="Split of a Hub or datasets-folder source (default: train)."),
    seed: int = typer.Option(0, help="Seed of the coin placing each chosen image in jpg_0 or jpg_1."),
    shard_size: int = typer.Option(500, help="Pairs per parquet shard."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard a previous run in --out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the first rows as they would be written."),
    limit: int = typer.Option(5, help="--dry-run: how many rows to print."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Import preference pairs you already have (an image folder, a labelled table, a ranked dataset)
    into sharded parquet in the Pick-a-Pic column format.

    Layouts: folder (chosen/ + rejected/ or w/ + l/ with matching stems, captions in STEM.txt or a metadata.jsonl); table (.jsonl/.csv/.parquet: caption, two images, and winner/chosen/preference or score_0/score_1); ranked (N images per row with ranks or scores, paired by --pairs). Images that decode cleanly keep their bytes, others become PNG, bad ones are skipped and counted; a killed run resumes when rerun.
    """
    from mapo_data.errors import MapoError
    from mapo_data.importer import ImportConfig, parse_column_map, preview_import, run_import

    if out is None and not dry_run:
        raise MapoError("--out is required (the folder to write the pairs to)")
    config = ImportConfig(
        source=source,
        out=out or "",
        layout=layout,
        column_map=parse_column_map(map),
        pairs=pairs,
        max_pairs_per_caption=max_pairs_per_caption,
        min_margin=min_margin,
        split=split,
        seed=seed,
        shard_size=shard_size,
        overwrite=overwrite,
    )
    if dry_run:
        for row in preview_import(config, limit=limit, log=lambda msg: typer.echo(msg, err=True)):
            scores = f" scores {row['score_0']:g} / {row['score_1']:g}" if "score_0" in row else ""
            typer.echo(f"[{row['pair_id']}] {row['caption']!r}: chosen {row['chosen']}{scores}")
            typer.echo(f"    jpg_0 {row['jpg_0']}")
            typer.echo(f"    jpg_1 {row['jpg_1']}")
        return
    result = run_import(config, progress=progress)
    dropped = ", ".join(f"{k} {v}" for k, v in result.dropped.items()) or "none"
    typer.echo(
        f"done: {plural(result.num_pairs, 'pair')} in {plural(result.num_shards, 'shard')} -> {result.out} "
        f"(dropped: {dropped})",
        err=True,
    )
