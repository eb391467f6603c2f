"""Rendering images with a diffusers StableDiffusionXLPipeline: loading the model and turning
(prompt, seed) lists into PIL images. Used by `mapo-data build` and by `mapo-train eval`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mapo_data.errors import MapoError
from mapo_data.resolve import resolve, resolve_model
from mapo_data.single_file import check_single_file, is_single_file, resolve_config
from mapo_data.single_file import load_components as load_single_file
from mapo_data.tiny import TINY_MODEL_NAME

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLPipeline
    from PIL import Image

DEFAULT_MODEL = "stabilityai/stable-diffusion-xl-base-1.0"
# The stock SDXL VAE overflows in fp16 and decodes black images; this fine-tune does not.
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"

DTYPES = ("auto", "fp16", "bf16", "fp32")

# Short names for the schedulers people use with SDXL -> (diffusers class, extra config).
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {}),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
}


@dataclass
class RenderConfig:
    """How images are rendered. Every field maps onto a `mapo-data build` option."""

    model: str = DEFAULT_MODEL
    """Hub id, local diffusers folder, ``tiny`` (the built-in tiny SDXL-architecture model), or an SDXL
    single-file checkpoint (``.safetensors``; see ``mapo_data.single_file``)."""
    model_config: str | None = None
    """For a single-file ``model``: the diffusers folder (or ``tiny``) its configs and tokenizers come from."""
    allow_pickle: bool = False
    """Read a pickle single-file checkpoint (``.ckpt``/``.pt``/``.bin``/``.pth``), which can run code when loaded."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the model."""
    vae: str | None = None
    """VAE to use instead of the model's; default: the fp16-fix VAE when dtype is fp16 (not for tiny)."""
    dtype: str = "auto"
    """Weights and compute dtype: fp16, bf16, fp32, or auto (fp16 on CUDA, fp32 on the CPU, where
    half precision is emulated and slow)."""
    device: str | None = None
    """torch device; default: the accelerate process's device (CUDA when available, else CPU)."""
    steps: int = 30
    """Denoising steps."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale."""
    height: int | None = None
    """Image height in pixels, a multiple of 8; default: the model's native size (1024 for SDXL)."""
    width: int | None = None
    """Image width in pixels, a multiple of 8; default: the model's native size."""
    scheduler: str | None = None
    """One of SCHEDULERS' names; default: the model's own scheduler."""
    negative_prompt: str | None = None
    """Negative prompt applied to every image."""
    compile: bool = False
    """torch.compile the UNet (pays off on long GPU runs)."""
    cpu_threads: int | None = None
    """torch threads when rendering on the CPU; default 1 for the tiny model (its kernels are too
    small to gain from threads, and lose badly to contention on a busy machine), else torch's own."""

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise MapoError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        for name in ("height", "width"):
            value = getattr(self, name)
            if value is not None and (value <= 0 or value % 8):
                raise MapoError(f"--{name} must be a positive multiple of 8, got {value}")
        if self.steps < 1:
            raise MapoError(f"--steps must be at least 1, got {self.steps}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise MapoError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")

    @property
    def torch_dtype(self):
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[self.resolved_dtype()]

    def resolved_dtype(self) -> str:
        if self.dtype != "auto":
            return self.dtype
        on_cpu = (self.device or default_device()).startswith("cpu")
        return "fp32" if on_cpu else "fp16"

    def tokenizer_source(self) -> str:
        """Where the model's tokenizers are: the model, or for a single file its config folder
        (MapoError naming --model-config when it has none)."""
        if is_single_file(self.model):
            return str(resolve_config(self.model, self.model_config))
        return self.model

    def resolved_vae(self) -> str | None:
        if self.vae is not None:
            return self.vae
        if self.resolved_dtype() == "fp16" and self.model != TINY_MODEL_NAME:
            return FP16_FIX_VAE
        return None


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _load_error(what: str, name: str, err: Exception) -> MapoError:
    text = str(err)
    offline_markers = ("offline", "not fully cached", "Cannot reach", "local_files_only", "outgoing traffic")
    if any(marker in text for marker in offline_markers):
        detail = "not in the local cache and the Hub is unreachable"
    else:
        lines = text.strip().splitlines()
        detail = lines[0][:200] if lines else type(err).__name__
    return MapoError(
        f"cannot load {what} {name!r}: {detail}. Use a local diffusers folder, or --model tiny for the built-in tiny model"
    )


def load_pipeline(config: RenderConfig, device: str | None = None) -> StableDiffusionXLPipeline:
    """Load the SDXL pipeline (and VAE) for ``config`` onto ``device``; MapoError when it cannot."""
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline
    from diffusers import schedulers as diffusers_schedulers
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    model_path = resolve_model(config.model, "--model")
    single = is_single_file(config.model)
    if single:
        check_single_file(config.model, config.allow_pickle)
        resolve_config(config.model, config.model_config)
    elif Path(config.model).exists() and not Path(config.model, "model_index.json").is_file():
        raise MapoError(f"{config.model} is not a diffusers model folder (no model_index.json)")
    extra = {}
    vae_name = config.resolved_vae()
    if vae_name is not None:
        vae_name = resolve(vae_name, "--vae")
        try:
            extra["vae"] = AutoencoderKL.from_pretrained(vae_name, dtype=config.torch_dtype)
        except (OSError, ValueError) as err:
            raise _load_error("VAE", vae_name, err) from err
    try:
        # diffusers logs its own Hub-connection warnings; the one-line error below says it better.
        diffusers_logging.set_verbosity_error()
        # Per-component loading bars are noise next to the run's own progress bar.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        if single:
            parts = load_single_file(
                config.model, config.model_config, config.torch_dtype, config.allow_pickle
            )
            pipe = StableDiffusionXLPipeline(**{**parts, **extra}, add_watermarker=False)
            pipe.register_to_config(_name_or_path=str(config.model))  # as from_pretrained records it
        else:
            pipe = StableDiffusionXLPipeline.from_pretrained(
                model_path,
                revision=config.revision,
                dtype=config.torch_dtype,
                # Watermarking would put the same invisible pattern into every training image.
                add_watermarker=False,
                **extra,
            )
    except (OSError, ValueError) as err:
        raise _load_error("model", config.model, err) from err
    if config.scheduler is not None:
        class_name, overrides = SCHEDULERS[config.scheduler]
        scheduler_cls = getattr(diffusers_schedulers, class_name)
        pipe.scheduler = scheduler_cls.from_config(pipe.scheduler.config, **overrides)
    device = device or config.device or default_device()
    if device.startswith("cpu"):
        threads = config.cpu_threads or (1 if config.model == TINY_MODEL_NAME else None)
        if threads:
            torch.set_num_threads(threads)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if config.compile:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune-no-cudagraphs", fullgraph=True)
    return pipe


