"""One training step's forward computation: encoded pairs -> per-sample losses -> objective.

Independent of where the encoded pairs came from (on the fly or a cache) and of the training loop
(accumulation, optimizer, logging live in train.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mapo_train.encode import EncodedPairs
from mapo_train.losses import LossSpec, PairLosses

# (pairs, noise, timesteps) -> (ref_loss_w, ref_loss_l), computed without gradients.
ReferenceFn = Callable[[EncodedPairs, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def draw_noise(
    latents: torch.Tensor, num_train_timesteps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise shaped like one side's latents and one timestep per pair, from ``generator`` (CPU),
    so that a step's randomness depends only on how the generator was seeded."""
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32)
    timesteps = torch.randint(0, num_train_timesteps, (latents.shape[0],), generator=generator)
    return noise.to(latents.device), timesteps.to(latents.device)


def denoising_losses(
    unet,
    noise_scheduler,
    pairs: EncodedPairs,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    prediction_type: str = "epsilon",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair losses (L_w, L_l), each [B]: MSE of the UNet's prediction against its target.

    Both images of a pair get the same noise and timestep (so their losses are comparable), and go
    through the UNet in one batch of 2B.
    """
    latents = torch.cat([pairs.latents_w, pairs.latents_l])
    noise2 = torch.cat([noise, noise])
    t2 = torch.cat([timesteps, timesteps])
    noisy = noise_scheduler.add_noise(latents, noise2, t2)
    if prediction_type == "epsilon":
        target = noise2
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise2, t2)
    else:
        raise ValueError(f"unsupported prediction type {prediction_type!r}")
    prediction = unet(
        noisy,
        t2,
        encoder_hidden_states=torch.cat([pairs.prompt_embeds, pairs.prompt_embeds]),
        added_cond_kwargs={
            "text_embeds": torch.cat([pairs.pooled_prompt_embeds, pairs.pooled_prompt_embeds]),
            "time_ids": torch.cat([pairs.time_ids_w, pairs.time_ids_l]),
        },
        return_dict=False,
    )[0]
    per_sample = (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))
    loss_w, loss_l = per_sample.chunk(2)
    return loss_w, loss_l


def pair_objective(
    unet,
    noise_scheduler,
    pairs: EncodedPairs,
    loss: LossSpec,
    generator: torch.Generator,
    *,
    beta: float,
    alpha: float,
    prediction_type: str = "epsilon",
    reference: ReferenceFn | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The scalar objective for one batch of encoded pairs, and its metrics."""
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    noise, timesteps = draw_noise(pairs.latents_w, num_train_timesteps, generator)
    loss_w, loss_l = denoising_losses(unet, noise_scheduler, pairs, noise, timesteps, prediction_type)
    ref_w = ref_l = None
    if loss.needs_reference:
        if reference is None:
            raise ValueError("this loss needs a reference model")
        with torch.no_grad():
            ref_w, ref_l = reference(pairs, noise, timesteps)
    return loss.compute(
        PairLosses(loss_w, loss_l, ref_w, ref_l),
        beta=beta,
        alpha=alpha,
        num_train_timesteps=num_train_timesteps,
    )
