"""Writing a finished run in the formats other tools load: one SDXL single-file checkpoint (full
fine-tunes; ComfyUI, A1111/Forge, diffusers' ``from_single_file``) and kohya-format LoRA (LoRA
runs; kohya's scripts, ComfyUI, A1111/Forge, diffusers' ``load_lora_weights``).

Both are made from what the run already saved in the diffusers format (``unet/`` or
``pytorch_lora_weights.safetensors``), so ``train.export`` at the end of training and
``mapo-train export`` afterwards take the same path and give the same bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mapo_data.errors import MapoError
from mapo_train.config import RunConfig

SINGLE_FILE_NAME = "sdxl_checkpoint.safetensors"
"""The single-file checkpoint in a run folder: UNet from training, VAE and text encoders from the base."""
KOHYA_LORA_NAME = "lora_kohya.safetensors"
"""The kohya-format LoRA in a run folder."""
TARGETS = ("single-file", "kohya-lora")
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CONFIG_FILE = "training_config.yaml"


def export_run(run: str | Path, to: Sequence[str], cfg: RunConfig | None = None) -> list[Path]:
    """Write the run folder ``run``'s final weights in each format of ``to`` (``single-file``,
    ``kohya-lora``; ``diffusers`` is what the run holds already and is skipped) into ``run``.

    ``cfg`` is the run's configuration; default: its ``training_config.yaml``. Returns the written
    files. Raises MapoError (one line) when the run has no final weights, when a format does not
    fit the run (single-file needs a full fine-tune, kohya-lora a LoRA), or when the base model
    the run was trained on cannot be loaded (single-file borrows its VAE and text encoders).
    """
    folder = Path(run).expanduser()
    if cfg is None:
        cfg = _run_config(folder)
    written = []
    for target in to:
        if target == "diffusers":
            continue
        if target == "single-file":
            written.append(export_single_file(folder, cfg))
        elif target == "kohya-lora":
            written.append(export_kohya_lora(folder, cfg))
        else:
            raise MapoError(f"unknown export format {target!r}; choose single-file or kohya-lora")
    if written:
        from mapo_train.card import refresh_files_section

        refresh_files_section(folder, cfg.model.finetune == "lora")
    return written


def _run_config(folder: Path) -> RunConfig:
    from mapo_train.config import load_config

    if not folder.is_dir():
        raise MapoError(f"{folder}: no such run folder")
    config = folder / CONFIG_FILE
    if not config.is_file():
        raise MapoError(f"{folder}: not a mapo-train run folder (no {CONFIG_FILE})")
    return load_config(config)


def export_single_file(run: Path, cfg: RunConfig) -> Path:
    """``run/sdxl_checkpoint.safetensors``: the trained UNet (``run/unet``, as saved: the EMA weights
    when train.ema was on) with the base model's own VAE and text encoders, in the original SDXL
    key layout, weights in the dtype they were saved in. Checked to read back bit for bit before
    it is written (``mapo_data.single_file.to_original``)."""
    from diffusers import UNet2DConditionModel

    from mapo_data.single_file import write_single_file
    from mapo_train.model import load_components

    if cfg.model.finetune != "full":
        raise MapoError(
            f"{run}: single-file holds a full model, but this run trained a LoRA; export it as kohya-lora"
        )
    unet_dir = run / "unet"
    if not (unet_dir / "config.json").is_file():
        raise MapoError(f"{run}: no final weights (unet/); let training finish first")
    try:
        unet = UNet2DConditionModel.from_pretrained(unet_dir)
    except (OSError, ValueError) as err:
        raise MapoError(f"{unet_dir}: cannot load the trained UNet: {_first_line(err)}") from err
    # The base's own VAE (not model.vae's replacement): a checkpoint carries the model's VAE.
    base = load_components(dataclasses.replace(cfg.model, vae="base"), "no")
    return write_single_file(
        run / SINGLE_FILE_NAME,
        unet,
        base.vae,
        base.text_encoder,
        base.text_encoder_2,
    )


def export_kohya_lora(run: Path, cfg: RunConfig) -> Path:
    """``run/lora_kohya.safetensors``: the run's LoRA (``pytorch_lora_weights.safetensors``) in
    kohya's key layout (``lora_unet_<module>.lora_down.weight`` / ``.lora_up.weight``) with each
    module's ``.alpha`` set so that kohya's scale alpha/rank equals the scale the adapter was
    trained with (diffusers' ``convert_state_dict_to_kohya`` writes alpha = rank, scale 1.0)."""
    if cfg.model.finetune != "lora":
        raise MapoError(
            f"{run}: kohya-lora holds LoRA weights, but this run is a full fine-tune; export it as single-file"
        )
    weights = run / LORA_WEIGHT_NAME
    if not weights.is_file():
        raise MapoError(f"{run}: no final weights ({LORA_WEIGHT_NAME}); let training finish first")
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata() or {}
    state = load_file(str(weights))
    adapter = _adapter_settings(metadata, weights)
    return _write_safetensors(run / KOHYA_LORA_NAME, kohya_state_dict(state, adapter, weights))


def _adapter_settings(metadata: dict[str, str], weights: Path) -> dict[str, Any]:
    """The UNet adapter's LoraConfig settings that mapo writes into its LoRA files' metadata."""
    raw = metadata.get("lora_adapter_metadata")
    if not raw:
        raise MapoError(
            f"{weights}: carries no adapter settings (rank, alpha); the strength it was trained with is unknown"
        )
    settings = json.loads(raw)
    return {k.removeprefix("unet."): v for k, v in settings.items() if k.startswith("unet.")}


def kohya_state_dict(
    state: dict[str, Any], adapter: dict[str, Any], source: Path | str = ""
) -> dict[str, Any]:
    """kohya-format tensors from a diffusers-format UNet LoRA state dict (``unet.<module>.lora.down``
    / ``lora_A`` keys) and its adapter settings (``r``, ``lora_alpha``, ``alpha_pattern``,
    ``use_rslora``, ``use_dora``). Each module gets ``<kohya module>.alpha`` (fp32 scalar) so that
    alpha / rank is the module's trained scale. Raises MapoError for what kohya's format cannot
    hold (text-encoder or DoRA weights)."""
    import torch
    from diffusers.utils import convert_state_dict_to_kohya
    from peft.utils.other import get_pattern_key

    if adapter.get("use_dora"):
        raise MapoError(f"{source}: DoRA adapters have no kohya-lora export")
    peft_state = {}
    for key, value in state.items():
        if not key.startswith("unet."):
            raise MapoError(f"{source}: weight {key} is not a UNet LoRA weight; only UNet LoRAs are exported")
        name = key.replace(".lora.down.", ".lora_A.").replace(".lora.up.", ".lora_B.")
        if not name.endswith((".lora_A.weight", ".lora_B.weight")):
            raise MapoError(f"{source}: weight {key} has no kohya-lora name")
        peft_state[name] = value
    kohya = convert_state_dict_to_kohya(peft_state)
    # Which kohya module each diffusers module became, to put its alpha where kohya reads it.
    alpha_pattern = adapter.get("alpha_pattern") or {}
    for name, value in peft_state.items():
        if not name.endswith(".lora_A.weight"):
            continue
        module = name.removeprefix("unet.").removesuffix(".lora_A.weight")
        rank = int(value.shape[0])
        pattern = get_pattern_key(list(alpha_pattern), module)
        alpha = float(alpha_pattern.get(pattern, adapter.get("lora_alpha", rank)))
        scale = alpha / math.sqrt(rank) if adapter.get("use_rslora") else alpha / rank
        kohya_module = "lora_unet_" + module.replace(".", "_")
        if f"{kohya_module}.lora_down.weight" not in kohya:
            raise MapoError(f"{source}: module {module} has no kohya-lora name")
        kohya[f"{kohya_module}.alpha"] = torch.tensor(scale * rank, dtype=torch.float32)
    return kohya


def _write_safetensors(target: Path, state: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    from mapo_data.shards import give_umask_mode

    partial = target.with_name(target.name + ".partial")
    save_file({k: v.contiguous() for k, v in state.items()}, str(partial), metadata={"format": "pt"})
    give_umask_mode(partial)  # safetensors writes owner-only (0600) files
    os.replace(partial, target)
    return target


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__
