"""`mapo-data card`: render DIR/README.md, the Hub dataset card, from a template in ``data_cards/``.

The card is filled from the manifest (how the data was made), the curation report and the stats.
Rendering is split in two pure steps so it can be snapshot-tested: :func:`card_context` turns
those dicts into the template's variables (including the YAML metadata the Hub reads), and
:func:`render_card_text` renders a template with them.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mapo_data.errors import MapoError
from mapo_data.schema import MANIFEST_NAME, PROMPT_COLUMNS, SEED_COLUMNS
from mapo_data.text import human_bytes, plural
from mapo_data.tiny import TINY_MODEL_NAME

TEMPLATES = ("pick-style", "pick-safety", "custom", "judged", "import")
PREVIEW_NAME = "preview.png"
#: Histogram of score gaps next to the card (judged builds, imports with scores).
GAPS_NAME = "score_gaps.png"
PAIRING_RULES = {
    "best-worst": "the highest- and the lowest-scored image of each prompt (one pair per prompt)",
    "adjacent": "each image with the next one down the ranking (N-1 pairs per prompt)",
    "all": "every two images of a prompt (N(N-1)/2 pairs per prompt)",
}
REPORT_NAME = "curation_report.json"
CARD_NAME = "README.md"
BASE_TAGS = ["preference", "dpo", "mapo", "synthetic"]
TRAIN_RECIPES = {
    ("pick-style", "pixel"): "recipes/train/pick-style-pixel.yaml",
    ("pick-style", "cartoon"): "recipes/train/pick-style-cartoon.yaml",
    ("pick-safety", None): "recipes/train/pick-safety.yaml",
}
DEFAULT_RECIPE = "recipes/train/pick-style-pixel.yaml"

COLUMN_MEANINGS = {
    "caption": "the context prompt, without any prefix",
    "jpg_0": "first image, encoded bytes (JPEG/PNG/WebP; open with PIL)",
    "jpg_1": "second image, encoded bytes",
    "label_0": "1 if `jpg_0` is the chosen (preferred) image, else 0; 0.5/0.5 is a tie",
    "label_1": "1 if `jpg_1` is the chosen image, else 0",
    "pair_id": "index of the pair in the build; with the global seed it re-renders the pair",
    "prompt_0": "the full prompt `jpg_0` was rendered from (prefix + caption)",
    "prompt_1": "the full prompt `jpg_1` was rendered from",
    "seed_0": "initial-noise seed of `jpg_0`",
    "seed_1": "initial-noise seed of `jpg_1`",
    "judge_chosen_pref_prob": "CLIP judge: P(preferred description | chosen image), from `mapo-data curate --judge`",
    "judge_rejected_pref_prob": "CLIP judge: P(preferred description | rejected image)",
    "safety_chosen_unsafe": "safety judge: 1 if the chosen image was flagged unsafe",
    "safety_chosen_score": "safety judge: highest exposed-content score of the chosen image",
    "score_0": "judge score of `jpg_0` (higher is better; see How it was made)",
    "score_1": "judge score of `jpg_1`",
    "candidate_0": "which of the prompt's candidates `jpg_0` is (index into its seeds in `candidates.jsonl`)",
    "candidate_1": "which of the prompt's candidates `jpg_1` is",
    "prompt_id": "index of the prompt in the build (several pairs can share one)",
}


def templates_dir() -> Path:
    """Where the card templates are: $MAPO_DATA_CARDS, the checkout's data_cards/, or the install's."""
    candidates = []
    if os.environ.get("MAPO_DATA_CARDS"):
        candidates.append(Path(os.environ["MAPO_DATA_CARDS"]))
    candidates += [
        Path(__file__).resolve().parents[1] / "data_cards",  # a checkout / editable install
        Path(__file__).resolve().parent / "data_cards",  # shipped inside the package
        Path(sys.prefix) / "share" / "mapo" / "data_cards",  # shipped as data-files
    ]
    for path in candidates:
        if (path / "custom.md.j2").is_file():
            return path
    raise MapoError(
        "cannot find the dataset card templates (data_cards/); set MAPO_DATA_CARDS to their folder"
    )


def size_category(n: int) -> str:
    """The Hub's size_categories bucket for n rows."""
    bounds = [
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
        (10_000_000, "1M<n<10M"),
        (100_000_000, "10M<n<100M"),
        (1_000_000_000, "100M<n<1B"),
    ]
    for bound, label in bounds:
        if n < bound:
            return label
    return "n>1T" if n >= 10**12 else "1B<n<10B"


