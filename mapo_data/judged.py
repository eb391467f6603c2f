"""`mapo-data build judged`: render N candidates per prompt, let a judge rank them, write pairs.

This module holds what differs from a prefix build; everything else (prompt loading and curation,
the render path, shards, resume, accelerate sharding, the position coin) is ``mapo_data.build``'s.
The unit of work is a prompt: shard i holds the pairs of prompts i*shard_size .. (i+1)*shard_size-1,
so a shard's pair count depends on the pairing rule and the margin.

Judge spec. ``--judge`` names one registry judge (``mapo_data.judges``); repeat it for a weighted
sum, with ``--weights w1,w2,...`` (one per judge, default all 1). A candidate's score is
``sum_i w_i * s_i``, where ``s_i`` is judge i's primary score, negated for judges where lower is
better (nudenet), so the combined score is always "higher is better". The spec is recorded as
e.g. ``pickscore + 0.5*aesthetic:/models/aesthetic``.

Pairing. The candidates of a prompt are ranked by score (highest first; equal scores keep the
candidate order). ``best-worst`` pairs rank 0 with the last rank (1 pair per prompt),
``adjacent`` pairs each rank with the next (N-1 pairs), ``all`` pairs every two ranks (N(N-1)/2).
A pair is written when ``score_hi > score_lo`` and ``score_hi >= score_lo + min_margin`` (float64,
exactly as written in the ``score_0``/``score_1`` columns); otherwise it is dropped as ``tie`` or
``below_margin`` and counted.

Ranked layout (``--keep-candidates DIR``, read by ``mapo-data import --layout ranked``): DIR holds
``data/train-NNNNN.parquet`` shards (one per build shard, a manifest listing them), one row per
prompt with exactly the columns ``caption`` (string), ``images`` (list<binary>, the N encoded
candidates in seed order), ``scores`` (list<double>, the combined score of each, higher is better)
and ``seeds`` (list<int64>, each candidate's noise seed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mapo_data.errors import MapoError

if TYPE_CHECKING:
    from mapo_data.build import BuildConfig
    from mapo_data.shards import DatasetWriter

PAIRINGS = ("best-worst", "adjacent", "all")
#: Per-shard record of every candidate (seeds, scores, pairs kept and dropped), beside the markers.
SIDE_DIR = "judged"
#: The candidates of every prompt, one JSON line per prompt, written next to the manifest.
CANDIDATES_NAME = "candidates.jsonl"
RANKED_MANIFEST = {"format": "mapo-ranked", "layout": "ranked", "format_version": 1}


@dataclass
class JudgedConfig:
    """The judged part of a build (``BuildConfig.judged``); each field maps onto a CLI option."""

    judges: tuple[str, ...]
    """Judge specs (``mapo_data.judges``); more than one makes a weighted sum."""
    weights: tuple[float, ...] | None = None
    """One weight per judge; None = all 1."""
    candidates: int = 4
    """Images rendered per prompt (different seeds), at least 2."""
    pairs: str = "best-worst"
    """best-worst | adjacent | all: which ranked candidates become pairs."""
    min_margin: float = 0.0
    """Smallest score gap (chosen minus rejected) a written pair has."""
    prefix: str | None = None
    """Prefix put in front of every caption (both sides); None = the caption alone."""
    keep_candidates: str | None = None
    """Folder to write every candidate to, in the ranked layout."""
    preferred: str | None = None
    """clip:MODEL judges: description of the preferred look."""
    dispreferred: str | None = None
    """clip:MODEL judges: description of the dispreferred look."""
    judge_batch_size: int = 16
    """Images per judge call."""

    def __post_init__(self) -> None:
        from mapo_data.judges import parse_judge_spec

        self.judges = tuple(self.judges)
        if not self.judges:
            raise MapoError("build judged needs at least one --judge (e.g. --judge pickscore)")
        for spec in self.judges:
            if parse_judge_spec(spec)[0] == "clip" and not (self.preferred and self.dispreferred):
                raise MapoError(
                    f"--judge {spec} compares each image with two descriptions: give --preferred-text "
                    "and --dispreferred-text (or use clipscore:MODEL to score images against their prompt)"
                )
        if self.weights is not None:
            self.weights = tuple(float(w) for w in self.weights)
            if len(self.weights) != len(self.judges):
                raise MapoError(
                    f"--weights has {len(self.weights)} values for {len(self.judges)} --judge; give one per judge"
                )
            if any(not math.isfinite(w) or w == 0 for w in self.weights):
                raise MapoError(
                    f"--weights must be finite and non-zero, got {','.join(map(str, self.weights))}"
                )
        if self.candidates < 2:
            raise MapoError(f"--candidates must be at least 2, got {self.candidates}")
        if self.pairs not in PAIRINGS:
            raise MapoError(f"unknown --pairs {self.pairs!r}; choose best-worst, adjacent or all")
        if not math.isfinite(self.min_margin) or self.min_margin < 0:
            raise MapoError(f"--min-margin must be a finite number >= 0, got {self.min_margin}")
        if self.judge_batch_size < 1:
            raise MapoError("--judge-batch-size must be at least 1")

    def resolved_weights(self) -> tuple[float, ...]:
        return self.weights if self.weights is not None else (1.0,) * len(self.judges)

    def spec(self) -> str:
        """The combined judge as one readable string: ``pickscore + 0.5*aesthetic:DIR``."""
        parts = [
            s if w == 1 else f"{w:g}*{s}" for s, w in zip(self.judges, self.resolved_weights(), strict=True)
        ]
        return " + ".join(parts)

    def pairs_per_prompt(self) -> int:
        n = self.candidates
        return {"best-worst": 1, "adjacent": n - 1, "all": n * (n - 1) // 2}[self.pairs]


def parse_weights(text: str | None) -> tuple[float, ...] | None:
    """``"1,0.5"`` -> (1.0, 0.5); MapoError naming the bad value."""
    if text is None:
        return None
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            raise MapoError(
                f"--weights takes comma-separated numbers (1,0.5), not {part.strip()!r}"
            ) from None
    return tuple(values)


@dataclass(frozen=True)
class PromptSpec:
    """One prompt of a judged build and the seeds of its candidates."""

    prompt_id: int
    caption: str
    prompt: str
    seeds: tuple[int, ...]


def plan_candidates(captions: list[str], prefix: str | None, seed: int, candidates: int) -> list[PromptSpec]:
    """Candidate k of prompt i starts from ``pair_seed(seed, i, f"candidate-{k}")``: any candidate
    can be re-rendered on its own."""
    from mapo_data.build import pair_seed
    from mapo_data.presets import assemble_prompt

    return [
        PromptSpec(
            i,
            caption,
            assemble_prompt(prefix or "", caption),
            tuple(pair_seed(seed, i, f"candidate-{k}") for k in range(candidates)),
        )
        for i, caption in enumerate(captions)
    ]


def rank_pairs(scores: Sequence[float], pairing: str) -> list[tuple[int, int]]:
    """(higher-ranked candidate, lower-ranked candidate) index pairs a pairing rule proposes.

    Ranks by score, highest first; equal scores keep candidate order (a stable sort)."""
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    if pairing == "best-worst":
        return [(order[0], order[-1])]
    if pairing == "adjacent":
        return [(order[r], order[r + 1]) for r in range(len(order) - 1)]
    if pairing == "all":
        return [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]
    raise MapoError(f"unknown pairing {pairing!r}")


def keep_pair(hi: float, lo: float, min_margin: float) -> str | None:
    """None to write the pair, else the drop reason (``tie`` or ``below_margin``)."""
    if not hi > lo:
        return "tie"
    if not hi >= lo + min_margin:
        return "below_margin"
    return None


class CombinedJudge:
    """The weighted sum of registry judges, always higher-is-better (see the module docstring)."""

    def __init__(self, config: JudgedConfig, device: str):
        from mapo_data.judges import load_judge

        self.config = config
        self.judges = [
            load_judge(
                spec,
                preferred=config.preferred,
                dispreferred=config.dispreferred,
                device=device,
                batch_size=config.judge_batch_size,
            )
            for spec in config.judges
        ]

    def score(
        self, images: Sequence[Any], prompts: Sequence[str]
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(combined score per image, each judge's primary score per image keyed by its spec)."""
        total = np.zeros(len(images), dtype=np.float64)
        parts: dict[str, np.ndarray] = {}
        for spec, weight, judge in zip(
            self.config.judges, self.config.resolved_weights(), self.judges, strict=True
        ):
            values = np.asarray(judge.score(images, prompts)[judge.primary_key], dtype=np.float64)
            if not np.all(np.isfinite(values)):
                raise MapoError(f"judge {spec} gave a non-finite score; cannot rank the candidates")
            parts[spec] = values
            total += weight * (values if judge.higher_is_better else -values)
        return total, parts

    def settings(self) -> dict[str, Any]:
        return {
            "judges": [j.settings() for j in self.judges],
            "weights": list(self.config.resolved_weights()),
            "primary_keys": [j.primary_key for j in self.judges],
            "higher_is_better": [j.higher_is_better for j in self.judges],
        }


