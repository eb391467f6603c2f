"""SDXL single-file checkpoints: the one place that reads and writes them.

A single-file checkpoint is what ComfyUI, A1111/Forge and kohya's scripts load: one file holding
the UNet (``model.diffusion_model.*``), the VAE (``first_stage_model.*``) and both text encoders
(``conditioner.embedders.0.transformer.*``, CLIP-L in the transformers layout, and
``conditioner.embedders.1.model.*``, OpenCLIP bigG in the open_clip layout), in the original
(SGM/LDM) key layout. It holds no configs and no tokenizers, so reading one needs a diffusers
folder to borrow them from (``--model-config`` / ``model.config``): for a real SDXL fine-tune the
SDXL base folder, for one made from the built-in tiny model ``tiny``.

Reading converts keys with diffusers' own converters (``from_single_file``). Writing needs the
reverse mapping, which diffusers does not ship; ``to_original`` builds it here and then checks it
by running diffusers' forward converters over the result: every tensor must come back under its
own name, bit for bit, or nothing is written.

Pickle checkpoints (``.ckpt``, ``.pt``, ``.bin``, ``.pth``) can run code when unpickled; they are
refused unless the caller opts in (``--allow-pickle`` / ``model.allow_pickle``), and even then are
read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mapo_data.errors import MapoError

SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".bin", ".pth")

MODEL_CONFIG_HELP = (
    "For a single-file --model: the diffusers folder its configs and tokenizers are borrowed from "
    "(nothing is downloaded; the SDXL base folder for SDXL fine-tunes, 'tiny' for the tiny model)."
)
ALLOW_PICKLE_HELP = (
    "Read a pickle checkpoint (.ckpt/.pt/.bin/.pth). Unpickling can run code hidden in the file: "
    "only for files you trust; prefer .safetensors."
)

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."

# The parts of a diffusers folder a single file borrows: configs, tokenizers, scheduler.
CONFIG_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")


def is_single_file(model: str | Path) -> bool:
    """Whether ``model`` names a single weights file (by its suffix), as opposed to a folder, a Hub
    id or ``tiny``."""
    return str(model).lower().endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES)


def check_single_file(path: str | Path, allow_pickle: bool = False, flag: str = "--allow-pickle") -> Path:
    """The checkpoint ``path`` if it may be read; MapoError (one line) when it is missing or a pickle
    file without the opt-in ``flag``."""
    file = Path(path).expanduser()
    if str(file).lower().endswith(PICKLE_SUFFIXES) and not allow_pickle:
        raise MapoError(
            f"{path}: pickle checkpoints can run code when loaded and are refused; use a .safetensors file, "
            f"or pass {flag} if you trust where this file came from"
        )
    if not file.is_file():
        raise MapoError(f"{path}: no such checkpoint file")
    return file


def resolve_config(model: str | Path, config: str | None, flag: str = "--model-config") -> Path:
    """The diffusers folder the single file ``model`` borrows configs and tokenizers from.

    ``config`` is a local diffusers folder or ``tiny``; offline there is nothing else to ask, so a
    missing ``config`` is a one-line MapoError naming ``flag``.
    """
    from mapo_data.tiny import resolve_model_id

    if not config:
        raise MapoError(
            f"{model} is a single-file checkpoint without configs or tokenizers; pass {flag} naming a "
            "diffusers folder to borrow them from (the SDXL base folder for SDXL fine-tunes, tiny for the tiny model)"
        )
    folder = Path(resolve_model_id(config)).expanduser()
    if not folder.is_dir():
        raise MapoError(f"{flag} {config}: not a local diffusers folder (or tiny)")
    missing = [part for part in CONFIG_PARTS if not (folder / part).is_dir()]
    if missing:
        raise MapoError(f"{flag} {config}: not an SDXL diffusers folder (no {', '.join(missing)}/)")
    return folder


def load_checkpoint(path: str | Path, allow_pickle: bool = False) -> dict[str, Any]:
    """The flat state dict of a single-file checkpoint (tensors on the CPU, as stored).

    Raises MapoError naming the file when it cannot be read or is a refused pickle file.
    """
    import torch
    from safetensors.torch import load_file

    file = check_single_file(path, allow_pickle)
    try:
        if str(file).lower().endswith(SAFE_SUFFIXES):
            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure is this file's problem
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MapoError(f"{path}: not a readable checkpoint: {first[:200]}") from err
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # Lightning-era .ckpt files nest the weights
    if not isinstance(state, dict) or not any(k.startswith(UNET_PREFIX) for k in state):
        raise MapoError(f"{path}: no SDXL UNet in this checkpoint (no {UNET_PREFIX}* keys)")
    return state


def _part(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k: v for k, v in state.items() if k.startswith(prefix)}


def load_components(
    path: str | Path, config: str | None, dtype=None, allow_pickle: bool = False
) -> dict[str, Any]:
    """Every SDXL pipeline component from the single file ``path``, configs and tokenizers from the
    folder ``config`` (see ``resolve_config``): ``{"unet", "vae", "text_encoder", "text_encoder_2",
    "tokenizer", "tokenizer_2", "scheduler"}``, weights in ``dtype`` (default: as stored).

    Each text encoder is converted from its own prefix only: diffusers' pipeline loader tells the
    two apart by their width, which a small model whose encoders share a width defeats.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from diffusers.utils import logging as diffusers_logging
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    folder = resolve_config(path, config)
    state = load_checkpoint(path, allow_pickle)
    for prefix, what in (
        (VAE_PREFIX, "VAE"),
        (CLIP_L_PREFIX, "text encoder"),
        (CLIP_G_PREFIX, "text encoder 2"),
    ):
        if not any(k.startswith(prefix) for k in state):
            raise MapoError(
                f"{path}: no {what} in this checkpoint (no {prefix}* keys); mapo needs a full SDXL checkpoint"
            )
    diffusers_logging.set_verbosity_error()
    common = {"config": str(folder), "local_files_only": True, "torch_dtype": dtype}
    try:
        unet = UNet2DConditionModel.from_single_file(_part(state, UNET_PREFIX), subfolder="unet", **common)
        vae = AutoencoderKL.from_single_file(_part(state, VAE_PREFIX), subfolder="vae", **common)
        text_encoder = create_diffusers_clip_model_from_ldm(
            CLIPTextModel,
            _part(state, CLIP_L_PREFIX),
            subfolder="text_encoder",
            config=str(folder),
            torch_dtype=dtype,
            local_files_only=True,
        )
        text_encoder_2 = create_diffusers_clip_model_from_ldm(
            CLIPTextModelWithProjection,
            _part(state, CLIP_G_PREFIX),
            subfolder="text_encoder_2",
            config=str(folder),
            torch_dtype=dtype,
            local_files_only=True,
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer")
        tokenizer_2 = AutoTokenizer.from_pretrained(folder, subfolder="tokenizer_2")
        scheduler = _load_scheduler(folder)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MapoError(f"{path}: does not fit the configs in {folder}: {first[:200]}") from err
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "text_encoder_2": text_encoder_2,
        "tokenizer": tokenizer,
        "tokenizer_2": tokenizer_2,
        "scheduler": scheduler,
    }


