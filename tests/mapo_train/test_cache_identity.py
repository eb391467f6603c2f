"""What the latents are encoded with: the VAE runs in fp32 unless asked otherwise, and a cache is
identified by the content of the VAE, text encoders and tokenizers it was made with, so changed
weights in the same folder never reuse a stale cache."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mapo_data.identity import RACY_SECONDS
from mapo_train.cache import cache_identity, load_cached_pair_data, locate_cache
from mapo_train.config import FP16_FIX_VAE, ModelConfig, config_from_dict
from mapo_train.data import collate_pairs
from mapo_train.model import vae_dtype

from ..tolerances import CROSS_PATH, torch_kwargs
from .conftest import write_pairs


def _cfg(tmp_path: Path, name: str, *overrides: str, model: str = "tiny", cache: str = "auto"):
    data = {
        "model": {"pretrained": model},
        "data": {
            "path": str(tmp_path / "pairs"),
            "resolution": 32,
            "num_workers": 0,
            "random_flip": False,
            "cache": cache,
        },
        "train": {
            "output_dir": str(tmp_path / name),
            "max_steps": 1,
            "batch_size": 2,
            "mixed_precision": "no",
            "checkpoint_every": 0,
            "report_to": "none",
        },
        "validation": {"enabled": False},
    }
    return config_from_dict(data, list(overrides))


@pytest.fixture
def env(tmp_path, tiny_model_path, monkeypatch):
    """Caches (and the file-digest memo) under tmp_path; a copy of the tiny model to tamper with."""
    write_pairs(tmp_path / "pairs" / "train-00000.parquet", n=4, size=32)
    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    monkeypatch.setenv("MAPO_CACHE", str(tmp_path / "mapo-cache"))
    return tmp_path, model


def rewrite_tensor_in_place(path: Path, name: str) -> None:
    """Negate one float32 tensor of a safetensors file in place, by raw bytes: same inode, same size,
    and the old mtime put back, as a hostile copy tool might leave it."""
    before = path.stat()
    raw = bytearray(path.read_bytes())
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    start, end = (8 + header_len + offset for offset in header[name]["data_offsets"])
    values = np.frombuffer(bytes(raw[start:end]), dtype="<f4")
    raw[start:end] = (-values).astype("<f4").tobytes()
    with open(path, "r+b") as f:
        f.write(raw)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_ino, after.st_mtime_ns) == (
        before.st_size,
        before.st_ino,
        before.st_mtime_ns,
    )


def swap_vocab_ids(path: Path, a: str, b: str) -> None:
    """Swap two tokens' ids in a tokenizer.json (ids of equal length: the file keeps its size)."""
    text = path.read_text()
    vocab = json.loads(text)["model"]["vocab"]
    ia, ib = vocab[a], vocab[b]
    assert len(str(ia)) == len(str(ib))
    old_a, old_b = f'"{a}": {ia}', f'"{b}": {ib}'
    assert text.count(old_a) == 1 and text.count(old_b) == 1
    text = text.replace(old_a, "\0A").replace(old_b, f'"{b}": {ia}').replace("\0A", f'"{a}": {ib}')
    size = path.stat().st_size
    path.write_text(text)
    assert path.stat().st_size == size


def cached_items(cfg, root: Path) -> list[dict]:
    data = load_cached_pair_data(root, cfg)
    return [data.dataset[(0, p)] for p in range(len(data.index))]


def fly_batch(cfg) -> dict:
    from mapo_train.data import load_pair_data

    data = load_pair_data(cfg.data, cfg.train.seed)
    return collate_pairs([data.dataset[(0, p)] for p in range(len(data.index))])