def judge_identity(config: JudgedConfig) -> list[Any]:
    """What each judge is, by content, without loading it: a local (or tiny) CLIP folder's digest,
    a Hub model's commit, the nudenet package version. Part of the build identity, so a resume
    with other judge weights under the same name is refused."""
    from importlib.metadata import PackageNotFoundError, version

    from mapo_data.identity import folder_digest, hub_commit
    from mapo_data.judges import AESTHETIC_CLIP, AESTHETIC_HEAD_REPO, JUDGES, parse_judge_spec
    from mapo_data.tiny_clip import resolve_clip_id

    found: list[Any] = []
    for spec in config.judges:
        name, arg = parse_judge_spec(spec)
        if name == "nudenet":
            try:
                found.append({"nudenet": version("nudenet")})
            except PackageNotFoundError:
                found.append({"nudenet": None})
            continue
        model = arg or getattr(JUDGES[name], "default_model", None)
        if name == "aesthetic" and arg is None:
            found.append(
                {
                    "clip": hub_commit(AESTHETIC_CLIP, None, "config.json"),
                    "head": hub_commit(AESTHETIC_HEAD_REPO, None, "aesthetic-model.pth"),
                }
            )
            continue
        path = Path(resolve_clip_id(model)).expanduser()
        if path.is_dir():
            found.append({"content": folder_digest(path)})
        else:
            found.append({"hub": model, "commit": hub_commit(model, None, "config.json")})
    return found