def native_size(pipe: StableDiffusionXLPipeline) -> tuple[int, int]:
    """(height, width) the model was trained at: the UNet's sample size times the VAE factor."""
    side = pipe.default_sample_size * pipe.vae_scale_factor
    return side, side


def render_images(
    pipe: StableDiffusionXLPipeline,
    prompts: list[str],
    seeds: list[int],
    config: RenderConfig,
) -> list[Image.Image]:
    """One image per prompt in a single pipeline call; each starts from its own seeded noise.

    The generators live on the CPU so a seed gives the same initial noise on any device.
    """
    import torch

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    height, width = config.height, config.width
    if height is None or width is None:
        native_h, native_w = native_size(pipe)
        height, width = height or native_h, width or native_w
    negative = [config.negative_prompt] * len(prompts) if config.negative_prompt else None
    with torch.inference_mode():
        out = pipe(
            prompt=prompts,
            negative_prompt=negative,
            num_inference_steps=config.steps,
            guidance_scale=config.guidance_scale,
            height=height,
            width=width,
            generator=generators,
            output_type="pil",
        )
    return list(out.images)


def pipeline_identity(config: RenderConfig) -> dict:
    """What the pipeline ``config`` loads is, by content (``mapo_data.identity``): every part that
    shapes the pixels, without loading any weights.

    Returns ``{"model": ..., "vae": ... or None, "dtype": resolved dtype}``. A local model folder
    (``tiny`` included) gives the digest of its ``model_index.json`` (component classes, pipeline
    flags such as ``force_zeros_for_empty_prompt``) and the digest of every component folder it
    loads: UNet, VAE (unless a separate VAE replaces it), both text encoders and tokenizers, and the
    scheduler. A Hub model gives the commit its revision resolves to. A separate VAE (``--vae``, or
    the fp16-fix VAE) is identified the same way. Neither path nor name enters, so a copied or moved
    model keeps its identity, and a fine-tune with same-sized weights never shares it.

    Raises MapoError when the model folder has no model_index.json, or when a Hub model's version
    cannot be told (offline and not in the local Hugging Face cache).
    """
    from mapo_data.identity import file_digest, hub_commit, model_identity

    vae = config.resolved_vae()
    resolved = resolve_model(config.model, "--model")
    if vae is not None:
        resolve(vae, "--vae")
    local = Path(resolved).expanduser()
    if is_single_file(config.model):
        # The file (every weight) and what the config folder lends each part the pipeline builds.
        lent = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
        parts = [p for p in lent if not (p == "vae" and vae is not None)]
        check_single_file(config.model, config.allow_pickle)
        model = model_identity(config.model, parts, config=config.model_config)
    elif local.is_dir():
        index_file = local / "model_index.json"
        if not index_file.is_file():
            raise MapoError(f"{config.model} is not a diffusers model folder (no model_index.json)")
        try:
            index = json.loads(index_file.read_text())
        except (OSError, ValueError) as err:
            raise MapoError(f"{index_file} is not readable JSON: {err}") from err
        # The components from_pretrained loads: [library, class] entries that are not [null, null].
        parts = sorted(
            name
            for name, entry in index.items()
            if not name.startswith("_")
            and isinstance(entry, list)
            and None not in entry
            and not (name == "vae" and vae is not None)
        )
        model = {"index": file_digest(index_file), "parts": parts, **model_identity(resolved, parts)}
    elif resolved.startswith((".", "/", "~")) or resolved.count("/") != 1:
        raise _load_error("model", config.model, MapoError("no such folder, and not a Hub model id"))
    else:
        try:
            model = {"hub": resolved, "commit": hub_commit(resolved, config.revision, "model_index.json")}
        except MapoError as err:
            raise _load_error("model", config.model, err) from err
    try:
        vae_identity = model_identity(vae) if vae is not None else None
    except MapoError as err:
        raise _load_error("VAE", vae or "", err) from err
    return {"model": model, "vae": vae_identity, "dtype": config.resolved_dtype()}


def model_fingerprint(
    pipe: StableDiffusionXLPipeline, config: RenderConfig, identity: dict | None = None
) -> dict:
    """Name and content identity of the weights used (``identity``: ``pipeline_identity(config)``
    when already known); ``hash`` is a short digest of that identity."""
    root = Path(pipe.config._name_or_path)
    identity = identity if identity is not None else pipeline_identity(config)
    info: dict = {
        "id": config.model,
        "revision": config.revision,
        "vae": config.resolved_vae(),
        "dtype": config.resolved_dtype(),
        "identity": identity,
        "hash": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16],
    }
    if "snapshots" in root.parts:
        info["revision"] = root.name  # the Hub cache keeps each commit under snapshots/<sha>
    return info
