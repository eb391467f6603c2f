"""Preference losses over per-sample diffusion losses: pure functions any trainer can import.

Inputs are the per-pair denoising losses ``loss_w`` (chosen) and ``loss_l`` (rejected), shape [B]:
the MSE between the UNet prediction and its target, averaged over all but the batch dimension,
with both images of a pair noised with the same noise at the same timestep. A lower loss stands
in for a higher likelihood.

The registry at the bottom maps a recipe's ``loss.name`` to a function with one calling
convention, so the training loop never branches on the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# Below this |a*l| phi is evaluated by its Taylor series: x/expm1(x) loses digits there and is
# 0/0 at x = 0.
_PHI_SERIES_BELOW = 1e-4


def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 (half-precision losses lose the small differences that matter here),
    keeping fp64 when given."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def phi(loss: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """phi_a(l) = a*l / (exp(a*l) - 1), computed stably.

    The limit at l = 0 is 1; for large a*l it decays to 0 without overflow. Each branch only sees
    inputs where it is well-defined, so gradients stay finite too (a plain ``torch.where`` over an
    expression that is NaN somewhere leaks NaN into the backward pass).
    """
    x = alpha * _wide(loss)
    small = x.abs() < _PHI_SERIES_BELOW
    positive = x >= _PHI_SERIES_BELOW
    one = torch.ones_like(x)
    # x > 0: x * e^-x / (1 - e^-x) never overflows (e^-x -> 0, 1 - e^-x -> 1).
    xp = torch.where(positive, x, one)
    pos = xp * torch.exp(-xp) / -torch.expm1(-xp)
    # x < 0: x / (e^x - 1) is fine as written (the denominator tends to -1).
    xn = torch.where(x <= -_PHI_SERIES_BELOW, x, -one)
    neg = xn / torch.expm1(xn)
    xs = torch.where(small, x, torch.zeros_like(x))
    series = 1.0 - xs / 2.0 + xs * xs / 12.0
    return torch.where(small, series, torch.where(positive, pos, neg))


def mapo_loss(
    loss_w: torch.Tensor,
    loss_l: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 0.5,
    num_train_timesteps: int = 1000,
) -> torch.Tensor:
    """MaPO, as the authors implemented it (scalar).

    loss = mean(L_w) - beta * mean(log sigmoid(T * (phi_a(L_w) - phi_a(L_l))))

    The first term keeps fitting the chosen images; the second widens the margin between chosen
    and rejected likelihoods without any reference model. phi is decreasing, so L_w < L_l raises
    the log-odds and lowers the loss.
    """
    return mapo_loss_and_metrics(loss_w, loss_l, beta, alpha, num_train_timesteps)[0]


def mapo_loss_and_metrics(
    loss_w: torch.Tensor,
    loss_l: torch.Tensor,
    beta: float = 0.1,
    alpha: float = 0.5,
    num_train_timesteps: int = 1000,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``mapo_loss`` plus its metrics (the same arithmetic, computed once)."""
    log_odds = num_train_timesteps * (phi(loss_w, alpha) - phi(loss_l, alpha))
    log_ratio = F.logsigmoid(log_odds)
    loss = _wide(loss_w).mean() - beta * log_ratio.mean()
    metrics = pair_metrics(loss_w, loss_l)
    metrics["log_odds"] = log_odds.detach().mean()
    metrics["ratio_loss"] = -log_ratio.detach().mean()
    return loss, metrics


def dpo_loss(
    loss_w: torch.Tensor,
    loss_l: torch.Tensor,
    ref_loss_w: torch.Tensor,
    ref_loss_l: torch.Tensor,
    beta: float = 5000.0,
) -> torch.Tensor:
    """Diffusion-DPO (scalar): -mean(log sigmoid(-beta/2 * ((L_w - Lref_w) - (L_l - Lref_l))))."""
    return dpo_loss_and_metrics(loss_w, loss_l, ref_loss_w, ref_loss_l, beta)[0]


def dpo_loss_and_metrics(
    loss_w: torch.Tensor,
    loss_l: torch.Tensor,
    ref_loss_w: torch.Tensor,
    ref_loss_l: torch.Tensor,
    beta: float = 5000.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``dpo_loss`` plus its metrics."""
    diff = (_wide(loss_w) - _wide(ref_loss_w)) - (_wide(loss_l) - _wide(ref_loss_l))
    loss = -F.logsigmoid(-0.5 * beta * diff).mean()
    metrics = pair_metrics(loss_w, loss_l)
    # DPO's own notion of accuracy: the chosen image improved more than the rejected one
    # relative to the reference.
    metrics["reward_accuracy"] = (diff.detach() < 0).float().mean()
    metrics["ref_loss_w"] = _wide(ref_loss_w.detach()).mean()
    metrics["ref_loss_l"] = _wide(ref_loss_l.detach()).mean()
    return loss, metrics


def sft_loss(loss_w: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning on the chosen images only: mean(L_w)."""
    return _wide(loss_w).mean()


def pair_metrics(loss_w: torch.Tensor, loss_l: torch.Tensor) -> dict[str, torch.Tensor]:
    """Loss-independent metrics: mean L_w and L_l, margin mean(L_l - L_w) (positive is good),
    and implicit accuracy, the share of pairs with L_w < L_l."""
    w, lo = _wide(loss_w.detach()), _wide(loss_l.detach())
    return {
        "loss_w": w.mean(),
        "loss_l": lo.mean(),
        "margin": (lo - w).mean(),
        "accuracy": (w < lo).float().mean(),
    }


@dataclass(frozen=True)
class PairLosses:
    """Per-sample losses of one batch of pairs; the reference ones only for losses that need them."""

    loss_w: torch.Tensor
    loss_l: torch.Tensor
    ref_loss_w: torch.Tensor | None = None
    ref_loss_l: torch.Tensor | None = None


LossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]


@dataclass(frozen=True)
class LossSpec:
    """A registered objective: how to compute it and what the trainer must provide."""

    compute: LossFn  # (PairLosses, beta, alpha, num_train_timesteps) -> (loss, metrics)
    needs_reference: bool
    default_beta: float | None


def _mapo(p: PairLosses, beta: float, alpha: float, num_train_timesteps: int):
    return mapo_loss_and_metrics(p.loss_w, p.loss_l, beta, alpha, num_train_timesteps)


def _dpo(p: PairLosses, beta: float, alpha: float, num_train_timesteps: int):
    if p.ref_loss_w is None or p.ref_loss_l is None:
        raise ValueError("dpo needs the reference model's losses")
    return dpo_loss_and_metrics(p.loss_w, p.loss_l, p.ref_loss_w, p.ref_loss_l, beta)


def _sft(p: PairLosses, beta: float, alpha: float, num_train_timesteps: int):
    return sft_loss(p.loss_w), pair_metrics(p.loss_w, p.loss_l)


LOSSES: dict[str, LossSpec] = {
    "mapo": LossSpec(_mapo, needs_reference=False, default_beta=0.1),
    "dpo": LossSpec(_dpo, needs_reference=True, default_beta=5000.0),
    "sft": LossSpec(_sft, needs_reference=False, default_beta=None),
}


def get_loss(name: str) -> LossSpec:
    """The registered objective ``name``; KeyError lists the known names."""
    try:
        return LOSSES[name]
    except KeyError:
        raise KeyError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}") from None


def default_beta(name: str) -> float:
    """The beta a loss uses when the recipe leaves it empty (0 for losses without one)."""
    return get_loss(name).default_beta or 0.0
