"""Model setup: load SDXL's parts, freeze what is not trained, add LoRA, build the reference,
the optimizer and the EMA, and save the result in the formats diffusers loads back."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mapo_data.errors import MapoError
from mapo_data.resolve import resolve, resolve_model
from mapo_data.single_file import is_single_file, resolve_config
from mapo_data.single_file import load_components as load_single_file
from mapo_data.tiny import TINY_MODEL_NAME
from mapo_train.config import FP16_FIX_VAE, ModelConfig, RunConfig

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Components:
    """The loaded parts of the base model."""

    base: str  # resolved model id or folder
    unet: Any
    vae: Any
    text_encoder: Any
    text_encoder_2: Any
    tokenizer: Any
    tokenizer_2: Any
    noise_scheduler: Any
    prediction_type: str

    def pipeline(self, unet, scheduler):
        """An SDXL pipeline over these frozen parts with ``unet`` and ``scheduler`` (no copies)."""
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline(
            vae=self.vae,
            text_encoder=self.text_encoder,
            text_encoder_2=self.text_encoder_2,
            tokenizer=self.tokenizer,
            tokenizer_2=self.tokenizer_2,
            unet=unet,
            scheduler=scheduler,
            add_watermarker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


def _load(what: str, fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MapoError(f"could not load {what}: {first}") from err


def vae_source(cfg: ModelConfig, mixed_precision: str) -> str | None:
    """Which VAE to load: None for the base model's own."""
    if cfg.vae == "base":
        return None
    if cfg.vae == "auto":
        # The fp16-fix VAE only matches real SDXL; the tiny model has its own small VAE.
        if mixed_precision == "fp16" and cfg.pretrained != TINY_MODEL_NAME:
            return FP16_FIX_VAE
        return None
    return cfg.vae


