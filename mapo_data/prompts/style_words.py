"""Style words: find, and optionally strip, words that name a look instead of content.

The list lives in `mapo_data/resources/style_words.txt` (documented there); a user may pass their own
file in the same format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from mapo_data.errors import MapoError

DEFAULT_STYLE_WORDS_RESOURCE = "style_words.txt"


def read_style_words(path: str | None = None) -> tuple[str, ...]:
    """Entries of a style-word file (default: the shipped list), lowercased, comments removed."""
    if path is None:
        text = (
            resources.files("mapo_data.resources").joinpath(DEFAULT_STYLE_WORDS_RESOURCE).read_text("utf-8")
        )
        where = "the default style-word list"
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise MapoError(f"style-word file not found: {path}")
        try:
            text = file.read_text("utf-8")
        except UnicodeDecodeError:
            raise MapoError(f"style-word file {path} is not UTF-8 text") from None
        where = f"the style-word file {path}"
    entries = []
    for line in text.splitlines():
        entry = " ".join(line.split("#", 1)[0].split()).lower()
        if entry:
            entries.append(entry)
    if not entries:
        raise MapoError(f"{where} lists no words")
    return tuple(dict.fromkeys(entries))  # de-duplicated, order kept


def _phrase_pattern(entry: str) -> str:
    # Words of an entry may be joined by spaces or hyphens in a prompt: "8-bit" ~ "8 bit", "3d-render".
    words = [w for w in re.split(r"[\s\-]+", entry) if w]
    return r"[\s\-]+".join(re.escape(w) for w in words)


@dataclass(frozen=True)
class StyleWordMatcher:
    """Whole-word, case-insensitive matching of a style-word list."""

    entries: tuple[str, ...]

    @cached_property
    def _any(self) -> str:
        # Longest first, so "oil painting" wins over a shorter entry it contains.
        ordered = sorted(self.entries, key=len, reverse=True)
        return "(?:" + "|".join(_phrase_pattern(e) for e in ordered) + ")"

    @cached_property
    def _find(self) -> re.Pattern[str]:
        # (?<!\w)/(?!\w) instead of \b: entries may start or end with non-word characters.
        return re.compile(rf"(?<!\w){self._any}(?!\w)", re.IGNORECASE)

    @cached_property
    def _strip(self) -> re.Pattern[str]:
        # A style word takes its grammar with it, so that stripping leaves a readable prompt:
        #   "in the style of pixar" / "in pixar style" / "a pixar-style cat" / "an oil painting of a fox".
        # A bare run of style words keeps its a/an, which `_restrip_article` fits to the next word.
        word = rf"(?<!\w){self._any}(?!\w)"
        style = r"(?:[\s\-]+style(?!\w))"
        run = rf"{word}{style}?(?:[\s,]+{word}{style}?)*"
        return re.compile(
            rf"\bin\s+(?:the\s+)?style\s+of\s+{word}"
            rf"|\bin\s+(?:an?\s+)?{word}{style}"
            rf"|(?:\b(?:an?|the)\s+)?{run}\s+of\b"
            rf"|(?:\b(?P<article>an?)\s+)?{run}(?=\s*(?P<next>\w*))",
            re.IGNORECASE,
        )

    def find(self, prompt: str) -> list[str]:
        """The style words in `prompt`, lowercased, in order of appearance."""
        return [m.group(0).lower() for m in self._find.finditer(prompt)]

    def strip(self, prompt: str) -> str:
        """`prompt` without its style words, separators tidied; may return "" if nothing is left."""
        return tidy_separators(self._strip.sub(_restrip_article, prompt))


def _restrip_article(match: re.Match[str]) -> str:
    """Replacement for a stripped run: nothing, or the article it followed, fitted to the next word
    ("an anime girl" -> "a girl", "a realistic owl" -> "an owl"); by first letter, which is right
    for the plain nouns of prompts far more often than not."""
    article, following = match.group("article"), match.group("next")
    if not article or not following:
        return " "
    fitted = "an" if following[0].lower() in "aeiou" else "a"
    return f" {fitted.capitalize() if article[0].isupper() else fitted} "


def tidy_separators(text: str) -> str:
    """Repair what removing words leaves behind: doubled or dangling commas, stray spaces."""
    text = " ".join(text.split())
    text = re.sub(r"\s+([,;:.!?)])", r"\1", text)  # "cat , 8k" -> "cat, 8k"
    text = re.sub(r"([,;:|])(?:\s*[,;:|])+", r"\1", text)  # ", ," -> ","
    text = re.sub(r"[,;:|]\s*(?=[.!?]|$)", "", text)  # "a cat, ." -> "a cat."
    text = re.sub(r"\(\s*\)", "", text)  # "()" left by "(8k)"
    text = re.sub(r"^[\s,;:|.\-]+", "", text)  # leading separators
    return " ".join(text.split())