def test_replaced_vae_weights_make_a_new_cache_with_the_new_latents(env):
    """The reported case: train on a copy with data.cache=auto, replace vae/ weights in place, train
    again. The second run must build and read a new cache holding the new VAE's latents."""
    from diffusers import AutoencoderKL

    from mapo_train.train import train

    tmp_path, model = env
    cfg = _cfg(tmp_path, "first", model=str(model))
    # Let the copied files settle, so their digests are memoised and the memo itself is on trial.
    time.sleep(RACY_SECONDS + 0.2)
    train(cfg)
    first = locate_cache(cfg, "no")
    assert first.complete
    assert any((tmp_path / "mapo-cache" / "file-digests").iterdir())  # the memo was written
    # The same bytes elsewhere are the same model: the built-in tiny model shares the key.
    assert locate_cache(_cfg(tmp_path, "t"), "no").key == first.key

    rewrite_tensor_in_place(model / "vae" / "diffusion_pytorch_model.safetensors", "encoder.conv_in.weight")
    cfg2 = _cfg(tmp_path, "second", model=str(model))
    train(cfg2)
    second = locate_cache(cfg2, "no")
    assert second.key != first.key and second.complete
    assert sorted(p.name for p in (tmp_path / "mapo-cache" / "train-cache").iterdir()) == sorted(
        [first.key, second.key]
    )

    new_vae = AutoencoderKL.from_pretrained(model, subfolder="vae").eval()
    batch = fly_batch(cfg2)
    with torch.no_grad():
        mean_w = new_vae.encode(batch["pixels_w"]).latent_dist.mean
    old, new = cached_items(cfg, first.root), cached_items(cfg2, second.root)
    for p, item in enumerate(new):
        torch.testing.assert_close(item["mean_w"], mean_w[p], **torch_kwargs(CROSS_PATH))
        assert (item["mean_w"] - old[p]["mean_w"]).abs().mean() > 0.05  # the old cache was stale


@pytest.mark.parametrize("part", ["text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"])
def test_changed_text_encoder_or_tokenizer_makes_a_new_cache(env, part):
    from mapo_train.cache import prepare_cached_data
    from mapo_train.encode import SDXLTextEncoder
    from mapo_train.model import load_components

    tmp_path, model = env
    cfg = _cfg(tmp_path, "x", model=str(model))
    first = prepare_cached_data(cfg, "no", progress=False).root
    if part.startswith("tokenizer"):
        swap_vocab_ids(model / part / "tokenizer.json", "cat</w>", "dog</w>")
    else:
        name = "text_model.embeddings.token_embedding.weight"
        with open(model / part / "model.safetensors", "rb") as f:
            header = f.read(8 + int.from_bytes(f.read(8), "little"))
        if name.encode() not in header:
            name = name.removeprefix("text_model.")
        rewrite_tensor_in_place(model / part / "model.safetensors", name)
    second = prepare_cached_data(cfg, "no", progress=False).root
    assert second != first

    c = load_components(cfg.model, "no")
    text = SDXLTextEncoder(c.tokenizer, c.tokenizer_2, c.text_encoder, c.text_encoder_2)
    captions = [f"a cat number {i}" for i in range(4)]
    embeds, pooled = text(captions)
    data = load_cached_pair_data(second, cfg)
    old = cached_items(cfg, first)
    changed = False
    for p, item in enumerate(cached_items(cfg, second)):
        row = int(data.index.rows[p])
        torch.testing.assert_close(item["prompt_embeds"], embeds[row], **torch_kwargs(CROSS_PATH))
        torch.testing.assert_close(item["pooled_prompt_embeds"], pooled[row], **torch_kwargs(CROSS_PATH))
        changed |= not torch.allclose(item["prompt_embeds"], old[p]["prompt_embeds"], atol=1e-3)
    assert changed


