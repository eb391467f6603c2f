"""One step's forward computation: both images of a pair share noise and timestep, the target
follows the prediction type, per-sample losses average over all but the batch, the reference sees
the policy's noise without gradients; and SDXL text conditioning matches diffusers' own."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from mapo_train.encode import EncodedPairs, SDXLTextEncoder
from mapo_train.losses import get_loss
from mapo_train.step import denoising_losses, draw_noise, pair_objective

B, C, H = 3, 4, 8


class RecordingUNet(torch.nn.Module):
    """Predicts zeros (so a per-sample loss is the mean square of its target) and records what
    it was called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, sample, timestep, encoder_hidden_states, added_cond_kwargs, return_dict=False):
        self.calls.append(
            {
                "sample": sample,
                "timestep": timestep,
                "hidden": encoder_hidden_states,
                "text_embeds": added_cond_kwargs["text_embeds"],
                "time_ids": added_cond_kwargs["time_ids"],
            }
        )
        return (torch.zeros_like(sample),)


def make_pairs(seed: int = 0) -> EncodedPairs:
    g = torch.Generator().manual_seed(seed)
    return EncodedPairs(
        latents_w=torch.randn(B, C, H, H, generator=g, dtype=torch.float64),
        latents_l=torch.randn(B, C, H, H, generator=g, dtype=torch.float64),
        prompt_embeds=torch.randn(B, 7, 5, generator=g),
        pooled_prompt_embeds=torch.randn(B, 6, generator=g),
        time_ids_w=torch.tensor([[64.0, 96.0, 0.0, 16.0, 64.0, 64.0]] * B),
        time_ids_l=torch.tensor([[80.0, 64.0, 8.0, 0.0, 64.0, 64.0]] * B),
    )


def by_hand(scheduler, x0, noise, t):
    """x_t and the v target, written out from the DDPM definitions."""
    abar = scheduler.alphas_cumprod.to(torch.float64)[t].view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    return x_t, v


def test_pair_shares_noise_and_timestep_and_epsilon_loss_is_per_sample_mse():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    pairs = make_pairs()
    noise, t = draw_noise(pairs.latents_w, 1000, torch.Generator().manual_seed(1))
    noise = noise.double()
    assert noise.shape == pairs.latents_w.shape and t.shape == (B,)
    unet = RecordingUNet()
    loss_w, loss_l = denoising_losses(unet, scheduler, pairs, noise, t, "epsilon")
    (call,) = unet.calls
    # One UNet batch of 2B: chosen first, then rejected, at the same timesteps.
    assert torch.equal(call["timestep"], torch.cat([t, t]))
    x_w, _ = by_hand(scheduler, pairs.latents_w, noise, t)
    x_l, _ = by_hand(scheduler, pairs.latents_l, noise, t)
    torch.testing.assert_close(call["sample"], torch.cat([x_w, x_l]))
    # Conditioning: the caption twice, each image its own micro-conditioning.
    assert torch.equal(call["hidden"], torch.cat([pairs.prompt_embeds] * 2))
    assert torch.equal(call["text_embeds"], torch.cat([pairs.pooled_prompt_embeds] * 2))
    assert torch.equal(call["time_ids"], torch.cat([pairs.time_ids_w, pairs.time_ids_l]))
    # Epsilon target with a zero prediction: each loss is mean(noise^2) over C, H, W of its own
    # sample, and the two images of a pair, sharing the noise, get exactly the same loss.
    expected = noise.pow(2).mean(dim=(1, 2, 3))
    assert loss_w.shape == loss_l.shape == (B,)
    torch.testing.assert_close(loss_w, expected.float())
    assert torch.equal(loss_w, loss_l)


