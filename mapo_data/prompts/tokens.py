"""The CLIP tokenizers of an SDXL model, used to measure prompts the way the pipeline will see them.

SDXL truncates each text encoder's input at 77 tokens (BOS and EOS included) without a word of
warning, so a prompt that is too long silently loses its end, and with a style prefix in front the
end is the context prompt itself. Measuring before rendering is the only place this can be caught.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mapo_data.errors import MapoError

# Diffusers layout: SDXL has both; SD 1.x/2.x models have only the first.
TOKENIZER_SUBFOLDERS = ("tokenizer", "tokenizer_2")


def load_tokenizers(model: str, *, option: str = "--model") -> list:
    """The CLIP tokenizers of `model`: a Hub id, a local diffusers folder, or "tiny".

    `option` names the command-line flag in the error message, so the advice matches the command.
    """
    from mapo_data.resolve import resolve_model

    # A missing path or unknown Hub id fails here at once (the one resolver).
    location = resolve_model(model, option)
    folder = Path(location).expanduser()
    if folder.is_dir():
        subfolders = [name for name in TOKENIZER_SUBFOLDERS if (folder / name).is_dir()]
        if not subfolders:
            raise MapoError(
                f"{model} has no tokenizer/ or tokenizer_2/ subfolder: is it a diffusers model folder? "
                f"({option} tiny uses the built-in tiny model)"
            )
        return [_load_one(str(folder), name, model, option) for name in subfolders]
    if folder.exists() or location.startswith((".", "/", "~")):
        raise MapoError(
            f"{model} is not a diffusers model folder ({option} tiny uses the built-in tiny model)"
        )
    # A Hub id: the first failure is enough to give up (each try retries the network for a while).
    return [_load_one(location, name, model, option) for name in TOKENIZER_SUBFOLDERS]


def _load_one(location: str, subfolder: str, model: str, option: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location, subfolder=subfolder)
    except Exception as err:  # transformers raises OSError, ValueError, HTTP errors, ...
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MapoError(
            f"cannot load the {subfolder} of {model!r} (offline, or not a diffusers model?): "
            f"{detail.rstrip('.')}; {option} tiny uses the built-in tiny model"
        ) from None


def token_counts(tokenizer, texts: Sequence[str], batch_size: int = 4096) -> list[int]:
    """Number of token ids of each text, BOS/EOS included, without truncation."""
    counts: list[int] = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        # verbose=False: we measure over-long texts on purpose; the "longer than the maximum" warning
        # would only alarm the user.
        encoded = tokenizer(batch, truncation=False, verbose=False)
        counts.extend(len(ids) for ids in encoded["input_ids"])
    return counts


def distinct_tokenizers(tokenizers: Sequence) -> list:
    """Drop tokenizers that split text exactly like an earlier one (SDXL's two share a vocabulary),
    so that each prompt is measured once per distinct vocabulary rather than once per encoder."""
    distinct: list = []
    seen: set[str] = set()
    for tokenizer in tokenizers:
        key = _splitting_fingerprint(tokenizer)
        if key is None or key not in seen:
            distinct.append(tokenizer)
        if key is not None:
            seen.add(key)
    return distinct


def _splitting_fingerprint(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    import json

    # Padding and truncation settings do not change how many ids a text gets; everything else does.
    spec = json.loads(backend.to_str())
    spec.pop("padding", None)
    spec.pop("truncation", None)
    return json.dumps(spec, sort_keys=True)
