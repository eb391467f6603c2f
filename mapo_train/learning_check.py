"""The learning check's world: a synthetic preference task with a measurable property, for
checking that training learns (not training code: the trainer never imports it).

Chosen images are *flat*: a few axis-aligned blocks of solid colour. Rejected images are their
opposite: smooth two-colour gradients at a random angle with fine texture on top. ``flatness``
scores the property (the share of neighbouring pixels that are equal up to a small tolerance):
about 0.9 for blocky images, near 0 for gradients, so "moved toward the chosen property" is a
number, not an impression.

Everything here builds on the trainer's own pieces (the pair format, ``PairEncoder``,
``denoising_losses``), so what it measures is what the trainer optimises. Used by
``tests/mapo_train/test_learning.py`` (fast) and ``bench/learning.py`` (full).
"""

from __future__ import annotations

import io
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# Neighbouring pixels closer than this (0-255, any channel) count as "the same colour".
FLAT_TOLERANCE = 2
COLOURS = ["red", "blue", "green", "yellow", "orange", "purple", "pink", "white"]
SUBJECTS = ["cat", "house", "tree", "boat", "bird", "castle", "flower", "robot", "lake", "mountain"]


def blocky_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """Flat colour blocks: the image cut at 1-3 random places along each axis, one solid colour per cell."""
    ys = np.sort(rng.choice(np.arange(size // 8, size - size // 8), rng.integers(1, 4), replace=False))
    xs = np.sort(rng.choice(np.arange(size // 8, size - size // 8), rng.integers(1, 4), replace=False))
    out = np.empty((size, size, 3), dtype=np.uint8)
    for y0, y1 in zip([0, *ys], [*ys, size], strict=True):
        for x0, x1 in zip([0, *xs], [*xs, size], strict=True):
            out[y0:y1, x0:x1] = rng.integers(0, 256, 3)
    return out


def smooth_image(rng: np.random.Generator, size: int, texture: float = 10.0) -> np.ndarray:
    """A two-colour linear gradient at a random angle, with fine texture (Gaussian noise)."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(ramp.max() - ramp.min(), 1e-6)
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    img = a[None, None, :] * (1 - ramp[..., None]) + b[None, None, :] * ramp[..., None]
    img = img + rng.normal(0.0, texture, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def flatness(image: Image.Image | np.ndarray) -> float:
    """Share of horizontally and vertically adjacent pixel pairs of (nearly) the same colour."""
    a = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image).astype(np.int16)
    dx = np.abs(a[:, 1:] - a[:, :-1]).max(axis=-1)
    dy = np.abs(a[1:] - a[:-1]).max(axis=-1)
    return float(np.concatenate([dx.ravel(), dy.ravel()]).__le__(FLAT_TOLERANCE).mean())


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def caption(rng: np.random.Generator) -> str:
    return f"a picture of a {rng.choice(COLOURS)} {rng.choice(SUBJECTS)}"


def write_synthetic_pairs(
    path: Path | str,
    n: int,
    seed: int,
    size: int = 64,
    prefer: str = "blocky",
    captions: list[str] | None = None,
) -> Path:
    """``n`` pairs in the pair format: one blocky and one smooth image per caption; the ``prefer``
    kind is chosen. The chosen image's column alternates at random, as in real data."""
    import pandas as pd

    if prefer not in ("blocky", "smooth"):
        raise ValueError("prefer must be blocky or smooth")
    rng = np.random.default_rng([seed, 0xB10C])
    rows = []
    for i in range(n):
        text = captions[i % len(captions)] if captions else caption(rng)
        blocky, smooth = _png(blocky_image(rng, size)), _png(smooth_image(rng, size))
        chosen, rejected = (blocky, smooth) if prefer == "blocky" else (smooth, blocky)
        first = int(rng.integers(0, 2))
        images = (chosen, rejected) if first == 0 else (rejected, chosen)
        rows.append(
            {
                "caption": text,
                "jpg_0": images[0],
                "jpg_1": images[1],
                "label_0": 1 if first == 0 else 0,
                "label_1": 0 if first == 0 else 1,
                "pair_id": f"{seed}-{i}",
            }
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


def model_with_unet(base: str | Path, unet_dir: Path | str, out: Path | str) -> Path:
    """A diffusers model folder: ``base``'s parts with the UNet from ``unet_dir`` (a trained run's
    ``unet``), so a fine-tune can start from a pretrained UNet through the normal ``model.pretrained``."""
    base, out = Path(base), Path(out)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("unet"))
    shutil.copytree(unet_dir, out / "unet")
    return out


class HeldOutPairs:
    """Held-out pairs encoded once, with fixed noise and timesteps, for implicit accuracy.

    Each pair gets ``draws`` (noise, timestep) draws; a pair counts as correct when its chosen
    image's loss, averaged over the draws, is below the rejected one's. The draws never change,
    so before/after numbers compare the model alone.
    """

    def __init__(self, cfg, components, draws: int = 4, seed: int = 1234):
        from mapo_train.data import load_pair_data
        from mapo_train.encode import PairEncoder, SDXLTextEncoder

        data = load_pair_data(cfg.data, cfg.train.seed)
        encoder = PairEncoder(
            components.vae,
            SDXLTextEncoder(
                components.tokenizer,
                components.tokenizer_2,
                components.text_encoder,
                components.text_encoder_2,
            ),
            torch.device("cpu"),
        )
        from mapo_train.data import collate_pairs

        items = [data.dataset[(0, p)] for p in range(len(data.index))]
        generator = torch.Generator().manual_seed(seed)
        self.pairs = encoder(collate_pairs(items), generator)
        n = self.pairs.batch_size
        self.noise = torch.randn((draws, *self.pairs.latents_w.shape), generator=generator)
        self.timesteps = torch.randint(
            0, components.noise_scheduler.config.num_train_timesteps, (draws, n), generator=generator
        )
        self.scheduler = components.noise_scheduler
        self.prediction_type = components.prediction_type

    @torch.no_grad()
    def losses(self, unet) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pair (L_w, L_l), averaged over the fixed draws."""
        from mapo_train.step import denoising_losses

        was_training = unet.training
        unet.eval()
        try:
            ws, ls = [], []
            for noise, t in zip(self.noise, self.timesteps, strict=True):
                w, lo = denoising_losses(unet, self.scheduler, self.pairs, noise, t, self.prediction_type)
                ws.append(w)
                ls.append(lo)
        finally:
            unet.train(was_training)
        return torch.stack(ws).mean(0), torch.stack(ls).mean(0)

    def accuracy(self, unet) -> float:
        w, lo = self.losses(unet)
        return float((w < lo).float().mean())


def latent_roughness(latents: torch.Tensor) -> torch.Tensor:
    """Per latent [C, h, w]: mean absolute neighbour difference over the spread, averaged over
    channels. Scale-free, so it compares samples and encoded images whatever their scale."""
    z = latents.float()
    dx = (z[..., :, 1:] - z[..., :, :-1]).abs().mean(dim=(-2, -1))
    dy = (z[..., 1:, :] - z[..., :-1, :]).abs().mean(dim=(-2, -1))
    return ((dx + dy) / 2 / (z.std(dim=(-2, -1)) + 1e-6)).mean(dim=1)


class LatentProbe:
    """The property scorer for *generated* samples: the share of samples whose latent roughness is
    below the threshold that separates VAE latents of fresh blocky images from smooth ones.

    Why not ``flatness`` of decoded samples: the synthetic model's VAE decoder is randomly
    initialised and scrambles every image into texture (flatness near 0 for both kinds). The
    encoder still maps the two kinds to separable latents, and the UNet models latents, so the
    property is scored where the model works. A one-number threshold is bounded and cannot
    extrapolate wildly on unusual samples; ``accuracy`` is its balanced accuracy on encoded images.
    """

    def __init__(self, vae, size: int = 64, n: int = 128, seed: int = 4242):
        from mapo_train.data import to_tensor
        from mapo_train.encode import encode_latents

        rng = np.random.default_rng([seed, 0x9B0B])

        def rough(arrays: list[np.ndarray]) -> torch.Tensor:
            pixels = torch.stack([to_tensor(Image.fromarray(a)) for a in arrays])
            return latent_roughness(encode_latents(vae, pixels, torch.Generator().manual_seed(seed)))

        blocky = rough([blocky_image(rng, size) for _ in range(n)])
        smooth = rough([smooth_image(rng, size) for _ in range(n)])
        self.blocky_median, self.smooth_median = float(blocky.median()), float(smooth.median())
        self.threshold = float(0.5 * (blocky.median() + smooth.median()))
        self.blocky_is_smoother = bool(blocky.median() < smooth.median())
        self.accuracy = 0.5 * (self._blocky(blocky).mean() + 1.0 - self._blocky(smooth).mean())

    def _blocky(self, roughness: torch.Tensor) -> np.ndarray:
        below = (roughness < self.threshold).float().numpy()
        return below if self.blocky_is_smoother else 1.0 - below

    @torch.no_grad()
    def score(self, latents: torch.Tensor) -> float:
        """Share of latents judged blocky (the chosen property)."""
        return float(self._blocky(latent_roughness(latents)).mean())

    @torch.no_grad()
    def position(self, latents: torch.Tensor) -> float:
        """Where the samples' median roughness lies between the two kinds: 0 is typical of
        smooth images, 1 of blocky ones (unclipped; a continuous companion to ``score``)."""
        r = float(latent_roughness(latents).median())
        return (self.smooth_median - r) / (self.smooth_median - self.blocky_median)


@torch.no_grad()
def sample_latents(
    components,
    unet,
    prompts: list[str],
    seeds: list[int],
    resolution: int,
    steps: int = 8,
    guidance: float = 3.0,
) -> torch.Tensor:
    """Freshly sampled latents [len(prompts) * len(seeds), C, h, w] from ``unet`` with SDXL's
    pipeline (the trainer's validation sampler, stopped before the VAE decode)."""
    from diffusers import EulerDiscreteScheduler

    pipe = components.pipeline(unet, EulerDiscreteScheduler.from_config(components.noise_scheduler.config))
    was_training = unet.training
    unet.eval()
    try:
        out = []
        for prompt in prompts:
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
            result = pipe(
                prompt=[prompt] * len(seeds),
                generator=generators,
                num_inference_steps=steps,
                guidance_scale=guidance,
                height=resolution,
                width=resolution,
                output_type="latent",
            )
            out.append(result.images)
    finally:
        unet.train(was_training)
    return torch.cat(out)


# ---------------------------------------------------------------------------------------------
# The experiment: a mismatched reference, then MaPO / DPO / SFT on the same pairs and budget.

# Scale of the synthetic model's latents: unit spread after the VAE's scaling factor, as SDXL's.
_LATENT_GAIN = 45.0


def synthetic_model(out: Path | str) -> Path:
    """The tiny architecture with its seeded initial (untrained) weights and a deterministic,
    informative VAE encoder, saved as a diffusers folder.

    Not the shipped tiny model: that one was trained on the world of :mod:`mapo_data.world` and
    already draws styles, while this check builds its own mismatched start from scratch, so its
    figures do not move when the shipped weights are remade. The initial VAE's posterior std
    (about 0.9) swamps its image-dependent mean (about 0.17), so here the posterior is made a
    point mass (log-variance -30) and the mean is scaled to SDXL-like unit spread, so that the
    UNet sees the images. Everything else (UNet, text encoders, scheduler) is the architecture's.
    """
    from diffusers import StableDiffusionXLPipeline

    from mapo_data.tiny import initial_components

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    components = initial_components()
    vae = components["vae"]
    with torch.no_grad():
        conv = vae.quant_conv
        c = conv.out_channels // 2
        conv.weight[:c] *= _LATENT_GAIN
        conv.bias[:c] *= _LATENT_GAIN
        conv.weight[c:] = 0.0
        conv.bias[c:] = -30.0
    StableDiffusionXLPipeline(**components, add_watermarker=False).save_pretrained(out)
    return out


def _run_config(model: str, data: Path, out: Path, loss: str, steps: int, lr: float, seed: int, **extra):
    from mapo_train.config import config_from_dict

    return config_from_dict(
        {
            "model": {"pretrained": str(model)},
            "data": {"path": str(data), "resolution": extra.pop("resolution", 64), "num_workers": 0},
            "loss": {"name": loss},
            "train": {
                "output_dir": str(out),
                "seed": seed,
                "max_steps": steps,
                "batch_size": extra.pop("batch_size", 4),
                "learning_rate": lr,
                "lr_scheduler": "constant",
                "mixed_precision": "no",
                "checkpoint_every": extra.pop("checkpoint_every", 0),
                "checkpoints_keep": 1000,
                "report_to": "none",
                "cpu_threads": 1,
            },
            "validation": {"enabled": False},
        }
    )


@dataclass
class Experiment:
    """Everything fixed across methods: data, the pretrained (mismatched) start, the evaluators."""

    root: Path
    model: Path  # the pretrained start, a diffusers folder
    train_data: Path
    components: object  # the start's parts, on the CPU (the UNet is swapped per evaluation)
    heldout: HeldOutPairs
    probe: LatentProbe
    prompts: list[str]
    seeds: list[int]
    resolution: int

    def evaluate(self, unet) -> dict[str, float]:
        """Held-out implicit accuracy and the property score P(blocky) of fresh samples."""
        latents = sample_latents(self.components, unet, self.prompts, self.seeds, self.resolution)
        return {
            "accuracy": self.heldout.accuracy(unet),
            "property": self.probe.score(latents),
            "property_position": self.probe.position(latents),
        }


def prepare_experiment(
    root: Path | str,
    *,
    pairs: int = 64,
    heldout_pairs: int = 32,
    pretrain_steps: int = 60,
    lr: float = 1e-3,
    resolution: int = 64,
    seed: int = 0,
    samples: tuple[int, int] = (4, 4),
) -> Experiment:
    """Write the data, pretrain the start on the *rejected* style (SFT on smooth images), and
    build the evaluators. Held-out pairs use other captions and other images."""
    from mapo_train.config import ModelConfig
    from mapo_train.model import load_components
    from mapo_train.train import train

    root = Path(root)
    base = synthetic_model(root / "base-model")
    rng = np.random.default_rng([seed, 0x4E1D])
    train_captions = [f"a picture of a {c} {s}" for c in COLOURS[:6] for s in SUBJECTS[:7]]
    held_captions = [f"a picture of a {c} {s}" for c in COLOURS[6:] for s in SUBJECTS[7:]]
    rng.shuffle(train_captions)
    write_synthetic_pairs(
        root / "pretrain" / "train-00000.parquet", pairs, seed + 1, resolution, "smooth", train_captions
    )
    train_data = write_synthetic_pairs(
        root / "pairs" / "train-00000.parquet", pairs, seed + 2, resolution, "blocky", train_captions
    ).parent
    held = write_synthetic_pairs(
        root / "heldout" / "train-00000.parquet", heldout_pairs, seed + 3, resolution, "blocky", held_captions
    ).parent
    pre = train(_run_config(base, root / "pretrain", root / "pretrain-run", "sft", pretrain_steps, lr, seed))
    model = model_with_unet(base, pre.weights, root / "start-model")
    components = load_components(ModelConfig(pretrained=str(model)), "no")
    held_cfg = _run_config(model, held, root / "unused", "mapo", 1, lr, seed, resolution=resolution)
    held_cfg.data.random_flip = False
    return Experiment(
        root=root,
        model=model,
        train_data=train_data,
        components=components,
        heldout=HeldOutPairs(held_cfg, components),
        probe=LatentProbe(components.vae, size=resolution),
        prompts=held_captions[: samples[0]],
        seeds=list(range(samples[1])),
        resolution=resolution,
    )


def finetune(exp: Experiment, method: str, steps: int, lr: float = 1e-3, eval_every: int = 0, seed: int = 0):
    """Fine-tune the start with ``method`` through the real trainer; returns the curve
    [{step, accuracy, property, train_accuracy}] evaluated at step 0, every ``eval_every`` steps
    (from checkpoints) and at the end."""
    from safetensors.torch import load_file

    from mapo_train import checkpoint as ckpt
    from mapo_train.train import train

    out = exp.root / f"run-{method}"
    if out.exists():
        shutil.rmtree(out)
    cfg = _run_config(exp.model, exp.train_data, out, method, steps, lr, seed, checkpoint_every=eval_every)
    result = train(cfg)
    unet = exp.components.unet
    start = {k: v.clone() for k, v in unet.state_dict().items()}
    curve = [{"step": 0, **exp.evaluate(unet)}]
    try:
        for folder in ckpt.checkpoint_dirs(out):
            step = int(folder.name.removeprefix(ckpt.PREFIX))
            if step in (0, steps):
                continue
            unet.load_state_dict(load_file(str(folder / "model.safetensors")))
            curve.append({"step": step, **exp.evaluate(unet)})
        unet.load_state_dict(load_file(str(result.weights / "diffusion_pytorch_model.safetensors")))
        curve.append({"step": steps, **exp.evaluate(unet)})
    finally:
        unet.load_state_dict(start)
    by_step = {row["step"]: row for row in result.history}
    for row in curve:
        if row["step"] in by_step:
            row["train_accuracy"] = by_step[row["step"]]["accuracy"]
    return curve
