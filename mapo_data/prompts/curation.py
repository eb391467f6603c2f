"""Prompt curation: turn a raw prompt list into clean, distinct, style-neutral context prompts that fit
the CLIP context together with the longest prefix.

Each step is a small function that keeps or drops prompts and says how many and why; the counts go
into `CuratedPrompts.steps` so a dataset card can show exactly what happened to the source.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from mapo_data.errors import MapoError
from mapo_data.presets import assemble_prompt
from mapo_data.prompts.style_words import StyleWordMatcher, read_style_words
from mapo_data.prompts.tokens import distinct_tokenizers, token_counts

STYLE_WORD_MODES = ("drop", "strip", "off")
# Enough dropped prompts to see what a step does, few enough to keep the report small.
EXAMPLES_PER_STEP = 3
# BOS + EOS + at least one token of prompt.
MIN_MAX_TOKENS = 3
CLIP_CONTEXT_TOKENS = 77


@dataclass
class PromptCurationConfig:
    """How a raw prompt list becomes the context prompts of a dataset."""

    max_tokens: int = CLIP_CONTEXT_TOKENS
    """Largest number of CLIP tokens (BOS and EOS included) of prefix + prompt; SDXL truncates at 77,
    so a longer prompt would lose its end. Measured with the longest prefix."""

    style_words: str = "drop"
    """What to do with prompts that carry style words: "drop" them, "strip" the words out (and drop
    the prompt if nothing is left), or "off" to keep them as they are (e.g. for pick-safety)."""

    style_words_file: str | None = None
    """A style-word list in the format of the shipped `resources/style_words.txt` (None: that one)."""

    require_words: tuple[str, ...] = ()
    """Keep only prompts containing at least one of these words or phrases (whole words, any case);
    empty keeps all. The MaPO authors' Pick-Safety set used woman, women, girl, female."""

    num_prompts: int | None = None
    """Keep a seeded random sample of this many prompts, in source order (None: keep all)."""

    seed: int = 0
    """Seed of the sample."""

    max_chars: int | None = None
    """Drop prompts longer than this many characters before tokenising (None: no limit); a cheap
    guard against pasted paragraphs in scraped prompt sets."""

    def __post_init__(self) -> None:
        if self.style_words not in STYLE_WORD_MODES:
            raise MapoError(
                f"style_words must be one of {', '.join(STYLE_WORD_MODES)}, not {self.style_words!r}"
            )
        if self.style_words == "off" and self.style_words_file is not None:
            raise MapoError("a style-word file was given but style words are off; use drop or strip")
        if self.max_tokens < MIN_MAX_TOKENS:
            raise MapoError(
                f"max_tokens must be at least {MIN_MAX_TOKENS} (BOS, EOS and a token), not {self.max_tokens}"
            )
        if self.num_prompts is not None and self.num_prompts < 1:
            raise MapoError(f"the number of prompts must be at least 1, not {self.num_prompts}")
        if self.max_chars is not None and self.max_chars < 1:
            raise MapoError(f"max_chars must be at least 1, not {self.max_chars}")
        if isinstance(self.require_words, str):
            # A bare string would otherwise be read letter by letter.
            self.require_words = (self.require_words,)
        words = tuple(" ".join(w.split()).lower() for w in self.require_words)
        if any(not w for w in words):
            raise MapoError("require_words contains an empty word")
        self.require_words = tuple(dict.fromkeys(words))


@dataclass
class CuratedPrompts:
    """The curated prompts and what each curation step did."""

    prompts: list[str]
    steps: list[dict] = field(default_factory=list)
    """One record per step, in order: step, before, after, dropped, and step-specific details."""

    def report_markdown(self) -> str:
        """A small markdown table of the steps, for the terminal and dataset cards."""
        lines = ["| step | before | after | dropped | note |", "| --- | ---: | ---: | ---: | --- |"]
        for step in self.steps:
            lines.append(
                f"| {step['step']} | {step['before']} | {step['after']} | {step['dropped']} | "
                f"{_escape_cell(step.get('note', ''))} |"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"num_prompts": len(self.prompts), "steps": self.steps}


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


class _StepRecorder:
    """Collects the step records and stops the run, naming the step, when no prompts are left."""

    def __init__(self) -> None:
        self.steps: list[dict] = []

    def record(
        self, name: str, before: Sequence[str], after: list[str], dropped: Sequence[str] = (), **details
    ):
        step = {"step": name, "before": len(before), "after": len(after), "dropped": len(before) - len(after)}
        if dropped:
            step["examples"] = list(dropped[:EXAMPLES_PER_STEP])
        step.update(details)
        self.steps.append(step)
        if before and not after:
            raise MapoError(
                f"no prompts left after curation step {name!r} ({len(before)} before it)"
                + (f": {details['note']}" if details.get("note") else "")
            )
        return after


