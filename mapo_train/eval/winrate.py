"""Win rates, shares and their confidence intervals: pure functions over score arrays.

Two models are compared prompt by prompt (the same prompt and seeds for both), so the natural
summary is the share of prompts each one wins, a paired comparison. Ties count half a win to each
side, the usual convention for preference win rates, so base against itself is exactly 50%.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

# Scores closer than this are a tie: judges run in float32, and two identical images must tie
# even when the arithmetic on them differs in the last bits.
TIE_TOLERANCE = 1e-6


def z_value(confidence: float) -> float:
    """Two-sided normal quantile, e.g. 1.96 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (well behaved at 0%, 100% and small n).

    ``successes`` may be fractional (ties counted as half a win); the formula only needs the
    observed proportion and n. With n == 0 nothing is known: (0, 1).
    """
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be within [0, n], got {successes} of {n}")
    z = z_value(confidence)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(
    values: np.ndarray, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean (seeded, so a report is reproducible)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    if values.size == 1:
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, (resamples, values.size))].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(low), float(high)


def sign_test_p(wins: int, losses: int) -> float:
    """Exact two-sided sign test: how surprising wins vs losses would be if the models were equal.

    Ties carry no information about which model is better and are left out, as the test requires.
    """
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class Share:
    """A proportion with its interval, e.g. the share of images judged preferred."""

    count: float
    n: int
    rate: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return asdict(self)


def share(flags: np.ndarray, confidence: float = 0.95) -> Share:
    """Share of true flags with a Wilson interval."""
    flags = np.asarray(flags, dtype=bool)
    n = int(flags.size)
    count = int(flags.sum())
    low, high = wilson_interval(count, n, confidence)
    return Share(count=count, n=n, rate=count / n if n else float("nan"), low=low, high=high)


@dataclass(frozen=True)
class HeadToHead:
    """Model A against model B over paired items (prompts)."""

    wins: int
    ties: int
    losses: int
    win_rate: float  # (wins + ties / 2) / n
    low: float
    high: float
    p_value: float  # sign test, ties left out

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def to_dict(self) -> dict:
        return {**asdict(self), "n": self.n}


def paired_outcomes(a: np.ndarray, b: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """Per item: 1 if A beats B, 0.5 for a tie, 0 if B beats A."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in shape: {a.shape} vs {b.shape}")
    diff = a - b if higher_is_better else b - a
    return np.where(np.abs(diff) <= TIE_TOLERANCE, 0.5, (diff > 0).astype(np.float64))


def head_to_head(
    a: np.ndarray, b: np.ndarray, higher_is_better: bool = True, confidence: float = 0.95
) -> HeadToHead:
    """A's win rate against B with a Wilson interval (ties as half wins) and a sign-test p-value."""
    outcomes = paired_outcomes(a, b, higher_is_better)
    wins = int((outcomes == 1).sum())
    ties = int((outcomes == 0.5).sum())
    losses = int((outcomes == 0).sum())
    n = outcomes.size
    points = wins + ties / 2
    low, high = wilson_interval(points, n, confidence)
    return HeadToHead(
        wins=wins,
        ties=ties,
        losses=losses,
        win_rate=points / n if n else float("nan"),
        low=low,
        high=high,
        p_value=sign_test_p(wins, losses),
    )


def best_model_shares(scores: dict[str, np.ndarray], higher_is_better: bool = True) -> dict[str, float]:
    """Among several models, the share of items each one scores best on (ties split evenly)."""
    names = list(scores)
    if not names:
        return {}
    table = np.stack([np.asarray(scores[name], dtype=np.float64) for name in names])
    if not higher_is_better:
        table = -table
    best = table.max(axis=0)
    is_best = np.abs(table - best) <= TIE_TOLERANCE
    credit = is_best / is_best.sum(axis=0)
    n = table.shape[1]
    return {name: float(credit[i].sum() / n) if n else float("nan") for i, name in enumerate(names)}


def per_prompt_means(values: np.ndarray, prompt_index: np.ndarray, num_prompts: int) -> np.ndarray:
    """Average the per-image values of each prompt (over its seeds): the unit of comparison."""
    values = np.asarray(values, dtype=np.float64)
    prompt_index = np.asarray(prompt_index, dtype=np.int64)
    sums = np.bincount(prompt_index, weights=values, minlength=num_prompts)
    counts = np.bincount(prompt_index, minlength=num_prompts)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / counts
