"""`mapo-data stats`: what is in a dataset, in numbers (for people, and ``--json`` for machines).

Streams the caption, image and label columns once; images are only opened far enough to read
their header (format, size after EXIF orientation, mode) through the pair reader, not decoded
(a PNG carrying EXIF or XMP is read through: its orientation may follow the pixel data). So
"unreadable" counts images whose header fails; `verify` decodes every image.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from mapo_data.filters import normalise_caption
from mapo_data.reader import PairDataset, UndecodableImage, image_info, open_dataset
from mapo_data.schema import (
    CAPTION,
    CHOSEN_0,
    CHOSEN_1,
    IMAGE_COLUMNS,
    INVALID,
    LABEL_COLUMNS,
    TIE,
    classify_label_columns,
)
from mapo_data.text import human_bytes

# Word-count buckets for the caption histogram (upper bounds, inclusive).
WORD_BUCKETS = (5, 10, 20, 40, 77)


def feature_list(schema: pa.Schema) -> list[dict[str, Any]]:
    """The columns as the Hub's ``dataset_info.features`` lists them (name + datasets dtype)."""
    from datasets import Features

    try:
        return Features.from_arrow_schema(schema.remove_metadata())._to_yaml_list()
    except Exception:  # a private helper of datasets: fall back to the plain arrow type names
        return [{"name": f.name, "dtype": str(f.type)} for f in schema]


def _distribution(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"min": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "max": 0}
    return {
        "min": int(values.min()),
        "mean": round(float(values.mean()), 2),
        "p50": float(np.percentile(values, 50)),
        "p90": float(np.percentile(values, 90)),
        "max": int(values.max()),
    }


def _histogram(words: np.ndarray) -> dict[str, int]:
    hist: dict[str, int] = {}
    low = 0
    for high in WORD_BUCKETS:
        hist[f"{low}-{high}"] = int(((words >= low) & (words <= high)).sum())
        low = high + 1
    hist[f">{WORD_BUCKETS[-1]}"] = int((words > WORD_BUCKETS[-1]).sum())
    return hist


def _image_header(data: Any) -> tuple[str, str, str] | None:
    """Format, displayed size (after EXIF orientation, as every reader sees it) and stored mode,
    from the pair reader's header read; None when the image is unreadable."""
    try:
        info = image_info(data)
    except UndecodableImage:  # stats counts unreadable images; `verify` says which rows
        return None
    return info.format, f"{info.width}x{info.height}", info.mode


def _encoded_size(data: Any) -> int:
    if isinstance(data, dict):  # a datasets Image struct
        data = data.get("bytes")
    return len(data) if isinstance(data, bytes | bytearray | memoryview) else 0


def provenance_summary(manifest: dict[str, Any] | None) -> dict[str, Any] | None:
    if not manifest:
        return None
    config = manifest.get("config") or {}
    model = manifest.get("model") or {}
    return {
        "created": manifest.get("created"),
        "preset": manifest.get("preset"),
        "model": model.get("id") or config.get("model"),
        "steps": [
            {k: step.get(k) for k in ("step", "created", "command") if k in step}
            for step in manifest.get("provenance") or []
        ],
        "curation": {k: (manifest.get("curation") or {}).get(k) for k in ("input_pairs", "kept", "dropped")}
        if manifest.get("curation")
        else None,
    }


