"""Train the built-in ``tiny`` SDXL model and the ``clip:tiny`` judge on the procedural world.

    python -m mapo_data.tiny_training                    # writes mapo_data/resources/tiny-{sdxl,clip}
    python -m mapo_data.tiny_training --out /tmp/tiny    # somewhere else

The world (:mod:`mapo_data.world`) draws a picture for any prompt, with the presets' prefixes
standing for visible styles. Three stages, each seeded, on the CPU (31 minutes on 2 cores with the defaults):

1. **VAE** (``AutoencoderKL``, SDXL's 8x layout): reconstruction (L1 + MSE) with a small KL term
   on whole 64x64 pictures; the latent scaling factor is then set to
   1 / std of the training latents, as Stable Diffusion's was (Rombach et al. 2022, section G).
2. **UNet and both text encoders** together, epsilon-prediction on the DDPM noise schedule of the
   pipeline's scheduler, conditioned like SDXL (penultimate hidden states of both encoders side by
   side, the second one's pooled projection, size/crop time ids). 10% of prompts are replaced by
   zero embeddings, which is what the pipeline feeds as the unconditional side of classifier-free
   guidance (``force_zeros_for_empty_prompt``).
3. **Judge**: a CLIP (transformers layout) trained image-text contrastively on the world's prompts
   and pictures, plus, for each image, a two-way softmax over each preset's preferred and
   dispreferred descriptions (:data:`mapo_data.judges.PRESET_SIDES`) that applies to its style:
   the zero-shot question the style judge asks. Half its images go through the trained VAE first,
   so it has seen the softness of generated pictures.

The results are written in the diffusers and transformers layouts, with a README card each, and
``mapo_data.tiny`` / ``mapo_data.tiny_clip`` load them from the package, offline.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from mapo_data import world

RESOURCES = Path(__file__).parent / "resources"

_SYNTHETIC_OBJECTS = (
    "fox cat dog rabbit horse bear owl duck penguin fish whale tree pine house castle lighthouse boat "
    "ship flower tulips car bus train mountain volcano sun moon balloon kite robot"
).split()
_SYNTHETIC_PLACES = (
    "in the snow", "at night", "at sunset", "on a beach", "by a lake", "in a forest", "in the desert",
    "in a kitchen", "in a meadow", "under the stars", "at dawn", "on a hill", "in a garden",
    "near the sea", "in a room", "on a sunny day", "",
)  # fmt: skip


@dataclass
class TinyTrainingConfig:
    """Settings of :func:`train_tiny_world`; the defaults made the shipped weights."""

    out: Path = RESOURCES
    """Folder that receives ``tiny-sdxl/`` and ``tiny-clip/`` (default: the package's resources)."""
    seed: int = 0
    """Seeds the synthetic captions, the pictures and every stage's sampling (the initial weights
    have fixed seeds of their own: :func:`mapo_data.tiny.initial_components`)."""
    synthetic_captions: int = 720
    """Captions made from the world's vocabulary, besides the default prompts."""
    max_default_prompts: int | None = None
    """Use only the first N distinct default prompts (None: all of them); for quick checks."""
    seeds_per_style: int = 2
    """Pictures of each caption in each style."""
    vae_steps: int = 3000
    """Optimizer steps of stage 1 (VAE)."""
    vae_batch_size: int = 16
    """Pictures per VAE step (64x64 each)."""
    unet_steps: int = 2000
    """Optimizer steps of stage 2 (UNet and both text encoders)."""
    clip_steps: int = 1200
    """Optimizer steps of stage 3 (CLIP judge)."""
    batch_size: int = 64
    """Latents per UNet step; the judge takes twice as many pictures per step."""
    threads: int = 2
    """torch CPU threads for the whole process."""


def world_captions(config: TinyTrainingConfig) -> list[str]:
    """The default context prompts and seeded combinations of the world's words."""
    from mapo_data.prompts.sources import load_prompts

    rng = np.random.default_rng(config.seed)
    colours = [c for c in world.COLOURS if c not in ("grey", "gold")]
    synthetic = []
    for _ in range(config.synthetic_captions):
        obj = rng.choice(_SYNTHETIC_OBJECTS)
        colour = rng.choice(colours) if rng.random() < 0.6 else ""
        place = rng.choice(_SYNTHETIC_PLACES)
        synthetic.append(" ".join(w for w in ("a", colour, obj, place) if w))
    defaults = list(dict.fromkeys(p.strip() for p in load_prompts(None) if p.strip()))
    defaults = defaults[: config.max_default_prompts]
    return list(dict.fromkeys([*defaults, *synthetic]))


def world_dataset(config: TinyTrainingConfig) -> tuple[list[str], list[str], np.ndarray]:
    """(prompts, styles, uint8 images (N, 64, 64, 3)): every caption in every style."""
    from tqdm.auto import tqdm

    prompts, styles, images = [], [], []
    captions = world_captions(config)
    for i, caption in enumerate(tqdm(captions, desc="world pictures", unit="caption")):
        for s, style in enumerate(world.STYLES):
            for k in range(config.seeds_per_style):
                prompt = world.with_style(caption, style)
                seed = (config.seed * 1_000_003 + i) * 64 + s * 8 + k
                prompts.append(prompt)
                styles.append(style)
                images.append(np.asarray(world.render(prompt, seed)))
    return prompts, styles, np.stack(images)


def _to_pixels(images: np.ndarray):
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def _cosine_lr(step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_vae(vae, images: np.ndarray, config: TinyTrainingConfig) -> dict:
    """Stage 1; returns its figures. Sets ``vae.config.scaling_factor``."""
    import torch
    from tqdm.auto import tqdm

    generator = np.random.default_rng(config.seed + 11)
    with torch.no_grad():
        # Start the posterior's log-variance far below 0: sampled latents are then nearly the mean
        # from the first step, instead of unit noise that the tiny KL weight takes long to shrink.
        vae.quant_conv.bias[vae.config.latent_channels :] = -8.0
    optimizer = torch.optim.AdamW(vae.parameters(), lr=3e-3, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_lr(s, config.vae_steps))
    vae.train()
    bar = tqdm(range(config.vae_steps), desc="VAE", unit="step")
    for _ in bar:
        x = _to_pixels(images[generator.integers(0, len(images), size=config.vae_batch_size)])
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        rec_loss = (reconstruction - x).abs().mean() + (reconstruction - x).pow(2).mean()
        loss = rec_loss + 1e-6 * posterior.kl().mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(rec=f"{rec_loss.item():.4f}")
    vae.eval()
    latents = encode_all(vae, images, scaled=False)
    std = float(latents.std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    with torch.no_grad():
        sample = _to_pixels(images[:256])
        rec = vae.decode(vae.encode(sample).latent_dist.mean).sample
        mae = float((rec - sample).abs().mean() * 127.5)
    return {"latent_std": std, "scaling_factor": vae.config.scaling_factor, "reconstruction_mae_0_255": mae}


def encode_all(vae, images: np.ndarray, scaled: bool = True):
    """Posterior means of all images, times the scaling factor when ``scaled``."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            out.append(vae.encode(_to_pixels(images[start : start + 256])).latent_dist.mean)
    latents = torch.cat(out)
    return latents * vae.config.scaling_factor if scaled else latents


def decode_all(vae, latents) -> np.ndarray:
    """Latents (scaled) -> uint8 images (N, 64, 64, 3)."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, len(latents), 256):
            pixels = vae.decode(latents[start : start + 256] / vae.config.scaling_factor).sample
            out.append(((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy())
    return np.concatenate(out)


def _token_ids(tokenizer, prompts: list[str]):
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def _sdxl_text_states(text_encoder, text_encoder_2, ids, ids_2):
    """What SDXL's pipeline feeds the UNet: penultimate hidden states of both encoders side by
    side (batch, 77, 64) and the second encoder's pooled projection (batch, 32)."""
    import torch

    first = text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    second = text_encoder_2(ids_2, output_hidden_states=True)
    return torch.cat([first, second.hidden_states[-2]], dim=-1), second.text_embeds


def train_unet(components: dict, prompts: list[str], latents, config: TinyTrainingConfig) -> dict:
    """Stage 2: the UNet and both text encoders on (prompt, latent) pairs."""
    import torch
    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    unet, te1, te2 = components["unet"], components["text_encoder"], components["text_encoder_2"]
    ids = _token_ids(components["tokenizer"], prompts)
    ids_2 = _token_ids(components["tokenizer_2"], prompts)
    noise_schedule = DDPMScheduler.from_config(components["scheduler"].config)
    params = [*unet.parameters(), *te1.parameters(), *te2.parameters()]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_lr(s, config.unet_steps))
    generator = torch.Generator().manual_seed(config.seed + 22)
    time_ids = torch.tensor([[world.SIZE, world.SIZE, 0, 0, world.SIZE, world.SIZE]], dtype=torch.float32)
    for module in (unet, te1, te2):
        module.train()
    losses = []
    bar = tqdm(range(config.unet_steps), desc="UNet + text encoders", unit="step")
    for _ in bar:
        idx = torch.randint(0, len(latents), (config.batch_size,), generator=generator)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=generator)
        timesteps = torch.randint(
            0, noise_schedule.config.num_train_timesteps, (len(idx),), generator=generator
        )
        noisy = noise_schedule.add_noise(x0, noise, timesteps)
        hidden, pooled = _sdxl_text_states(te1, te2, ids[idx], ids_2[idx])
        keep = (torch.rand(len(idx), generator=generator) >= 0.1).float()
        hidden, pooled = hidden * keep[:, None, None], pooled * keep[:, None]
        prediction = unet(
            noisy,
            timesteps,
            encoder_hidden_states=hidden,
            added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.expand(len(idx), -1)},
        ).sample
        loss = (prediction - noise).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    for module in (unet, te1, te2):
        module.eval()
    return {"final_loss_mean_last_100": float(np.mean(losses[-100:]))}


def _judge_tasks() -> list[tuple[str, str, frozenset[str], frozenset[str]]]:
    """(preferred text, dispreferred text, styles on the preferred side, on the dispreferred side)."""
    from mapo_data.judges import PRESET_SIDES

    realistic = frozenset({"plain", "realistic"})
    pixel = PRESET_SIDES["pick-style"]["pixel"]
    cartoon = PRESET_SIDES["pick-style"]["cartoon"]
    safety = PRESET_SIDES["pick-safety"][None]
    return [
        (*pixel, frozenset({"pixel"}), realistic),
        (*cartoon, frozenset({"cartoon"}), realistic),
        (*safety, frozenset({"plain", "realistic", "pixel", "cartoon"}), frozenset({"warning"})),
    ]


def train_judge(
    model, processor, prompts: list[str], styles: list[str], images: np.ndarray, config: TinyTrainingConfig
) -> dict:
    """Stage 3: the CLIP judge. ``images`` holds world pictures and their VAE round trips."""
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from mapo_data.judges import _pooled

    pixel_values = torch.cat(
        [
            processor.image_processor(list(images[s : s + 512]), return_tensors="pt").pixel_values
            for s in range(0, len(images), 512)
        ]
    )
    tokenizer = processor.tokenizer
    ids = _token_ids(tokenizer, prompts)
    tasks = _judge_tasks()
    task_ids = _token_ids(tokenizer, [text for task in tasks for text in task[:2]])
    # target[i, t] = 0 (preferred), 1 (dispreferred) or -100 (task does not apply to this style)
    target = torch.full((len(styles), len(tasks)), -100, dtype=torch.long)
    for t, (_, _, preferred, dispreferred) in enumerate(tasks):
        for i, style in enumerate(styles):
            if style in preferred:
                target[i, t] = 0
            elif style in dispreferred:
                target[i, t] = 1
    holdout = np.random.default_rng(config.seed + 33).random(len(styles)) < 0.05
    train_idx = torch.from_numpy(np.nonzero(~holdout)[0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-2)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _cosine_lr(s, config.clip_steps))
    generator = torch.Generator().manual_seed(config.seed + 44)
    model.train()
    bar = tqdm(range(config.clip_steps), desc="CLIP judge", unit="step")
    for _ in bar:
        idx = train_idx[torch.randint(0, len(train_idx), (2 * config.batch_size,), generator=generator)]
        image_emb = F.normalize(_pooled(model.get_image_features(pixel_values=pixel_values[idx])), dim=-1)
        text_emb = F.normalize(
            _pooled(model.get_text_features(input_ids=torch.cat([ids[idx], task_ids]))), dim=-1
        )
        prompt_emb, side_emb = text_emb[: len(idx)], text_emb[len(idx) :].view(len(tasks), 2, -1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * image_emb @ prompt_emb.T
        labels = torch.arange(len(idx))
        contrastive = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        side_logits = scale * torch.einsum("nd,tkd->ntk", image_emb, side_emb)
        sides = F.cross_entropy(side_logits.reshape(-1, 2), target[idx].reshape(-1), ignore_index=-100)
        loss = contrastive + sides
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(contrastive=f"{contrastive.item():.3f}", sides=f"{sides.item():.3f}")
    model.eval()
    with torch.no_grad():
        held = torch.from_numpy(np.nonzero(holdout)[0])
        image_emb = F.normalize(_pooled(model.get_image_features(pixel_values=pixel_values[held])), dim=-1)
        side_emb = F.normalize(_pooled(model.get_text_features(input_ids=task_ids)), dim=-1).view(
            len(tasks), 2, -1
        )
        sims = torch.einsum("nd,tkd->ntk", image_emb, side_emb)
        predicted = (sims[..., 1] > sims[..., 0]).long()
        applies = target[held] != -100
        accuracy = float((predicted == target[held])[applies].float().mean())
    return {"held_out_side_accuracy": accuracy, "held_out_images": int(len(held))}


def _write_card(folder: Path, title: str, body: str, figures: dict, config: TinyTrainingConfig) -> None:
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items() if k != "out"}
    (folder / "README.md").write_text(
        f"---\nlicense: apache-2.0\nlibrary_name: {'diffusers' if 'sdxl' in folder.name else 'transformers'}\n"
        f"tags: [mapo, tiny, procedural]\n---\n\n# {title}\n\n{body}\n\n"
        "Made by `python -m mapo_data.tiny_training` (mapo_data/tiny_training.py) on the CPU from the "
        "procedural world of `mapo_data/world.py`: no downloads, no real images. **The world never "
        "depicts people or anything sexual**; the Pick-Safety rejected prefix is drawn as warning "
        "hatching with a red frame.\n\n"
        f"Settings:\n\n```json\n{json.dumps(settings, indent=2)}\n```\n\n"
        f"Figures of this run:\n\n```json\n{json.dumps(figures, indent=2)}\n```\n"
    )


def train_tiny_world(config: TinyTrainingConfig) -> dict:
    """All three stages; writes ``out/tiny-sdxl`` and ``out/tiny-clip``. Returns the figures."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    from mapo_data.shards import give_umask_mode
    from mapo_data.tiny import initial_components
    from mapo_data.tiny_clip import initial_clip_components

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    started = time.monotonic()
    figures: dict = {}
    prompts, styles, images = world_dataset(config)
    figures["pictures"] = len(images)
    components = initial_components()
    figures["vae"] = train_vae(components["vae"], images, config)
    latents = encode_all(components["vae"], images)
    figures["unet"] = train_unet(components, prompts, latents, config)
    pipe = StableDiffusionXLPipeline(**components, add_watermarker=False)
    sdxl_dir = config.out / "tiny-sdxl"
    pipe.save_pretrained(sdxl_dir)

    clip_model, processor = initial_clip_components()
    round_trips = decode_all(components["vae"], latents)
    figures["judge"] = train_judge(
        clip_model, processor, prompts * 2, styles * 2, np.concatenate([images, round_trips]), config
    )
    clip_dir = config.out / "tiny-clip"
    clip_model.save_pretrained(clip_dir)
    processor.save_pretrained(clip_dir)
    figures["minutes"] = round((time.monotonic() - started) / 60, 1)
    give_umask_mode(sdxl_dir, clip_dir)  # safetensors writes 0600: a package must be readable by all
    _write_card(
        sdxl_dir,
        "tiny SDXL (mapo's built-in model)",
        "Stable Diffusion XL's architecture class for class (text-time conditioned UNet, 8x VAE, two "
        "CLIP text encoders, tokenizers, Euler scheduler), very small, trained to draw the world at "
        "64x64: the context words choose shape, colour and background, the preset prefixes choose "
        "the style (none: plain; `Realistic 8k image.`; `Pixel art style image.`; "
        "`Disney style animated image.`; `Sexual, nudity, +19 image.`: warning hatching). "
        "Weights in fp32 safetensors.",
        figures,
        config,
    )
    _write_card(
        clip_dir,
        "tiny CLIP judge (mapo's `clip:tiny`)",
        "A CLIP model (transformers layout, 32x32 input) trained on the same world, image-text "
        "contrastive on the prompts plus a two-way softmax over each preset's preferred and "
        "dispreferred descriptions; `--judge clip:tiny` in `mapo-data curate` and `mapo-train eval`.",
        figures,
        config,
    )
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mapo_data.tiny_training",
        description=__doc__.split("\n\n")[0],
        epilog="Example: python -m mapo_data.tiny_training --out /tmp/tiny-world",
    )
    defaults = TinyTrainingConfig()
    parser.add_argument("--out", type=Path, default=defaults.out, help=f"default: {defaults.out}")
    parser.add_argument("--max-default-prompts", type=int, default=None, help="default: all")
    for name in ("seed", "synthetic_captions", "seeds_per_style", "vae_steps", "unet_steps", "clip_steps",
                 "batch_size", "vae_batch_size", "threads"):  # fmt: skip
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    args = parser.parse_args(argv)
    figures = train_tiny_world(TinyTrainingConfig(**vars(args)))
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