def _load_scheduler(folder: Path):
    """The scheduler class and settings the config folder names."""
    import json

    import diffusers

    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    cls = getattr(diffusers, config["_class_name"])
    return cls.from_pretrained(folder, subfolder="scheduler")


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".gguf")


def model_identity(
    path: str | Path, config: str | None, parts: tuple[str, ...] | list[str] = CONFIG_PARTS
) -> dict[str, Any]:
    """What a single-file model is, by content: the checkpoint's sha256 and, for each of ``parts``,
    the digest of what the config folder lends it (every file but weights, which are not read).
    Neither path enters, so a copied file keeps its identity and a changed byte never does.

    Raises MapoError naming the file or folder when one cannot be read.
    """
    import hashlib

    from mapo_data.identity import file_digest

    file = Path(path).expanduser()
    if not file.is_file():
        raise MapoError(f"{path}: no such checkpoint file")
    folder = resolve_config(path, config)
    lent = {}
    for part in parts:
        digest = hashlib.sha256()
        for full in sorted((folder / part).rglob("*")):
            rel = full.relative_to(folder / part).as_posix()
            if full.is_file() and not rel.startswith(".") and not full.name.lower().endswith(WEIGHT_SUFFIXES):
                digest.update(f"{rel}\0{file_digest(full)}\n".encode())
        lent[part] = digest.hexdigest()
    return {"single_file": file_digest(file), "config": lent}


# --- writing: diffusers layout -> original layout ------------------------------------------------

_RESNET = (
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)


