"""Win rates, shares and intervals against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from mapo_train.eval.winrate import (
    best_model_shares,
    bootstrap_interval,
    head_to_head,
    paired_outcomes,
    per_prompt_means,
    share,
    sign_test_p,
    wilson_interval,
    z_value,
)


def test_z_value():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    assert z_value(0.90) == pytest.approx(1.644854, abs=1e-6)
    with pytest.raises(ValueError):
        z_value(1.0)


@pytest.mark.parametrize(
    ("successes", "n", "low", "high"),
    [
        # Reference values of the Wilson score interval at 95%.
        (5, 10, 0.236593, 0.763407),
        (0, 10, 0.0, 0.277533),
        (10, 10, 0.722467, 1.0),
        (8, 10, 0.490162, 0.943318),
    ],
)
def test_wilson_interval_reference_values(successes, n, low, high):
    got = wilson_interval(successes, n, 0.95)
    assert got == pytest.approx((low, high), abs=1e-5)


def test_wilson_interval_by_hand_with_a_half_win():
    """2.5 points of 4 prompts (2 wins, 1 tie, 1 loss) at 95%, worked through by hand.

    p = 0.625, z = 1.959964, z^2 = 3.841459
    denominator = 1 + z^2/n = 1 + 0.960365 = 1.960365
    centre = (p + z^2/(2n)) / denominator = (0.625 + 0.480182) / 1.960365 = 0.563764
    half = z * sqrt(p(1-p)/n + z^2/(4n^2)) / denominator
         = 1.959964 * sqrt(0.058594 + 0.060023) / 1.960365 = 1.959964 * 0.344408 / 1.960365 = 0.344337
    interval = (0.219427, 0.908101)
    """
    low, high = wilson_interval(2.5, 4, 0.95)
    assert (low, high) == pytest.approx((0.219427, 0.908101), abs=2e-6)
    # The interval is not symmetric about p: Wilson pulls it towards 1/2, unlike p +- z*se.
    assert 0.625 - low > high - 0.625


def test_wilson_interval_by_hand_at_90_percent():
    # 3 of 20, z = 1.644854, z^2 = 2.705543: denominator 1.135277, centre 0.191705, half 0.130123.
    assert wilson_interval(3, 20, 0.90) == pytest.approx((0.061582, 0.321828), abs=2e-6)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing observed, nothing known
    narrow = wilson_interval(500, 1000)
    wide = wilson_interval(5, 10)
    assert narrow[1] - narrow[0] < wide[1] - wide[0]  # more prompts, tighter interval
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_sign_test_by_hand():
    # 8 wins, 2 losses: P(X <= 2) for Binomial(10, 1/2) is (1 + 10 + 45) / 1024; two-sided doubles it.
    assert sign_test_p(8, 2) == pytest.approx(2 * 56 / 1024)
    assert sign_test_p(2, 8) == sign_test_p(8, 2)
    assert sign_test_p(10, 0) == pytest.approx(2 / 1024)
    assert sign_test_p(5, 5) == 1.0
    assert sign_test_p(0, 0) == 1.0


def test_head_to_head_counts_ties_half():
    a = np.array([3.0, 2.0, 1.0, 1.0])
    b = np.array([1.0, 2.0, 2.0, 0.0])
    assert paired_outcomes(a, b).tolist() == [1.0, 0.5, 0.0, 1.0]
    h = head_to_head(a, b)
    assert (h.wins, h.ties, h.losses, h.n) == (2, 1, 1, 4)
    assert h.win_rate == pytest.approx(2.5 / 4)
    assert (h.low, h.high) == pytest.approx(wilson_interval(2.5, 4))
    assert h.p_value == pytest.approx(sign_test_p(2, 1))
    # Lower-is-better judges (NudeNet's score) flip who wins.
    flipped = head_to_head(a, b, higher_is_better=False)
    assert (flipped.wins, flipped.ties, flipped.losses) == (1, 1, 2)
    assert flipped.win_rate == pytest.approx(1.5 / 4)


def test_a_model_against_itself_is_exactly_even():
    scores = np.random.default_rng(0).normal(size=20)
    h = head_to_head(scores, scores + 1e-9)  # float noise below the tie tolerance
    assert (h.wins, h.ties, h.losses) == (0, 20, 0)
    assert h.win_rate == 0.5
    assert h.p_value == 1.0
    with pytest.raises(ValueError):
        head_to_head(scores, scores[:5])


def test_share_and_bootstrap():
    s = share(np.array([True, False, True, True]))
    assert (s.count, s.n, s.rate) == (3, 4, 0.75)
    assert (s.low, s.high) == pytest.approx(wilson_interval(3, 4))
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0])
    low, high = bootstrap_interval(values, seed=0)
    assert low < values.mean() < high
    assert bootstrap_interval(values, seed=0) == (low, high)  # seeded: reproducible
    assert bootstrap_interval(np.full(6, 2.5)) == (2.5, 2.5)
    assert bootstrap_interval(np.array([7.0])) == (7.0, 7.0)


def test_best_model_shares_split_ties():
    scores = {
        "base": np.array([1.0, 5.0, 2.0, 0.0]),
        "mapo": np.array([3.0, 1.0, 2.0, 0.0]),
        "dpo": np.array([2.0, 1.0, 1.0, 0.0]),
    }
    # prompt 0: mapo; 1: base; 2: base and mapo tie (half each); 3: three-way tie (a third each).
    shares = best_model_shares(scores)
    assert shares["base"] == pytest.approx((1 + 0.5 + 1 / 3) / 4)
    assert shares["mapo"] == pytest.approx((1 + 0.5 + 1 / 3) / 4)
    assert shares["dpo"] == pytest.approx((1 / 3) / 4)
    assert sum(shares.values()) == pytest.approx(1.0)
    lower = best_model_shares(scores, higher_is_better=False)
    assert lower["dpo"] == pytest.approx((1 + 1 / 3) / 4 + 0.5 / 4)


def test_per_prompt_means_average_over_seeds():
    values = np.array([1.0, 3.0, 10.0, 20.0])
    prompt_index = np.array([0, 0, 1, 1])
    assert per_prompt_means(values, prompt_index, 2).tolist() == [2.0, 15.0]
