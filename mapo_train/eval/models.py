"""Put a fine-tuned model onto the base pipeline and take it off again.

Every tuned model shares the base pipeline's text encoders, VAE and scheduler, so only the
difference is loaded: a full UNet replaces the base UNet, LoRA weights are attached as an adapter
and removed afterwards. Anything that does not fit the base fails with one line before rendering.
"""

from __future__ import annotations

import json
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from mapo_data.errors import MapoError
from mapo_data.resolve import resolve
from mapo_train.checkpoint import STATE_FILE as CHECKPOINT_STATE_FILE
from mapo_train.eval.prompts import TRAINING_CONFIG

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
# UNet config entries that decide whether a UNet can run inside the base pipeline.
_FIT_KEYS = (
    "in_channels",
    "out_channels",
    "cross_attention_dim",
    "addition_embed_type",
    "addition_time_embed_dim",
    "projection_class_embeddings_input_dim",
)


@dataclass(frozen=True)
class TunedSource:
    """Where a tuned model's weights are and in which form."""

    spec: str
    kind: Literal["unet", "lora", "hub"]
    path: str  # UNet folder, LoRA file, or Hub id
    training_config: str | None = None  # the run's training_config.yaml, when there is one


def _is_unet_folder(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("_class_name") == "UNet2DConditionModel"
    except (ValueError, OSError):
        return False


def resolve_tuned(spec: str) -> TunedSource:
    """Classify ``--tuned``: run folder, diffusers pipeline folder, UNet folder, LoRA file, Hub id."""
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix not in (".safetensors", ".bin"):
            raise MapoError(f"--tuned {spec}: a file must be LoRA weights (.safetensors)")
        # A run's own weights file: its training_config.yaml beside it still says what it was trained on.
        config = path.parent / TRAINING_CONFIG
        return TunedSource(spec, "lora", str(path), str(config) if config.is_file() else None)
    if path.is_dir():
        config = path / "training_config.yaml"
        training_config = str(config) if config.is_file() else None
        if _is_unet_folder(path / "unet"):
            return TunedSource(spec, "unet", str(path / "unet"), training_config)
        if _is_unet_folder(path):
            return TunedSource(spec, "unet", str(path), training_config)
        if (path / LORA_WEIGHT_NAME).is_file():
            return TunedSource(spec, "lora", str(path / LORA_WEIGHT_NAME), training_config)
        if (path / CHECKPOINT_STATE_FILE).is_file():
            # Its weights are resume state (peft keys, no adapter settings), not a loadable model.
            raise MapoError(
                f"--tuned {spec}: a training checkpoint (for --resume), not final weights; "
                "point at the run folder once training has finished"
            )
        loras = sorted(path.glob("*.safetensors"))
        if len(loras) == 1:
            return TunedSource(spec, "lora", str(loras[0]), training_config)
        if any(path.glob("checkpoint-*")):
            raise MapoError(
                f"--tuned {spec}: the run has checkpoints but no final weights (unet/ or {LORA_WEIGHT_NAME}); "
                "let training finish or point at exported weights"
            )
        raise MapoError(f"--tuned {spec}: no unet/ folder, UNet config or LoRA weights in this folder")
    # Neither file nor folder: a Hub id, checked before any download (the one resolver).
    resolve(spec, "--tuned")
    return TunedSource(spec, "hub", spec)


def check_unet_fits(base_config: Any, tuned_config: Any, tuned: str, base: str) -> None:
    """A UNet with other conditioning sizes cannot run in the base pipeline: say which differ."""
    diffs = [
        f"{key} {tuned_config.get(key)} vs {base_config.get(key)}"
        for key in _FIT_KEYS
        if tuned_config.get(key) != base_config.get(key)
    ]
    if diffs:
        raise MapoError(f"the UNet of {tuned} does not fit the base model {base}: {', '.join(diffs)}")


def _first_informative_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "size mismatch" in line or "not found in the base model" in line:
            return line[:300]
    return lines[0][:300] if lines else type(err).__name__


def _load_unet(path: str, *, subfolder: str | None, dtype, device: str):
    from diffusers import UNet2DConditionModel

    kwargs = {"subfolder": subfolder} if subfolder else {}
    unet = UNet2DConditionModel.from_pretrained(path, torch_dtype=dtype, **kwargs)
    return unet.to(device).eval()


def _count_adapter_layers(pipe, adapter: str) -> int:
    count = 0
    for component in (pipe.unet, getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)):
        if component is None:
            continue
        for module in component.modules():
            lora_a = getattr(module, "lora_A", None)  # peft's per-adapter ModuleDict
            if lora_a is not None and hasattr(lora_a, "keys"):
                count += adapter in lora_a
    return count