def normalise_whitespace(prompt: str) -> str:
    """Collapse runs of whitespace (incl. newlines and tabs) to one space and strip the ends."""
    return " ".join(prompt.split())


def duplicate_key(prompt: str) -> str:
    """Two prompts are the same prompt when they differ only in case and whitespace."""
    return " ".join(prompt.split()).casefold()


def curate_prompts(
    prompts: list[str],
    config: PromptCurationConfig,
    *,
    tokenizers: list | None = None,
    prefixes: tuple[str, ...] = (),
) -> CuratedPrompts:
    """Run the curation steps in order and return the surviving prompts with a per-step record.

    Steps, each always recorded (an unused one says "off"): normalise_whitespace, drop_empty,
    drop_duplicates, style_words, require_words, max_chars, max_tokens (with the longest of
    `prefixes`; skipped, and said so, without tokenizers), sample. Raises MapoError naming the step
    that left nothing.
    """
    recorder = _StepRecorder()
    current = list(prompts)
    if not current:
        raise MapoError("no prompts to curate")

    normalised = [normalise_whitespace(p) for p in current]
    changed = sum(a != b for a, b in zip(current, normalised, strict=True))
    current = recorder.record("normalise_whitespace", current, normalised, changed=changed)

    kept = [p for p in current if p]
    current = recorder.record("drop_empty", current, kept)

    current = _drop_duplicates(current, recorder)
    current = _style_words(current, config, recorder)
    current = _require_words(current, config, recorder)
    current = _max_chars(current, config, recorder)
    current = _max_tokens(current, config, recorder, tokenizers, prefixes)
    current = _sample(current, config, recorder)
    return CuratedPrompts(prompts=current, steps=recorder.steps)


def _drop_duplicates(prompts: list[str], recorder: _StepRecorder) -> list[str]:
    # Two counts, because they mean different things: Pick-a-Pic repeats the very same caption for
    # each pair it rated (exact), while case/spacing variants are near-duplicates a user typed.
    seen_exact: set[str] = set()
    seen_key: set[str] = set()
    kept, dropped = [], []
    exact = near = 0
    for prompt in prompts:
        key = duplicate_key(prompt)
        if prompt in seen_exact:
            exact += 1
            dropped.append(prompt)
        elif key in seen_key:
            near += 1
            dropped.append(prompt)
        else:
            kept.append(prompt)
        seen_exact.add(prompt)
        seen_key.add(key)
    return recorder.record(
        "drop_duplicates", prompts, kept, dropped, exact_duplicates=exact, case_whitespace_duplicates=near
    )


def _style_words(prompts: list[str], config: PromptCurationConfig, recorder: _StepRecorder) -> list[str]:
    if config.style_words == "off":
        return recorder.record(
            "style_words", prompts, prompts, mode="off", note="off: prompts kept as they are"
        )
    matcher = StyleWordMatcher(read_style_words(config.style_words_file))
    source = config.style_words_file or "default list"
    found: dict[str, int] = {}
    kept, dropped = [], []
    stripped = emptied = duplicates = 0
    seen_keys: set[str] = set()
    for prompt in prompts:
        words = matcher.find(prompt)
        for word in words:
            found[word] = found.get(word, 0) + 1
        if not words:
            result = prompt
        elif config.style_words == "drop":
            dropped.append(prompt)
            continue
        else:
            result = matcher.strip(prompt)
            stripped += 1
            if not result:
                emptied += 1
                dropped.append(prompt)
                continue
        # Stripping can turn "a cat, 8k" into a copy of an earlier "a cat".
        key = duplicate_key(result)
        if key in seen_keys:
            duplicates += 1
            dropped.append(prompt)
            continue
        seen_keys.add(key)
        kept.append(result)
    top = dict(sorted(found.items(), key=lambda item: (-item[1], item[0]))[:10])
    details: dict = {"mode": config.style_words, "words_file": source, "top_words": top}
    if config.style_words == "strip":
        details.update(stripped=stripped, emptied=emptied, duplicates_after_strip=duplicates)
        note = f"strip ({source}): {stripped} stripped, {emptied} left empty, {duplicates} became duplicates"
    else:
        note = f"drop ({source})"
    return recorder.record("style_words", prompts, kept, dropped, **details, note=note)


