"""Local path or Hub id: the one place that decides what a model, data, prompt or judge argument
names, before anything touches the network.

Every argument that takes "a Hub id or a local path" (``--model``, ``--vae``, ``--prompts``,
``data.path``, ``model.pretrained``, ``model.vae``, ``--tuned``, ``--base``, judge models) goes
through :func:`resolve`. The rules, in order:

1. a built-in name (``tiny``) is the built-in model, whatever the current folder holds;
2. a value that exists on disk is local (``owner/name`` included, when such a folder exists);
3. a value that looks like a path (starts with ``.``, ``/``, ``~`` or ``\\``, has more than one
   ``/``, or ends in a file extension such as ``.txt`` or ``.safetensors``) and does not exist
   fails at once: ``<value>: no such local file or folder``;
4. anything else is a Hub id. An invalid one fails at once; a valid one is looked up on the Hub,
   and when neither the Hub nor its local cache has it, the one-line error says that no local
   folder of that name exists either.

Hub look-ups fail fast. Unless ``HF_HUB_OFFLINE`` is set, the first Hub id of a process costs one
request to the Hub endpoint (``HF_ENDPOINT``) with a :data:`HUB_PROBE_TIMEOUT_S` timeout. When the
Hub does not answer, the process switches to huggingface_hub's offline mode (``HF_HUB_OFFLINE=1``
semantics, for huggingface_hub, datasets, transformers and diffusers alike, already imported or
not) and says so in one line on stderr. Without this, each library retries on its own (datasets:
several "Retrying in 8s" rounds; transformers/diffusers: a 10 s timeout per file), and a mistyped
name took 23 to 73 s to report. Offline, a Hub id resolves only when the local Hugging Face cache
holds that repository; otherwise the error comes before any library is asked.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from mapo_data.errors import MapoError

# Seconds the reachability check of the Hub endpoint may take. A refused connection or a failed
# DNS look-up returns at once; this bounds a network that silently drops packets.
HUB_PROBE_TIMEOUT_S = 3.0

# A last path component ending in one of these is a file name, not a Hub id. Hub ids may hold dots
# ("stable-diffusion-xl-base-1.0"), so only known file extensions count.
FILE_EXTENSIONS = frozenset(
    ".txt .json .jsonl .csv .tsv .parquet .arrow .yaml .yml .safetensors .bin .ckpt .pt .pth .pkl .npz "
    ".onnx .gguf .png .jpg .jpeg .webp .zip .tar .gz .tgz .zst".split()
)

REPO_TYPES = ("model", "dataset")

# None: not checked yet in this process; "": the Hub answered; otherwise why it is not used.
_hub_reason: str | None = None
# Whether the switch to offline mode still has to be announced: only once a Hub id goes ahead from
# the cache, since a failed resolution's one-line error already says the Hub is unreachable.
_note_due = False


def looks_like_path(value: str) -> bool:
    """True when ``value`` can only be a local path: starts with ``.``, ``/``, ``~`` or ``\\``,
    holds a backslash or more than one ``/``, or ends in a known file extension."""
    return (
        value.startswith((".", "/", "~", "\\"))
        or "\\" in value
        or value.count("/") > 1
        or Path(value).suffix.lower() in FILE_EXTENSIONS
    )


def resolve(
    value: str,
    what: str,
    *,
    repo_type: str = "model",
    builtins: dict[str, Callable[[], str | Path]] | None = None,
    cache_dir: str | None = None,
    hint: str = "",
) -> str:
    """Decide whether ``value`` names a local file/folder or a Hub repository, before any download.

    ``what`` names the argument in errors (``--model``, ``data.path``, ...); ``repo_type`` is
    ``model`` or ``dataset``; ``builtins`` maps built-in names (``tiny``) to a function giving
    their folder; ``cache_dir`` is a datasets cache folder used instead of the default one;
    ``hint`` is appended to "not found" errors (e.g. "--model tiny uses the built-in tiny model").

    Returns the local path (``~`` expanded) or the Hub id, unchanged. Raises a one-line MapoError
    when ``value`` is empty, looks like a path that does not exist, is not a valid Hub id, or is a
    Hub id that neither the Hub nor the local Hugging Face cache has. May switch the process to
    offline mode (see the module docstring).
    """
    if repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type must be one of {REPO_TYPES}, not {repo_type!r}")
    tail = f"; {hint}" if hint else ""
    if not value or not value.strip():
        raise MapoError(f"{what} is empty: give a local path or a Hub id{tail}")
    if builtins and value in builtins:
        return str(builtins[value]())
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value):
        raise MapoError(
            f"{what} {value}: a URL; mapo reads local files and Hub ids only, so download it first"
        )
    local = Path(value).expanduser()
    if local.exists():
        return str(local)
    if looks_like_path(value):
        raise MapoError(f"{what} {value}: no such local file or folder")
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    close = difflib.get_close_matches(value, list(builtins or ()), n=1, cutoff=0.6)
    if close:
        tail = f" (did you mean {close[0]}?){tail}"
    try:
        validate_repo_id(value)
    except HFValidationError:
        raise MapoError(
            f"{what} {value}: no such local file or folder, and not a valid Hub id (owner/name){tail}"
        ) from None
    reason = hub_offline_reason()
    if reason is not None:
        if not in_local_cache(value, repo_type, cache_dir):
            raise MapoError(
                f"{what} {value}: no local file or folder of that name, and no copy in the local "
                f"Hugging Face cache; {reason}{tail}"
            )
        _announce_offline()
        return value
    problem = _hub_problem(value, repo_type)
    if problem is not None:
        raise MapoError(f"{what} {value}: no local file or folder of that name, and {problem}{tail}")
    return value


def hub_offline_reason() -> str | None:
    """None when the Hub is to be used; otherwise why not, as a phrase.

    Offline mode already on (``HF_HUB_OFFLINE``): says so. Otherwise the Hub endpoint is asked once
    per process (:data:`HUB_PROBE_TIMEOUT_S`); when it does not answer, :func:`go_offline` switches
    the process to offline mode (announced on stderr once a Hub id loads from the cache), and later
    calls return at once.
    """
    global _hub_reason, _note_due
    from huggingface_hub import constants

    if _hub_reason:
        return _hub_reason
    if constants.is_offline_mode():
        return "the Hub is not reachable in offline mode (HF_HUB_OFFLINE is set)"
    if _hub_reason is None:
        _hub_reason = _probe_hub(constants.ENDPOINT) or ""
        if _hub_reason:
            go_offline(_hub_reason, note=False)
            _note_due = True
    return _hub_reason or None


def _announce_offline() -> None:
    global _note_due
    if _note_due:
        _note_due = False
        _print_note(_hub_reason or "")


def _probe_hub(endpoint: str) -> str | None:
    """Why ``endpoint`` cannot be used, or None when it answers (any status below 500)."""
    from huggingface_hub.utils import get_session

    try:
        # huggingface_hub's own client: the same proxies, certificates and headers as its downloads.
        response = get_session().head(endpoint, timeout=HUB_PROBE_TIMEOUT_S, follow_redirects=False)
    except Exception as err:  # noqa: BLE001 - any failure to connect means the same: unreachable
        return f"the Hub ({endpoint}) is not reachable ({_first_line(err)})"
    if response.status_code >= 500:
        return f"the Hub ({endpoint}) answered HTTP {response.status_code}"
    return None


def go_offline(reason: str, *, note: bool = True) -> None:
    """Switch this process (and the processes it starts) to Hugging Face offline mode.

    Sets ``HF_HUB_OFFLINE=1`` (read by libraries imported later) and the offline flag of
    huggingface_hub, datasets, transformers and diffusers modules already imported, which copied it
    at import time. Prints one note on stderr unless ``note`` is False.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    for name, module in list(sys.modules.items()):
        if module is None or name.split(".", 1)[0] not in ("huggingface_hub", "datasets", "diffusers"):
            continue
        for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if isinstance(getattr(module, flag, None), bool):
                setattr(module, flag, True)
    if note:
        _print_note(reason)


