"""Small constructed pair datasets for the curate/verify/preview/stats/card/push tests.

Images are made in code (noise, gradients, flat colours, black) so every defect a filter or
`verify` must catch can be planted on purpose, and so the datasets are identical on every run.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from PIL import Image

from mapo_data.schema import BUILD_SCHEMA, FORMAT_NAME, FORMAT_VERSION
from mapo_data.shards import DatasetWriter, shard_entries

SIZE = 32
CREATED = "2025-01-01T00:00:00+00:00"


def noise(seed: int, size: int = SIZE) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def gradient(seed: int = 0, size: int = SIZE) -> Image.Image:
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    x, y = np.meshgrid(ramp, ramp)
    rng = np.random.default_rng(seed)
    a, b = rng.uniform(0.2, 1.0, 2)
    rgb = np.stack([x * a, y * b, (x + y) / 2], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def flat(color: tuple[int, int, int] = (128, 128, 128), size: int = SIZE) -> Image.Image:
    return Image.new("RGB", (size, size), color)


def black(size: int = SIZE) -> Image.Image:
    return flat((0, 0, 0), size)


def encode(img: Image.Image, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


@dataclass
class Pair:
    caption: str
    chosen: bytes
    rejected: bytes
    chosen_pos: int = 0  # where the chosen image sits (our build: 0; Pick-a-Pic: either)
    tie: bool = False


def good_pairs(n: int, start: int = 0, caption: str | None = None) -> list[Pair]:
    """Pairs that pass every default filter: distinct noise images, distinct captions."""
    return [
        Pair(
            caption=caption or f"a photo of thing number {start + i}",
            chosen=encode(noise(1000 + 2 * (start + i))),
            rejected=encode(noise(1001 + 2 * (start + i))),
        )
        for i in range(n)
    ]


PRESET = {
    "name": "pick-style",
    "split": "pixel",
    "chosen_prefix": "Pixel art style image.",
    "rejected_prefix": "Realistic 8k image.",
}


def _build_table(pairs: list[Pair], first_id: int, prefixes: tuple[str, str]) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in BUILD_SCHEMA}
    for k, p in enumerate(pairs):
        images = [p.chosen, p.rejected] if p.chosen_pos == 0 else [p.rejected, p.chosen]
        labels = [1, 0] if p.chosen_pos == 0 else [0, 1]
        chosen_prompt = f"{prefixes[0]} {p.caption}".strip()
        rejected_prompt = f"{prefixes[1]} {p.caption}".strip()
        prompts = [chosen_prompt, rejected_prompt] if p.chosen_pos == 0 else [rejected_prompt, chosen_prompt]
        cols["caption"].append(p.caption)
        cols["jpg_0"].append(images[0])
        cols["jpg_1"].append(images[1])
        cols["label_0"].append(labels[0])
        cols["label_1"].append(labels[1])
        cols["pair_id"].append(first_id + k)
        cols["prompt_0"].append(prompts[0])
        cols["prompt_1"].append(prompts[1])
        cols["seed_0"].append(first_id + k)
        cols["seed_1"].append(first_id + k)
    return pa.Table.from_pydict(cols, schema=BUILD_SCHEMA)


def write_mapo_dataset(
    root: Path, pairs: list[Pair] | int = 8, shard_size: int = 4, preset: dict | None = None
) -> Path:
    """A folder as `mapo-data build` writes it: shards through DatasetWriter, manifest last."""
    if isinstance(pairs, int):
        pairs = good_pairs(pairs)
    preset = dict(PRESET if preset is None else preset)
    writer = DatasetWriter(root, row_group_rows=2)  # several row groups per shard, as large data has
    infos = []
    for index, start in enumerate(range(0, len(pairs), shard_size)):
        table = _build_table(
            pairs[start : start + shard_size], start, (preset["chosen_prefix"], preset["rejected_prefix"])
        )
        infos.append(writer.write_shard(index, table))
    manifest = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": CREATED,
        "num_pairs": len(pairs),
        "shards": shard_entries(infos),
        "preset": preset,
        "config": {
            "model": "tiny",
            "vae": None,
            "dtype": "fp32",
            "steps": 4,
            "guidance_scale": 5.0,
            "height": SIZE,
            "width": SIZE,
            "seed": 0,
            "image_format": "jpeg",
            "shard_size": shard_size,
            "prompts": {"source": "builtin"},
        },
        "model": {"id": "tiny", "revision": None, "hash": "0123abcd"},
        "prompts": {
            "source": "builtin",
            "curation": [{"step": "dedupe", "before": len(pairs) + 2, "after": len(pairs), "dropped": 2}],
        },
        "versions": {"mapo": "0.1.0", "diffusers": "0.0.0", "torch": "0.0.0"},
        "provenance": [
            {"step": "build", "created": CREATED, "command": "mapo-data build pick-style --split pixel"}
        ],
    }
    writer.write_manifest(manifest)
    return root


def write_pickapic_parquet(path: Path, pairs: list[Pair]) -> Path:
    """A plain Pick-a-Pic-v2-style parquet written by pandas: float64 labels, ties 0.5/0.5, no manifest."""
    rows = []
    for p in pairs:
        images = [p.chosen, p.rejected] if p.chosen_pos == 0 else [p.rejected, p.chosen]
        labels = [0.5, 0.5] if p.tie else ([1.0, 0.0] if p.chosen_pos == 0 else [0.0, 1.0])
        rows.append(
            {
                "are_different": True,
                "caption": p.caption,
                "jpg_0": images[0],
                "jpg_1": images[1],
                "label_0": labels[0],
                "label_1": labels[1],
                "ranking_id": len(rows),
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path, index=False)
    return path


def write_labels_parquet(path: Path, labels: list[tuple]) -> Path:
    """Pick-a-Pic-style parquet with the given float labels (None: null) and good images."""
    import pyarrow.parquet as pq

    pairs = good_pairs(len(labels))
    table = pa.table(
        {
            "caption": [p.caption for p in pairs],
            "jpg_0": [p.chosen for p in pairs],
            "jpg_1": [p.rejected for p in pairs],
            "label_0": pa.array([lab[0] for lab in labels], pa.float64()),
            "label_1": pa.array([lab[1] for lab in labels], pa.float64()),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path


def rewrite_shard(root: Path, index: int, edit) -> None:
    """Replace shard ``index`` with ``edit(table)`` and update the manifest to match (a consistent
    dataset whose rows carry a planted defect)."""
    import json

    import pyarrow.parquet as pq

    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["shards"][index]
    table = edit(pq.read_table(root / entry["path"]))
    writer = DatasetWriter(root)
    info = writer.write_shard(index, table)
    manifest["shards"][index] = {
        "path": info.path,
        "rows": info.rows,
        "bytes": info.bytes,
        "sha256": info.sha256,
    }
    manifest["num_pairs"] = sum(s["rows"] for s in manifest["shards"])
    writer.write_manifest(manifest)  # moves the rewritten shard out of staging into data/


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `mapo-data` in-process through its real entry point; return (exit code, stdout, stderr)."""
    from mapo_data.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, out: str, err: str, contains: str = "") -> None:
    assert code != 0
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert contains in lines[0], lines[0]