def _unet_key(key: str, config: Mapping[str, Any]) -> str:
    """The original-layout name of a diffusers UNet weight (without the UNet prefix)."""
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    head, _, leaf = key.rpartition(".")
    if head in fixed:
        return f"{fixed[head]}.{leaf}"
    layers = config["layers_per_block"]
    parts = key.split(".")

    def resnet(rest: list[str]) -> str:
        name = ".".join(rest)
        for new, old in _RESNET:
            if name.startswith(new + "."):
                return old + name[len(new) :]
        raise MapoError(f"UNet weight {key} has no original-layout name")

    if parts[0] == "down_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "downsamplers":  # down_blocks.B.downsamplers.0.conv.X -> input_blocks.N.0.op.X
            index = 1 + block * (layers + 1) + layers
            return f"input_blocks.{index}.0.op.{parts[-1]}"
        index = 1 + block * (layers + 1) + int(parts[3])
        if kind == "resnets":
            return f"input_blocks.{index}.0.{resnet(parts[4:])}"
        if kind == "attentions":
            return f"input_blocks.{index}.1.{'.'.join(parts[4:])}"
    if parts[0] == "mid_block":
        if parts[1] == "resnets":
            return f"middle_block.{2 * int(parts[2])}.{resnet(parts[3:])}"
        if parts[1] == "attentions":
            return f"middle_block.1.{'.'.join(parts[3:])}"
    if parts[0] == "up_blocks":
        block, kind = int(parts[1]), parts[2]
        if kind == "upsamplers":  # after the block's last resnet (and its attention, when it has one)
            index = block * (layers + 1) + layers
            has_attention = "CrossAttn" in config["up_block_types"][block]
            return f"output_blocks.{index}.{2 if has_attention else 1}.conv.{parts[-1]}"
        index = block * (layers + 1) + int(parts[3])
        if kind == "resnets":
            return f"output_blocks.{index}.0.{resnet(parts[4:])}"
        if kind == "attentions":
            return f"output_blocks.{index}.1.{'.'.join(parts[4:])}"
    raise MapoError(f"UNet weight {key} has no original-layout name")


