"""Shared pieces of the training benchmarks: model folders, data, and one timed run per process.

Each measured configuration runs in its own Python process (``python bench/_common.py --worker
...``), so its peak resident memory (``ru_maxrss``) is its own; the parent compares them. Timing
uses the real trainer (``mapo_train.train.setup`` + ``fit``): the step time is the wall time
between optimizer steps that the loop itself logs (``pairs_per_s``), after warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent


def mid_model(out: Path) -> Path:
    """A randomly initialised SDXL-shaped model small enough to train on a CPU.

    UNet: SDXL's layout (no attention in the first level, transformer depth growing with depth,
    text-time micro-conditioning, cross-attention over two concatenated encoders) at about a
    tenth of the width and depth: channels (128, 256, 512), transformer layers (1, 2, 4), attention
    heads of 64, cross-attention dim 2048 (768 + 1280 as in SDXL). VAE: SDXL's architecture
    (channels 128-256-512-512, two layers per level) at full width. Text encoders: CLIP with
    SDXL's widths (768, 1280) but two layers each. Built once per folder.
    """
    if (out / "model_index.json").is_file():
        return out
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from mapo_data.tiny import resolve_model_id

    tiny = StableDiffusionXLPipeline.from_pretrained(resolve_model_id("tiny"))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(128, 256, 512),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 4),
        attention_head_dim=(2, 4, 8),  # diffusers' SDXL config names head *counts* here: 64-wide heads
        use_linear_projection=True,
        cross_attention_dim=2048,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=6 * 256 + 1280,
    )
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=256,
        scaling_factor=0.13025,
    )
    tok = tiny.tokenizer
    common = dict(
        vocab_size=len(tok),
        num_hidden_layers=2,
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    te1 = CLIPTextModel(
        CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12, **common)
    )
    te2 = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_attention_heads=20, projection_dim=1280, **common
        )
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tiny.tokenizer,
        tokenizer_2=tiny.tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler.from_config(tiny.scheduler.config),
        add_watermarker=False,
    )
    pipe.save_pretrained(out)
    return out


MODELS = {
    # name: (resolution, batch size, warm-up steps, timed steps)
    "tiny": (64, 4, 5, 40),
    "mid": (128, 1, 2, 5),
}


def model_path(name: str, work: Path) -> str:
    if name == "tiny":
        from mapo_data.tiny import resolve_model_id

        return resolve_model_id("tiny")
    return str(mid_model(work / "mid-model"))


def pairs_folder(work: Path, resolution: int, n: int = 48) -> Path:
    from mapo_train.learning_check import write_synthetic_pairs

    folder = work / f"pairs-{resolution}"
    if not (folder / "train-00000.parquet").is_file():
        write_synthetic_pairs(folder / "train-00000.parquet", n, seed=0, size=resolution)
    return folder


def run_config(
    model: str, data: Path, out: Path, loss: str, cache: str, resolution: int, batch: int, steps: int
):
    from mapo_train.config import config_from_dict

    return config_from_dict(
        {
            "model": {"pretrained": model},
            "data": {"path": str(data), "resolution": resolution, "num_workers": 1, "cache": cache},
            "loss": {"name": loss},
            "train": {
                "output_dir": str(out),
                "max_steps": steps,
                "batch_size": batch,
                "learning_rate": 1e-5,
                "lr_scheduler": "constant",
                "mixed_precision": "no",
                "checkpoint_every": 0,
                "report_to": "none",
            },
            "validation": {"enabled": False},
        }
    )


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(args) -> None:
    """One configuration, in this process: setup, then fit; print one JSON line."""
    import statistics

    import torch

    from mapo_train.train import fit, setup

    torch.set_num_threads(args.threads)
    resolution, batch, warmup, timed = MODELS[args.model]
    work = Path(args.work)
    cfg = run_config(
        model_path(args.model, work),
        pairs_folder(work, resolution),
        work / f"run-{args.model}-{args.loss}-{args.cache}",
        args.loss,
        str(work / "cache") if args.cache == "on" else "off",
        resolution,
        batch,
        warmup + timed,
    )
    baseline = rss_mib()
    run = setup(cfg)
    after_setup = rss_mib()
    fit(run)
    step_s = [batch / row["pairs_per_s"] for row in run.history[warmup:]]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        "RESULT "
        + json.dumps(
            {
                "model": args.model,
                "loss": args.loss,
                "cache": args.cache,
                "resolution": resolution,
                "batch_pairs": batch,
                "threads": args.threads,
                "step_s_median": statistics.median(step_s),
                "step_s_all": step_s,
                "rss_before_setup_mib": baseline,
                "rss_after_setup_mib": after_setup,
                "peak_rss_mib": peak,
                "peak_above_baseline_mib": peak - baseline,
                "trainable_params": sum(p.numel() for p in run.params),
            }
        ),
        flush=True,
    )


def measure(model: str, loss: str, cache: str, work: Path, threads: int) -> dict:
    """Run one configuration in a fresh process and return its result."""
    cmd = [sys.executable, str(Path(__file__)), "--worker", "--model", model, "--loss", loss]
    cmd += ["--cache", cache, "--work", str(work), "--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")


def build_cache_for(model: str, work: Path) -> None:
    """Build the cached configuration's latents in a separate process (not timed, not in its RSS)."""
    cmd = [sys.executable, str(Path(__file__)), "--build-cache", "--model", model, "--work", str(work)]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)


def _build_cache(args) -> None:
    from mapo_train.cache import build_cache

    resolution, batch, _, _ = MODELS[args.model]
    work = Path(args.work)
    cfg = run_config(
        model_path(args.model, work),
        pairs_folder(work, resolution),
        work / "x",
        "mapo",
        str(work / "cache"),
        resolution,
        batch,
        1,
    )
    build_cache(cfg, progress=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--build-cache", action="store_true")
    parser.add_argument("--model", default="tiny", choices=sorted(MODELS))
    parser.add_argument("--loss", default="mapo")
    parser.add_argument("--cache", default="off", choices=["on", "off"])
    parser.add_argument("--work", default="runs/bench-train")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    if args.worker:
        worker(args)
    elif args.build_cache:
        _build_cache(args)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