def _require_words(prompts: list[str], config: PromptCurationConfig, recorder: _StepRecorder) -> list[str]:
    if not config.require_words:
        return recorder.record("require_words", prompts, prompts, note="off: no words required")
    alternatives = "|".join(
        r"\s+".join(re.escape(part) for part in word.split())
        for word in sorted(config.require_words, key=len, reverse=True)
    )
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)
    kept = [p for p in prompts if pattern.search(p)]
    dropped = [p for p in prompts if not pattern.search(p)]
    words = ", ".join(config.require_words)
    return recorder.record(
        "require_words",
        prompts,
        kept,
        dropped,
        words=list(config.require_words),
        note=f"at least one of: {words}",
    )


def _max_chars(prompts: list[str], config: PromptCurationConfig, recorder: _StepRecorder) -> list[str]:
    if config.max_chars is None:
        return recorder.record("max_chars", prompts, prompts, note="off: no character limit")
    kept = [p for p in prompts if len(p) <= config.max_chars]
    too_long = [p for p in prompts if len(p) > config.max_chars]
    return recorder.record(
        "max_chars",
        prompts,
        kept,
        too_long,
        max_chars=config.max_chars,
        note=f"at most {config.max_chars} characters",
    )


def _max_tokens(
    prompts: list[str],
    config: PromptCurationConfig,
    recorder: _StepRecorder,
    tokenizers: list | None,
    prefixes: tuple[str, ...],
) -> list[str]:
    prefixes = tuple(dict.fromkeys(p.strip() for p in prefixes)) or ("",)
    if not tokenizers:
        return recorder.record(
            "max_tokens",
            prompts,
            prompts,
            skipped=True,
            note="skipped: no tokenizer given, prompt length in CLIP tokens not checked",
        )
    # The longest prompt over all prefixes and all distinct tokenizers decides; checking every
    # prefix (rarely more than two) keeps this exact for any tokenizer, not only for CLIP's
    # word-by-word BPE where lengths simply add up.
    longest = [0] * len(prompts)
    prefix_tokens = dict.fromkeys(prefixes, 0)
    for tokenizer in distinct_tokenizers(tokenizers):
        for prefix in prefixes:
            counts = token_counts(tokenizer, [assemble_prompt(prefix, p) for p in prompts])
            longest = [max(a, b) for a, b in zip(longest, counts, strict=True)]
            prefix_tokens[prefix] = max(prefix_tokens[prefix], token_counts(tokenizer, [prefix])[0])
    kept = [p for p, n in zip(prompts, longest, strict=True) if n <= config.max_tokens]
    dropped = [p for p, n in zip(prompts, longest, strict=True) if n > config.max_tokens]
    longest_prefix = max(prefixes, key=lambda p: prefix_tokens[p])
    return recorder.record(
        "max_tokens",
        prompts,
        kept,
        dropped,
        max_tokens=config.max_tokens,
        prefixes=[p for p in prefixes if p],
        longest_kept=max((n for n in longest if n <= config.max_tokens), default=0),
        note=f"at most {config.max_tokens} CLIP tokens with prefix {longest_prefix!r}"
        if longest_prefix
        else f"at most {config.max_tokens} CLIP tokens",
    )


def _sample(prompts: list[str], config: PromptCurationConfig, recorder: _StepRecorder) -> list[str]:
    if config.num_prompts is None:
        return recorder.record("sample", prompts, prompts, note="off: all kept")
    if config.num_prompts >= len(prompts):
        return recorder.record(
            "sample",
            prompts,
            prompts,
            requested=config.num_prompts,
            seed=config.seed,
            note=f"asked for {config.num_prompts}, only {len(prompts)} available: all kept",
        )
    # Indices sampled with a private Random, then sorted: the same seed gives the same prompts in
    # source order whatever else the process does with the global random state.
    chosen = sorted(random.Random(config.seed).sample(range(len(prompts)), config.num_prompts))
    chosen_set = set(chosen)
    kept = [prompts[i] for i in chosen]
    dropped = [p for i, p in enumerate(prompts) if i not in chosen_set]
    return recorder.record(
        "sample",
        prompts,
        kept,
        dropped,
        requested=config.num_prompts,
        seed=config.seed,
        note=f"{config.num_prompts} sampled with seed {config.seed}",
    )


def config_to_dict(config: PromptCurationConfig) -> dict:
    """The config as plain JSON-ready values, for reports and manifests."""
    data = asdict(config)
    data["require_words"] = list(config.require_words)
    return data
