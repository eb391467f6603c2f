"""Resumable checkpoints: accelerate's full state plus the trainer's position, kept last-K.

A checkpoint is written under a temporary name and renamed once every process has finished
writing, so a folder named ``checkpoint-<step>`` is always complete (an interrupted save leaves
only a hidden ``.tmp`` folder, ignored and cleaned up later). Saving goes through
``accelerator.save_state``, which writes sharded optimizer states correctly under DeepSpeed.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from mapo_data.errors import MapoError

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
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise MapoError(f"--resume {resume}: not a complete checkpoint folder (no {STATE_FILE})")
    return path


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def save_checkpoint(accelerator, out: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Save on every process (required by sharded optimizers); finish and prune on the main one."""
    final = out / f"{PREFIX}{step:07d}"
    staging = out / f".{final.name}.tmp"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (staging / STATE_FILE).write_text(json.dumps(state, indent=2))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        for old in checkpoint_dirs(out)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path) -> dict[str, Any]:
    """Restore model, optimizer, scheduler, EMA and RNG states; returns the trainer state."""
    accelerator.load_state(str(path))
    return read_state(path)
