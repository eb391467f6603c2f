"""Single files in, single files and kohya LoRA out: training from the tiny model written as one
SDXL checkpoint gives the losses of training from its folder; a full run exported with
``train.export`` reads back (UNet, VAE) through diffusers' ``from_single_file`` bit for bit; a LoRA with
alpha != rank exported in kohya's layout reloads through ``load_lora_weights`` at the trained
strength; ``mapo-train export`` gives the same files after the fact."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mapo_data.single_file import write_single_file
from mapo_train import cli
from mapo_train.cache import cache_identity
from mapo_train.config import ConfigError, config_from_dict
from mapo_train.export import KOHYA_LORA_NAME, SINGLE_FILE_NAME
from mapo_train.train import finish, fit, setup

from ..tolerances import CROSS_PATH, REPLAY, torch_kwargs
from .conftest import write_pairs
from .test_lora_reload import fresh_pipeline, unet_output


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _config(tmp: Path, name: str, model: dict, extra: dict | None = None, export: list[str] | None = None):
    data = {
        "model": model,
        "data": {"path": str(tmp / "pairs"), "resolution": 32, "num_workers": 0, "random_flip": False},
        "train": {
            "output_dir": str(tmp / name),
            "max_steps": 2,
            "batch_size": 2,
            "learning_rate": 1e-3,
            "lr_scheduler": "constant",
            "mixed_precision": "no",
            "checkpoint_every": 0,
            "report_to": "none",
            **({"export": export} if export else {}),
        },
        "validation": {"enabled": False},
        **(extra or {}),
    }
    return config_from_dict(data)


def _train(cfg):
    from accelerate.state import AcceleratorState, GradientState

    # Under the usual umask, so that the files' modes can be checked (test_every_file_...).
    mask = os.umask(0o022)
    try:
        run = setup(cfg)
        fit(run)
        result = finish(run)
        output = unet_output(run.accelerator.unwrap_model(run.unet))
    finally:
        os.umask(mask)
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
    return result, output


@pytest.fixture(scope="module")
def env(tmp_path_factory, tiny_model_path):
    """Pairs, and the tiny model written as one single-file checkpoint."""
    from diffusers import StableDiffusionXLPipeline

    tmp = tmp_path_factory.mktemp("export")
    write_pairs(tmp / "pairs" / "train-00000.parquet", n=4, size=32)
    p = StableDiffusionXLPipeline.from_pretrained(tiny_model_path)
    single = write_single_file(tmp / "tiny.safetensors", p.unet, p.vae, p.text_encoder, p.text_encoder_2)
    return tmp, single


@pytest.fixture(scope="module")
def full_runs(env):
    """The same full fine-tune from the tiny folder and from its single file (exported as one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp, single = env
    try:
        folder, _ = _train(_config(tmp, "from-folder", {"pretrained": "tiny"}))
        from_file, _ = _train(
            _config(
                tmp,
                "from-file",
                {"pretrained": str(single), "config": "tiny"},
                export=["diffusers", "single-file"],
            )
        )
    finally:
        torch.set_num_threads(threads)
    return folder, from_file


def test_training_from_the_single_file_gives_the_folder_losses(full_runs):
    folder, from_file = full_runs
    assert len(folder.history) == len(from_file.history) == 2
    for a, b in zip(folder.history, from_file.history, strict=True):
        for key in ("loss", "margin", "grad_norm"):
            assert b[key] == pytest.approx(a[key], **REPLAY), key


def test_the_exported_single_file_reads_back_to_the_trained_and_base_weights(full_runs, tiny_model_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    _, run = full_runs
    out = run.output_dir
    exported = out / SINGLE_FILE_NAME
    assert exported.is_file()
    config = str(tiny_model_path)
    unet = UNet2DConditionModel.from_single_file(
        str(exported), config=config, subfolder="unet", local_files_only=True
    )
    trained = UNet2DConditionModel.from_pretrained(out / "unet")
    base = fresh_pipeline(tiny_model_path)
    for got, want in (
        (unet, trained),
        (
            AutoencoderKL.from_single_file(
                str(exported), config=config, subfolder="vae", local_files_only=True
            ),
            base.vae,
        ),
    ):
        sg, sw = got.state_dict(), want.state_dict()
        assert set(sg) == set(sw) and all(torch.equal(sg[k], sw[k]) for k in sw)
    # Trained: not the base UNet.
    assert not torch.equal(unet.state_dict()["conv_in.weight"], base.unet.state_dict()["conv_in.weight"])
    card = (out / "README.md").read_text()
    assert f"| `{SINGLE_FILE_NAME}` | one SDXL checkpoint" in card and "ComfyUI" in card
    # The snippet loads the single-file base with mapo's loader (diffusers misreads tiny's encoder 2).
    assert 'parts = load_components(base, "tiny")' in card


def test_export_after_the_fact_writes_the_same_bytes(full_runs, tmp_path, capsys):
    _, run = full_runs
    copy = tmp_path / "run"
    shutil.copytree(run.output_dir, copy)
    (copy / SINGLE_FILE_NAME).unlink()
    code, out, err = run_main(["export", str(copy), "--to", "single-file"], capsys)
    assert code == 0, err
    assert out.strip() == f"exported {copy / SINGLE_FILE_NAME}"
    assert (copy / SINGLE_FILE_NAME).read_bytes() == (run.output_dir / SINGLE_FILE_NAME).read_bytes()
    code, _, err = run_main(["export", str(copy), "--to", "kohya-lora"], capsys)
    assert code == 2 and err == (
        f"error: {copy}: kohya-lora holds LoRA weights, but this run is a full fine-tune; export it as single-file\n"
    )


def test_export_help_has_an_example(capsys):
    code, out, _ = run_main(["export", "--help"], capsys)
    assert code == 0 and "mapo-train export runs/pixel-mapo --to single-file" in out


@pytest.fixture(scope="module")
def lora_run(env):
    tmp, _ = env
    cfg = _config(
        tmp,
        "lora",
        {"pretrained": "tiny", "finetune": "lora"},
        extra={"lora": {"rank": 4, "alpha": 16, "target_modules": ["to_k", "to_v", "to_out.0"]}},
        export=["diffusers", "kohya-lora"],
    )
    cfg.train.learning_rate = 1e-2  # LoRA's B matrices start at zero: make the effect measurable
    cfg.train.checkpoint_every = 2  # one checkpoint, for test_every_file_a_run_writes_gets_the_umask_mode
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(cfg)
    finally:
        torch.set_num_threads(threads)


def test_kohya_lora_reloads_at_the_trained_strength(lora_run, tiny_model_path, tmp_path):
    from safetensors.torch import save_file

    result, trained = lora_run
    kohya = result.output_dir / KOHYA_LORA_NAME
    state = load_file(str(kohya))
    alphas = {k: v for k, v in state.items() if k.endswith(".alpha")}
    downs = [k for k in state if k.endswith(".lora_down.weight")]
    assert len(alphas) == len(downs) == sum(k.endswith(".lora_up.weight") for k in state) > 0
    assert all(k.startswith("lora_unet_") for k in state)
    assert {float(v) for v in alphas.values()} == {16.0}
    pipe = fresh_pipeline(tiny_model_path)
    pipe.load_lora_weights(str(kohya))
    torch.testing.assert_close(unet_output(pipe.unet), trained, **torch_kwargs(CROSS_PATH))
    # With alpha = rank (what diffusers' convert_state_dict_to_kohya writes) it would be 4x weaker.
    weak_file = tmp_path / "weak.safetensors"
    save_file(
        {k: (torch.tensor(4.0) if k.endswith(".alpha") else v) for k, v in state.items()}, str(weak_file)
    )
    weak = fresh_pipeline(tiny_model_path)
    weak.load_lora_weights(str(weak_file))
    base = unet_output(fresh_pipeline(tiny_model_path).unet)
    effect = (trained - base).abs().mean()
    assert effect > 1e-3 and (unet_output(weak.unet) - trained).abs().mean() > 0.5 * effect
    card = (result.output_dir / "README.md").read_text()
    assert f"| `{KOHYA_LORA_NAME}` | kohya format with per-module alpha" in card


def test_every_file_a_run_writes_gets_the_umask_mode(full_runs, lora_run):
    """safetensors (>= 0.8) writes through an owner-only temporary file; with umask 022 every file of
    a run folder (weights, exports, checkpoints, card, logs) must still be 0644, like the parquet."""
    _, full = full_runs
    lora, _ = lora_run
    files = {
        f"{run.name}/{p.relative_to(run).as_posix()}": p
        for run in (full.output_dir, lora.output_dir)
        for p in run.rglob("*")
        if p.is_file()
    }
    for expected in (
        "from-file/unet/diffusion_pytorch_model.safetensors",
        f"from-file/{SINGLE_FILE_NAME}",
        "lora/pytorch_lora_weights.safetensors",
        f"lora/{KOHYA_LORA_NAME}",
        "lora/checkpoint-0000002/unet_lora.safetensors",
        "lora/README.md",
    ):
        assert expected in files, expected
    modes = {name: oct(path.stat().st_mode & 0o777) for name, path in files.items()}
    assert {name: mode for name, mode in modes.items() if mode != oct(0o644)} == {}


def test_the_cache_key_follows_the_single_file_content(env, tmp_path, monkeypatch):
    monkeypatch.setenv("MAPO_CACHE", str(tmp_path / "mapo-cache"))
    _, single = env
    copy = tmp_path / "copy.safetensors"
    shutil.copy(single, copy)

    def identity(path):
        cfg = _config(tmp_path, "c", {"pretrained": str(path), "config": "tiny"})
        return cache_identity(cfg, "dataset", "no")

    before = identity(copy)
    assert before == identity(single)
    data = bytearray(copy.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[start + (len(data) - start) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    after = identity(copy)
    assert after["vae"] != before["vae"] and after["text_encoders"] != before["text_encoders"]


@pytest.mark.parametrize(
    ("model", "export", "message"),
    [
        (
            {"pretrained": "m.safetensors"},
            None,
            "model.pretrained m.safetensors is a single-file checkpoint without configs or tokenizers; set "
            "model.config to a diffusers folder to borrow them from (the SDXL base folder, or tiny)",
        ),
        (
            {"pretrained": "tiny", "config": "tiny"},
            None,
            "model.config applies only to a single-file model.pretrained (.safetensors); remove it",
        ),
        (
            {"pretrained": "m.ckpt", "config": "tiny"},
            None,
            "model.pretrained m.ckpt: pickle checkpoints can run code when loaded and are refused; use a "
            ".safetensors file, or set model.allow_pickle=true if you trust where it came from",
        ),
        (
            {"pretrained": "tiny", "finetune": "lora"},
            ["diffusers", "single-file"],
            "train.export single-file needs model.finetune=full (a LoRA run is exported as kohya-lora)",
        ),
        (
            {"pretrained": "tiny"},
            ["diffusers", "kohya-lora"],
            "train.export kohya-lora needs model.finetune=lora (a full fine-tune is exported as single-file)",
        ),
        (
            {"pretrained": "tiny"},
            ["single-file"],
            "train.export must include diffusers (the run's own format, which eval, push and `mapo-train export` "
            "read); add the other formats next to it",
        ),
    ],
)
def test_contradictions_are_refused_by_name(model, export, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, "x", model, export=export)
    assert str(err.value) == message


def test_an_unknown_export_format_names_the_key(tmp_path):
    with pytest.raises(ConfigError) as err:
        _config(tmp_path, "x", {"pretrained": "tiny"}, export=["diffusers", "ckpt"])
    assert str(err.value).startswith(
        "train.export[1]: expected one of 'diffusers', 'single-file', 'kohya-lora'"
    )


def test_export_of_what_is_not_a_finished_run_is_one_line(tmp_path, capsys):
    code, _, err = run_main(["export", str(tmp_path / "nope"), "--to", "single-file"], capsys)
    assert code == 2 and err == f"error: {tmp_path / 'nope'}: no such run folder\n"
    code, _, err = run_main(["export", str(tmp_path), "--to", "kohya-lora"], capsys)
    assert code == 2 and err == f"error: {tmp_path}: not a mapo-train run folder (no training_config.yaml)\n"