def origin_step(manifest: dict[str, Any]) -> dict[str, Any] | None:
    """How the pairs were made when a judge or an import made them: the provenance entry with a
    ``method`` (``judged`` or ``import``). ``provenance`` is a list of steps (build, curate, ...);
    a bare dict with a ``method`` is accepted too. None for prefix builds and other data."""
    provenance = manifest.get("provenance")
    if isinstance(provenance, dict):
        return provenance if provenance.get("method") else None
    for step in provenance or []:
        if isinstance(step, dict) and step.get("method") in ("judged", "import"):
            return step
    return None


def template_for(manifest: dict[str, Any]) -> str:
    origin = origin_step(manifest)
    if origin is not None:
        return "judged" if origin["method"] == "judged" else "import"
    name = (manifest.get("preset") or {}).get("name")
    return name if name in TEMPLATES else "custom"


def made_with_tiny(manifest: dict[str, Any]) -> bool:
    """Whether the images come from mapo's built-in tiny model (ours, built from code: Apache-2.0)
    rather than an SDXL checkpoint (CreativeML Open RAIL++-M)."""
    model = manifest.get("model") or {}
    config = manifest.get("config") or {}
    name = model.get("id") or config.get("render.model") or config.get("model")
    return name == TINY_MODEL_NAME


def card_metadata(
    manifest: dict[str, Any], stats: dict[str, Any], template: str, pretty_name: str
) -> dict[str, Any]:
    """The YAML front matter the Hub reads (license, tasks, tags, sizes, configs, features)."""
    tags = list(BASE_TAGS)
    preset = manifest.get("preset") or {}
    if preset.get("name"):
        tags.append(preset["name"])
    if template == "pick-safety":
        tags.append("not-for-all-audiences")
    meta: dict[str, Any] = {
        "pretty_name": pretty_name,
        # Our builds are SDXL outputs (openrail++), or outputs of the tiny model, which is mapo's
        # own (Apache-2.0, like mapo); data curated from elsewhere keeps its source's license,
        # which we cannot know: "other", and the card asks the publisher to set it.
        "license": ("apache-2.0" if made_with_tiny(manifest) else "openrail++") if preset else "other",
        "language": ["en"],
        "task_categories": ["text-to-image"],
        "tags": tags,
        "size_categories": [size_category(stats["pairs"])],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}
        ],
        "dataset_info": {
            "features": stats["columns"],
            "splits": [
                {"name": "train", "num_bytes": stats["uncompressed_bytes"], "num_examples": stats["pairs"]}
            ],
            "download_size": stats["bytes"],
            "dataset_size": stats["uncompressed_bytes"],
        },
    }
    if template == "pick-safety":
        # Shown on the Hub's access-request form when the repo is gated.
        meta["extra_gated_prompt"] = (
            "This dataset contains sexual imagery generated on purpose as the rejected side of each pair. "
            "Confirm that you are an adult and will use it only for safety research or training."
        )
    return meta