def test_separate_vae_folder_is_identified_by_content(env):
    tmp_path, model = env
    vae = tmp_path / "my-vae"
    shutil.copytree(model / "vae", vae)
    base = locate_cache(_cfg(tmp_path, "a"), "no")
    # The base model's own VAE given as a separate folder: the same bytes, the same cache.
    same = locate_cache(_cfg(tmp_path, "b", f"model.vae={vae}"), "no")
    assert same.key == base.key
    rewrite_tensor_in_place(vae / "diffusion_pytorch_model.safetensors", "quant_conv.weight")
    changed = locate_cache(_cfg(tmp_path, "c", f"model.vae={vae}"), "no").key
    assert changed != base.key
    # Its config counts too.
    config = json.loads((vae / "config.json").read_text())
    config["scaling_factor"] = 0.5
    (vae / "config.json").write_text(json.dumps(config))
    assert locate_cache(_cfg(tmp_path, "d", f"model.vae={vae}"), "no").key not in (base.key, changed)


def test_unresolvable_hub_model_is_an_error_not_a_guess(env):
    from mapo_data.errors import MapoError

    tmp_path, _ = env
    with pytest.raises(
        MapoError,
        match=r"^model.vae someone/other-vae: no local file or folder of that name, and no copy in the local",
    ):
        locate_cache(_cfg(tmp_path, "a", "model.vae=someone/other-vae"), "no")


# ---------------------------------------------------------------------------------------------
# VAE precision


def test_vae_dtype_rule():
    sdxl = ModelConfig()
    assert vae_dtype(sdxl, "no") == torch.float32
    assert vae_dtype(sdxl, "bf16") == torch.float32  # the authors keep the VAE in fp32
    assert vae_dtype(sdxl, "fp16") == torch.float16  # the fp16-fix VAE is made for fp16
    assert vae_dtype(ModelConfig(vae=FP16_FIX_VAE), "fp16") == torch.float16
    assert vae_dtype(ModelConfig(vae="base"), "fp16") == torch.float32  # SDXL's own overflows
    assert vae_dtype(ModelConfig(pretrained="tiny"), "fp16") == torch.float32
    assert vae_dtype(ModelConfig(vae_dtype="bf16"), "no") == torch.bfloat16
    assert vae_dtype(ModelConfig(vae_dtype="fp32"), "fp16") == torch.float32
    assert vae_dtype(ModelConfig(vae="base", vae_dtype="fp16"), "bf16") == torch.float16


def test_bf16_training_encodes_latents_in_fp32(env):
    """Under bf16 mixed precision on the CPU the trainer's latents equal those of a run without
    mixed precision (the same fp32 computation); model.vae_dtype=bf16 opts into bf16."""
    from mapo_train.train import setup

    tmp_path, _ = env

    def latents(name, *overrides):
        run = setup(_cfg(tmp_path, name, *overrides, cache="off"))
        batch = collate_pairs([run.data.dataset[(0, p)] for p in range(4)])
        pairs = run.encoder(batch, torch.Generator().manual_seed(0))
        dtype = run.components.vae.dtype
        run.accelerator.end_training()
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)
        GradientState._reset_state()
        return dtype, pairs.latents_w, pairs.latents_l

    dtype_no, w_no, l_no = latents("no")
    dtype_bf16, w_bf16, l_bf16 = latents("bf16", "train.mixed_precision=bf16")
    assert dtype_no == dtype_bf16 == torch.float32
    assert torch.equal(w_bf16, w_no) and torch.equal(l_bf16, l_no)
    dtype_opt, w_opt, _ = latents("opt", "train.mixed_precision=bf16", "model.vae_dtype=bf16")
    assert dtype_opt == torch.bfloat16
    assert not torch.allclose(w_opt, w_no, rtol=1e-3, atol=1e-3)


def test_encode_precision_is_part_of_the_cache_identity(env):
    tmp_path, _ = env
    cfg = _cfg(tmp_path, "a")
    assert cache_identity(cfg, "fp", "bf16")["vae_dtype"] == "float32"
    assert cache_identity(cfg, "fp", "no")["vae_dtype"] == "float32"
    keys = {
        locate_cache(_cfg(tmp_path, "b", f"model.vae_dtype={d}"), "no").key
        for d in ("auto", "fp32", "bf16", "fp16")
    }
    assert len(keys) == 3  # auto is fp32 here: the same latents, the same cache