def _print_note(reason: str) -> None:
    print(
        f"note: {reason}; working offline (Hub ids load from the local Hugging Face cache only; "
        "set HF_HUB_OFFLINE=1 to skip this check)",
        file=sys.stderr,
    )


def in_local_cache(repo_id: str, repo_type: str, cache_dir: str | None = None) -> bool:
    """Whether the local Hugging Face cache holds anything of the ``repo_type`` ``repo_id``: the Hub
    cache (``HF_HUB_CACHE``), or for datasets also the datasets cache (``cache_dir`` or
    ``HF_DATASETS_CACHE``), where ``load_dataset`` keeps prepared copies it can load offline."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if Path(constants.HF_HUB_CACHE, repo_folder_name(repo_id=repo_id, repo_type=repo_type)).is_dir():
        return True
    if repo_type != "dataset":
        return False
    from datasets import config as datasets_config
    from datasets.naming import camelcase_to_snakecase

    # The layout datasets' offline loader looks in (datasets.load.CachedDatasetModuleFactory).
    parts = repo_id.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(cache_dir or datasets_config.HF_DATASETS_CACHE).expanduser() / "___".join(parts)
    return root.is_dir()


@functools.lru_cache(maxsize=64)  # the same id is resolved by several steps of one command
def _hub_problem(repo_id: str, repo_type: str) -> str | None:
    """Why the Hub cannot give ``repo_id`` (a phrase), or None when it can or the answer is unclear
    (then the loader tries, and reports its own error)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().repo_info(repo_id, repo_type=repo_type, timeout=HUB_PROBE_TIMEOUT_S * 2)
    except GatedRepoError:
        return f"the Hub {repo_type} is gated: accept its terms on the Hub and log in (hf auth login)"
    except RepositoryNotFoundError:
        return f"no Hub {repo_type} of that name (a private one needs hf auth login)"
    except Exception:  # noqa: BLE001 - unclear answers are left to the loader's own error
        return None
    return None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:200] if lines else type(err).__name__


def resolve_model(value: str, what: str, *, hint: str | None = None) -> str:
    """:func:`resolve` for a diffusers model argument, where ``tiny`` is the built-in tiny model.

    ``hint`` defaults to naming that built-in (``--model tiny`` / ``model.pretrained=tiny``).
    """
    from mapo_data.tiny import TINY_MODEL_NAME, tiny_model_path

    if hint is None:
        spelled = f"{what} {TINY_MODEL_NAME}" if what.startswith("-") else f"{what}={TINY_MODEL_NAME}"
        hint = f"{spelled} uses the built-in tiny model"
    return resolve(value, what, builtins={TINY_MODEL_NAME: tiny_model_path}, hint=hint)


def no_download_count() -> None:
    """Stop datasets' download-count ping for the load that follows.

    Unless offline, ``datasets.load_dataset`` sends a request to S3 (3 s timeout) to count each use
    of its packaged builders ("parquet", "json", ...), local files included: a network call a local
    load does not need, and up to 3 s lost on a network that drops packets.
    """
    import datasets.config

    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
