"""`mapo-data curate`: turn raw generations into a dataset worth training on.

IN is never modified. OUT is a new folder in the same pair format:

- input shard *i* becomes output shard *i* (possibly with fewer rows, possibly none), streamed
  batch by batch into a hidden temporary file and renamed into place when complete, so memory stays
  flat and a half-written shard never looks finished;
- ``.mapo/config.json`` holds the settings; ``.mapo/completions/`` the per-shard markers, and
  ``.mapo/curate/`` what each shard contributed (counts, remembered hashes/captions), so a rerun
  skips finished shards and resumes exactly where it stopped;
- ``curation_report.json`` / ``.md`` and, last of all, ``manifest.json``: a folder without a
  manifest is never complete.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from mapo_data.errors import MapoError
from mapo_data.filters import (
    BlankFilter,
    Candidate,
    CaptionCapFilter,
    DuplicateImageFilter,
    FilterCounts,
    FilterPipeline,
    JudgeFilter,
    NearIdenticalFilter,
    PairFilter,
    SafetyFilter,
    TieFilter,
    ValidRowFilter,
    candidates_of,
)
from mapo_data.reader import PairDataset, ShardRef, open_dataset
from mapo_data.schema import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME
from mapo_data.shards import (
    ROW_GROUP_BYTES,
    STATE_DIR,
    DatasetWriter,
    ShardInfo,
    atomic_write_bytes,
    atomic_write_json,
    read_json,
    shard_entries,
)
from mapo_data.text import plural

REPORT_JSON = "curation_report.json"
REPORT_MD = "curation_report.md"
# Files a previous run of our tools may have left in OUT; --overwrite removes exactly these.
OWNED_FILES = (MANIFEST_NAME, REPORT_JSON, REPORT_MD, "README.md", "preview.png")


@dataclass
class CurateConfig:
    """Settings of one curate run (the CLI maps its options onto these fields)."""

    inputs: list[Path]
    """A dataset folder, or Pick-a-Pic-format parquet files."""
    out: Path
    """The new dataset folder (never the input)."""
    ties: str = "drop"
    """What to do with tied pairs (labels 0.5/0.5): keep or drop. Counted either way."""
    min_std: float | None = 4.0
    """Drop pairs with an image whose grey-level std (0-255) is below this; None: off."""
    max_phash_distance: int | None = 4
    """Drop pairs whose chosen and rejected perceptual hashes differ by at most this; None: off."""
    dedup: str = "pixels"
    """Duplicate images across pairs: pixels (identical pixels), phash (equal perceptual hash), off."""
    max_per_caption: int = 4
    """Keep at most this many pairs per normalised caption; 0: no cap."""
    judge: str | None = None
    """Style judge spec, ``clip:MODEL`` (Hub id, local folder, or tiny); None: no judge."""
    judge_preferred: str | None = None
    """What the preferred side looks like (default: derived from the input's preset)."""
    judge_dispreferred: str | None = None
    """What the dispreferred side looks like (default: derived from the input's preset)."""
    judge_margin: float = 0.0
    """Drop when P(preferred|rejected) - P(preferred|chosen) exceeds this."""
    safety_judge: str | None = None
    """Safety judge spec (``nudenet[:THRESHOLD]``): drop pairs whose chosen image is unsafe."""
    device: str = "cpu"
    """Device for the judges."""
    judge_batch_size: int = 16
    """Images per judge call."""
    batch_size: int = 64
    """Pairs read per step (memory is bounded by this, not by the dataset)."""
    row_group_bytes: int = ROW_GROUP_BYTES
    """Uncompressed bytes per output row group at most (one larger pair gets a group of its own)."""
    overwrite: bool = False
    """Start over in an OUT made with other settings (removes only files our tools write)."""
    progress: bool = True
    command: str | None = None
    """The command line recorded in the provenance (default: this process's argv)."""

    def __post_init__(self):
        self.inputs = [Path(p) for p in self.inputs]
        self.out = Path(self.out)
        if self.ties not in ("keep", "drop"):
            raise MapoError(f"--ties must be keep or drop, not {self.ties!r}")
        if self.dedup not in ("pixels", "phash", "off"):
            raise MapoError(f"--dedup must be pixels, phash or off, not {self.dedup!r}")
        if self.min_std is not None and self.min_std < 0:
            raise MapoError("--min-std must be >= 0")
        if self.max_phash_distance is not None and self.max_phash_distance < 0:
            raise MapoError("--max-phash-distance must be >= 0")
        if self.max_per_caption < 0:
            raise MapoError("--max-per-caption must be >= 0 (0 turns the cap off)")
        if not -1.0 <= self.judge_margin <= 1.0:
            raise MapoError("--judge-margin is a difference of probabilities, between -1 and 1")
        if self.judge is None and (self.judge_preferred or self.judge_dispreferred):
            raise MapoError("--judge-preferred/--judge-dispreferred need --judge clip:MODEL")
        if bool(self.judge_preferred) != bool(self.judge_dispreferred):
            raise MapoError("give both --judge-preferred and --judge-dispreferred, or neither")
        if self.batch_size < 1 or self.judge_batch_size < 1:
            raise MapoError("batch sizes must be at least 1")
        if self.row_group_bytes < 1:
            raise MapoError("row_group_bytes must be at least 1")


@dataclass
class CurateResult:
    out: Path
    report: dict[str, Any]
    skipped_shards: int = 0
    shards: list[ShardInfo] = field(default_factory=list)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_device(device: str) -> None:
    """A judge device that torch cannot use is the user's typo or a CPU-only install: say so in one line."""
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as err:
        raise MapoError(f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)") from err
    if kind == "cuda" and not torch.cuda.is_available():
        raise MapoError(f"--device {device}: CUDA is not available here; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise MapoError(f"--device {device}: MPS is not available here; use --device cpu")


def build_filters(config: CurateConfig, ds: PairDataset) -> list[PairFilter]:
    """The filter chain, in pipeline order (cheap before expensive, memory-keeping last)."""
    if config.judge or config.safety_judge:
        check_device(config.device)
    # verify's row rule first: nothing verify would reject reaches OUT.
    filters: list[PairFilter] = [ValidRowFilter(ds.preset), TieFilter(config.ties)]
    if config.min_std is not None:
        filters.append(BlankFilter(config.min_std))
    if config.max_phash_distance is not None:
        filters.append(NearIdenticalFilter(config.max_phash_distance))
    if config.judge:
        filters.append(_judge_filter(config, ds))
    if config.safety_judge:
        filters.append(_safety_filter(config))
    if config.dedup != "off":
        filters.append(DuplicateImageFilter(config.dedup))
    if config.max_per_caption:
        filters.append(CaptionCapFilter(config.max_per_caption))
    return filters


def _judge_filter(config: CurateConfig, ds: PairDataset) -> JudgeFilter:
    from mapo_data.judges import describe_preset_sides, load_judge, parse_judge_spec

    name, _ = parse_judge_spec(config.judge)
    if name != "clip":
        raise MapoError(f"--judge takes a CLIP style judge (clip:MODEL), not {config.judge!r}")
    preferred, dispreferred = config.judge_preferred, config.judge_dispreferred
    if not preferred:
        preset = ds.preset
        if not preset or not preset.get("name") or preset.get("name") == "custom":
            raise MapoError(
                "the input has no built-in preset to describe its two sides; "
                "give --judge-preferred TEXT and --judge-dispreferred TEXT"
            )
        preferred, dispreferred = describe_preset_sides(preset["name"], preset.get("split"))
    judge = load_judge(
        config.judge,
        preferred=preferred,
        dispreferred=dispreferred,
        device=config.device,
        batch_size=config.judge_batch_size,
    )
    return JudgeFilter(judge, config.judge, config.judge_margin)


def _safety_filter(config: CurateConfig) -> SafetyFilter:
    from mapo_data.judges import load_judge, parse_judge_spec

    name, _ = parse_judge_spec(config.safety_judge)
    if name != "nudenet":
        raise MapoError(f"--safety-judge takes nudenet[:THRESHOLD], not {config.safety_judge!r}")
    judge = load_judge(config.safety_judge, device=config.device, batch_size=config.judge_batch_size)
    return SafetyFilter(judge, config.safety_judge)


def _settings(config: CurateConfig, ds: PairDataset, pipeline: FilterPipeline) -> dict[str, Any]:
    """Everything that decides OUT's content; a rerun must match it to resume."""
    return {
        "step": "curate",
        "inputs": [
            {"path": str(s.path), "bytes": s.path.stat().st_size, "rows": ds.shard_rows(s)} for s in ds.shards
        ],
        "filters": pipeline.settings(),
    }


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def differing_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = _flatten(old), _flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, object()) != b.get(k, object()))


