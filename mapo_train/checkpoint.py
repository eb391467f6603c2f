"""Resumable checkpoints: accelerate's full state plus the trainer's position, kept last-K.

A checkpoint is written under a temporary name and renamed once every process has finished
writing, so a folder named ``checkpoint-<step>`` is always complete (an interrupted save leaves
only a hidden ``.tmp`` folder, ignored and cleaned up later). Saving goes through
``accelerator.save_state``, which writes sharded optimizer states correctly under DeepSpeed.
"""

from __future__ import annotations

import difflib
import json
import pickle
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mapo_data.errors import MapoError
from mapo_data.shards import give_umask_mode

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(rf"^{PREFIX}(\d+)$")


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints in ``out``, oldest first."""
    if not out.is_dir():
        return []
    found = []
    for child in out.iterdir():
        match = _NAME.match(child.name)
        if match and (child / STATE_FILE).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(out: Path) -> Path | None:
    dirs = checkpoint_dirs(out)
    return dirs[-1] if dirs else None


def resolve_resume(out: Path, resume: str) -> Path:
    """``latest`` -> the newest complete checkpoint in ``out``; otherwise a checkpoint folder."""
    if resume == "latest":
        found = latest_checkpoint(out)
        if found is None:
            raise MapoError(f"--resume latest: no checkpoint in {out}")
        return found
    path = Path(resume).expanduser()
    if not path.exists():
        hint = " (did you mean latest?)" if difflib.get_close_matches(resume, ["latest"], cutoff=0.6) else ""
        raise MapoError(
            f"--resume {resume}: no such checkpoint folder{hint}; give latest or a checkpoint-* folder"
        )
    if not (path / STATE_FILE).is_file():
        raise MapoError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE})")
    return path


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def _extra_state_path(folder: Path, index: int) -> Path:
    # Not accelerate's "custom_checkpoint_N.pkl": accelerate counts files of that name against its
    # registered objects (there are none) and refuses the folder.
    return folder / f"extra_state_{index}.pt"


def save_checkpoint(
    accelerator, out: Path, step: int, state: dict[str, Any], keep: int, extra: Sequence[Any] = ()
) -> Path:
    """Save on every process (required by sharded optimizers); finish and prune on the main one.

    ``extra`` (the lr scheduler, the EMA) are saved here rather than registered with accelerate,
    whose loader unpickles registered objects with ``weights_only=False``, so a checkpoint from
    elsewhere could run code on ``--resume``; ``load_checkpoint`` reads them with ``weights_only=True``.
    """
    final = out / f"{PREFIX}{step:07d}"
    staging = out / f".{final.name}.tmp"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for index, obj in enumerate(extra):
            torch.save(obj.state_dict(), _extra_state_path(staging, index))
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
        give_umask_mode(staging)  # safetensors writes owner-only (0600) files
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        for old in checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, extra: Sequence[Any] = ()) -> dict[str, Any]:
    """Restore model, optimizer and RNG states (accelerate) and ``extra`` (scheduler, EMA: plain
    tensors and numbers, read with ``weights_only=True``); returns the trainer state."""
    if any(path.glob("custom_checkpoint_*.pkl")):
        raise MapoError(
            f"checkpoint {path} was written by an older mapo whose scheduler/EMA state only unpickles "
            "unrestricted (it could run code); start a new run, or resume it with the mapo that wrote it"
        )
    accelerator.load_state(str(path))
    for index, obj in enumerate(extra):
        file = _extra_state_path(path, index)
        try:
            obj.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))
        except FileNotFoundError as err:
            raise MapoError(
                f"checkpoint {path} has no {file.name} (saved without this run's scheduler/EMA?)"
            ) from err
        except pickle.UnpicklingError as err:
            raise MapoError(f"{file}: not plain tensors and numbers; refusing to unpickle it") from err
    return read_state(path)


LORA_FILE = "unet_lora.safetensors"


def checkpoint_lora_only(accelerator, unet) -> None:
    """Make checkpoints of a LoRA run hold the adapters, not a full copy of the frozen base
    (megabytes instead of SDXL's gigabytes). DeepSpeed writes its own engine state and is left as is."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return
    base = accelerator.unwrap_model(unet)

    def _index(models) -> int | None:
        return next((i for i, m in enumerate(models) if accelerator.unwrap_model(m) is base), None)

    def save_hook(models, weights, output_dir):
        from peft.utils import get_peft_model_state_dict
        from safetensors.torch import save_file

        i = _index(models)
        if i is None:
            return
        if accelerator.is_main_process:
            state = {k: v.detach().contiguous().cpu() for k, v in get_peft_model_state_dict(base).items()}
            save_file(state, str(Path(output_dir) / LORA_FILE))
        weights.pop(i)

    def load_hook(models, input_dir):
        from peft.utils import set_peft_model_state_dict
        from safetensors.torch import load_file

        i = _index(models)
        if i is None:
            return
        models.pop(i)
        result = set_peft_model_state_dict(base, load_file(str(Path(input_dir) / LORA_FILE)))
        unexpected = getattr(result, "unexpected_keys", None)
        if unexpected:
            raise MapoError(
                f"checkpoint {input_dir} does not match this LoRA setup ({len(unexpected)} unexpected keys)"
            )

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
