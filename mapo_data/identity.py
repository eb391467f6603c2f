"""Identity by content: what a cache, a checkpoint or a manifest depends on, named by what the bytes
are, never by where they lie.

- A local file is its sha256. Hashing multi-GB weights at every start would take a while, so each
  digest is memoised in a small sidecar (``$MAPO_CACHE/file-digests/``, else
  ``~/.cache/mapo/file-digests/``; one JSON file per hashed path) together with the file's device,
  inode, size, mtime and ctime. The memo is used only while all five still match. ctime cannot be
  set by the user and moves on every write, so rewriting a file in place with the same size and a
  restored mtime still invalidates it. Filesystem clocks tick coarsely, so a file changed less than
  ``RACY_SECONDS`` before it was hashed could change again without a visible stat change ("racy
  git"); such digests are not memoised.
- A local folder is the sha256 of (relative path, file digest) over every file below it (following
  links; hidden names, which loaders never read, are skipped). Any added, removed, renamed or
  changed file changes it.
- A Hub repository is the commit its revision resolves to: a commit names its content. Asked of the
  Hub unless offline, else read from the local Hugging Face cache; neither is an error, never a
  guess.
- The built-in ``tiny`` model is the folder its code writes, hashed like any local folder.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mapo_data.errors import MapoError
from mapo_data.shards import atomic_write_json

log = logging.getLogger(__name__)

RACY_SECONDS = 2.0
"""A file changed less than this long before it is hashed is hashed again next time (see above)."""

_COMMIT = re.compile(r"[0-9a-f]{40}")


def mapo_cache_home() -> Path:
    """``$MAPO_CACHE``, else ``$XDG_CACHE_HOME/mapo``, else ``~/.cache/mapo``."""
    if os.environ.get("MAPO_CACHE"):
        return Path(os.environ["MAPO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mapo"


def _memo_path(real: Path) -> Path:
    name = hashlib.sha256(str(real).encode()).hexdigest()[:32]
    return mapo_cache_home() / "file-digests" / f"{name}.json"


def _stat_key(st: os.stat_result) -> dict[str, int]:
    return {
        "dev": st.st_dev,
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def file_digest(path: str | Path) -> str:
    """The sha256 (hex) of a file's bytes, memoised as described in the module docstring.

    Raises MapoError naming the file when it cannot be read.
    """
    real = Path(path).expanduser().resolve()
    try:
        before = real.stat()
    except OSError as err:
        raise MapoError(f"cannot read {path}: {err.strerror or err}") from err
    key = _stat_key(before)
    memo = _memo_path(real)
    try:
        recorded = json.loads(memo.read_text())
        if recorded.get("path") == str(real) and all(recorded.get(k) == v for k, v in key.items()):
            return str(recorded["sha256"])
    except (OSError, ValueError, KeyError, AttributeError):
        pass  # no memo, or an unreadable one: hash
    if key["size"] > 256 << 20:
        log.info("hashing %s (%.1f GB) to identify it; memoised for later runs", real, key["size"] / 1e9)
    try:
        sha = hashlib.sha256()
        with open(real, "rb") as f:  # hashlib.file_digest is 3.11+
            while chunk := f.read(1 << 24):
                sha.update(chunk)
        digest = sha.hexdigest()
        after = real.stat()
    except OSError as err:
        raise MapoError(f"cannot read {path}: {err.strerror or err}") from err
    newest = max(after.st_mtime_ns, after.st_ctime_ns)
    settled = time.time_ns() - newest >= RACY_SECONDS * 1e9
    if _stat_key(after) == key and settled:
        try:
            atomic_write_json(memo, {"path": str(real), **key, "sha256": digest})
        except OSError as err:  # a read-only cache folder only costs a rehash next time
            log.debug("could not memoise the digest of %s: %s", real, err)
    return digest


def folder_digest(folder: str | Path) -> str:
    """The sha256 (hex) over every non-hidden file below ``folder``: relative path and content.

    Raises MapoError when ``folder`` is not a folder or holds no file.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise MapoError(f"{folder} is not a folder")
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                full = Path(dirpath) / name
                files.append((full.relative_to(root).as_posix(), full))
    if not files:
        raise MapoError(f"{folder} holds no files")
    digest = hashlib.sha256()
    for rel, full in sorted(files):
        digest.update(f"{rel}\0{file_digest(full)}\n".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _hub_sha(repo_id: str, revision: str | None) -> str | None:
    """The Hub's answer, once per process: one run asks for the base model's commit for several
    parts (the cache's VAE and text encoders, the checkpoint's base)."""
    from huggingface_hub import model_info

    return model_info(repo_id, revision=revision).sha


def hub_commit(repo_id: str, revision: str | None, probe: str) -> str:
    """The commit that ``revision`` (default ``main``) of the Hub model ``repo_id`` resolves to.

    Asks the Hub unless offline (``HF_HUB_OFFLINE``); when that is not possible, resolves it in the
    local Hugging Face cache through the cached file ``probe`` (e.g. ``vae/config.json``).
    Raises MapoError when neither knows it.
    """
    if revision is not None and _COMMIT.fullmatch(revision):
        return revision
    from huggingface_hub import constants, try_to_load_from_cache

    reason = "offline (HF_HUB_OFFLINE)"
    if not constants.is_offline_mode():
        try:
            sha = _hub_sha(repo_id, revision)
            if sha:
                return sha
        except Exception as err:  # noqa: BLE001 - any Hub failure falls back to the local cache
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    cached = try_to_load_from_cache(repo_id, probe, revision=revision)
    if isinstance(cached, str):
        parts = Path(cached).parts
        if "snapshots" in parts:
            commit = parts[parts.index("snapshots") + 1]
            if _COMMIT.fullmatch(commit):
                return commit
    raise MapoError(
        f"cannot tell which version of {repo_id} (revision {revision or 'main'}) would be loaded: "
        f"the Hub is not reachable ({reason}) and it is not in the local Hugging Face cache"
    )


def model_identity(
    model: str,
    subfolders: Sequence[str] = ("",),
    revision: str | None = None,
    variant: str | None = None,
    config: str | None = None,
    *,
    what: str = "model",
) -> dict[str, Any]:
    """What the parts ``subfolders`` of ``model`` (a local folder, a Hub id or ``tiny``) are.

    A local folder (``tiny`` included) gives ``{"content": [folder digest per subfolder]}`` and
    neither path nor folder names, so a moved or copied model (or a VAE folder given on its own
    that equals the base model's ``vae/``) keeps its identity, and changed bytes never do; a Hub id
    gives ``{"hub": repo_id, "commit": sha, "parts": subfolders}``. ``variant`` picks which weight files load, so it is
    part of the identity; ``""`` names the model's own folder. An SDXL single-file checkpoint
    (``.safetensors``) gives the sha256 of the file and of what its ``config`` folder lends the
    parts (``mapo_data.single_file.model_identity``).
    """
    from mapo_data.resolve import resolve_model
    from mapo_data.single_file import is_single_file

    if is_single_file(model):
        from mapo_data.single_file import model_identity as single_file_identity

        return single_file_identity(model, config, tuple(s for s in subfolders if s))
    # One resolver (mapo_data.resolve): a missing path or unknown Hub id fails here, named by
    # ``what`` (the argument, e.g. model.pretrained), before any download.
    resolved = resolve_model(model, what)
    local = Path(resolved).expanduser()
    if local.is_dir():
        content = []
        for sub in subfolders:
            part = local / sub if sub else local
            if not part.is_dir():
                raise MapoError(f"model {model} has no {sub}/ folder")
            content.append(folder_digest(part))
        return {"content": content, "variant": variant}
    if local.exists():
        raise MapoError(f"{what} {model} is a file, not a model folder")
    probe = f"{subfolders[0]}/config.json" if subfolders and subfolders[0] else "config.json"
    commit = hub_commit(resolved, revision, probe)
    return {"hub": resolved, "commit": commit, "parts": list(subfolders), "variant": variant}