def compute_stats(ds: PairDataset) -> dict[str, Any]:
    formats: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    unreadable = 0
    image_bytes = 0
    chars: list[int] = []
    words: list[int] = []
    caption_keys: set[bytes] = set()
    chosen_at = [0, 0]
    ties = 0
    invalid_labels = 0
    label_types = set()
    shard_bytes = 0
    uncompressed = 0
    for shard in ds.shards:
        pf = ds.parquet_file(shard)
        shard_bytes += shard.path.stat().st_size
        uncompressed += sum(
            pf.metadata.row_group(i).total_byte_size for i in range(pf.metadata.num_row_groups)
        )
        label_types.add(str(pf.schema_arrow.field("label_0").type))
        columns = [CAPTION, *IMAGE_COLUMNS, *LABEL_COLUMNS]
        for batch in ds.iter_batches(shard, batch_size=256, columns=columns):
            captions = batch.column(CAPTION).to_pylist()
            for caption in captions:
                caption = caption or ""
                chars.append(len(caption))
                words.append(len(caption.split()))
                # 8-byte digests instead of the strings keep memory small on big datasets.
                caption_keys.add(hashlib.blake2b(normalise_caption(caption).encode(), digest_size=8).digest())
            for col in IMAGE_COLUMNS:
                for data in batch.column(col).to_pylist():
                    image_bytes += _encoded_size(data)
                    header = _image_header(data)
                    if header is None:
                        unreadable += 1
                        continue
                    formats[header[0]] += 1
                    sizes[header[1]] += 1
                    modes[header[2]] += 1
            labels = classify_label_columns(batch.column("label_0"), batch.column("label_1"))
            outcomes = np.bincount(labels, minlength=INVALID + 1)
            chosen_at[0] += int(outcomes[CHOSEN_0])
            chosen_at[1] += int(outcomes[CHOSEN_1])
            ties += int(outcomes[TIE])
            invalid_labels += int(outcomes[INVALID])
    pairs = len(chars)
    chars_arr, words_arr = np.asarray(chars), np.asarray(words)
    return {
        "path": str(ds.root),
        "pairs": pairs,
        "shards": len(ds.shards),
        "bytes": shard_bytes,
        "uncompressed_bytes": uncompressed,
        "bytes_per_pair": round(shard_bytes / pairs, 1) if pairs else 0,
        "columns": feature_list(ds.schema()),
        "images": {
            "count": 2 * pairs,
            "formats": dict(formats.most_common()),
            "sizes": dict(sizes.most_common()),
            "modes": dict(modes.most_common()),
            "unreadable": unreadable,
            "mean_bytes": round(image_bytes / (2 * pairs), 1) if pairs else 0,
        },
        "captions": {
            "unique": len(caption_keys),
            "chars": _distribution(chars_arr),
            "words": _distribution(words_arr),
            "words_histogram": _histogram(words_arr),
        },
        "labels": {
            "dtype": sorted(label_types),
            "chosen_in_jpg_0": chosen_at[0],
            "chosen_in_jpg_1": chosen_at[1],
            "ties": ties,
            "invalid": invalid_labels,
        },
        "provenance": provenance_summary(ds.manifest),
    }


def dataset_stats(inputs: str | Path | list[str | Path]) -> dict[str, Any]:
    return compute_stats(open_dataset(inputs))


def format_stats(stats: dict[str, Any]) -> str:
    img, cap, lab = stats["images"], stats["captions"], stats["labels"]

    def counts(d: dict[str, int]) -> str:
        return ", ".join(f"{k} {v}" for k, v in d.items()) or "-"

    lines = [
        f"dataset      {stats['path']}",
        f"pairs        {stats['pairs']}",
        f"shards       {stats['shards']}",
        f"size         {human_bytes(stats['bytes'])} on disk, {human_bytes(stats['bytes_per_pair'])} per pair",
        f"images       formats: {counts(img['formats'])}; sizes: {counts(img['sizes'])}; "
        f"modes: {counts(img['modes'])}; unreadable: {img['unreadable']}",
        f"captions     {cap['unique']} unique; words min {cap['words']['min']}, median {cap['words']['p50']:g}, "
        f"p90 {cap['words']['p90']:g}, max {cap['words']['max']}; chars median {cap['chars']['p50']:g}",
        f"             words histogram: {counts(cap['words_histogram'])}",
        f"labels       chosen in jpg_0: {lab['chosen_in_jpg_0']}, in jpg_1: {lab['chosen_in_jpg_1']}, "
        f"ties: {lab['ties']}, invalid: {lab['invalid']} ({'/'.join(lab['dtype'])})",
    ]
    prov = stats.get("provenance")
    if prov:
        preset = prov.get("preset") or {}
        label = "/".join(str(x) for x in (preset.get("name"), preset.get("split")) if x) or "-"
        lines.append(
            f"provenance   preset {label}; model {prov.get('model') or '-'}; created {prov.get('created')}"
        )
        for step in prov["steps"]:
            lines.append(
                f"             {step.get('step')}: {step.get('created', '')} {step.get('command', '')}".rstrip()
            )
        if prov.get("curation"):
            c = prov["curation"]
            dropped = counts({k: v for k, v in (c.get("dropped") or {}).items() if v})
            lines.append(
                f"             curation kept {c.get('kept')} of {c.get('input_pairs')} (dropped: {dropped})"
            )
    else:
        lines.append("provenance   none (no manifest)")
    return "\n".join(lines)