def card_context(
    manifest: dict[str, Any],
    stats: dict[str, Any],
    report: dict[str, Any] | None = None,
    *,
    repo_id: str | None = None,
    has_preview: bool = False,
    template: str | None = None,
    pretty_name: str | None = None,
    has_histogram: bool = False,
) -> dict[str, Any]:
    """Everything a template uses, from plain dicts (no file access: deterministic)."""
    template = template or template_for(manifest)
    if template not in TEMPLATES:
        raise MapoError(f"unknown card template {template!r}; choose one of {', '.join(TEMPLATES)}")
    preset = manifest.get("preset") or {}
    origin = origin_step(manifest)
    fallback_label = "imported" if origin and origin.get("method") == "import" else "custom data"
    preset_label = "/".join(str(x) for x in (preset.get("name"), preset.get("split")) if x) or fallback_label
    pretty_name = pretty_name or f"mapo {preset_label} preference pairs"
    # A build records render settings as "render.steps" etc. (build.flat_config); the rows below
    # read the bare names, so without this the card silently lost steps, size, dtype, scheduler.
    config = {k.removeprefix("render."): v for k, v in (manifest.get("config") or {}).items()}
    model = manifest.get("model") or {}
    provenance = manifest.get("provenance") or []
    if isinstance(provenance, dict):
        provenance = [provenance]
    build_step = next((p for p in provenance if p.get("step") == "build"), None)
    curate_steps = [p for p in provenance if p.get("step") == "curate"]
    columns = [c["name"] for c in stats["columns"]]
    key = (preset.get("name"), preset.get("split"))
    meta = card_metadata(manifest, stats, template, pretty_name)
    size = f"{config['width']}x{config['height']}" if config.get("width") and config.get("height") else None
    chosen_prefix = preset.get("chosen_prefix")
    if origin and origin.get("method") == "judged":
        # Both images share one prompt: a judge, not a prefix, picks the chosen one.
        prefix_rows = [
            ("prefix", f"`{chosen_prefix}`" if chosen_prefix else "(none: the context prompt alone)")
        ]
    else:
        prefix_rows = [
            (
                "chosen prefix",
                f"`{chosen_prefix}`"
                if chosen_prefix
                else ("(none: the context prompt alone)" if preset else None),
            ),
            ("rejected prefix", f"`{preset['rejected_prefix']}`" if preset.get("rejected_prefix") else None),
        ]
    settings = [
        ("preset", preset_label if preset else None),
        *prefix_rows,
        ("model", model.get("id") or config.get("model")),
        ("model revision", model.get("revision")),
        ("model hash", model.get("hash")),
        ("VAE", config.get("vae")),
        ("dtype", config.get("dtype")),
        ("scheduler", config.get("scheduler")),
        ("steps", config.get("steps")),
        ("guidance scale", config.get("guidance_scale")),
        ("size", size),
        ("global seed", config.get("seed")),
        ("negative prompt", config.get("negative_prompt")),
        ("image format", config.get("image_format")),
        ("prompt source", _prompt_source((manifest.get("prompts") or {}).get("source"))),
        ("format version", manifest.get("format_version")),
    ]
    return {
        "template": template,
        "metadata_yaml": yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000),
        "pretty_name": pretty_name,
        "repo_id": repo_id or "USER/NAME",
        "num_pairs": stats["pairs"],
        "num_shards": stats["shards"],
        "size_text": human_bytes(stats["bytes"]),
        "made_with_tiny": made_with_tiny(manifest),
        "preset": preset,
        "preset_label": preset_label,
        "chosen_prefix": preset.get("chosen_prefix"),
        "rejected_prefix": preset.get("rejected_prefix"),
        "config": config,
        "model_id": model.get("id") or config.get("model"),
        "model_revision": model.get("revision"),
        "model_hash": model.get("hash"),
        "prompts": manifest.get("prompts") or {},
        "versions": manifest.get("versions") or {},
        "build_command": build_step.get("command") if build_step else None,
        "curate_steps": curate_steps,
        "curation": manifest.get("curation") or (report and _curation_from_report(report)),
        "columns": [
            {"name": c, "meaning": COLUMN_MEANINGS.get(c, "extra column carried from the source")}
            for c in columns
        ],
        "has_prompts": all(c in columns for c in PROMPT_COLUMNS),
        "has_seeds": all(c in columns for c in SEED_COLUMNS),
        "stats": stats,
        "settings_rows": [(k, v) for k, v in settings if v not in (None, "")],
        "recipe": TRAIN_RECIPES.get(key, DEFAULT_RECIPE),
        "has_preview": has_preview,
        "preview_name": PREVIEW_NAME,
        "has_report": report is not None,
        "source": manifest.get("source"),
        "format_version": manifest.get("format_version"),
        "origin": origin_context(origin, has_histogram=has_histogram),
        "gaps_name": GAPS_NAME,
    }


def _describe_version(version: Any) -> str | None:
    """One judge's identity, short: ``hub id@commit``, ``content sha256 ...``, ``nudenet 3.4``."""
    if isinstance(version, list):
        parts = [_describe_version(v) for v in version]
        return "; ".join(p for p in parts if p) or None
    if not isinstance(version, dict):
        return None if version is None else str(version)
    if version.get("hub"):
        commit = version.get("commit")
        return f"`{version['hub']}@{commit[:12]}`" if commit else f"`{version['hub']}`"
    if version.get("content"):
        content = version["content"]
        digest = content if isinstance(content, str) else ",".join(content)
        return f"content sha256 `{digest[:16]}`"
    return ", ".join(f"{k} {_describe_version(v)}" for k, v in version.items() if v is not None) or None


def origin_context(origin: dict[str, Any] | None, *, has_histogram: bool = False) -> dict[str, Any] | None:
    """The template's view of a judged build or an import (``origin_step``): what ranked or gave
    the pairs, the pairing rule, the counts kept and dropped by reason, the score-gap summary."""
    if origin is None:
        return None
    import numpy as np

    counts = origin.get("counts") or {}
    judge = origin.get("judge") or {}
    gaps = [float(g) for g in origin.get("score_gaps") or []]
    pairing = origin.get("pairing")
    rule = PAIRING_RULES.get(pairing, pairing) if pairing else None
    column_map = origin.get("column_map") or {}
    return {
        "method": origin.get("method"),
        "source": _prompt_source(origin.get("source")),
        "layout": origin.get("layout"),
        "column_map": ", ".join(f"`{k}` ← `{v}`" for k, v in column_map.items()) or None,
        "judge_spec": judge.get("spec"),
        "judge_version": _describe_version(judge.get("version")),
        "candidates": origin.get("candidates"),
        "pairing": pairing,
        "pairing_rule": rule,
        "min_margin": origin.get("min_margin"),
        "kept": [(k, v) for k, v in counts.items() if k != "dropped"],
        "dropped": sorted((counts.get("dropped") or {}).items()),
        "gaps": {
            "n": len(gaps),
            "min": f"{min(gaps):.4g}",
            "median": f"{float(np.median(gaps)):.4g}",
            "max": f"{max(gaps):.4g}",
        }
        if gaps
        else None,
        "has_histogram": has_histogram and bool(gaps),
    }


