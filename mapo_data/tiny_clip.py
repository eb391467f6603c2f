"""A tiny CLIP model (text and vision towers, projections, tokenizer, image processor).

The judges score images with CLIP-style models. Tests and CPU runs need one without the network,
so, like the tiny SDXL in :mod:`mapo_data.tiny`, it is built from code with a fixed seed, written
once in the Hugging Face layout to the mapo cache and then loaded with ``from_pretrained`` like
any Hub checkpoint: the judge code path is the one used for a real CLIP. Its weights are random,
so its scores mean nothing until it is trained (the judge tests train it for a few steps).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mapo_data.tiny import _cache_root, tiny_text_config, tiny_vocab_and_merges, write_folder_once

TINY_CLIP_NAME = "tiny"
# Bump when the architecture or preprocessing changes: the cache folder name includes it.
TINY_CLIP_VERSION = 1
TINY_CLIP_SEED = 0
TINY_CLIP_IMAGE_SIZE = 32


def _tiny_clip_components():
    """Model and processor, built with a fixed seed (imports are local: torch is heavy)."""
    import torch
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    vocab, merges = tiny_vocab_and_merges()
    text_config = tiny_text_config(vocab, num_hidden_layers=2)
    vision_config = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=TINY_CLIP_IMAGE_SIZE,
        patch_size=8,
        hidden_act="gelu",
    )
    config = CLIPConfig(text_config=text_config, vision_config=vision_config, projection_dim=16)
    torch.manual_seed(TINY_CLIP_SEED)
    model = CLIPModel(config).eval()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_CLIP_IMAGE_SIZE},
        crop_size={"height": TINY_CLIP_IMAGE_SIZE, "width": TINY_CLIP_IMAGE_SIZE},
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    return model, processor


def _tiny_clip_fingerprint() -> str:
    vocab, merges = tiny_vocab_and_merges()
    payload = json.dumps(
        [TINY_CLIP_VERSION, TINY_CLIP_SEED, TINY_CLIP_IMAGE_SIZE, len(vocab), merges], sort_keys=True
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def tiny_clip_path() -> Path:
    """The folder of the tiny CLIP in the Hugging Face layout, written on first use."""
    target = _cache_root() / f"tiny-clip-v{TINY_CLIP_VERSION}-{_tiny_clip_fingerprint()}"
    return write_folder_once(target, "config.json", _write_tiny_clip)


def _write_tiny_clip(folder: Path) -> None:
    model, processor = _tiny_clip_components()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def resolve_clip_id(model: str) -> str:
    """Map the name ``tiny`` to the tiny CLIP's folder; pass anything else through."""
    return str(tiny_clip_path()) if model == TINY_CLIP_NAME else model
