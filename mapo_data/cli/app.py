"""The shared Typer application that every command module registers on."""

import typer

app = typer.Typer(
    name="mapo-data",
    help=(
        "Build, curate, inspect and publish SDXL preference-pair datasets.\n\n"
        "Example: mapo-data build pick-style --split pixel --model tiny --num-pairs 32 --out runs/pixel"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def split_words(value: str | None) -> tuple[str, ...]:
    """A comma-separated option (``--require-words a,b``) as a tuple, blanks dropped."""
    return tuple(w.strip() for w in value.split(",") if w.strip()) if value else ()
