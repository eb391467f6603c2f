"""The whole `mapo-data prompts` job as a typed function: load, curate with the preset's prefixes,
write the list and its report. The CLI only maps options onto `PromptsJob`."""

from __future__ import annotations

from dataclasses import dataclass, field

from mapo_data.errors import MapoError
from mapo_data.presets import PRESET_NAMES, get_preset
from mapo_data.prompts.curation import CuratedPrompts, PromptCurationConfig, config_to_dict, curate_prompts
from mapo_data.prompts.output import write_prompts, write_report
from mapo_data.prompts.sources import load_prompts
from mapo_data.prompts.tokens import load_tokenizers

# Pick-Safety pairs an unprefixed prompt with an explicit rejected prefix; style words in the context
# prompt do not confound that pair, so they are kept unless asked otherwise.
STYLE_WORDS_OFF_PRESETS = ("pick-safety",)


def preset_prefixes(
    preset: str | None, preset_split: str | None = None, extra_prefixes: tuple[str, ...] = ()
) -> tuple[str, ...]:
    """The non-empty prefixes that must fit in front of each prompt: the preset's and any extra ones."""
    extra = tuple(p.strip() for p in extra_prefixes if p.strip())
    if preset is None:
        if preset_split:
            raise MapoError("--style-split needs --preset")
        return tuple(dict.fromkeys(extra))
    if preset == "custom":
        # The custom preset's prefixes are whatever the user will pass to build: here, --prefix.
        if preset_split:
            raise MapoError("the custom preset takes no --style-split")
        if not extra:
            raise MapoError("the custom preset needs its prefixes: give each with --prefix")
        return tuple(dict.fromkeys(extra))
    if preset not in PRESET_NAMES:
        raise MapoError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_NAMES)}")
    resolved = get_preset(preset, preset_split)
    own = tuple(p for p in (resolved.chosen_prefix, resolved.rejected_prefix) if p)
    return tuple(dict.fromkeys(own + extra))


def default_style_words(preset: str | None) -> str:
    """drop for pick-style, custom and no preset; off for pick-safety."""
    return "off" if preset in STYLE_WORDS_OFF_PRESETS else "drop"


@dataclass
class PromptsJob:
    """One run of `mapo-data prompts`."""

    source: str | None = None
    """Prompt file, dataset folder or Hub dataset id; None: the shipped default set."""
    column: str | None = None
    """Column holding the prompts (tables and datasets)."""
    split: str | None = None
    """Dataset split (folders and Hub ids)."""
    tokenizer_model: str | None = None
    """Model whose CLIP tokenizers measure the prompts; None skips the token-length step."""
    prefixes: tuple[str, ...] = ()
    """Prefixes that must fit in front of each prompt."""
    curation: PromptCurationConfig = field(default_factory=PromptCurationConfig)
    """The curation settings."""
    out: str | None = None
    """Where to write the curated prompts (.parquet/.txt/.jsonl); None writes nothing."""


def run_prompts_job(job: PromptsJob) -> tuple[CuratedPrompts, dict]:
    """Load, curate and (with `out`) write; returns the result and its JSON-ready report."""
    raw = load_prompts(job.source, column=job.column, split=job.split)
    tokenizers = load_tokenizers(job.tokenizer_model, option="--tokenizer") if job.tokenizer_model else None
    curated = curate_prompts(raw, job.curation, tokenizers=tokenizers, prefixes=job.prefixes)
    report = {
        "source": job.source or "mapo default prompts",
        "column": job.column,
        "split": job.split,
        "tokenizer": job.tokenizer_model,
        "prefixes": list(job.prefixes),
        "config": config_to_dict(job.curation),
        **curated.to_dict(),
    }
    if job.out:
        report["out"] = str(write_prompts(curated.prompts, job.out))
        # The report last: its presence says the prompt file beside it is complete.
        report["report"] = str(write_report(report, job.out))
    return curated, report
