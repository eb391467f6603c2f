import json
import os

import torch

from mapo_data import tiny
from mapo_data.tiny import TINY_RESOLUTION, resolve_model_id, tiny_vocab_and_merges


def test_tiny_model_is_a_diffusers_sdxl_folder(tiny_model_path):
    index = json.loads((tiny_model_path / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    for part in ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (tiny_model_path / part).is_dir(), part
    assert resolve_model_id("tiny") == str(tiny_model_path)
    assert resolve_model_id("some/hub-id") == "some/hub-id"


def test_tiny_model_has_sdxl_conditioning_and_renders_native_size(tiny_model_path):
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_path)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == (
        pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )
    assert pipe.vae_scale_factor == 8
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a red fox", num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (TINY_RESOLUTION, TINY_RESOLUTION)


def test_tiny_model_is_built_deterministically(tmp_path, monkeypatch, tiny_model_path):
    from safetensors.torch import load_file

    monkeypatch.setenv("MAPO_CACHE", str(tmp_path))
    mask = os.umask(0o022)
    try:
        rebuilt = tiny.tiny_model_path()
    finally:
        os.umask(mask)
    assert rebuilt != tiny_model_path and rebuilt.parent == tmp_path
    # A cache others can read: not mkdtemp's 0700 folder nor safetensors' 0600 files.
    modes = {
        p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in [rebuilt, *rebuilt.rglob("*")]
    }
    assert modes[f"{rebuilt.name}/unet/diffusion_pytorch_model.safetensors"] == 0o644
    wrong = {k: oct(m) for k, m in modes.items() if m != (0o755 if (tmp_path / k).is_dir() else 0o644)}
    assert wrong == {}
    first = load_file(next((tiny_model_path / "unet").glob("*.safetensors")))
    second = load_file(next((rebuilt / "unet").glob("*.safetensors")))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_tiny_tokenizer_knows_common_words_whole(tiny_model_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_path, subfolder="tokenizer")
    ids = tokenizer("a red fox in the forest").input_ids
    assert len(ids) == 2 + 6  # BOS, six whole words, EOS
    vocab, merges = tiny_vocab_and_merges()
    assert tokenizer.vocab_size == len(vocab) and len(merges) > 100
