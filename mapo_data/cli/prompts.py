"""`mapo-data prompts`: options in, a curation config and prefixes out, then load → curate → write."""

from __future__ import annotations

import typer

from mapo_data.cli.app import app, split_words

DEFAULT_TOKENIZER_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"


@app.command(
    epilog=(
        "Examples:\n\n"
        "  mapo-data prompts --tokenizer tiny --preset pick-style --style-split pixel --num 64 --out prompts.parquet\n\n"
        "  mapo-data prompts yuvalkirstain/pickapic_v2 --column caption --preset pick-safety "
        "--require-words woman,women,girl,female --out safety.txt\n\n"
        '  mapo-data prompts my_prompts.csv --column text --prefix "Watercolor painting." --style-words strip'
    )
)
def prompts(
    source: str | None = typer.Argument(
        None,
        metavar="SOURCE",
        help="Prompt file (.txt one a line; .jsonl/.json/.csv/.parquet with --column), dataset folder, or "
        "Hub dataset id (default: the prompt set shipped with mapo).",
    ),
    column: str | None = typer.Option(
        None, help="Column holding the prompts (default: caption/prompt/text)."
    ),
    split: str | None = typer.Option(None, help="Dataset split (folders and Hub ids) (default: train)."),
    tokenizer: str = typer.Option(
        DEFAULT_TOKENIZER_MODEL,
        help="Model whose CLIP tokenizers measure prompts: Hub id, diffusers folder or 'tiny'.",
    ),
    preset: str | None = typer.Option(
        None,
        help="pick-style, pick-safety or custom: its prefixes must fit, and it sets the style-word default.",
    ),
    preset_split: str | None = typer.Option(
        None, "--style-split", "--preset-split", help="Split of the preset: cartoon or pixel (pick-style)."
    ),
    prefix: list[str] = typer.Option(
        [],
        "--prefix",
        metavar="TEXT",
        help="A prefix that must fit in front of each prompt; repeat for several.",
    ),
    style_words: str | None = typer.Option(
        None, help="drop | strip | off for prompts with style words (default: drop; off for pick-safety)."
    ),
    style_words_file: str | None = typer.Option(
        None, help="Your own style-word list (format of mapo_data/resources/style_words.txt)."
    ),
    require_words: str | None = typer.Option(None, help="Comma-separated: keep prompts mentioning one."),
    num: int | None = typer.Option(
        None, "--num", help="Sample this many prompts with --seed (default: all)."
    ),
    seed: int = typer.Option(0, help="Seed of the sample."),
    max_tokens: int = typer.Option(77, help="CLIP token budget of the full prompt, longest prefix included."),
    max_chars: int | None = typer.Option(None, help="Drop prompts longer than this many characters."),
    out: str | None = typer.Option(
        None,
        help="Write the prompts to .parquet (caption column), .txt or .jsonl, plus <out>.report.json "
        "(default: print them).",
    ),
) -> None:
    """Load context prompts, curate them (whitespace, empties, duplicates, style words, required words,
    CLIP length with the prefixes, sampling) and print or write them with a per-step report."""
    from mapo_data.prompts import (
        PromptCurationConfig,
        PromptsJob,
        default_style_words,
        preset_prefixes,
        run_prompts_job,
    )

    curation = PromptCurationConfig(
        max_tokens=max_tokens,
        style_words=style_words or default_style_words(preset),
        style_words_file=style_words_file,
        require_words=split_words(require_words),
        num_prompts=num,
        seed=seed,
        max_chars=max_chars,
    )
    job = PromptsJob(
        source=source,
        column=column,
        split=split,
        tokenizer_model=tokenizer,
        prefixes=preset_prefixes(preset, preset_split, tuple(prefix)),
        curation=curation,
        out=out,
    )
    curated, report = run_prompts_job(job)
    # The report goes to stderr so that stdout carries only prompts and pipes cleanly.
    typer.echo(curated.report_markdown(), err=True)
    if out:
        typer.echo(
            f"wrote {len(curated.prompts)} prompts to {report['out']} (report: {report['report']})", err=True
        )
    else:
        for prompt in curated.prompts:
            typer.echo(prompt)