def test_v_prediction_target():
    scheduler = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    pairs = make_pairs(2)
    noise = torch.randn(B, C, H, H, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    loss_w, loss_l = denoising_losses(RecordingUNet(), scheduler, pairs, noise, t, "v_prediction")
    _, v_w = by_hand(scheduler, pairs.latents_w, noise, t)
    _, v_l = by_hand(scheduler, pairs.latents_l, noise, t)
    torch.testing.assert_close(loss_w, v_w.pow(2).mean(dim=(1, 2, 3)).float())
    torch.testing.assert_close(loss_l, v_l.pow(2).mean(dim=(1, 2, 3)).float())
    # Unlike epsilon, the v target depends on the image: chosen and rejected losses differ.
    assert not torch.allclose(loss_w, loss_l)
    with pytest.raises(ValueError, match="unsupported prediction type 'sample'"):
        denoising_losses(RecordingUNet(), scheduler, pairs, noise, t, "sample")


def test_reference_sees_the_policy_noise_and_timesteps_without_gradients():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    pairs = make_pairs().to(dtype=torch.float32)
    seen = {}

    def reference(p, noise, timesteps):
        seen.update(noise=noise, timesteps=timesteps, grad=torch.is_grad_enabled())
        lw, ll = denoising_losses(RecordingUNet(), scheduler, p, noise, timesteps)
        return lw + 0.01, ll - 0.01

    loss, metrics = pair_objective(
        RecordingUNet(),
        scheduler,
        pairs,
        get_loss("dpo"),
        torch.Generator().manual_seed(7),
        beta=100.0,
        alpha=0.5,
        reference=reference,
    )
    noise, t = draw_noise(pairs.latents_w, 1000, torch.Generator().manual_seed(7))
    assert torch.equal(seen["noise"], noise) and torch.equal(seen["timesteps"], t)
    assert seen["grad"] is False
    # Policy losses equal (shared noise, zero prediction); the reference is 0.01 worse on the
    # chosen and 0.01 better on the rejected, so the policy has moved the right way:
    # diff = (-0.01) - (+0.01) = -0.02, loss = -log sigmoid(-beta/2 * diff) = -log sigmoid(1).
    assert loss.item() == pytest.approx(0.3132617, rel=1e-5)
    assert metrics["reward_accuracy"].item() == 1.0
    with pytest.raises(ValueError, match="needs a reference"):
        pair_objective(
            RecordingUNet(), scheduler, pairs, get_loss("dpo"), torch.Generator(), beta=1.0, alpha=0.5
        )


def test_text_conditioning_matches_the_sdxl_pipeline(tiny_model_path):
    """Both encoders' penultimate hidden states side by side, and the second encoder's pooled
    projection: what StableDiffusionXLPipeline.encode_prompt feeds the UNet."""
    from diffusers import StableDiffusionXLPipeline

    from mapo_train.config import ModelConfig
    from mapo_train.model import load_components

    c = load_components(ModelConfig(pretrained="tiny"), "no")
    text = SDXLTextEncoder(c.tokenizer, c.tokenizer_2, c.text_encoder, c.text_encoder_2)
    captions = ["a cat in a hat", ""]
    embeds, pooled = text(captions)
    d1 = c.text_encoder.config.hidden_size
    d2 = c.text_encoder_2.config.hidden_size
    assert embeds.shape == (2, c.tokenizer.model_max_length, d1 + d2)
    assert pooled.shape == (2, c.text_encoder_2.config.projection_dim)

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_path, unet=None, vae=None)
    want_embeds, _, want_pooled, _ = pipe.encode_prompt(captions, do_classifier_free_guidance=False)
    torch.testing.assert_close(embeds, want_embeds)
    torch.testing.assert_close(pooled, want_pooled)
    # And explicitly: the first d1 features are encoder 1's penultimate layer, not its last.
    ids = c.tokenizer(
        captions, padding="max_length", max_length=c.tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    hidden = c.text_encoder(ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(embeds[..., :d1], hidden[-2])
    assert not torch.allclose(embeds[..., :d1], hidden[-1])