def _attach_lora(pipe, weights: str, adapter: str, scale: float, base: str) -> None:
    path = Path(weights)
    try:
        if path.is_file():
            pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=adapter)
        else:
            pipe.load_lora_weights(weights, adapter_name=adapter)
    except (RuntimeError, ValueError, KeyError) as err:
        _detach_lora(pipe)
        raise MapoError(
            f"the LoRA weights {weights} do not fit the base model {base}: {_first_informative_line(err)}"
        ) from err
    if _count_adapter_layers(pipe, adapter) == 0:
        _detach_lora(pipe)
        raise MapoError(f"the LoRA weights {weights} matched no layer of the base model {base}")
    try:
        factor = _trained_strength_factor(pipe, path, adapter)
    except MapoError:
        _detach_lora(pipe)
        raise
    pipe.set_adapters([adapter], adapter_weights=[scale * factor])


def has_adapter_metadata(weights: Path) -> bool:
    """Whether a LoRA file carries its ``LoraConfig`` (rank, alpha, ...) for ``load_lora_weights``."""
    from diffusers.loaders.lora_base import LORA_ADAPTER_METADATA_KEY
    from safetensors import SafetensorError, safe_open

    if weights.suffix != ".safetensors":
        return False
    try:
        with safe_open(str(weights), framework="pt") as f:
            return LORA_ADAPTER_METADATA_KEY in (f.metadata() or {})
    except (OSError, SafetensorError):
        return False


def _trained_strength_factor(pipe, weights: Path, adapter: str) -> float:
    """How much stronger than diffusers loaded it the adapter was trained (1.0: as loaded).

    A file without adapter metadata is loaded at alpha = rank (scale 1.0). Earlier mapo versions
    saved LoRAs that way whatever ``lora.alpha`` was, so a run folder's training_config.yaml
    supplies the trained alpha/rank; a LoRA from elsewhere keeps diffusers' reading of it.
    """
    import yaml

    config_file = weights.parent / TRAINING_CONFIG
    if has_adapter_metadata(weights) or not config_file.is_file():
        return 1.0
    try:
        saved = yaml.safe_load(config_file.read_text()) or {}
        finetune = (saved.get("model") or {}).get("finetune")
        lora = saved.get("lora") or {}
    except (OSError, yaml.YAMLError, AttributeError) as err:
        raise MapoError(
            f"the LoRA weights {weights} carry no adapter settings and {config_file} cannot be read "
            f"({_first_informative_line(err)}): the strength they were trained with is unknown"
        ) from err
    if finetune != "lora":
        return 1.0
    rank, alpha = lora.get("rank"), lora.get("alpha")
    loaded = pipe.unet.peft_config[adapter]
    if not isinstance(rank, int) or rank != loaded.r or loaded.rank_pattern:
        raise MapoError(
            f"the LoRA weights {weights} carry no adapter settings and their rank {loaded.r} is not "
            f"the lora.rank {rank} of {config_file}: the strength they were trained with is unknown"
        )
    trained = (rank if alpha is None else float(alpha)) / rank
    return trained / (loaded.lora_alpha / loaded.r)


def _detach_lora(pipe) -> None:
    with suppress(ValueError, AttributeError):  # nothing was attached
        pipe.unload_lora_weights()


@contextmanager
def tuned_pipeline(pipe, source: TunedSource, *, label: str, base: str, lora_scale: float = 1.0):
    """The base pipeline with the tuned weights in place; the base is restored on exit."""
    base_unet = pipe.unet
    dtype, device = base_unet.dtype, str(base_unet.device)
    kind = source.kind
    if kind == "hub":
        # A Hub repository holds either a diffusers model (UNet under unet/) or LoRA weights.
        try:
            tuned_unet = _load_unet(source.path, subfolder="unet", dtype=dtype, device=device)
            kind = "unet"
        except (OSError, ValueError) as unet_err:
            try:
                from huggingface_hub import hf_hub_download

                weights = hf_hub_download(source.path, LORA_WEIGHT_NAME)
            except Exception as lora_err:  # any Hub failure means the same here: not loadable
                raise MapoError(
                    f"cannot load --tuned {source.spec}: no such local path, and not loadable from the Hub "
                    f"(offline, or neither unet/ nor {LORA_WEIGHT_NAME} in it): {_first_informative_line(unet_err)}"
                ) from lora_err
            if not has_adapter_metadata(Path(weights)):
                # An earlier mapo pushed LoRAs without their alpha: its training_config.yaml, fetched
                # beside the weights, gives the trained strength. A LoRA from elsewhere has none.
                with suppress(Exception):
                    hf_hub_download(source.path, TRAINING_CONFIG)
            _attach_lora(pipe, weights, label, lora_scale, base)
            kind = "lora"
    elif kind == "unet":
        try:
            tuned_unet = _load_unet(source.path, subfolder=None, dtype=dtype, device=device)
        except (OSError, ValueError, RuntimeError) as err:
            raise MapoError(f"cannot load the UNet in {source.path}: {_first_informative_line(err)}") from err
    else:
        _attach_lora(pipe, source.path, label, lora_scale, base)
    try:
        if kind == "unet":
            check_unet_fits(base_unet.config, tuned_unet.config, source.spec, base)
            pipe.unet = tuned_unet
        yield pipe
    finally:
        if kind == "unet":
            pipe.unet = base_unet
        else:
            _detach_lora(pipe)
