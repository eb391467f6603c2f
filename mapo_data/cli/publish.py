"""`mapo-data card | push`: write the dataset card, publish the dataset on the Hugging Face Hub."""

from __future__ import annotations

import typer

from mapo_data.cli.app import app


@app.command(
    epilog=(
        "Examples:\n\n"
        "  mapo-data card runs/pixel-curated --repo-id me/pick-style-pixel\n\n"
        "  mapo-data card runs/mine --template custom --title 'Watercolor vs photo pairs'"
    )
)
def card(
    root: str = typer.Argument(..., metavar="DATASET", help="Dataset folder (build or curate output)."),
    repo_id: str | None = typer.Option(
        None, help="Hub id the card's load/train snippets use [default: USER/NAME]."
    ),
    template: str | None = typer.Option(
        None, help="pick-style, pick-safety, custom, judged or import [default: from the manifest]."
    ),
    title: str | None = typer.Option(None, help="Card title / pretty_name."),
    preview: bool = typer.Option(True, "--preview/--no-preview", help="Write preview.png if it is missing."),
) -> None:
    """Render DATASET/README.md, the Hub dataset card, from the manifest, curation report and stats."""
    from mapo_data.card import write_card

    result = write_card(root, template=template, repo_id=repo_id, pretty_name=title, make_preview=preview)
    extra = f" and {result.preview}" if result.preview else ""
    typer.echo(f"wrote {result.path} (template {result.template}){extra}")


@app.command(
    epilog=(
        "Examples:\n\n"
        "  mapo-data push runs/pixel-curated --repo-id me/pick-style-pixel --dry-run\n\n"
        "  mapo-data push runs/pixel-curated --repo-id me/pick-style-pixel --public\n\n"
        "  mapo-data push runs/safety --repo-id me/pick-safety --revision v1 --commit-message 'first cut'"
    )
)
def push(
    root: str = typer.Argument(
        ..., metavar="DATASET", help="Dataset folder with a card (run `mapo-data card` first)."
    ),
    repo_id: str = typer.Option(..., help="Hub dataset repository, USER/NAME."),
    private: bool = typer.Option(True, "--private/--public", help="Visibility of a newly created repo."),
    allow_public_unsafe: bool = typer.Option(
        False, "--allow-public-unsafe", help="Needed to publish a pick-safety dataset publicly."
    ),
    gated: str | None = typer.Option(
        None, help="Access requests: auto, manual or off [default: auto for pick-safety, else unchanged]."
    ),
    revision: str | None = typer.Option(None, help="Branch to push to (created if missing) [default: main]."),
    commit_message: str | None = typer.Option(None, help="Commit message."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List what would be uploaded where; upload nothing."
    ),
) -> None:
    """Upload shards, card, manifest, preview and curation report to a Hub dataset repo.

    The token comes from HF_TOKEN or `hf auth login` and is never printed. A rerun uploads only what changed; shards no longer in the manifest are deleted from the repo. The default is a private repo; a pick-safety dataset is gated and needs --allow-public-unsafe to go public.
    """
    from mapo_data.push import PushConfig, push_dataset

    config = PushConfig(
        root=root,
        repo_id=repo_id,
        private=private,
        allow_public_unsafe=allow_public_unsafe,
        gated=gated,
        revision=revision,
        commit_message=commit_message,
        dry_run=dry_run,
    )
    result = push_dataset(config)
    for line in result.lines:
        typer.echo(line)
