"""How counts and sizes read in messages, reports and cards: one rule for every command, so that
"1 pairs", "shard(s)" or "0.0 MB" for a 12 KB dataset cannot come back in one place."""

from __future__ import annotations

_UNITS = ("B", "KB", "MB", "GB", "TB", "PB")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word`` in the right number: ``plural(1, "pair")`` is "1 pair", ``plural(0, "pair")``
    "0 pairs". ``many`` is the plural when adding "s" is wrong (``plural(2, "entry", "entries")``).
    """
    return f"{n} {word if n == 1 else (many or word + 's')}"


def human_bytes(n: float) -> str:
    """A byte count in decimal units, as the Hub shows sizes: "512 B", "12 KB", "3.4 MB", "1.2 GB".

    One decimal below 10 of a unit, whole numbers above, so a small dataset is "12 KB", never
    "0.0 MB". Raises ValueError for a negative count."""
    if n < 0:
        raise ValueError(f"a size cannot be negative: {n}")
    value = float(n)
    for unit in _UNITS:
        text = f"{value:.0f}" if unit == "B" or round(value, 1) >= 10 else f"{value:.1f}"
        # 999.7 KB rounds to "1000 KB": that reads better as the next unit.
        if float(text) < 1000 or unit == _UNITS[-1]:
            return f"{text} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
