"""The latent/text cache: same steps as on the fly, keyed folders, resume, CLI."""

from __future__ import annotations

import json
import os

import pytest
import torch

from mapo_train.cache import (
    COMPLETE_FILE,
    build_cache,
    load_cached_pair_data,
    locate_cache,
    marker_path,
    shard_path,
)
from mapo_train.config import config_from_dict
from mapo_train.train import train

from ..tolerances import CROSS_PATH, CROSS_PATH_AFTER_ADAM, torch_kwargs
from .conftest import write_pairs


@pytest.fixture
def cache_env(tmp_path, tiny_model_path):
    return tmp_path


def _cfg(tmp_path, name: str, *overrides: str, pairs: str = "pairs"):
    data = {
        "model": {"pretrained": "tiny"},
        "data": {"path": str(tmp_path / pairs), "resolution": 32, "num_workers": 0},
        "loss": {"name": "mapo"},
        "train": {
            "output_dir": str(tmp_path / name),
            "max_steps": 3,
            "batch_size": 2,
            "learning_rate": 1e-3,
            "mixed_precision": "no",
            "checkpoint_every": 0,
            "report_to": "none",
        },
        "validation": {"enabled": False},
    }
    return config_from_dict(data, list(overrides))


def test_cached_steps_equal_on_the_fly_steps(cache_env):
    write_pairs(cache_env / "pairs" / "train-00000.parquet", n=6, size=40)
    # Flip on: the cache holds both flips and the per-pair generator picks the same one.
    fly = train(_cfg(cache_env, "fly", "data.random_flip=true", "data.proportion_empty_prompts=0.3"))
    cached = train(
        _cfg(
            cache_env,
            "cached",
            "data.random_flip=true",
            "data.proportion_empty_prompts=0.3",
            f"data.cache={cache_env / 'cc'}",
        )
    )
    assert len(fly.history) == len(cached.history) == 3
    # The first step sees identical inputs up to the VAE's batch-size-dependent rounding; later
    # steps also inherit Adam's normalisation of near-zero gradients, which magnifies that
    # rounding, hence the looser tolerance after step 1.
    for a, b in zip(fly.history, cached.history, strict=True):
        tol = CROSS_PATH if a["step"] == 1 else CROSS_PATH_AFTER_ADAM
        for key in ("loss", "loss_w", "loss_l", "grad_norm"):
            assert b[key] == pytest.approx(a[key], **tol), (a["step"], key)
        assert b["accuracy"] == a["accuracy"]


def test_cached_encoder_equals_on_the_fly_encoder(cache_env):
    """Batch for batch (same keys, same generator) the two paths give the same EncodedPairs."""
    from mapo_train.cache import cached_encoder, prepare_cached_data
    from mapo_train.data import load_pair_data
    from mapo_train.encode import PairEncoder, SDXLTextEncoder
    from mapo_train.model import load_components
    from mapo_train.train import step_generator

    write_pairs(cache_env / "pairs" / "train-00000.parquet", n=6, size=40)
    cfg = _cfg(
        cache_env,
        "enc",
        "data.random_flip=true",
        "data.proportion_empty_prompts=0.5",
        f"data.cache={cache_env / 'cc'}",
    )
    cached = prepare_cached_data(cfg, "no", progress=False)
    fly = load_pair_data(cfg.data, cfg.train.seed)
    c = load_components(cfg.model, "no")
    text = SDXLTextEncoder(c.tokenizer, c.tokenizer_2, c.text_encoder, c.text_encoder_2)
    on_the_fly = PairEncoder(c.vae, text, torch.device("cpu"))
    from_cache = cached_encoder(c, cfg, "no", torch.device("cpu"))
    for step, (batch_a, batch_b) in enumerate(
        zip(
            fly.loader(3, 0, 0, 1, 0, 0),
            cached.loader(3, 0, 0, 1, 0, 0),
            strict=False,
        )
    ):
        if step == 4:  # two epochs: flips and empty prompts differ between them
            break
        a = on_the_fly(batch_a, step_generator(0, step, 0))
        b = from_cache(batch_b, step_generator(0, step, 0))
        for name in (
            "latents_w",
            "latents_l",
            "prompt_embeds",
            "pooled_prompt_embeds",
            "time_ids_w",
            "time_ids_l",
        ):
            torch.testing.assert_close(
                getattr(b, name), getattr(a, name), **torch_kwargs(CROSS_PATH), msg=name
            )


