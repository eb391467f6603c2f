"""One evaluation run: choose prompts, render every model, judge, write grids, scores and report.

Rendering splits the images across accelerate processes (``accelerate launch -m mapo_train eval``)
and writes them to disk; the main process then judges all of them, so every judge is loaded once.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mapo_data.errors import MapoError
from mapo_data.tiny import TINY_MODEL_NAME
from mapo_train.eval.card_link import link_report_in_cards
from mapo_train.eval.config import DEFAULT_NUM_PROMPTS, EvalConfig
from mapo_train.eval.grid import side_by_side_grid, write_grid
from mapo_train.eval.models import TunedSource, resolve_tuned, tuned_pipeline
from mapo_train.eval.prompts import (
    PromptSelection,
    TrainingDataUnavailable,
    dataset_from_run,
    select_prompts,
    ties_from_run,
)
from mapo_train.eval.report import JudgeInfo, summarize, write_report, write_scores

IMAGES_DIR = "images"
GRIDS_DIR = "grids"


@dataclass(frozen=True)
class Sample:
    """One image slot: the same prompt and seed for every model."""

    index: int
    prompt_index: int
    prompt: str
    seed: int


def make_samples(prompts: list[str], images_per_prompt: int, first_seed: int) -> list[Sample]:
    samples = []
    for i, prompt in enumerate(prompts):
        for k in range(images_per_prompt):
            samples.append(Sample(len(samples), i, prompt, first_seed + i * images_per_prompt + k))
    return samples


def image_path(out: Path, label: str, sample: Sample) -> Path:
    return out / IMAGES_DIR / label / f"{sample.index:04d}.png"


@dataclass
class EvalResult:
    out: Path
    report_md: Path
    report_json: Path
    grids: list[Path]
    report: dict[str, Any] = field(repr=False)
    cards: list[Path] = field(default_factory=list)
    """Model cards (README.md of evaluated run folders) whose Evaluation section now links the report."""


def _base_mismatch_warnings(config: EvalConfig, sources: list[TunedSource], labels: list[str]) -> list[str]:
    """A run trained on another base than the one given is usually a mistake: say so in the report."""
    import yaml

    warnings = []
    for label, source in zip(labels, sources, strict=True):
        if source.training_config is None:
            continue
        try:
            data = yaml.safe_load(Path(source.training_config).read_text()) or {}
            trained_on = (data.get("model") or {}).get("pretrained")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if trained_on and trained_on != config.base:
            warnings.append(f"{label} was trained on {trained_on}, but the base here is {config.base}")
    return warnings


def _judge_warnings(infos: list[JudgeInfo], base: str) -> list[str]:
    """The tiny CLIP was trained on the tiny model's procedural world only (mapo_data.world)."""
    if base == TINY_MODEL_NAME:
        return []
    return [
        f"{info.spec} knows only the tiny model's procedural world: on other models' pictures its "
        "scores carry no meaning; use a real CLIP, e.g. clip:openai/clip-vit-large-patch14"
        for info in infos
        if info.settings.get("model") == "tiny"
    ]


def _choose_prompts(config: EvalConfig) -> tuple[PromptSelection, str | None, list[str]]:
    """The prompts, the training data they were checked against, and why a check could not run.

    Training data named with --dataset must be readable (an error otherwise); data only found in a
    run's training_config.yaml (a Hub dataset while offline, say) is checked when it can be, and
    the report says so when it cannot rather than failing the evaluation.
    """
    dataset, split, inferred = config.dataset, config.dataset_split or "train", False
    if dataset is None:
        found = dataset_from_run(config.tuned)
        if found is not None:
            dataset, run_split = found
            split, inferred = config.dataset_split or run_split, True
    kwargs = dict(
        prompts_file=config.prompts,
        prompts_column=config.prompts_column,
        prompts_split=config.prompts_split,
        num_prompts=config.num_prompts,
        include_train_prompts=config.include_train_prompts,
        seed=config.seed,
        default_count=DEFAULT_NUM_PROMPTS,
        dataset_split=split,
        dataset_ties=ties_from_run(config.tuned),
    )
    try:
        return select_prompts(dataset=dataset, **kwargs), dataset, []
    except TrainingDataUnavailable as err:
        if not inferred:
            raise
        warning = f"prompts not checked against the run's training data {dataset}: {err}"
        return select_prompts(dataset=None, **kwargs), None, [warning]