def write_gap_histogram(gaps: list[float], min_margin: float | None, path: Path) -> None:
    """A PNG histogram of score gaps (chosen minus rejected), the margin as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    try:
        ax.hist(gaps, bins=min(50, max(5, len(gaps) // 4)), color="#4c72b0")
        if min_margin:
            ax.axvline(min_margin, color="#c44e52", linestyle="--", label=f"min margin {min_margin:g}")
            ax.legend()
        ax.set_xlabel("score gap (higher minus lower score of a proposed pair)")
        ax.set_ylabel("pairs")
        fig.tight_layout()
        tmp = path.with_name(f".{path.name}.tmp")
        # No timestamp in the PNG: the same gaps give the same file.
        fig.savefig(tmp, format="png", metadata={"Software": None})
        tmp.replace(path)
    finally:
        plt.close(fig)


def _prompt_source(source: Any) -> str | None:
    if source is None or isinstance(source, str):
        return source
    return json.dumps(source, sort_keys=True)


def _curation_from_report(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report.get(k) for k in ("kept", "dropped", "ties", "filters")} | {
        "input_pairs": report.get("input", {}).get("pairs")
    }


def render_card_text(context: dict[str, Any], templates: Path | None = None) -> str:
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates or templates_dir())),
        undefined=jinja2.StrictUndefined,  # a missing variable is a bug in the card, not an empty line
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Markdown, not HTML
    )
    env.filters["plural"] = plural  # {{ n | plural("pair") }}: "1 pair", "2 pairs"
    try:
        text = env.get_template(f"{context['template']}.md.j2").render(**context)
    except jinja2.TemplateNotFound as err:
        raise MapoError(f"card template {err.name} not found in {templates or templates_dir()}") from err
    # Collapse runs of blank lines left by optional sections.
    lines: list[str] = []
    for line in text.splitlines():
        if line.strip() or (lines and lines[-1].strip()):
            lines.append(line.rstrip())
    return "\n".join(lines).rstrip() + "\n"


@dataclass(frozen=True)
class CardResult:
    path: Path
    template: str
    preview: Path | None


def write_card(
    root: str | Path,
    *,
    template: str | None = None,
    repo_id: str | None = None,
    pretty_name: str | None = None,
    make_preview: bool = True,
    preview_n: int = 8,
    preview_seed: int = 0,
) -> CardResult:
    """Render ROOT/README.md (and ROOT/preview.png unless it exists or ``make_preview`` is off)."""
    from mapo_data.reader import open_dataset
    from mapo_data.shards import atomic_write_bytes
    from mapo_data.stats import compute_stats

    root = Path(root)
    if not (root / MANIFEST_NAME).is_file():
        raise MapoError(
            f"{root}: no {MANIFEST_NAME}; a card needs a complete dataset folder (build or curate output)"
        )
    ds = open_dataset(root)
    stats = compute_stats(ds)
    report_path = root / REPORT_NAME
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    preview_path = root / PREVIEW_NAME
    if make_preview and not preview_path.exists() and stats["pairs"]:
        from mapo_data.preview import Layout, contact_sheet, sample_pairs

        sheet = contact_sheet(sample_pairs(ds, preview_n, preview_seed), Layout())
        tmp = preview_path.with_name(f".{PREVIEW_NAME}.tmp")
        sheet.save(tmp, format="PNG")
        tmp.replace(preview_path)
    origin = origin_step(ds.manifest or {})
    histogram_path = root / GAPS_NAME
    if origin is not None and origin.get("score_gaps"):
        write_gap_histogram(
            [float(g) for g in origin["score_gaps"]], origin.get("min_margin"), histogram_path
        )
    context = card_context(
        ds.manifest or {},
        stats,
        report,
        repo_id=repo_id,
        has_preview=preview_path.is_file(),
        template=template,
        pretty_name=pretty_name,
        has_histogram=histogram_path.is_file(),
    )
    text = render_card_text(context)
    out = root / CARD_NAME
    atomic_write_bytes(out, text.encode())
    return CardResult(out, context["template"], preview_path if preview_path.is_file() else None)
