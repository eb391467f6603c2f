import json

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


def test_shipped_tiny_model_is_the_tiny_architecture_trained(tiny_model_path):
    """The shipped weights fit the architecture defined in code, part for part and tensor for
    tensor, and are not its seeded initial weights (they were trained on the world)."""
    from safetensors.torch import load_file

    initial = tiny.initial_components()
    for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
        shipped = load_file(next((tiny_model_path / part).glob("*.safetensors")))
        init = initial[part].state_dict()
        assert {k: tuple(v.shape) for k, v in shipped.items()} == {
            k: tuple(v.shape) for k, v in init.items() if k in shipped
        }
        assert set(init) - set(shipped) <= {"text_model.embeddings.position_ids"}
        assert not all(torch.equal(shipped[k], init[k]) for k in shipped), part
    config = json.loads((tiny_model_path / "vae" / "config.json").read_text())
    assert config["scaling_factor"] != 0.13025  # set from the trained latents' spread


def test_tiny_tokenizer_knows_common_words_whole(tiny_model_path):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_path, subfolder="tokenizer")
    ids = tokenizer("a red fox in the forest").input_ids
    assert len(ids) == 2 + 6  # BOS, six whole words, EOS
    vocab, merges = tiny_vocab_and_merges()
    assert tokenizer.vocab_size == len(vocab) and len(merges) > 100