def _vae_key(key: str, num_up: int) -> str:
    """The original-layout name of a diffusers VAE weight (without the VAE prefix)."""
    renames = {"conv_norm_out": "norm_out"}
    parts = key.split(".")
    coder = parts[0]
    if coder not in ("encoder", "decoder"):
        return key  # quant_conv, post_quant_conv
    rest = parts[1:]
    if rest[0] in renames:
        return ".".join([coder, renames[rest[0]], *rest[1:]])
    if rest[0] in ("down_blocks", "up_blocks"):
        block = int(rest[1])
        word = "down" if rest[0] == "down_blocks" else "up"
        if word == "up":
            block = num_up - 1 - block  # the original counts decoder blocks from the bottom
        if rest[2] == "resnets":
            tail = ".".join(rest[4:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.{word}.{block}.block.{rest[3]}.{tail}"
        if rest[2] in ("downsamplers", "upsamplers"):
            return f"{coder}.{word}.{block}.{word}sample.{'.'.join(rest[4:])}"
    if rest[0] == "mid_block":
        if rest[1] == "resnets":
            tail = ".".join(rest[3:]).replace("conv_shortcut", "nin_shortcut")
            return f"{coder}.mid.block_{int(rest[2]) + 1}.{tail}"
        if rest[1] == "attentions":
            name = ".".join(rest[3:])
            for new, old in (
                ("group_norm", "norm"),
                ("to_q", "q"),
                ("to_k", "k"),
                ("to_v", "v"),
                ("to_out.0", "proj_out"),
            ):
                if name.startswith(new + "."):
                    return f"{coder}.mid.attn_1.{old}{name[len(new) :]}"
    if len(rest) >= 1 and rest[0] in ("conv_in", "conv_out"):
        return key
    raise MapoError(f"VAE weight {key} has no original-layout name")


def _clip_g(state: Mapping[str, Any]) -> dict[str, Any]:
    """OpenCLIP layout of a CLIPTextModelWithProjection state dict (without the encoder prefix)."""
    import torch

    out: dict[str, Any] = {}
    pending: dict[str, dict[str, Any]] = {}
    for key, value in state.items():
        name = key.removeprefix("text_model.")
        if name == "embeddings.token_embedding.weight":
            out["token_embedding.weight"] = value
        elif name == "embeddings.position_embedding.weight":
            out["positional_embedding"] = value
        elif name.startswith("final_layer_norm."):
            out["ln_final." + name.rpartition(".")[2]] = value
        elif name == "text_projection.weight":
            out["text_projection"] = value.T.contiguous()  # open_clip multiplies x @ P
        elif name.startswith("encoder.layers."):
            layer, sub = name.removeprefix("encoder.layers.").split(".", 1)
            base = f"transformer.resblocks.{layer}."
            if sub.startswith("self_attn.") and sub.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
                proj, leaf = sub.split(".")[1:]
                pending.setdefault(f"{base}attn.in_proj_{leaf}", {})[proj] = value
                continue
            sub = (
                sub.replace("self_attn.out_proj", "attn.out_proj")
                .replace("layer_norm1", "ln_1")
                .replace("layer_norm2", "ln_2")
                .replace("mlp.fc1", "mlp.c_fc")
                .replace("mlp.fc2", "mlp.c_proj")
            )
            out[base + sub] = value
        elif name == "embeddings.position_ids":
            continue  # a buffer, rebuilt by the model
        else:
            raise MapoError(f"text encoder 2 weight {key} has no original-layout name")
    for key, projections in pending.items():
        out[key] = torch.cat([projections["q_proj"], projections["k_proj"], projections["v_proj"]], dim=0)
    return out


def to_original(
    unet: Mapping[str, Any],
    vae: Mapping[str, Any],
    text_encoder: Mapping[str, Any],
    text_encoder_2: Mapping[str, Any],
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
) -> dict[str, Any]:
    """One original-layout (SGM) state dict from the four diffusers state dicts.

    Checked against diffusers' own forward converters before it is returned: each tensor must come
    back under its diffusers name and equal (``torch.equal``); MapoError otherwise.
    """
    import torch

    state: dict[str, Any] = {}
    for key, value in unet.items():
        state[UNET_PREFIX + _unet_key(key, unet_config)] = value
    num_up = len(vae_config["up_block_types"])
    for key, value in vae.items():
        name = _vae_key(key, num_up)
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE attention is 1x1 convolutions
        state[VAE_PREFIX + name] = value
    for key, value in text_encoder.items():
        name = key.removeprefix("text_model.")
        if name == "embeddings.position_ids":
            continue
        state[f"{CLIP_L_PREFIX}text_model.{name}"] = value
    for key, value in _clip_g(text_encoder_2).items():
        state[CLIP_G_PREFIX + key] = value
    if len(state) < len(unet) + len(vae):
        raise MapoError("two diffusers weights map to one original-layout name; nothing written")
    _check_round_trip(state, unet, vae, text_encoder, text_encoder_2, unet_config, vae_config)
    return {k: v.contiguous() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _check_round_trip(state, unet, vae, text_encoder, text_encoder_2, unet_config, vae_config) -> None:
    import torch
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    class _Dims:  # convert_open_clip_checkpoint asks the model only for its width
        class config:  # noqa: N801
            hidden_size = None

    def strip(d: Mapping[str, Any]) -> dict[str, Any]:
        return {k.removeprefix("text_model."): v for k, v in d.items() if not k.endswith("position_ids")}

    back = {
        "UNet": (convert_ldm_unet_checkpoint(_part(state, UNET_PREFIX), dict(unet_config)), unet),
        "VAE": (convert_ldm_vae_checkpoint(_part(state, VAE_PREFIX), dict(vae_config)), vae),
        "text encoder": (
            strip(convert_ldm_clip_checkpoint(_part(state, CLIP_L_PREFIX))),
            strip(text_encoder),
        ),
        "text encoder 2": (
            convert_open_clip_checkpoint(_Dims, _part(state, CLIP_G_PREFIX), prefix=CLIP_G_PREFIX),
            {k: v for k, v in text_encoder_2.items() if not k.endswith("position_ids")},
        ),
    }
    for what, (converted, original) in back.items():
        if set(converted) != set(original):
            extra = sorted(set(converted) ^ set(original))[:3]
            raise MapoError(
                f"the single-file layout of the {what} does not read back (keys {extra}); nothing written"
            )
        for key, value in original.items():
            if not torch.equal(converted[key], value):
                raise MapoError(
                    f"the single-file layout of the {what} reads back {key} changed; nothing written"
                )


def write_single_file(
    out: str | Path,
    unet,
    vae,
    text_encoder,
    text_encoder_2,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write the four models as one SDXL single-file ``.safetensors`` checkpoint at ``out`` (weights
    in the dtype they have), atomically. Returns the path.

    safetensors writes metadata entries in no fixed order, so more than one entry would make equal
    weights give different bytes; keep ``metadata`` to one entry where reproducible bytes matter."""
    import os

    from safetensors.torch import save_file

    from mapo_data.shards import give_umask_mode

    state = to_original(
        _cpu_state(unet),
        _cpu_state(vae),
        _cpu_state(text_encoder),
        _cpu_state(text_encoder_2),
        unet.config,
        vae.config,
    )
    target = Path(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    save_file(state, str(partial), metadata={"format": "pt", **dict(metadata or {})})
    give_umask_mode(partial)  # safetensors writes owner-only (0600) files
    os.replace(partial, target)
    return target


def _cpu_state(model) -> dict[str, Any]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
