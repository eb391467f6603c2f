"""Typed training configuration, recipe loading and ``key=value`` overrides.

A recipe is a YAML file whose sections map onto the dataclasses below. Every field carries a
docstring (the string right under it); ``describe_fields`` reads them back for ``--help``-style
listings. Unknown keys, wrong types and contradictions are rejected with a message that names the
key, so a typo never silently trains with a default.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mapo_data.errors import MapoError

# The SDXL VAE produces NaNs in fp16; this community VAE is the usual drop-in fix.
FP16_FIX_VAE = "madebyollin/sdxl-vae-fp16-fix"


class ConfigError(MapoError):
    """A recipe or override that cannot be turned into a valid configuration."""


@dataclass
class ModelConfig:
    pretrained: str = "stabilityai/stable-diffusion-xl-base-1.0"
    """Base model: a Hub id, a local diffusers folder, `tiny` (the built-in CPU test model), or an SDXL single-file checkpoint (`.safetensors`, as ComfyUI/A1111 use; needs model.config)."""
    config: str | None = None
    """For a single-file model.pretrained: the diffusers folder its configs, tokenizers and scheduler are borrowed from (nothing is downloaded): the SDXL base folder for SDXL fine-tunes, `tiny` for the tiny model."""
    allow_pickle: bool = False
    """Read a pickle single-file checkpoint (`.ckpt`, `.pt`, `.bin`, `.pth`): unpickling can run code hidden in the file, so only for files you trust; prefer `.safetensors`."""
    revision: str | None = None
    """Hub revision (branch, tag or commit) of the base model."""
    variant: str | None = None
    """Weight variant of the base model to load, e.g. `fp16`."""
    vae: str = "auto"
    """VAE used to encode images: `auto` (the fp16-fix SDXL VAE when training in fp16 on a Hub SDXL model, else the base model's), `base`, or a Hub id / folder."""
    vae_dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Precision the VAE encodes images in (on the fly and when building a cache): `auto` is fp32, as the MaPO authors keep it, except fp16 when training in fp16 with the fp16-fix VAE; `fp16` or `bf16` trade latent accuracy (bf16: about 1.7% relative error on the tiny VAE) for speed and memory; the original SDXL VAE overflows in fp16."""
    finetune: Literal["full", "lora"] = "full"
    """Train every UNet weight (`full`) or LoRA adapters on the UNet (`lora`, see the lora section)."""
    prediction_type: Literal["epsilon", "v_prediction"] | None = None
    """Training target; empty means the base model scheduler's own prediction type."""


@dataclass
class LoraSettings:
    rank: int = 8
    """LoRA rank."""
    alpha: float | None = None
    """LoRA scaling alpha; empty means equal to the rank."""
    dropout: float = 0.0
    """Dropout on the LoRA branch."""
    target_modules: list[str] = field(default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"])
    """UNet module names (suffixes) that get adapters: the attention projections by default."""


@dataclass
class DataConfig:
    path: str = ""
    """Pairs to train on: a `mapo-data build` folder, a parquet file, folder or glob, or a Hub dataset id."""
    split: str = "train"
    """Split to read (Hub datasets and folders with `data/<split>-*.parquet` shards)."""
    resolution: int = 1024
    """Training resolution: the rejected image is brought to the chosen image's size, the pair's shorter side is resized to this, then one square crop of this size (one micro-conditioning row for the pair)."""
    random_crop: bool = False
    """Random crop position (the same for both images of a pair); otherwise a centre crop."""
    random_flip: bool = True
    """Flip a pair horizontally with probability 0.5 (both images together)."""
    ties: Literal["drop", "keep"] = "drop"
    """What to do with 0.5/0.5 pairs: drop them, or keep them with a random (seeded) winner."""
    proportion_empty_prompts: float = 0.0
    """Share of pairs whose caption is replaced by the empty prompt (the pair as one)."""
    max_bad_fraction: float = 0.01
    """Undecodable images are skipped and counted; the run stops once more than this share of the pairs read (and at least 10) were bad."""
    max_pairs: int | None = None
    """Use only the first N usable pairs (for smoke tests)."""
    num_workers: int = 2
    """Data loader worker processes per training process (0 decodes in the training process)."""
    cache_dir: str | None = None
    """Where `datasets` keeps its Arrow files; empty means its default cache."""
    cache: str = "off"
    """Latent/text cache: `off` (encode on the fly), `auto` (keyed folder under $MAPO_CACHE or ~/.cache/mapo/train-cache, built when missing), or a folder to keep keyed caches in. Fixes the crop per pair (see mapo_train/cache.py)."""
    cache_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Dtype of cached latents and text embeddings; float16 halves the disk, float32 matches the on-the-fly path up to fp32 rounding (the VAE encodes other batch shapes)."""
    cache_shard_size: int = 256
    """Pairs per cache shard (the unit of resume and of work split across processes)."""
    cache_batch_size: int = 8
    """Pairs encoded per VAE/text-encoder call while building the cache."""
    streaming: bool = False
    """Read the pairs as a stream (`datasets` streaming) instead of indexing them up front: for datasets larger than the disk or memory."""
    shuffle_buffer: int = 1000
    """Streaming only: pairs held in the shuffle buffer (0 disables shuffling)."""


@dataclass
class LossConfig:
    name: Literal["mapo", "dpo", "sft"] = "mapo"
    """Objective: `mapo` (reference-free), `dpo` (Diffusion-DPO with a frozen reference) or `sft` (chosen images only)."""
    beta: float | None = None
    """Strength of the preference term; empty means the loss's default (MaPO 0.1, DPO 5000)."""
    alpha: float | None = None
    """MaPO only: the a in phi_a(l) = a*l / (exp(a*l) - 1); empty means 0.5."""


@dataclass
class TrainConfig:
    output_dir: str = "runs/mapo"
    """Folder for checkpoints, logs, validation grids and the final weights."""
    seed: int = 0
    """Seed for data order, crops, noise and timesteps; equal seeds give equal runs."""
    max_steps: int = 1000
    """Number of optimizer steps."""
    batch_size: int = 1
    """Pairs per process per micro-step (each pair is two images in the UNet batch)."""
    gradient_accumulation_steps: int = 1
    """Micro-steps per optimizer step; effective batch = batch_size x processes x this."""
    learning_rate: float = 1e-5
    """Peak learning rate."""
    lr_scheduler: Literal["constant", "constant_with_warmup", "cosine", "linear"] = "constant_with_warmup"
    """Learning-rate schedule."""
    lr_warmup_steps: int = 0
    """Linear warmup steps (for the schedules that warm up)."""
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    """`adamw` (torch) or `adamw8bit` (bitsandbytes, install `mapo[bnb]`)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    weight_decay: float = 1e-2
    """AdamW decoupled weight decay."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables clipping; the norm is still logged)."""
    mixed_precision: Literal["no", "fp16", "bf16"] | None = None
    """Mixed precision; empty means whatever `accelerate launch` / the accelerate config says."""
    gradient_checkpointing: bool = False
    """Recompute UNet activations in the backward pass to save memory."""
    allow_tf32: bool = True
    """Allow TF32 matmuls on Ampere and newer GPUs."""
    cpu_threads: int | None = None
    """Torch threads when training on the CPU; empty means torch's default. Small models train faster on 1."""
    ema: bool = False
    """Keep an exponential moving average of the trained weights and save it as the result."""
    ema_decay: float = 0.9999
    """EMA decay."""
    checkpoint_every: int = 500
    """Save a resumable checkpoint every N optimizer steps (0: never)."""
    checkpoints_keep: int = 3
    """How many of the newest checkpoints to keep."""
    report_to: Literal["tensorboard", "wandb", "all", "none"] = "tensorboard"
    """Metric tracker(s); wandb needs `mapo[wandb]`."""
    push_to_hub: bool = False
    """Upload the final weights, card and curves to the Hub (token from HF_TOKEN or `hf auth login`)."""
    hub_model_id: str | None = None
    """Hub repository for push_to_hub, e.g. `me/sdxl-mapo-pixel`."""
    hub_private: bool = True
    """Create the Hub repository as private."""
    export: list[Literal["diffusers", "single-file", "kohya-lora"]] = field(
        default_factory=lambda: ["diffusers"]
    )
    """Formats the final weights are written in: `diffusers` (always; `unet/` or `pytorch_lora_weights.safetensors`, what eval, push and `mapo-train export` read), `single-file` (full fine-tunes: `<output_dir>/sdxl_checkpoint.safetensors`, one SDXL checkpoint in the original layout with the base's VAE and text encoders, for ComfyUI/A1111/Forge; `mapo-train export` writes it later), `kohya-lora` (LoRA runs: `<output_dir>/lora_kohya.safetensors` with per-module alpha, for kohya-based tools, ComfyUI and A1111)."""


@dataclass
class ValidationConfig:
    every_n_steps: int = 0
    """Render the validation grid every N optimizer steps (0: only at the start and the end)."""
    prompts: list[str] = field(
        default_factory=lambda: ["a cat sitting in a garden", "a lighthouse at sunset"]
    )
    """Fixed prompts, one grid row each."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Fixed seeds, one grid column each."""
    num_inference_steps: int = 25
    """Sampler steps per validation image."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale."""
    resolution: int | None = None
    """Validation image size; empty means data.resolution."""
    enabled: bool = True
    """Render validation grids at all."""


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The base model and what is trained."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA settings (used when model.finetune is lora)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the pairs come from and how they are preprocessed."""
    loss: LossConfig = field(default_factory=LossConfig)
    """The training objective."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, precision, checkpoints, logging and outputs."""
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    """Fixed-prompt validation grids."""

    # Keys that were given explicitly (recipe or override), for contradiction checks; not part of
    # the configuration itself.
    explicit: set[str] = field(default_factory=set, repr=False, compare=False)

    @property
    def loss_beta(self) -> float:
        from mapo_train.losses import default_beta

        return self.loss.beta if self.loss.beta is not None else default_beta(self.loss.name)

    @property
    def loss_alpha(self) -> float:
        return self.loss.alpha if self.loss.alpha is not None else 0.5

    def validate(self) -> RunConfig:
        """Reject contradictions and impossible values, naming the key; returns self."""
        d, t, v = self.data, self.train, self.validation
        if not d.path:
            raise ConfigError("data.path is required (a mapo-data folder, parquet files or a Hub dataset id)")
        if d.resolution <= 0 or d.resolution % 8:
            raise ConfigError(f"data.resolution must be a positive multiple of 8, got {d.resolution}")
        if not 0.0 <= d.proportion_empty_prompts <= 1.0:
            raise ConfigError("data.proportion_empty_prompts must be between 0 and 1")
        if not 0.0 <= d.max_bad_fraction <= 1.0:
            raise ConfigError("data.max_bad_fraction must be between 0 and 1")
        if d.max_pairs is not None and d.max_pairs < 1:
            raise ConfigError("data.max_pairs must be at least 1 (or empty for all pairs)")
        if d.num_workers < 0:
            raise ConfigError("data.num_workers must be 0 or more")
        if d.cache_shard_size < 1 or d.cache_batch_size < 1:
            raise ConfigError("data.cache_shard_size and data.cache_batch_size must be at least 1")
        if d.shuffle_buffer < 0:
            raise ConfigError("data.shuffle_buffer must be 0 (no shuffling) or more")
        # Anything but off/auto is a folder: a switch word must not become a folder named `no`.
        switch = d.cache.strip().lower()
        if switch in ("off", "no", "false", "auto"):
            d.cache = "auto" if switch == "auto" else "off"
        elif switch in ("on", "yes", "true"):
            raise ConfigError(
                f"data.cache: {d.cache!r} does not say where the cache goes; use auto (a keyed folder under "
                f"$MAPO_CACHE or ~/.cache/mapo/train-cache), a folder (e.g. ./{d.cache}), or off"
            )
        if d.streaming and d.cache != "off":
            raise ConfigError(
                "data.streaming and data.cache exclude each other: a cache indexes every pair; set data.cache=off"
            )
        if d.streaming and d.max_pairs is not None:
            raise ConfigError(
                "data.max_pairs does not apply to data.streaming (a stream has no index); remove it"
            )
        self._validate_model_files()
        if self.model.finetune == "full":
            lora_keys = sorted(k for k in self.explicit if k == "lora" or k.startswith("lora."))
            if lora_keys:
                named = next((k for k in lora_keys if k != "lora"), "lora")
                raise ConfigError(
                    f"{named} is set but model.finetune is 'full'; "
                    "set model.finetune=lora or remove the lora settings"
                )
        if self.lora.rank < 1:
            raise ConfigError("lora.rank must be at least 1")
        if not self.lora.target_modules:
            raise ConfigError("lora.target_modules must name at least one module")
        if self.loss.alpha is not None and self.loss.name != "mapo":
            raise ConfigError(f"loss.alpha applies only to loss.name=mapo, not {self.loss.name}")
        if self.loss.beta is not None and self.loss.name == "sft":
            raise ConfigError("loss.beta has no effect with loss.name=sft; remove it")
        if self.loss.beta is not None and self.loss.beta <= 0:
            raise ConfigError("loss.beta must be positive")
        if self.loss.alpha is not None and self.loss.alpha <= 0:
            raise ConfigError("loss.alpha must be positive")
        for key in ("max_steps", "batch_size", "gradient_accumulation_steps"):
            if getattr(t, key) < 1:
                raise ConfigError(f"train.{key} must be at least 1")
        if t.learning_rate <= 0:
            raise ConfigError("train.learning_rate must be positive")
        if t.lr_warmup_steps < 0:
            raise ConfigError("train.lr_warmup_steps must be 0 or more")
        if t.lr_scheduler == "constant" and "train.lr_warmup_steps" in self.explicit and t.lr_warmup_steps:
            raise ConfigError(
                "train.lr_warmup_steps is set but train.lr_scheduler is 'constant' (no warmup); "
                "use constant_with_warmup"
            )
        if t.max_grad_norm < 0:
            raise ConfigError("train.max_grad_norm must be 0 (off) or positive")
        if t.cpu_threads is not None and t.cpu_threads < 1:
            raise ConfigError("train.cpu_threads must be at least 1 (or empty for torch's default)")
        if t.checkpoint_every < 0:
            raise ConfigError("train.checkpoint_every must be 0 (never) or positive")
        if t.checkpoints_keep < 1:
            raise ConfigError("train.checkpoints_keep must be at least 1")
        if not 0.0 < t.ema_decay < 1.0:
            raise ConfigError("train.ema_decay must be between 0 and 1")
        if t.push_to_hub and not t.hub_model_id:
            raise ConfigError("train.push_to_hub is on but train.hub_model_id is empty; name the repository")
        if v.enabled:
            if not v.prompts:
                raise ConfigError("validation.prompts is empty; give prompts or set validation.enabled=false")
            if not v.seeds:
                raise ConfigError("validation.seeds is empty; give seeds or set validation.enabled=false")
            if v.every_n_steps < 0:
                raise ConfigError("validation.every_n_steps must be 0 or positive")
            if v.num_inference_steps < 1:
                raise ConfigError("validation.num_inference_steps must be at least 1")
            if v.resolution is not None and (v.resolution <= 0 or v.resolution % 8):
                raise ConfigError("validation.resolution must be a positive multiple of 8")
        return self

    def _validate_model_files(self) -> None:
        """Single-file base models and export formats: what fits together (one line each)."""
        from mapo_data.single_file import is_single_file

        m, t = self.model, self.train
        single = is_single_file(m.pretrained)
        if single and not m.config:
            raise ConfigError(
                f"model.pretrained {m.pretrained} is a single-file checkpoint without configs or tokenizers; set "
                "model.config to a diffusers folder to borrow them from (the SDXL base folder, or tiny)"
            )
        if m.config and not single:
            raise ConfigError(
                "model.config applies only to a single-file model.pretrained (.safetensors); remove it"
            )
        if single and m.pretrained.lower().endswith((".ckpt", ".pt", ".bin", ".pth")) and not m.allow_pickle:
            raise ConfigError(
                f"model.pretrained {m.pretrained}: pickle checkpoints can run code when loaded and are refused; "
                "use a .safetensors file, or set model.allow_pickle=true if you trust where it came from"
            )
        if len(set(t.export)) != len(t.export):
            raise ConfigError(f"train.export names a format twice: {t.export}")
        if "diffusers" not in t.export:
            raise ConfigError(
                "train.export must include diffusers (the run's own format, which eval, push and "
                "`mapo-train export` read); add the other formats next to it"
            )
        if "single-file" in t.export and m.finetune != "full":
            raise ConfigError(
                "train.export single-file needs model.finetune=full (a LoRA run is exported as kohya-lora)"
            )
        if "kohya-lora" in t.export and m.finetune != "lora":
            raise ConfigError(
                "train.export kohya-lora needs model.finetune=lora (a full fine-tune is exported as single-file)"
            )

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain nested dicts (what training_config.yaml holds). The lora
        section is left out of a full fine-tune, where giving it would be a contradiction."""
        return {
            f.name: dataclasses.asdict(getattr(self, f.name))
            for f in _sections()
            if not (f.name == "lora" and self.model.finetune == "full")
        }


def _sections() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(RunConfig) if f.name != "explicit"]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "empty" if tp is type(None) else getattr(tp, "__name__", str(tp))


class _Typed:
    """A YAML scalar that YAML 1.1 read as a bool or a number, kept with the text as written.

    A str field takes the text (``data.cache=off`` is "off", not False; ``model.revision=1.10`` is
    "1.10", not "1.1"; ``data.split=010`` is "010", not "8"), every other field the value."""

    __slots__ = ("text", "value")

    def __init__(self, text: str, value: Any):
        self.text, self.value = text, value

    def __str__(self) -> str:  # a mapping key written as `yes:` or `1:` stays what was typed
        return self.text

    def __repr__(self) -> str:
        return repr(self.value)


class _RecipeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that keeps the written text of bools and numbers (see _Typed)."""


def _keep_text(tag: str):
    construct_value = yaml.SafeLoader.yaml_constructors[tag]

    def construct(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> _Typed:
        return _Typed(node.value, construct_value(loader, node))

    return construct


for _tag in ("bool", "int", "float"):
    _RecipeLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _keep_text(f"tag:yaml.org,2002:{_tag}"))


def _read_yaml(text: str) -> Any:
    """Parse a recipe or an override value: safe YAML whose bools and numbers remember their text."""
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def _takes_text(tp: Any, text: str) -> bool:
    """Whether ``tp`` takes a scalar's written text as it is: a str, or one of a Literal's choices."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_takes_text(arg, text) for arg in typing.get_args(tp))
    if origin is Literal:
        return text in typing.get_args(tp)
    return tp is str


def _coerce(key: str, value: Any, tp: Any) -> Any:
    """Turn a YAML value (or an override string) into ``tp``, or raise ConfigError naming ``key``."""
    if isinstance(value, _Typed):
        if _takes_text(tp, value.text):
            return value.text
        value = value.value
    origin = typing.get_origin(tp)
    bad = ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("null", "none", "")):
            if type(None) in args:
                return None
            raise bad
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError:
                continue
        raise bad
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) and not any(isinstance(c, bool) for c in choices):
            # YAML reads a bare `no` as False; mixed_precision=no means the string.
            value = "no" if value is False else "yes"
        if value in choices:
            return value
        raise ConfigError(f"{key}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",")] if value.strip() else []
        if not isinstance(value, list | tuple):
            if isinstance(value, int | float) and not isinstance(
                value, bool
            ):  # `seeds=7`: one item, written without brackets
                raise ConfigError(
                    f"{key}: expected {_type_name(tp)}, got {value!r}; write [{value}] for one item"
                )
            raise bad
        return [_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                number = float(value.replace("_", ""))
            except ValueError:
                raise bad from None
            if number.is_integer():
                return int(number)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int | float):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads `5e-6` (no dot) as a string; accept it as the number it obviously is.
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise bad


def _unknown(key: str, choices: list[str]) -> ConfigError:
    """``choices`` are the names at ``key``'s level; the hint is written in full (``train.max_steps``)."""
    section, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f" (did you mean {section + '.' if section else ''}{close[0]}?)" if close else ""
    if not section:
        # A setting written without its section (`max_steps=3`) is named with it.
        sections = _hints(RunConfig)
        owners = [f.name for f in _sections() if name in _hints(sections[f.name])]
        hint = f" (did you mean {owners[0]}.{name}?)" if len(owners) == 1 else hint
    return ConfigError(f"unknown key {key}{hint}")


def _apply(cfg: RunConfig, key: str, value: Any) -> None:
    parts = key.split(".")
    sections = {f.name: f for f in _sections()}
    if parts[0] not in sections:
        raise _unknown(parts[0], list(sections))
    section_name = parts[0]
    if len(parts) == 1:
        if section_name == "model" and isinstance(value, str):
            # `model: tiny` is shorthand for `model: {pretrained: tiny}`.
            _apply(cfg, "model.pretrained", value)
            return
        if value is None:
            return  # an empty section in YAML keeps the defaults
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of settings, got {value!r}")
        if section_name == "lora":
            cfg.explicit.add("lora")  # an explicit lora section counts, even if every value is default
        for sub, sub_value in value.items():
            _apply(cfg, f"{key}.{sub}", sub_value)
        return
    if len(parts) != 2:
        raise ConfigError(f"unknown key {key}")
    section = getattr(cfg, section_name)
    hints = _hints(type(section))
    if parts[1] not in hints:
        raise _unknown(key, list(hints))
    setattr(section, parts[1], _coerce(key, value, hints[parts[1]]))
    cfg.explicit.add(key)


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``section.key=value``; the value is read as YAML (so lists and null work)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        value = _read_yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def config_from_dict(data: dict[str, Any] | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Build and validate a RunConfig from nested dicts plus ``key=value`` overrides."""
    cfg = RunConfig()
    if data is not None and not isinstance(data, dict):
        raise ConfigError("a recipe must be a YAML mapping of sections (model, data, loss, train, ...)")
    for key, value in (data or {}).items():
        _apply(cfg, str(key), value)
    for text in overrides:
        _apply(cfg, *parse_override(text))
    return cfg.validate()


def load_config(recipe: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a recipe YAML (or none: defaults), apply overrides, validate."""
    data: dict[str, Any] | None = None
    if recipe is not None:
        path = Path(recipe)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist")
        try:
            data = _read_yaml(path.read_text())
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"recipe {path} is not valid YAML{where}") from None
    return config_from_dict(data, overrides)


def dump_config(cfg: RunConfig) -> str:
    """The resolved configuration as YAML, in the recipe layout (loadable with load_config)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a config dataclass (read from the source)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, after in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[node.target.id] = after.value.value
    return docs


def describe_fields() -> str:
    """Every configurable key with its type, default and docstring (for `mapo-train --keys`)."""
    lines = []
    defaults = RunConfig()
    for section in _sections():
        cls = type(getattr(defaults, section.name))
        lines.append(f"{section.name}:")
        docs, hints = field_docs(cls), _hints(cls)
        for f in dataclasses.fields(cls):
            default = getattr(getattr(defaults, section.name), f.name)
            lines.append(f"  {section.name}.{f.name} ({_type_name(hints[f.name])}, default {default!r})")
            lines.append(f"      {docs.get(f.name, '')}")
    return "\n".join(lines)
