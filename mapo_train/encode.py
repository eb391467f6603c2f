"""The encode stage: captions -> SDXL text embeddings, pixels -> VAE latents.

Kept apart from the training step so that a latent/text cache can replace it wholesale: the step
only ever sees an ``EncodedPairs`` (latents + embeddings + micro-conditioning).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class EncodedPairs:
    """One batch of pairs as the UNet consumes it; B pairs, chosen (w) and rejected (l)."""

    latents_w: torch.Tensor  # [B, C, h, w], already scaled by the VAE's scaling factor
    latents_l: torch.Tensor
    prompt_embeds: torch.Tensor  # [B, 77, D1 + D2] penultimate hidden states of both encoders
    pooled_prompt_embeds: torch.Tensor  # [B, P] projected pooled output of the second encoder
    time_ids_w: torch.Tensor  # [B, 6] original size, crop top-left, target size
    time_ids_l: torch.Tensor

    def to(self, device=None, dtype=None) -> EncodedPairs:
        """Move every tensor; ``dtype`` applies to the floating ones."""
        return EncodedPairs(
            **{f.name: getattr(self, f.name).to(device=device, dtype=dtype) for f in fields(self)}
        )

    @property
    def batch_size(self) -> int:
        return self.latents_w.shape[0]


class SDXLTextEncoder:
    """Both SDXL text encoders: the penultimate hidden states side by side, and the second
    encoder's projected pooled output (what SDXL's UNet is conditioned on)."""

    def __init__(self, tokenizer, tokenizer_2, text_encoder, text_encoder_2):
        self.tokenizers = (tokenizer, tokenizer_2)
        self.encoders = (text_encoder, text_encoder_2)

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, pooled = [], None
        for tokenizer, encoder in zip(self.tokenizers, self.encoders, strict=True):
            ids = tokenizer(
                captions,
                padding="max_length",
                max_length=tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids.to(encoder.device)
            out = encoder(ids, output_hidden_states=True)
            hidden.append(out.hidden_states[-2])
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
        return torch.cat(hidden, dim=-1), pooled


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels in [-1, 1] -> a latent sample scaled for the UNet (shift, then scale, as SDXL does)."""
    latents = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist.sample(
        generator=generator
    )
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        latents = latents - shift
    return latents * vae.config.scaling_factor


class PairEncoder:
    """Turns a collated raw batch (pixels, captions, time ids) into EncodedPairs on one device."""

    def __init__(self, vae, text_encoder: SDXLTextEncoder, device: torch.device):
        self.vae = vae
        self.text = text_encoder
        self.device = device

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> EncodedPairs:
        # One VAE call for both sides: half the launches, the same numbers.
        pixels = torch.cat([batch["pixels_w"], batch["pixels_l"]])
        latents_w, latents_l = encode_latents(self.vae, pixels, generator).float().chunk(2)
        prompt_embeds, pooled = self.text(batch["captions"])
        return EncodedPairs(
            latents_w=latents_w,
            latents_l=latents_l,
            prompt_embeds=prompt_embeds.float(),
            pooled_prompt_embeds=pooled.float(),
            time_ids_w=batch["time_ids_w"].to(self.device),
            time_ids_l=batch["time_ids_l"].to(self.device),
        )