def prompt_rows(
    spec: PromptSpec, images: list, scores: np.ndarray, parts: dict[str, np.ndarray], config: BuildConfig
) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any]]:
    """Pair rows, ranked row and side record of one prompt (runs on the encode thread)."""
    from mapo_data.build import chosen_column, encode_image

    judged = config.judged
    assert judged is not None
    encoded = [encode_image(image, config.image_format, config.quality) for image in images]
    values = [float(s) for s in scores]
    rows, kept, dropped, gaps = [], [], {}, []
    for j, (hi, lo) in enumerate(rank_pairs(values, judged.pairs)):
        gaps.append(values[hi] - values[lo])
        reason = keep_pair(values[hi], values[lo], judged.min_margin)
        if reason is not None:
            dropped[reason] = dropped.get(reason, 0) + 1
            continue
        kept.append([hi, lo])
        pair_id = spec.prompt_id * judged.pairs_per_prompt() + j
        sides = ((hi, 1), (lo, 0))
        if chosen_column(config.seed, pair_id, config.chosen_position) == 1:
            sides = sides[::-1]
        row: dict[str, Any] = {"caption": spec.caption, "pair_id": pair_id}
        for col, (k, label) in enumerate(sides):
            row.update(
                {
                    f"jpg_{col}": encoded[k],
                    f"label_{col}": label,
                    f"prompt_{col}": spec.prompt,
                    f"seed_{col}": spec.seeds[k],
                    f"score_{col}": values[k],
                    f"candidate_{col}": k,
                }
            )
        row["prompt_id"] = spec.prompt_id
        rows.append(row)
    ranked = {"caption": spec.caption, "images": encoded, "scores": values, "seeds": list(spec.seeds)}
    record = {
        "prompt_id": spec.prompt_id,
        "caption": spec.caption,
        "prompt": spec.prompt,
        "seeds": list(spec.seeds),
        "scores": values,
        "judge_scores": {k: [float(x) for x in v] for k, v in parts.items()},
        "pairs": kept,
        "gaps": gaps,
        "dropped": dropped,
    }
    return rows, ranked, record


