"""Which prompts an evaluation uses, and whether any of them were trained on.

A model can only show what it learned on prompts it has not seen: a prompt from the training
pairs measures memory, not the adopted preference. So prompts found in the training data are left
out by default, and the report says how many were and against which data the check ran.
"""

from __future__ import annotations

import glob
import random
import re
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

from mapo_data.errors import MapoError

DEFAULT_PROMPTS_RESOURCE = "default_prompts.txt"
TRAINING_CONFIG = "training_config.yaml"


def normalize_prompt(prompt: str) -> str:
    """Case and spacing do not make a prompt new."""
    return re.sub(r"\s+", " ", prompt).strip().lower()


def read_prompt_file(path: str) -> list[str]:
    """One prompt per line; blank lines and ``#`` comments are skipped."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise MapoError(f"prompt file not found: {path}")
    try:
        text = file.read_text("utf-8")
    except UnicodeDecodeError:
        raise MapoError(f"{path} is not UTF-8 text") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise MapoError(f"no prompts in {path}: it is empty")
    return prompts


def default_prompts() -> list[str]:
    text = resources.files("mapo_data.resources").joinpath(DEFAULT_PROMPTS_RESOURCE).read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _parquet_files(dataset: str) -> list[str]:
    path = Path(dataset).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(glob.glob(str(path / "**" / "*.parquet"), recursive=True))
        # Hidden temporary shards of an unfinished build are not training data.
        files = [
            f for f in files if not any(part.startswith(".") for part in Path(f).relative_to(path).parts)
        ]
        if files:
            return files
        raise MapoError(f"no parquet files under {dataset}")
    raise MapoError(
        f"--dataset {dataset}: not a local folder or parquet file (the held-out check reads local pairs)"
    )


def training_captions(dataset: str) -> set[str]:
    """Normalised captions of a local pair dataset (only the caption column is read)."""
    import pyarrow.parquet as pq

    captions: set[str] = set()
    for file in _parquet_files(dataset):
        try:
            schema = pq.read_schema(file)
            if "caption" not in schema.names:
                raise MapoError(f"{file} has no caption column: not a pair dataset")
            column = pq.read_table(file, columns=["caption"]).column("caption").to_pylist()
        except MapoError:
            raise
        except Exception as err:  # pyarrow raises several types for a damaged file
            raise MapoError(f"cannot read {file}: {str(err).splitlines()[0] if str(err) else err}") from err
        captions.update(normalize_prompt(c) for c in column if isinstance(c, str))
    return captions


def dataset_from_run(tuned: list[str]) -> str | None:
    """The local training data a run folder records in its training_config.yaml, if any."""
    import yaml

    for source in tuned:
        config = Path(source) / TRAINING_CONFIG
        if not config.is_file():
            continue
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError:
            continue
        path = (data.get("data") or {}).get("path") if isinstance(data, dict) else None
        if isinstance(path, str) and path and Path(path).expanduser().exists():
            return path
    return None


@dataclass
class PromptSelection:
    """The prompts used and how they were chosen (for the report)."""

    prompts: list[str]
    source: str
    held_out_checked_against: str | None = None
    excluded_as_trained: list[str] = field(default_factory=list)
    trained_prompts_kept: int = 0

    def to_dict(self) -> dict:
        data = asdict(self)
        data["num_prompts"] = len(self.prompts)
        return data


def select_prompts(
    *,
    prompts_file: str | None,
    num_prompts: int | None,
    dataset: str | None,
    include_train_prompts: bool,
    seed: int,
    default_count: int,
) -> PromptSelection:
    """Read, held-out-filter and cut the prompt list; deterministic for a given seed."""
    if prompts_file is not None:
        candidates = read_prompt_file(prompts_file)
        source = prompts_file
    else:
        candidates = default_prompts()
        source = "the default prompt set"
    # The same prompt twice would count one comparison twice.
    seen: set[str] = set()
    unique = []
    for prompt in candidates:
        key = normalize_prompt(prompt)
        if key not in seen:
            seen.add(key)
            unique.append(prompt)
    excluded: list[str] = []
    kept_trained = 0
    if dataset is not None:
        trained = training_captions(dataset)
        if include_train_prompts:
            kept_trained = sum(normalize_prompt(p) in trained for p in unique)
        else:
            excluded = [p for p in unique if normalize_prompt(p) in trained]
            unique = [p for p in unique if normalize_prompt(p) not in trained]
            if not unique:
                raise MapoError(
                    f"every prompt from {source} is in the training data {dataset}; give held-out "
                    "--prompts (or --include-train-prompts to evaluate on training prompts)"
                )
    if prompts_file is not None:
        chosen = unique[:num_prompts] if num_prompts else unique
    else:
        count = min(num_prompts or default_count, len(unique))
        # A seeded sample rather than the first N: builds often take the first prompts of the set.
        chosen = random.Random(seed).sample(unique, count)
    return PromptSelection(
        prompts=chosen,
        source=source,
        held_out_checked_against=dataset,
        excluded_as_trained=excluded,
        trained_prompts_kept=kept_trained,
    )