def _check_out(config: CurateConfig, ds: PairDataset) -> None:
    out = config.out.resolve()
    if out == ds.root or any(out == s.path or out in s.path.parents for s in ds.shards):
        raise MapoError(f"--out {config.out} would overwrite the input; choose a new folder")
    globbed = ds.manifest is None and len(config.inputs) == 1 and config.inputs[0].is_dir()
    if globbed and ds.root in out.parents:
        # A manifest-less input folder is read by globbing, which would pick up OUT's shards next time.
        raise MapoError(f"--out {config.out} is inside the input folder; choose a folder outside it")
    if out.exists() and not out.is_dir():
        raise MapoError(f"--out {config.out} is a file, not a folder")


def _prepare_out(config: CurateConfig, settings: dict[str, Any]) -> None:
    out = config.out
    state_config = out / STATE_DIR / "config.json"
    if state_config.is_file():
        previous = read_json(state_config)
        if previous.get("step") != "curate":
            raise MapoError(
                f"{out} holds another command's output ({previous.get('step', 'unknown')}); choose a new --out"
            )
        if previous != settings:
            if not config.overwrite:
                keys = differing_keys(previous, settings)
                raise MapoError(
                    f"{out} was curated with other settings (differing: {', '.join(keys)}); "
                    "use --overwrite to start over or choose a new --out"
                )
            _clean_out(out)
    elif out.is_dir() and any(out.iterdir()):
        raise MapoError(f"{out} exists and is not a curate output; choose an empty or new --out")
    # Drop the manifest first: from here until the end, OUT must not look complete.
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    atomic_write_json(state_config, settings)


