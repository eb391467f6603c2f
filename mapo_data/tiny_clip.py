"""A tiny CLIP model (text and vision towers, projections, tokenizer, image processor).

The judges score images with CLIP-style models. Tests and CPU runs need one without the network,
so, like the tiny SDXL in :mod:`mapo_data.tiny`, its architecture is defined here and its
weights (``mapo_data/resources/tiny-clip``, transformers layout) were trained by
:mod:`mapo_data.tiny_training` on the procedural world of :mod:`mapo_data.world`, image-text
contrastively and on each preset's preferred/dispreferred descriptions. It loads with
``from_pretrained`` like any Hub checkpoint: the judge code path is the one used for a real CLIP,
and ``clip:tiny`` tells the world's styles apart.
"""

from __future__ import annotations

from pathlib import Path

from mapo_data.tiny import shipped_folder, tiny_text_config, tiny_vocab_and_merges

TINY_CLIP_NAME = "tiny"
TINY_CLIP_SEED = 0
TINY_CLIP_IMAGE_SIZE = 32
TINY_CLIP_DIR = Path(__file__).parent / "resources" / "tiny-clip"


def initial_clip_components():
    """Model and processor with their seeded *initial* weights, before training (imports are
    local: torch is heavy); the shipped, trained judge is :func:`tiny_clip_path`."""
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


def tiny_clip_path() -> Path:
    """The folder of the trained tiny CLIP in the Hugging Face layout, shipped with the package."""
    return shipped_folder(TINY_CLIP_DIR, "the built-in tiny CLIP judge")


def resolve_clip_id(model: str) -> str:
    """Map the name ``tiny`` to the tiny CLIP's folder; pass anything else through."""
    return str(tiny_clip_path()) if model == TINY_CLIP_NAME else model