def side_path(out: Path, index: int) -> Path:
    from mapo_data.shards import STATE_DIR

    return out / STATE_DIR / SIDE_DIR / f"{index:05d}.json"


def write_judged_shard(
    writer: DatasetWriter, ranked_writer: DatasetWriter | None, index: int, jobs: list
) -> None:
    """Side record, then ranked shard, then the pair shard and its marker: a complete marker
    implies the other two exist (a rerun redoes all three otherwise)."""
    import pyarrow as pa

    from mapo_data.schema import JUDGED_SCHEMA, RANKED_SCHEMA
    from mapo_data.shards import atomic_write_json

    rows, ranked, records = [], [], []
    for job in jobs:
        r, k, rec = job.result()
        rows += r
        ranked.append(k)
        records.append(rec)
    atomic_write_json(side_path(writer.root, index), records)
    if ranked_writer is not None:
        ranked_writer.write_shard(index, pa.Table.from_pylist(ranked, schema=RANKED_SCHEMA))
    writer.write_shard(index, pa.Table.from_pylist(rows, schema=JUDGED_SCHEMA))


def render_judged_shard(pipe, pool, judge: CombinedJudge, specs: list[PromptSpec], config: BuildConfig, bars):
    """Render and judge one shard's candidates, ``batch_size`` images per pipeline call; a
    prompt's rows are queued for encoding as soon as its last candidate is scored, so at most one
    call's images plus one prompt's candidates are held. Returns the per-prompt encode jobs."""
    from mapo_data.render import render_images

    flat = [(spec, k) for spec in specs for k in range(len(spec.seeds))]
    images: dict[int, list] = {}
    scores: dict[int, list[float]] = {}
    parts: dict[int, dict[str, list[float]]] = {}
    jobs = []
    render_bar, judge_bar = bars
    for start in range(0, len(flat), config.batch_size):
        chunk = flat[start : start + config.batch_size]
        prompts = [spec.prompt for spec, _ in chunk]
        rendered = render_images(pipe, prompts, [spec.seeds[k] for spec, k in chunk], config.render)
        render_bar.update(len(chunk))
        total, per_judge = judge.score(rendered, prompts)
        judge_bar.update(len(chunk))
        for n, ((spec, _k), image) in enumerate(zip(chunk, rendered, strict=True)):
            images.setdefault(spec.prompt_id, []).append(image)
            scores.setdefault(spec.prompt_id, []).append(float(total[n]))
            for key, values in per_judge.items():
                parts.setdefault(spec.prompt_id, {}).setdefault(key, []).append(float(values[n]))
            if len(images[spec.prompt_id]) == len(spec.seeds):
                pid = spec.prompt_id
                jobs.append(
                    pool.submit(
                        prompt_rows,
                        spec,
                        images.pop(pid),
                        np.asarray(scores.pop(pid)),
                        {k: np.asarray(v) for k, v in parts.pop(pid, {}).items()},
                        config,
                    )
                )
    return jobs


def collect(out: Path, num_shards: int) -> list[dict[str, Any]]:
    """Every prompt's side record, in prompt order (main process, once all shards are complete)."""
    from mapo_data.shards import read_json

    return [record for i in range(num_shards) for record in read_json(side_path(out, i))]