def _clean_out(out: Path) -> None:
    DatasetWriter(out).clear(extra=OWNED_FILES)


def _sidecar(out: Path, index: int) -> Path:
    return out / STATE_DIR / "curate" / f"{index:05d}.json"


def _completed(writer: DatasetWriter, index: int) -> tuple[ShardInfo, dict[str, Any]] | None:
    info = writer.completed(index)
    side = _sidecar(writer.root, index)
    if info is None or not side.is_file():
        return None
    record = read_json(side)
    if record.get("sha256") != info.sha256:
        return None
    return info, record


def _output_schema(schema: pa.Schema, extra: dict[str, pa.DataType]) -> pa.Schema:
    extra = {k: v for k, v in extra.items() if k not in schema.names}
    if not extra:
        return schema
    # Added columns would contradict pandas/datasets metadata describing the input's columns.
    out = schema.remove_metadata()
    for name, dtype in extra.items():
        out = out.append(pa.field(name, dtype))
    return out


def _kept_batch(batch: pa.RecordBatch, kept: list[Candidate], schema: pa.Schema) -> pa.RecordBatch:
    taken = batch.take(pa.array([c.position for c in kept], type=pa.int64()))
    arrays = []
    for f in schema:
        if f.name in batch.schema.names:
            arrays.append(taken.column(f.name))
        else:
            arrays.append(pa.array([c.scores.get(f.name) for c in kept], type=f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _curate_shard(
    ds: PairDataset,
    shard: ShardRef,
    index: int,
    writer: DatasetWriter,
    pipeline: FilterPipeline,
    config: CurateConfig,
    bar,
) -> tuple[ShardInfo, FilterCounts]:
    pf = ds.parquet_file(shard)
    schema = _output_schema(pf.schema_arrow, pipeline.columns())
    counts = FilterCounts()
    # The writer sizes row groups by the bytes of the rows it is given, not by the input's layout.
    with writer.open_shard(index, schema) as out:
        for batch in ds.iter_batches(shard, batch_size=config.batch_size):
            kept = pipeline.run(candidates_of(batch), counts)
            if kept:
                out.write(_kept_batch(batch, kept, schema))
            bar.update(batch.num_rows)
    info = writer.shard_info(index, counts.kept)
    # The sidecar first, then the marker: a shard counts as complete only when both exist.
    atomic_write_json(
        _sidecar(writer.root, index),
        {"sha256": info.sha256, "counts": counts.to_dict(), "state": pipeline.export_state()},
    )
    writer.mark_complete(info)
    return info, counts


def curate(config: CurateConfig) -> CurateResult:
    """Filter IN into OUT; see the module docstring for the layout and the resume rules."""
    ds = open_dataset(config.inputs if len(config.inputs) != 1 else config.inputs[0])
    _check_out(config, ds)
    # Judges load before anything is written, so a bad model name leaves OUT untouched.
    pipeline = FilterPipeline(build_filters(config, ds))
    settings = _settings(config, ds, pipeline)
    try:
        return _run(config, ds, pipeline, settings)
    except OSError as err:
        # A full disk or an unwritable --out is the user's to fix: one line, not a traceback. OUT
        # has no manifest at this point, so it never looks complete.
        where = f" ({err.filename})" if err.filename else ""
        raise MapoError(f"curate stopped: {err.strerror or err}{where}") from err


def _run(
    config: CurateConfig, ds: PairDataset, pipeline: FilterPipeline, settings: dict[str, Any]
) -> CurateResult:
    from tqdm.auto import tqdm

    _prepare_out(config, settings)

    writer = DatasetWriter(config.out, row_group_bytes=config.row_group_bytes)
    total = FilterCounts()
    infos: list[ShardInfo] = []
    skipped = 0
    input_pairs = ds.num_pairs()
    with tqdm(total=input_pairs, unit="pair", desc="curate", disable=not config.progress) as bar:
        for index, shard in enumerate(ds.shards):
            done = _completed(writer, index)
            if done is not None:
                info, record = done
                pipeline.import_state(record.get("state") or {})
                total.add(record["counts"])
                skipped += 1
                bar.update(record["counts"]["seen"])
            else:
                info, counts = _curate_shard(ds, shard, index, writer, pipeline, config, bar)
                total.add(counts.to_dict())
            infos.append(info)
            bar.set_postfix(kept=total.kept, dropped=total.seen - total.kept)

    report = make_report(config, ds, pipeline, total, infos)
    atomic_write_json(config.out / REPORT_JSON, report)
    atomic_write_bytes(config.out / REPORT_MD, report_markdown(report).encode())
    writer.write_manifest(_manifest(config, ds, report, infos))
    return CurateResult(out=config.out, report=report, skipped_shards=skipped, shards=infos)


def make_report(
    config: CurateConfig,
    ds: PairDataset,
    pipeline: FilterPipeline,
    counts: FilterCounts,
    infos: list[ShardInfo],
) -> dict[str, Any]:
    dropped = {reason: counts.dropped.get(reason, 0) for reason in pipeline.reasons()}
    dropped.update({k: v for k, v in counts.dropped.items() if k not in dropped})
    return {
        "created": _now(),
        "input": {
            # As the user gave them: absolute paths would leak local folder names into a published card.
            "path": " ".join(str(p) for p in config.inputs),
            "pairs": counts.seen,
            "shards": len(ds.shards),
            "has_manifest": ds.has_manifest,
        },
        "output": {"path": str(config.out), "pairs": counts.kept, "shards": len(infos)},
        "kept": counts.kept,
        "dropped_total": counts.seen - counts.kept,
        "dropped": dropped,
        "ties": {"seen": counts.ties, "policy": config.ties},
        "filters": pipeline.settings(),
        "columns_added": list(pipeline.columns()),
    }


def report_markdown(report: dict[str, Any]) -> str:
    seen = report["input"]["pairs"]

    def share(n: int) -> str:
        return f"{100 * n / seen:.1f}%" if seen else "-"

    lines = [
        "# Curation report",
        "",
        f"- input: `{report['input']['path']}` ({plural(seen, 'pair')} in {plural(report['input']['shards'], 'shard')})",
        f"- output: `{report['output']['path']}` ({plural(report['kept'], 'pair')} kept, {share(report['kept'])})",
        f"- ties seen: {report['ties']['seen']} (policy: {report['ties']['policy']})",
        "",
        "| reason | dropped | share of input |",
        "| --- | ---: | ---: |",
    ]
    for reason, n in report["dropped"].items():
        lines.append(f"| {reason} | {n} | {share(n)} |")
    lines.append(f"| **total** | **{report['dropped_total']}** | **{share(report['dropped_total'])}** |")
    lines += ["", "## Filters and thresholds", ""]
    for name, settings in report["filters"].items():
        shown = ", ".join(f"{k}={v}" for k, v in settings.items()) or "on"
        lines.append(f"- `{name}`: {shown}")
    if report.get("columns_added"):
        lines += ["", "Score columns added: " + ", ".join(f"`{c}`" for c in report["columns_added"])]
    return "\n".join(lines) + "\n"


def _manifest(
    config: CurateConfig, ds: PairDataset, report: dict[str, Any], infos: list[ShardInfo]
) -> dict[str, Any]:
    manifest = dict(ds.manifest) if ds.manifest else {"format": FORMAT_NAME, "format_version": FORMAT_VERSION}
    if not ds.manifest:
        manifest["source"] = {"paths": [str(p) for p in config.inputs], "shards": [s.rel for s in ds.shards]}
    now = _now()
    manifest["created"] = now
    manifest["num_pairs"] = sum(i.rows for i in infos)
    manifest["shards"] = shard_entries(infos)
    manifest["curation"] = {
        "input_pairs": report["input"]["pairs"],
        "kept": report["kept"],
        "dropped": report["dropped"],
        "ties": report["ties"],
        "filters": report["filters"],
        "report": REPORT_JSON,
    }
    command = config.command or shlex.join(["mapo-data", *sys.argv[1:]])
    manifest["provenance"] = [
        *list(manifest.get("provenance") or []),
        {
            "step": "curate",
            "created": now,
            "command": command,
            "input": report["input"]["path"],
            "input_pairs": report["input"]["pairs"],
            "kept": report["kept"],
            "settings": report["filters"],
        },
    ]
    return manifest