def load_components(cfg: ModelConfig, mixed_precision: str) -> Components:
    """Load every part on the CPU in fp32; the trainer moves and casts them."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    # Both named models are resolved (mapo_data.resolve) before any part loads, so a mistyped
    # path or id fails at once, not after the text encoders have loaded.
    base = resolve_model(cfg.pretrained, "model.pretrained")
    vae_id = vae_source(cfg, mixed_precision)
    if vae_id is not None:
        vae_id = resolve(vae_id, "model.vae")
    common = {"revision": cfg.revision}
    weights = {**common, "variant": cfg.variant}
    single = None
    if is_single_file(cfg.pretrained):
        # The weights come from the file; configs, tokenizers and the scheduler from model.config,
        # which is also what ``base`` names from here on (the trainer's samplers read it).
        single = load_single_file(cfg.pretrained, cfg.config, allow_pickle=cfg.allow_pickle)
        base, common, weights = str(resolve_config(cfg.pretrained, cfg.config, "model.config")), {}, {}
    noise_scheduler = _load(
        "the scheduler", DDPMScheduler.from_pretrained, base, subfolder="scheduler", **common
    )
    tokenizer = _load("tokenizer", AutoTokenizer.from_pretrained, base, subfolder="tokenizer", **common)
    tokenizer_2 = _load("tokenizer_2", AutoTokenizer.from_pretrained, base, subfolder="tokenizer_2", **common)
    text_encoder = (
        single["text_encoder"]
        if single
        else _load("text_encoder", CLIPTextModel.from_pretrained, base, subfolder="text_encoder", **weights)
    )
    text_encoder_2 = (
        single["text_encoder_2"]
        if single
        else _load(
            "text_encoder_2",
            CLIPTextModelWithProjection.from_pretrained,
            base,
            subfolder="text_encoder_2",
            **weights,
        )
    )
    if vae_id is None:
        vae = (
            single["vae"]
            if single
            else _load("the VAE", AutoencoderKL.from_pretrained, base, subfolder="vae", **weights)
        )
    else:
        vae = _load(
            f"the VAE {vae_id} (set model.vae=base to use the model's own)",
            AutoencoderKL.from_pretrained,
            vae_id,
        )
    unet = (
        single["unet"]
        if single
        else _load("the UNet", UNet2DConditionModel.from_pretrained, base, subfolder="unet", **weights)
    )
    prediction_type = cfg.prediction_type or noise_scheduler.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise MapoError(f"prediction type {prediction_type!r} is not supported (epsilon or v_prediction)")
    for frozen in (vae, text_encoder, text_encoder_2):
        frozen.requires_grad_(False)
        frozen.eval()
    return Components(
        base=base,
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        noise_scheduler=noise_scheduler,
        prediction_type=prediction_type,
    )


VAE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def vae_dtype(cfg: ModelConfig, mixed_precision: str) -> torch.dtype:
    """The dtype the VAE encodes in: ``model.vae_dtype``, where ``auto`` means fp32 (latents are
    the training targets; bf16 alone costs about 1.7% relative error) except under fp16 mixed
    precision with the fp16-fix VAE, which was made to run in fp16. The original SDXL VAE
    overflows in fp16, so ``auto`` never gives it fp16."""
    if cfg.vae_dtype != "auto":
        return VAE_DTYPES[cfg.vae_dtype]
    if mixed_precision == "fp16" and vae_source(cfg, mixed_precision) == FP16_FIX_VAE:
        return torch.float16
    return torch.float32


def add_lora(unet, cfg: RunConfig) -> None:
    """Freeze the UNet and attach trainable LoRA adapters to the configured modules."""
    from peft import LoraConfig

    unet.requires_grad_(False)
    lora = cfg.lora
    config = LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha if lora.alpha is not None else lora.rank,
        lora_dropout=lora.dropout,
        init_lora_weights="gaussian",
        target_modules=list(lora.target_modules),
    )
    try:
        unet.add_adapter(config)
    except ValueError as err:
        raise MapoError(f"lora.target_modules {lora.target_modules} do not match the UNet: {err}") from err


def trainable_parameters(unet) -> list[torch.nn.Parameter]:
    return [p for p in unet.parameters() if p.requires_grad]


def make_reference_unet(unet, dtype: torch.dtype, device) -> Any:
    """A frozen copy of the base UNet (Diffusion-DPO's reference for full fine-tuning)."""
    import copy

    ref = copy.deepcopy(unet)
    ref.requires_grad_(False)
    ref.eval()
    place(ref, device, dtype)
    return ref


def place(module, device, dtype: torch.dtype) -> None:
    """Move a module, casting only when needed (diffusers warns on every cast, even a no-op one)."""
    if next(module.parameters()).dtype != dtype:
        module.to(dtype=dtype)
    module.to(device)


@contextlib.contextmanager
def adapters_disabled(unet):
    """Run the base model under a LoRA UNet: the reference for DPO with LoRA, without a copy."""
    unet.disable_adapters()
    try:
        yield unet
    finally:
        unet.enable_adapters()


def build_optimizer(params: list[torch.nn.Parameter], cfg: RunConfig) -> torch.optim.Optimizer:
    t = cfg.train
    kwargs = dict(
        lr=t.learning_rate,
        betas=(t.adam_beta1, t.adam_beta2),
        weight_decay=t.weight_decay,
        eps=t.adam_epsilon,
    )
    if t.optimizer == "adamw8bit":
        adamw8bit = load_adamw8bit()
        return adamw8bit(params, **kwargs)
    return torch.optim.AdamW(params, **kwargs)


def load_adamw8bit():
    """bitsandbytes' AdamW8bit, or a MapoError saying how to get it."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise MapoError(
            "train.optimizer=adamw8bit needs bitsandbytes: pip install 'mapo[bnb]' (or use train.optimizer=adamw)"
        ) from None
    return bnb.optim.AdamW8bit


def lora_state_dict(unet) -> dict[str, torch.Tensor]:
    """The UNet's LoRA weights keyed the way ``load_lora_weights`` expects."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))


# LoRA settings that decide the adapter's output (rank, strength alpha/rank, where it sits): always
# written, so the file alone says how strong the adapter is.
_LORA_METADATA_ALWAYS = (
    "r",
    "lora_alpha",
    "target_modules",
    "lora_dropout",
    "rank_pattern",
    "alpha_pattern",
    "use_dora",
)
# Bookkeeping and initialisation that a loaded adapter does not need.
_LORA_METADATA_SKIP = frozenset(
    {
        "peft_type",
        "peft_version",
        "task_type",
        "auto_mapping",
        "base_model_name_or_path",
        "revision",
        "inference_mode",
        "init_lora_weights",
        "runtime_config",
    }
)


def lora_adapter_metadata(unet, adapter: str = "default") -> dict[str, Any]:
    """The adapter's ``LoraConfig`` as the keyword arguments diffusers' ``load_lora_weights`` reads
    back from the file's metadata. Without them diffusers assumes alpha = rank (scale 1.0), so a
    LoRA trained with alpha 16 at rank 4 would reload 4x weaker than trained.

    The settings that decide the output are always written; any other setting only when it differs
    from peft's default, so that peft versions which lack a newer option can still load the file.
    """
    from peft import LoraConfig

    config = unet.peft_config[adapter].to_dict()
    default = LoraConfig().to_dict()
    metadata = {}
    for key, value in config.items():
        if key in _LORA_METADATA_ALWAYS or (key not in _LORA_METADATA_SKIP and value != default.get(key)):
            metadata[key] = sorted(value) if isinstance(value, set | frozenset) else value
    return metadata


def save_weights(unet, out: Path, finetune: str) -> Path:
    """Save the trained result: ``out/unet`` (diffusers, safetensors) or LoRA weights in ``out``
    (``pytorch_lora_weights.safetensors`` with the adapter settings in its metadata, so that
    ``load_lora_weights`` applies the strength the adapter was trained with)."""
    from mapo_data.shards import give_umask_mode

    if finetune == "lora":
        from diffusers import StableDiffusionXLPipeline

        StableDiffusionXLPipeline.save_lora_weights(
            out,
            unet_lora_layers=lora_state_dict(unet),
            unet_lora_adapter_metadata=lora_adapter_metadata(unet),
        )
        saved = out / "pytorch_lora_weights.safetensors"
    else:
        unet.save_pretrained(out / "unet", safe_serialization=True)
        saved = out / "unet"
    give_umask_mode(saved)  # safetensors writes owner-only (0600) files
    return saved