def _render_all(
    config: EvalConfig,
    sources: list[TunedSource],
    samples: list[Sample],
    out: Path,
    device: str,
    state,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Render this process's share of samples for every model; returns the render settings."""
    import torch

    from mapo_data.render import load_pipeline, model_fingerprint, native_size, render_images

    render_cfg = config.render_config(device)
    pipe = load_pipeline(render_cfg, device=device)
    height, width = native_size(pipe)
    height, width = config.height or height, config.width or width
    mine = [s for s in samples if s.index % state.num_processes == state.process_index]
    models = [(config.labels[0], None), *zip(config.labels[1:], sources, strict=True)]
    for label, source in models:
        started = time.perf_counter()
        context = (
            nullcontext(pipe)
            if source is None
            else tuned_pipeline(pipe, source, label=label, base=config.base, lora_scale=config.lora_scale)
        )
        with context as active:
            for start in range(0, len(mine), config.batch_size):
                batch = mine[start : start + config.batch_size]
                images = render_images(active, [s.prompt for s in batch], [s.seed for s in batch], render_cfg)
                for sample, image in zip(batch, images, strict=True):
                    path = image_path(out, label, sample)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    image.save(path, format="PNG")
        if state.is_main_process:
            log(f"rendered {label}: {len(mine)} images in {time.perf_counter() - started:.1f}s")
    info = {
        "base_fingerprint": model_fingerprint(pipe, render_cfg),
        "size": f"{width}x{height}",
        "dtype": render_cfg.dtype,
    }
    del pipe
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return info


def _judge_all(
    judges: list[tuple[str, Any]],
    labels: list[str],
    samples: list[Sample],
    out: Path,
    log: Callable[[str], None],
):
    """Score every model's images with every judge; returns the table, verdicts and judge infos."""
    names = [judge.name for _, judge in judges]
    infos = []
    for spec, judge in judges:
        # Two judges of one kind (two CLIP models) would write the same columns: qualify them.
        unique = names.count(judge.name) == 1
        columns = {key: key if unique else f"{key}@{spec}" for key in judge.keys}
        infos.append(
            JudgeInfo(
                spec=spec,
                name=judge.name,
                keys=tuple(judge.keys),
                primary_key=judge.primary_key,
                higher_is_better=judge.higher_is_better,
                verdict_label=judge.verdict_label,
                settings=judge.settings(),
                columns=columns,
            )
        )
    prompts = [s.prompt for s in samples]
    table: dict[str, dict[str, np.ndarray]] = {}
    verdicts: dict[str, dict[str, np.ndarray | None]] = {}
    for label in labels:
        paths = [image_path(out, label, s) for s in samples]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise MapoError(f"{len(missing)} rendered images of {label} are missing (first: {missing[0]})")
        # The pair reader's decode: judges see rendered images exactly as they would see pair images.
        images = [load_rendered(path) for path in paths]
        table[label], verdicts[label] = {}, {}
        for (spec, judge), info in zip(judges, infos, strict=True):
            started = time.perf_counter()
            scores = judge.score(images, prompts)
            for key in info.keys:
                table[label][info.columns[key]] = np.asarray(scores[key], dtype=np.float64)
            verdicts[label][spec] = judge.verdict(scores)
            log(f"judged {label} with {spec} in {time.perf_counter() - started:.1f}s")
    return table, verdicts, infos


def _score_rows(table, verdicts, infos, labels, samples, out: Path) -> list[dict[str, Any]]:
    rows = []
    for label in labels:
        for s in samples:
            row: dict[str, Any] = {
                "model": label,
                "sample": s.index,
                "prompt_index": s.prompt_index,
                "prompt": s.prompt,
                "seed": s.seed,
                "image": image_path(out, label, s).relative_to(out).as_posix(),
            }
            for info in infos:
                for key in info.keys:
                    row[info.columns[key]] = float(table[label][info.columns[key]][s.index])
                verdict = verdicts[label][info.spec]
                if verdict is not None and info.verdict_label:
                    column = f"{info.name} {info.verdict_label}".replace(" ", "_")
                    row[column if column not in row else f"{column}@{info.spec}"] = bool(verdict[s.index])
            rows.append(row)
    return rows


def load_rendered(path: Path):
    """A rendered image through the pair reader's decode (the RGB every command sees); a damaged
    file is a one-line error naming it."""
    from mapo_data.reader import UndecodableImage, decode_image

    try:
        return decode_image(path.read_bytes())
    except UndecodableImage as err:
        raise MapoError(f"{path}: rendered image does not decode ({err}); rerun to render it again") from err


def _write_grids(config: EvalConfig, samples: list[Sample], out: Path) -> list[dict[str, str]]:
    base = config.labels[0]
    grids = []
    captions = [s.prompt if config.images_per_prompt == 1 else f"{s.prompt} (seed {s.seed})" for s in samples]
    for label in config.labels[1:]:
        left, right = [], []
        for s in samples:
            left.append(load_rendered(image_path(out, base, s)))
            right.append(load_rendered(image_path(out, label, s)))
        grid = side_by_side_grid(
            left,
            right,
            captions,
            left_label=base,
            right_label=label,
            cell=config.grid_cell,
            columns=config.grid_columns,
        )
        path = write_grid(grid, out / GRIDS_DIR / f"{base}_vs_{label}.png")
        grids.append({"left": base, "right": label, "path": path.relative_to(out).as_posix()})
    return grids


def run_eval(
    config: EvalConfig,
    *,
    command: str | None = None,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> EvalResult | None:
    """Run the evaluation; the main process returns the result, other processes None."""
    from accelerate import PartialState
    from transformers.utils import logging as transformers_logging

    from mapo_data.judges import load_judge
    from mapo_data.resolve import resolve_model

    # Per-weight loading bars of every judge would bury the run's own progress lines.
    transformers_logging.disable_progress_bar()
    state = PartialState()
    device = config.device or str(state.device)
    out = Path(config.out)
    # Everything a user can get wrong is checked before the first (slow) image is rendered.
    resolve_model(config.base, "--base")
    sources = [resolve_tuned(t) for t in config.tuned]
    selection, dataset, data_warnings = _choose_prompts(config)
    if state.is_main_process and selection.excluded_as_trained:
        log(f"left out {len(selection.excluded_as_trained)} prompt(s) found in the training data {dataset}")
    judges: list[tuple[str, Any]] = []
    if state.is_main_process:
        preferred = dispreferred = None
        specs = config.resolved_judges()
        if any(spec.split(":", 1)[0].strip().lower() == "clip" for spec in specs):
            preferred, dispreferred = config.sides()
        for spec in specs:
            judges.append(
                (
                    spec,
                    load_judge(
                        spec,
                        preferred=preferred,
                        dispreferred=dispreferred,
                        device=device,
                        batch_size=config.judge_batch_size,
                    ),
                )
            )
    samples = make_samples(selection.prompts, config.images_per_prompt, config.seed)
    render_info = _render_all(config, sources, samples, out, device, state, log)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    table, verdicts, infos = _judge_all(judges, config.labels, samples, out, log)
    rows = _score_rows(table, verdicts, infos, config.labels, samples, out)
    csv_path, json_path = write_scores(rows, out)
    prompt_index = np.array([s.prompt_index for s in samples])
    results = summarize(
        table, verdicts, infos, prompt_index, len(selection.prompts), config.labels, config.confidence
    )
    grids = _write_grids(config, samples, out)
    seeds = [[s.seed for s in samples if s.prompt_index == i] for i in range(len(selection.prompts))]
    report = {
        "format": "mapo-eval",
        "format_version": 1,
        "models": [{"label": config.labels[0], "source": config.base, "kind": "base"}]
        + [
            {
                "label": label,
                "source": src.spec,
                "kind": {"unet": "full UNet", "lora": "LoRA", "hub": "Hub"}[src.kind],
            }
            for label, src in zip(config.labels[1:], sources, strict=True)
        ],
        "judges": [
            {
                "spec": info.spec,
                "primary_key": info.primary_key,
                "higher_is_better": info.higher_is_better,
                "verdict_label": info.verdict_label,
                "columns": info.columns,
                "settings": info.settings,
            }
            for info in infos
        ],
        "settings": {
            "base": config.base,
            "preset": config.preset,
            "split": config.split,
            "steps": config.steps,
            "guidance_scale": config.guidance_scale,
            "scheduler": config.scheduler,
            "negative_prompt": config.negative_prompt,
            "lora_scale": config.lora_scale,
            "seed": config.seed,
            "images_per_prompt": config.images_per_prompt,
            "confidence": config.confidence,
            "device": device,
            "processes": state.num_processes,
            **render_info,
        },
        "prompts": selection.to_dict(),
        "seeds": seeds,
        "results": results,
        "files": {
            "scores_csv": csv_path.relative_to(out).as_posix(),
            "scores_json": json_path.relative_to(out).as_posix(),
            "grids": grids,
        },
        "warnings": data_warnings
        + _base_mismatch_warnings(config, sources, config.labels[1:])
        + _judge_warnings(infos, config.base),
        "command": command,
    }
    md_path, report_json = write_report(report, out)
    # The run's card was written at the end of training; now it can link what eval found.
    cards = link_report_in_cards(report, config.tuned, config.labels[1:], md_path)
    return EvalResult(
        out=out,
        report_md=md_path,
        report_json=report_json,
        grids=[out / g["path"] for g in grids],
        report=report,
        cards=cards,
    )
