"""Losses against numbers worked out by hand (with the math module), and their direction."""

from __future__ import annotations

import math

import pytest
import torch

from mapo_train.losses import (
    LOSSES,
    PairLosses,
    dpo_loss,
    get_loss,
    mapo_loss,
    mapo_loss_and_metrics,
    pair_metrics,
    phi,
    sft_loss,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float64)


def hand_phi(loss, a=0.5):
    x = a * loss
    return 1.0 if x == 0 else x / (math.exp(x) - 1.0)


def test_phi_matches_hand_values_and_limits():
    # phi_0.5(2) = 1 / (e - 1)
    assert phi(t(2.0)).item() == pytest.approx(1 / (math.e - 1), rel=1e-6)
    assert phi(t(0.2)).item() == pytest.approx(0.1 / (math.exp(0.1) - 1), rel=1e-6)
    assert phi(t(0.0)).item() == 1.0  # the limit
    assert phi(t(1e-9)).item() == pytest.approx(1.0 - 0.25e-9, abs=1e-12)
    # Just above and below the series threshold agree with the closed form.
    for x in (1.9e-4, 2.1e-4, 1e-3):
        assert phi(t(x)).item() == pytest.approx(hand_phi(x), rel=1e-7)
    assert phi(t(-2.0)).item() == pytest.approx(-1.0 / (math.exp(-1.0) - 1.0), rel=1e-6)


def test_phi_is_finite_for_large_losses_with_finite_gradients():
    x = torch.tensor([0.0, 1e-6, 10.0, 1e3, 1e6], requires_grad=True)
    y = phi(x)
    assert torch.isfinite(y).all()
    assert y[-1].item() == 0.0
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert x.grad[0].item() == pytest.approx(-0.25, rel=1e-4)  # d/dl phi at 0 is -a/2


def test_mapo_loss_hand_computed():
    # L_w = 0.2, L_l = 0.4, beta 0.1, a 0.5, T 10:
    # phi(0.2) = 0.1/(e^0.1 - 1) = 0.950833, phi(0.4) = 0.2/(e^0.2 - 1) = 0.903331
    # log-odds = 10 * 0.047502 = 0.475017; log sigmoid = -log(1 + e^-0.475017) = -0.483585
    # loss = 0.2 + 0.1 * 0.483585 = 0.2483585
    loss = mapo_loss(t(0.2), t(0.4), beta=0.1, alpha=0.5, num_train_timesteps=10)
    assert loss.item() == pytest.approx(0.2483585, abs=1e-6)
    odds = 10 * (hand_phi(0.2) - hand_phi(0.4))
    assert loss.item() == pytest.approx(0.2 + 0.1 * math.log1p(math.exp(-odds)), rel=1e-9)


def test_mapo_loss_batch_is_mean_over_pairs_and_defaults():
    lw, ll = t(0.1, 0.3), t(0.2, 0.25)
    expected = (0.1 + 0.3) / 2 - 0.1 * sum(
        -math.log1p(math.exp(-1000 * (hand_phi(w) - hand_phi(lo)))) for w, lo in ((0.1, 0.2), (0.3, 0.25))
    ) / 2
    assert mapo_loss(lw, ll).item() == pytest.approx(expected, rel=1e-9)


def test_mapo_direction_lower_chosen_loss_relative_to_rejected_lowers_loss():
    base = mapo_loss(t(0.3), t(0.3)).item()
    assert mapo_loss(t(0.3), t(0.35)).item() < base  # rejected worse: better
    assert mapo_loss(t(0.3), t(0.25)).item() > base  # rejected better: worse
    lw = torch.tensor([0.3], requires_grad=True)
    ll = torch.tensor([0.3], requires_grad=True)
    mapo_loss(lw, ll).backward()
    assert lw.grad.item() > 0 and ll.grad.item() < 0  # descent lowers L_w and raises L_l


def test_mapo_metrics():
    loss, m = mapo_loss_and_metrics(t(0.1, 0.5), t(0.2, 0.4))
    assert m["loss_w"].item() == pytest.approx(0.3)
    assert m["loss_l"].item() == pytest.approx(0.3)
    assert m["margin"].item() == pytest.approx(0.0, abs=1e-12)
    assert m["accuracy"].item() == 0.5
    assert loss.item() == pytest.approx(mapo_loss(t(0.1, 0.5), t(0.2, 0.4)).item())


def test_dpo_loss_hand_computed_and_direction():
    # diff = (0.1 - 0.15) - (0.2 - 0.15) = -0.1; -beta/2 * diff = 0.5 for beta 10
    # loss = -log sigmoid(0.5) = log(1 + e^-0.5) = 0.474077
    loss = dpo_loss(t(0.1), t(0.2), t(0.15), t(0.15), beta=10.0)
    assert loss.item() == pytest.approx(0.474077, abs=1e-6)
    # Default beta 5000: -log sigmoid(-2500 * 0.01) for a diff of +0.01 (chosen got worse)
    worse = dpo_loss(t(0.16), t(0.15), t(0.15), t(0.15))
    assert worse.item() == pytest.approx(math.log1p(math.exp(25.0)), rel=1e-9)
    better = dpo_loss(t(0.14), t(0.15), t(0.15), t(0.15))
    assert better.item() < worse.item()


def test_sft_is_mean_of_chosen():
    assert sft_loss(t(0.1, 0.3)).item() == pytest.approx(0.2)


def test_pair_metrics():
    m = pair_metrics(t(0.1, 0.4, 0.2), t(0.2, 0.3, 0.5))
    assert m["accuracy"].item() == pytest.approx(2 / 3)
    assert m["margin"].item() == pytest.approx((0.1 - 0.1 + 0.3) / 3)


def test_registry():
    assert set(LOSSES) == {"mapo", "dpo", "sft"}
    p = PairLosses(t(0.2), t(0.4), t(0.2), t(0.4))
    loss, _ = get_loss("mapo").compute(p, beta=0.1, alpha=0.5, num_train_timesteps=10)
    assert loss.item() == pytest.approx(0.2483585, abs=1e-6)
    assert get_loss("dpo").needs_reference and not get_loss("mapo").needs_reference
    loss, m = get_loss("dpo").compute(p, beta=5000.0, alpha=0.5, num_train_timesteps=1000)
    assert loss.item() == pytest.approx(math.log(2))  # equal to the reference: sigmoid(0)
    assert "reward_accuracy" in m
    with pytest.raises(ValueError):
        get_loss("dpo").compute(PairLosses(t(0.2), t(0.4)), beta=1.0, alpha=0.5, num_train_timesteps=10)
    with pytest.raises(KeyError, match="known: dpo, mapo, sft"):
        get_loss("orpo")