def provenance(config: BuildConfig, records: list[dict[str, Any]], source: str) -> dict[str, Any]:
    """The judged fields of the manifest's build step (shared shape with ``mapo-data import``).

    ``score_gaps`` holds the gap of every pair the rule proposed (written or dropped), so a
    histogram shows where the margin cut; every candidate's seed and score (and each judge's part)
    is in the side file ``candidates_detail`` names, one JSON line per prompt, kept out of the
    manifest so a million-prompt build's manifest stays small."""
    judged = config.judged
    assert judged is not None
    dropped: dict[str, int] = {}
    for rec in records:
        for reason, n in rec["dropped"].items():
            dropped[reason] = dropped.get(reason, 0) + n
    dropped.setdefault("below_margin", 0)
    return {
        "method": "judged",
        "source": source,
        "judge": {
            "spec": judged.spec(),
            "settings": {
                "judges": list(judged.judges),
                "weights": list(judged.resolved_weights()),
                "preferred": judged.preferred,
                "dispreferred": judged.dispreferred,
                "batch_size": judged.judge_batch_size,
                "scores_against": "the full prompt (prefix + caption)",
            },
            "version": judge_identity(judged),
        },
        "pairing": judged.pairs,
        "min_margin": judged.min_margin,
        "candidates": judged.candidates,
        "counts": {
            "prompts": len(records),
            "pairs_written": sum(len(rec["pairs"]) for rec in records),
            "dropped": dropped,
        },
        "score_gaps": [g for rec in records for g in rec["gaps"]],
        "candidates_detail": CANDIDATES_NAME,
    }


def written_gaps(records: list[dict[str, Any]]) -> list[float]:
    return [rec["scores"][hi] - rec["scores"][lo] for rec in records for hi, lo in rec["pairs"]]


def summary_line(records: list[dict[str, Any]]) -> str:
    """Pairs written, pairs below the margin, and the written margins' min/median/max."""
    gaps = written_gaps(records)
    below = sum(rec["dropped"].get("below_margin", 0) for rec in records)
    ties = sum(rec["dropped"].get("tie", 0) for rec in records)
    line = f"judged {len(records)} prompts: {len(gaps)} pairs written, {below} below the margin"
    if ties:
        line += f", {ties} ties"
    if gaps:
        line += f"; score gap min {min(gaps):.4g}, median {float(np.median(gaps)):.4g}, max {max(gaps):.4g}"
    return line


def write_candidates_file(out: Path, records: list[dict[str, Any]]) -> None:
    from mapo_data.shards import atomic_write_bytes

    text = "".join(json.dumps(rec, sort_keys=True) + "\n" for rec in records)
    atomic_write_bytes(out / CANDIDATES_NAME, text.encode())


def prepare_ranked_folder(config: BuildConfig, is_main: bool) -> DatasetWriter:
    """The writer of ``--keep-candidates DIR``: refuses DIR = the pair folder or a file, clears it
    with --overwrite and removes a killed run's temporaries (main process)."""

    from mapo_data.shards import DatasetWriter

    assert config.judged is not None and config.judged.keep_candidates
    folder = Path(config.judged.keep_candidates)
    if folder.exists() and not folder.is_dir():
        raise MapoError(f"--keep-candidates {folder} exists and is not a folder")
    if folder.resolve() == Path(config.out).resolve():
        raise MapoError("--keep-candidates must be another folder than --out")
    writer = DatasetWriter(folder)
    if is_main:
        if config.overwrite and folder.is_dir():
            writer.clear()
        writer.remove_stale_temporaries()
    return writer


def finish_ranked(ranked_writer: DatasetWriter, num_shards: int, config: BuildConfig) -> None:
    """Move the ranked shards into DIR/data and write DIR's manifest (main process)."""
    from mapo_data.build import _wait_for_shards
    from mapo_data.shards import shard_entries

    infos = _wait_for_shards(ranked_writer, num_shards)
    ranked_writer.write_manifest(
        {
            **RANKED_MANIFEST,
            "num_rows": sum(i.rows for i in infos),
            "shards": shard_entries(infos),
            "columns": {
                "caption": "string",
                "images": "list<binary>",
                "scores": "list<double>",
                "seeds": "list<int64>",
            },
            "scores": "combined judge score, higher is better",
            "judge": config.judged.spec() if config.judged else None,
            "pairs_dataset": str(Path(config.out)),
        }
    )
