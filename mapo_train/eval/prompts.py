"""Which prompts an evaluation uses, and whether any of them were trained on.

A model can only show what it learned on prompts it has not seen: a prompt from the training
pairs measures memory, not the adopted preference. So prompts found in the training data are left
out by default, and the report says how many were and against which data the check ran.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mapo_data.errors import MapoError

TRAINING_CONFIG = "training_config.yaml"
DEFAULT_SOURCE = "the default prompt set"


class TrainingDataUnavailable(MapoError):
    """The training data could not be read, so the held-out check could not run."""


def normalize_prompt(prompt: str) -> str:
    """Case and spacing do not make a prompt new."""
    return re.sub(r"\s+", " ", prompt).strip().lower()


def candidate_prompts(source: str | None, column: str | None = None, split: str | None = None) -> list[str]:
    """Prompts from ``source`` as ``mapo-data``'s prompt reader takes them (None: the default set).

    Files (.txt, .jsonl, .json, .csv, .parquet), dataset folders and Hub datasets all work, with
    ``split`` picking a held-out split of a dataset. Blank values are dropped; in a .txt file, lines
    starting with ``#`` are comments.
    """
    from mapo_data.prompts import load_prompts

    prompts = [p.strip() for p in load_prompts(source, column=column, split=split, what="--prompts")]
    is_text_file = source is not None and Path(source).suffix.lower() == ".txt"
    prompts = [p for p in prompts if p and not (is_text_file and p.startswith("#"))]
    if not prompts:
        raise MapoError(f"no prompts in {source or DEFAULT_SOURCE}: it holds only blanks and comments")
    return prompts


def default_prompts() -> list[str]:
    return candidate_prompts(None)


def _is_hub_id(path: str) -> bool:
    return path.count("/") == 1 and not path.startswith((".", "/", "~")) and not Path(path).exists()


def training_captions(dataset: str, split: str = "train", ties: str = "keep") -> set[str]:
    """Normalised captions of the pairs a run trained on: the same files mapo-train reads.

    A local folder gives its ``data/<split>-*.parquet`` shards when it has them (so a held-out
    ``test`` split of the same folder is not mistaken for training data), else every parquet file
    below it; a Hub id gives the split's caption column (only that column is fetched, so every
    caption counts). Locally, only pairs the trainer trains count, by the pair schema's label
    rule: never those with invalid labels, and ties only under ``ties="keep"`` (the run's
    ``data.ties``; keep when unknown, as counting too many prompts as trained is the safe side).
    """
    import pyarrow.parquet as pq

    from mapo_data.schema import CHOSEN_0, CHOSEN_1, LABEL_COLUMNS, TIE, classify_label_columns
    from mapo_train.data import resolve_parquet_files

    try:
        files = resolve_parquet_files(dataset, split)
    except MapoError as err:
        raise TrainingDataUnavailable(str(err)) from None
    if files is None:
        from mapo_data.prompts import load_prompts

        try:
            captions = load_prompts(dataset, column="caption", split=split, what="--dataset")
            return {normalize_prompt(c) for c in captions}
        except MapoError as err:
            raise TrainingDataUnavailable(str(err)) from None
    captions: set[str] = set()
    for file in files:
        try:
            names = pq.read_schema(file).names
            if "caption" not in names:
                raise TrainingDataUnavailable(f"{file} has no caption column: not a pair dataset")
            has_labels = all(c in names for c in LABEL_COLUMNS)
            table = pq.read_table(file, columns=["caption", *(LABEL_COLUMNS if has_labels else ())])
        except MapoError:
            raise
        except Exception as err:  # pyarrow raises several types for a damaged file
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise TrainingDataUnavailable(f"cannot read {file}: {first}") from err
        column = table.column("caption").to_pylist()
        if has_labels:
            outcome = classify_label_columns(table.column(LABEL_COLUMNS[0]), table.column(LABEL_COLUMNS[1]))
            trained = (outcome == CHOSEN_0) | (outcome == CHOSEN_1) | ((outcome == TIE) & (ties == "keep"))
            column = [c for c, t in zip(column, trained, strict=True) if t]
        captions.update(normalize_prompt(c) for c in column if isinstance(c, str))
    return captions


def run_config_file(spec: str) -> Path | None:
    """The training_config.yaml of the mapo-train run a --tuned ``spec`` points into: the run folder
    itself, or a file or folder directly inside it (its LoRA weights file, its ``unet/``)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        folders: tuple[Path, ...] = (path, path.parent)
    elif path.is_file():
        folders = (path.parent,)
    else:
        return None  # a Hub id
    for folder in folders:
        if (folder / TRAINING_CONFIG).is_file():
            return folder / TRAINING_CONFIG
    return None


def dataset_from_run(tuned: list[str]) -> tuple[str, str] | None:
    """(data.path, data.split) that a run folder's training_config.yaml records, if any.

    A local path that does not exist from here (a run trained elsewhere) cannot be checked and is
    skipped; a Hub id is returned, to be read from the Hub or its cache.
    """
    import yaml

    for source in tuned:
        config = run_config_file(source)
        if config is None:
            continue
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except yaml.YAMLError:
            continue
        section = (data.get("data") or {}) if isinstance(data, dict) else {}
        path, split = section.get("path"), section.get("split") or "train"
        if isinstance(path, str) and path and (Path(path).expanduser().exists() or _is_hub_id(path)):
            return path, str(split)
    return None


def ties_from_run(tuned: list[str]) -> str:
    """``drop`` when every tuned source is a run folder whose training_config.yaml drops ties (the
    trainer's default), else ``keep``: tie pairs then count as trained for the held-out check."""
    import yaml

    for source in tuned:
        config = run_config_file(source)
        if config is None:
            return "keep"
        try:
            data = yaml.safe_load(config.read_text()) or {}
        except (OSError, yaml.YAMLError):
            return "keep"
        section = (data.get("data") or {}) if isinstance(data, dict) else {}
        if section.get("ties", "drop") != "drop":
            return "keep"
    return "drop" if tuned else "keep"


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
    prompts_column: str | None = None,
    prompts_split: str | None = None,
    dataset_split: str = "train",
    dataset_ties: str = "keep",
) -> PromptSelection:
    """Read, held-out-filter and cut the prompt list; deterministic for a given seed.

    ``prompts_file`` is any source ``mapo-data`` reads prompts from (a file, a dataset folder, a Hub
    dataset, with ``prompts_split`` for its held-out split); None means the default set.
    ``dataset_ties`` is the run's ``data.ties``: whether tie pairs of ``dataset`` were trained.
    """
    candidates = candidate_prompts(prompts_file, prompts_column, prompts_split)
    if prompts_file is None:
        source = DEFAULT_SOURCE
    else:
        source = prompts_file + (f" (split {prompts_split})" if prompts_split else "")
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
        trained = training_captions(dataset, dataset_split, dataset_ties)
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
    checked = None if dataset is None else f"{dataset} (split {dataset_split})"
    return PromptSelection(
        prompts=chosen,
        source=source,
        held_out_checked_against=checked,
        excluded_as_trained=excluded,
        trained_prompts_kept=kept_trained,
    )
