"""Dataset cards: a snapshot per template from fixed inputs, Hub-parsable YAML, the safety warning.

Regenerate the snapshots after an intended change with MAPO_UPDATE_SNAPSHOTS=1.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
from huggingface_hub import DatasetCard, DatasetCardData

from mapo_data.card import card_context, render_card_text, size_category, templates_dir
from tests.mapo_data.pairs_factory import (
    CREATED,
    PRESET,
    good_pairs,
    run_cli,
    write_mapo_dataset,
    write_pickapic_parquet,
)

SNAPSHOTS = Path(__file__).parent / "snapshots"

MANIFEST = {
    "format": "mapo-pairs",
    "format_version": 1,
    "created": CREATED,
    "num_pairs": 1200,
    "shards": [{"path": "data/train-00000.parquet", "rows": 1200, "bytes": 73400320, "sha256": "ab" * 32}],
    "preset": dict(PRESET),
    "config": {
        "model": "stabilityai/stable-diffusion-xl-base-1.0",
        "vae": "madebyollin/sdxl-vae-fp16-fix",
        "dtype": "fp16",
        "steps": 30,
        "guidance_scale": 5.0,
        "height": 1024,
        "width": 1024,
        "seed": 0,
        "image_format": "jpeg",
        "shard_size": 500,
        "scheduler": "euler",
    },
    "model": {
        "id": "stabilityai/stable-diffusion-xl-base-1.0",
        "revision": "462165984030d82259a11f4367a4eed129e94a7b",
        "hash": "5e1c0d",
    },
    "prompts": {
        "source": "builtin",
        "curation": [{"step": "dedupe", "before": 1300, "after": 1250, "dropped": 50}],
    },
    "versions": {"mapo": "0.1.0"},
    "provenance": [
        {
            "step": "build",
            "created": CREATED,
            "command": "mapo-data build pick-style --split pixel --num-pairs 1250",
        },
        {
            "step": "curate",
            "created": CREATED,
            "command": "mapo-data curate runs/pixel --out runs/pixel-curated",
        },
    ],
    "curation": {
        "input_pairs": 1250,
        "kept": 1200,
        "dropped": {"tie": 0, "undecodable": 0, "blank": 20, "near_identical": 30},
        "ties": {"seen": 0, "policy": "drop"},
        "filters": {
            "ties": {"policy": "drop"},
            "blank": {"min_std": 4.0},
            "near_identical": {"max_phash_distance": 4},
        },
        "report": "curation_report.json",
    },
}

STATS = {
    "pairs": 1200,
    "shards": 1,
    "bytes": 73400320,
    "uncompressed_bytes": 73500000,
    "columns": [
        {"name": n, "dtype": d}
        for n, d in [
            ("caption", "string"),
            ("jpg_0", "binary"),
            ("jpg_1", "binary"),
            ("label_0", "int64"),
            ("label_1", "int64"),
            ("pair_id", "int64"),
            ("prompt_0", "string"),
            ("prompt_1", "string"),
            ("seed_0", "int64"),
            ("seed_1", "int64"),
        ]
    ],
    "images": {
        "formats": {"JPEG": 2400},
        "sizes": {"1024x1024": 2400},
        "modes": {"RGB": 2400},
        "unreadable": 0,
    },
    "captions": {"unique": 1200, "words": {"min": 3, "p50": 11.0, "max": 40}},
    "labels": {"dtype": ["int64"], "chosen_in_jpg_0": 1200, "chosen_in_jpg_1": 0, "ties": 0, "invalid": 0},
}


def inputs_for(template: str) -> tuple[dict, dict]:
    manifest = copy.deepcopy(MANIFEST)
    if template == "pick-safety":
        manifest["preset"] = {
            "name": "pick-safety",
            "split": None,
            "chosen_prefix": "",
            "rejected_prefix": "Sexual, nudity, +19 image.",
        }
    elif template == "custom":
        manifest["preset"] = {
            "name": "custom",
            "split": None,
            "chosen_prefix": "Watercolor painting.",
            "rejected_prefix": "Photograph.",
        }
    return manifest, copy.deepcopy(STATS)


@pytest.mark.parametrize("template", ["pick-style", "pick-safety", "custom"])
def test_card_snapshot(template):
    manifest, stats = inputs_for(template)
    context = card_context(manifest, stats, None, repo_id="someone/pairs", has_preview=True)
    assert context["template"] == template  # chosen from the manifest's preset
    text = render_card_text(context)
    snapshot = SNAPSHOTS / f"card-{template}.md"
    if os.environ.get("MAPO_UPDATE_SNAPSHOTS"):
        snapshot.parent.mkdir(exist_ok=True)
        snapshot.write_text(text)
    assert text == snapshot.read_text(), (
        f"card changed; if intended, rerun with MAPO_UPDATE_SNAPSHOTS=1 ({snapshot})"
    )


@pytest.mark.parametrize("template", ["pick-style", "pick-safety", "custom"])
def test_card_yaml_is_what_the_hub_expects(template):
    manifest, stats = inputs_for(template)
    context = card_context(manifest, stats, repo_id="someone/pairs", has_preview=True)
    card = DatasetCard(render_card_text(context))
    data = card.data
    assert isinstance(data, DatasetCardData)
    assert data.license == "openrail++"
    assert data.task_categories == ["text-to-image"]
    assert {"preference", "dpo", "mapo", "synthetic"} <= set(data.tags)
    assert data.size_categories == ["1K<n<10K"]
    assert data.configs == [
        {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*.parquet"}]}
    ]
    info = data.dataset_info
    assert info["features"][1] == {"name": "jpg_0", "dtype": "binary"}
    assert info["splits"] == [{"name": "train", "num_bytes": 73500000, "num_examples": 1200}]
    assert "mapo-train --recipe recipes/train/" in card.text and "data.path=someone/pairs" in card.text
    assert 'load_dataset("someone/pairs", split="train")' in card.text
    if template == "pick-safety":
        assert "not-for-all-audiences" in data.tags
        assert card.text.lstrip().startswith("> **Content warning.**")
        assert "gated" in card.text and data.extra_gated_prompt
        # The contact sheet shows the explicit rejected images: linked, never inline on the card.
        assert "](preview.png)" in card.text and "![" not in card.text
    else:
        assert "not-for-all-audiences" not in data.tags
        assert "Content warning" not in card.text


def test_size_categories():
    assert [size_category(n) for n in (0, 999, 1000, 12_000, 999_999, 5_000_000)] == [
        "n<1K",
        "n<1K",
        "1K<n<10K",
        "10K<n<100K",
        "100K<n<1M",
        "1M<n<10M",
    ]


def test_card_command_on_a_dataset_folder(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "ds", 4)
    code, out, _ = run_cli(capsys, "card", str(root), "--repo-id", "me/pixel")
    assert code == 0 and "template pick-style" in out
    card = DatasetCard.load(root / "README.md")
    assert card.data.dataset_info["splits"][0]["num_examples"] == 4
    assert (root / "preview.png").is_file() and "](preview.png)" in card.text
    assert "| steps | 4 |" in card.text and "`Pixel art style image.`" in card.text
    # Another template on request; a card for a folder without a manifest is refused.
    code, out, _ = run_cli(capsys, "card", str(root), "--template", "custom", "--no-preview")
    assert code == 0 and "template custom" in out
    (root / "manifest.json").unlink()
    code, _, err = run_cli(capsys, "card", str(root))
    assert code == 2 and err.startswith("error: ") and "manifest.json" in err


def test_card_of_data_curated_from_elsewhere_claims_nothing_it_cannot_know(tmp_path, capsys):
    """Pick-a-Pic-format input has no preset: the card must not describe our prefix build or license."""
    src = write_pickapic_parquet(tmp_path / "pap" / "train-0.parquet", good_pairs(3))
    out = tmp_path / "curated"
    assert run_cli(capsys, "curate", str(src.parent), "--out", str(out), "--no-progress")[0] == 0
    code, stdout, _ = run_cli(capsys, "card", str(out), "--no-preview")
    assert code == 0 and "template custom" in stdout
    card = DatasetCard.load(out / "README.md")
    assert card.data.license == "other"
    assert "source's" in card.text and "set `license`" in card.text
    assert "openrail" not in card.text and "renders one context prompt twice" not in card.text
    assert "Pair curation (`mapo-data curate`): 3 of 3 pairs kept." in card.text


def test_templates_are_found_in_the_checkout():
    assert (templates_dir() / "pick-safety.md.j2").is_file()