def test_training_on_cache_keeps_encoders_off_the_device(cache_env, monkeypatch):
    """The trainer places the VAE and text encoders on the CPU when a cache is used (on a GPU
    that is what keeps them off the accelerator); validation borrows the device and gives it back."""
    write_pairs(cache_env / "pairs" / "train-00000.parquet", n=4, size=32)
    import mapo_train.train as train_module

    placed = []
    original = train_module._place_frozen

    def spy(components, cfg, mixed_precision, device):
        placed.append(str(device))
        return original(components, cfg, mixed_precision, device)

    monkeypatch.setattr(train_module, "_place_frozen", spy)
    cfg = _cfg(
        cache_env, "run", f"data.cache={cache_env / 'cc'}", "train.max_steps=1", "validation.enabled=true"
    )
    cfg.validation.num_inference_steps = 1
    cfg.validation.prompts = ["a cat"]
    cfg.validation.seeds = [0]
    train(cfg)
    assert placed[0] == "cpu"  # at setup
    # Each validation: onto the device, then back to the CPU.
    assert placed[1:] == ["cpu", "cpu"] * (len(placed[1:]) // 2)


def test_changed_key_makes_a_new_cache(cache_env):
    write_pairs(cache_env / "pairs" / "train-00000.parquet", n=4, size=32)
    base = locate_cache(_cfg(cache_env, "a"), "no")
    assert locate_cache(_cfg(cache_env, "b"), "no").root == base.root  # same settings, same key
    for override in (
        "data.resolution=16",
        "data.random_flip=false",
        "data.random_crop=true",
        "data.cache_dtype=float16",
        "data.ties=keep",
        "data.split=test",
        "data.max_pairs=2",
        "model.vae_dtype=bf16",
    ):
        assert locate_cache(_cfg(cache_env, "c", override), "no").root != base.root, override
    assert locate_cache(_cfg(cache_env, "d"), "fp16").root != base.root  # text encoder precision
    # New data under the same path: the dataset fingerprint changes, so does the key.
    write_pairs(cache_env / "pairs" / "train-00000.parquet", n=5, size=32, seed=1)
    assert locate_cache(_cfg(cache_env, "e"), "no").root != base.root


def test_build_resumes_and_skips_complete_shards(cache_env):
    write_pairs(cache_env / "pairs" / "train-00000.parquet", n=7, size=32, bad=1)
    cfg = _cfg(
        cache_env, "x", f"data.cache={cache_env / 'cc'}", "data.cache_shard_size=3", "data.cache_batch_size=2"
    )
    mask = os.umask(0o022)
    try:
        first = build_cache(cfg, progress=False)
    finally:
        os.umask(mask)
    assert (first.num_pairs, first.shards_written, first.shards_skipped, first.bad_pairs) == (7, 3, 0, 1)
    # Shards get the usual mode, not the 0600 of mkstemp and safetensors.
    modes = {
        p.relative_to(first.root).as_posix(): oct(p.stat().st_mode & 0o777) for p in first.root.rglob("*")
    }
    assert {k: m for k, m in modes.items() if m != ("0o755" if (first.root / k).is_dir() else "0o644")} == {}
    assert modes["shards/00000.safetensors"] == "0o644"
    # Interrupted run: the last shard's file lost, another's marker lost, "complete" not yet written.
    (first.root / COMPLETE_FILE).unlink()
    shard_path(first.root, 2).unlink()
    marker_path(first.root, 0).unlink()
    untouched = shard_path(first.root, 1).stat().st_mtime_ns
    again = build_cache(cfg, progress=False)
    assert (again.shards_written, again.shards_skipped) == (2, 1)
    assert shard_path(first.root, 1).stat().st_mtime_ns == untouched
    assert json.loads((first.root / COMPLETE_FILE).read_text())["pairs"] == 7
    # Complete: nothing to do.
    assert build_cache(cfg, progress=False).shards_written == 0
    data = load_cached_pair_data(first.root, cfg)
    assert len(data.index) == 7
    # Position 0 is the undecodable pair: the next position stands in, and it is counted.
    item = data.dataset[(0, 0)]
    assert item["bad"] == 1
    # It stands in entirely: same latents, and the same flip (drawn for the position it reads).
    stand_in = data.dataset[(0, 1)]
    for name in ("mean_w", "std_l", "time_ids_w", "prompt_embeds"):
        assert torch.equal(item[name], stand_in[name]), name
    assert not torch.equal(item["mean_w"], data.dataset[(0, 2)]["mean_w"])


def test_cache_cli(cache_env, capsys):
    from mapo_train.cli import run

    write_pairs(cache_env / "pairs" / "train-00000.parquet", n=3, size=32)
    recipe = cache_env / "r.yaml"
    recipe.write_text(
        f"model: tiny\ndata:\n  path: {cache_env / 'pairs'}\n  resolution: 32\n  num_workers: 0\n"
        f"  cache: {cache_env / 'cc'}\ntrain:\n  mixed_precision: 'no'\n"
    )
    assert run(["cache", "--recipe", str(recipe), "--no-progress"]) == 0
    out = capsys.readouterr().out
    # One closing line: what was written and how to train on it.
    (line,) = out.splitlines()
    assert line.startswith("cache: 3 pairs in ") and line.endswith(
        f" (1 shard written, 0 already complete, 0 undecodable); train on it with data.cache={cache_env / 'cc'}"
    )
    assert run(["cache", "--recipe", str(recipe), "--no-progress"]) == 0
    assert "0 shards written, 1 already complete" in capsys.readouterr().out
