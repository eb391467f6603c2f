"""Driver of bench/gpu.sh: SDXL-configured, randomly initialised models on one GPU, no network.

Measures, at 1024² in bf16 (autocast over fp32 master weights, as the trainer runs):
- generation pairs/s through mapo-data's render path (``mapo_data.render.render_images``);
- MaPO and Diffusion-DPO training step time, peak GPU memory and MFU, on the fly (VAE and text
  encoders run every step) and on cached latents (``mapo_train.cache.CachedEncoder``), with
  gradient checkpointing, and with 8-bit AdamW where bitsandbytes imports.
The step is the trainer's own code: ``PairEncoder``/``CachedEncoder`` -> ``step.pair_objective``
-> backward -> clip -> optimizer step. Models are built in memory (writing SDXL to disk and
loading it back through ``setup`` would eat the time budget).

MFU counts the FLOPs a step needs (DESIGN.md): UNet forward+backward 20.4 TFLOP per 1024² image,
the DPO reference forward 6.8 per image, and on the fly the VAE encode 4.9 per image; activation
recomputation under gradient checkpointing is not counted (it is overhead, not useful work).

    python bench/gpu_bench.py --out gpu.json          # via bench/gpu.sh
    python bench/gpu_bench.py --smoke --out smoke.json  # CPU, tiny model: checks the path only
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "CPU": float("nan")}
UNET_FWD_TFLOP = 6.8  # per 1024² image
VAE_ENCODE_TFLOP = 4.9

SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    use_linear_projection=True,
    cross_attention_dim=2048,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)
SDXL_VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    sample_size=1024,
    scaling_factor=0.13025,
)


def build_components(smoke: bool, device):
    """SDXL's architecture with random weights (or the tiny model for --smoke), on ``device``."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from mapo_data.tiny import resolve_model_id
    from mapo_train.config import ModelConfig
    from mapo_train.model import load_components

    tiny = load_components(ModelConfig(pretrained="tiny"), "no")
    if smoke:
        for part in (tiny.unet, tiny.vae, tiny.text_encoder, tiny.text_encoder_2):
            part.to(device)
        return tiny
    tok = tiny.tokenizer
    common = dict(
        vocab_size=len(tok),
        max_position_embeddings=77,
        hidden_act="gelu",
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.device(device):  # initialise on the GPU: SDXL's 2.6 B weights init in seconds there
        tiny.unet = UNet2DConditionModel(**SDXL_UNET)
        tiny.vae = AutoencoderKL(**SDXL_VAE)
        tiny.text_encoder = CLIPTextModel(
            CLIPTextConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_attention_heads=12,
                num_hidden_layers=12,
                **common,
            )
        )
        tiny.text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(
                hidden_size=1280,
                intermediate_size=5120,
                num_attention_heads=20,
                num_hidden_layers=32,
                projection_dim=1280,
                **common,
            )
        )
    tiny.noise_scheduler = DDPMScheduler.from_pretrained(resolve_model_id("tiny"), subfolder="scheduler")
    for part in (tiny.vae, tiny.text_encoder, tiny.text_encoder_2):
        part.requires_grad_(False).eval()
    return tiny


def card(device) -> tuple[str, float]:
    import torch

    if device.type != "cuda":
        return "CPU", float("nan")
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), float("nan"))
    return name, peak


def bench_generation(c, device, smoke: bool, resolution: int) -> dict:
    import torch
    from diffusers import EulerDiscreteScheduler

    from mapo_data.render import RenderConfig, render_images

    dtype = torch.float32 if smoke else torch.bfloat16
    pipe = c.pipeline(c.unet, EulerDiscreteScheduler.from_config(c.noise_scheduler.config)).to(device, dtype)
    images = 2 if smoke else 8
    steps = 2 if smoke else 30
    prompts = [f"a picture of a cat number {i}" for i in range(images)]
    cfg = RenderConfig(model="tiny", dtype="bf16", steps=steps, height=resolution, width=resolution)
    render_images(
        pipe, prompts[:2], [0, 1], RenderConfig(model="tiny", steps=1, height=resolution, width=resolution)
    )
    sync(device)
    start = time.perf_counter()
    render_images(pipe, prompts, list(range(images)), cfg)
    sync(device)
    seconds = time.perf_counter() - start
    per_image = steps * 2 * UNET_FWD_TFLOP + 10.5  # guidance doubles the UNet batch; one decode
    pipe.to(torch.float32)
    return {
        "pairs_per_s": images / 2 / seconds,
        "seconds": seconds,
        "images": images,
        "steps": steps,
        "tflop_per_pair": 2 * per_image,
    }


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_training(
    c,
    device,
    loss_name: str,
    cached: bool,
    grad_ckpt: bool,
    optim: str,
    resolution: int,
    steps: int,
    warmup: int,
) -> dict:
    """Time ``steps`` training steps of the trainer's step code after ``warmup`` ones."""
    import copy

    import torch

    from mapo_train.cache import CachedEncoder
    from mapo_train.encode import PairEncoder, SDXLTextEncoder
    from mapo_train.losses import default_beta, get_loss
    from mapo_train.step import denoising_losses, pair_objective

    autocast_dtype = torch.bfloat16
    unet = c.unet
    unet.train()
    unet.requires_grad_(True)
    if grad_ckpt:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    if optim == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=1e-6)
    else:
        optimizer = torch.optim.AdamW(params, lr=1e-6)
    spec = get_loss(loss_name)
    reference = None
    ref_unet = None
    if spec.needs_reference:
        ref_unet = copy.deepcopy(unet).requires_grad_(False).eval().to(autocast_dtype)

        def reference(pairs, noise, timesteps):
            with torch.autocast(device.type, dtype=autocast_dtype):
                return denoising_losses(ref_unet, c.noise_scheduler, pairs, noise, timesteps, "epsilon")

    # The frozen parts: the text encoders in bf16 and the VAE in fp32 (the trainer's
    # model.vae_dtype=auto under bf16), on the device on the fly; on the cache they stay on the CPU.
    text_dtype = torch.float32 if device.type == "cpu" else autocast_dtype
    vae_dtype = torch.float32
    text = SDXLTextEncoder(c.tokenizer, c.tokenizer_2, c.text_encoder, c.text_encoder_2)
    g = torch.Generator().manual_seed(0)
    batch = {
        "pixels_w": torch.rand(1, 3, resolution, resolution, generator=g) * 2 - 1,
        "pixels_l": torch.rand(1, 3, resolution, resolution, generator=g) * 2 - 1,
        "captions": ["a picture of a cat"],
        "time_ids_w": torch.tensor(
            [[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32
        ),
        "time_ids_l": torch.tensor(
            [[resolution, resolution, 0, 0, resolution, resolution]], dtype=torch.float32
        ),
    }
    c.vae.to("cpu" if cached else device, vae_dtype)
    for part in (c.text_encoder, c.text_encoder_2):
        part.to("cpu" if cached else device, text_dtype)
    if cached:
        # What the cache hands the step: the latent distribution and the text encodings (made once).
        with torch.no_grad():
            dist = (
                c.vae.to(device)
                .encode(torch.cat([batch["pixels_w"], batch["pixels_l"]]).to(device, vae_dtype))
                .latent_dist
            )
            embeds, pooled = text(batch["captions"])
            c.vae.to("cpu")
            for part in (c.text_encoder, c.text_encoder_2):
                part.to("cpu")
        mean_w, mean_l = dist.mean.float().cpu().chunk(2)
        std_w, std_l = dist.std.float().cpu().chunk(2)
        cached_batch = {
            "mean_w": mean_w,
            "mean_l": mean_l,
            "std_w": std_w,
            "std_l": std_l,
            "prompt_embeds": embeds.float().cpu(),
            "pooled_prompt_embeds": pooled.float().cpu(),
            "time_ids_w": batch["time_ids_w"],
            "time_ids_l": batch["time_ids_l"],
        }
        encoder = CachedEncoder(device, vae_dtype, c.vae.config.scaling_factor, None)
        feed = lambda gen: encoder(cached_batch, gen)  # noqa: E731
    else:
        encoder = PairEncoder(c.vae, text, device)
        feed = lambda gen: encoder(batch, gen)  # noqa: E731
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for i in range(warmup + steps):
        sync(device)
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(i)
        pairs = feed(gen)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=device.type == "cuda"):
            loss, _ = pair_objective(
                unet,
                c.noise_scheduler,
                pairs,
                spec,
                gen,
                beta=default_beta(loss_name),
                alpha=0.5,
                reference=reference,
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    step_s = sorted(times)[len(times) // 2]
    scale = (resolution / 1024) ** 2
    tflop = (
        2
        * scale
        * (
            3 * UNET_FWD_TFLOP
            + (UNET_FWD_TFLOP if spec.needs_reference else 0)
            + (0 if cached else VAE_ENCODE_TFLOP)
        )
    )
    optimizer = ref_unet = params = reference = None  # free them before the next configuration
    unet.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "loss": loss_name,
        "cached": cached,
        "grad_ckpt": grad_ckpt,
        "optimizer": optim,
        "step_s": step_s,
        "peak_gib": peak,
        "tflop_per_step": tflop,
        "achieved_tflops": tflop / step_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU: checks the path only")
    parser.add_argument("--out", default="gpu.json")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import torch

    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    resolution = 64 if args.smoke else 1024
    name, peak = card(device)
    started = time.perf_counter()
    c = build_components(args.smoke, device)
    result = {
        "card": name,
        "peak_bf16_tflops": peak,
        "resolution": resolution,
        "smoke": args.smoke,
        "unet_params": sum(p.numel() for p in c.unet.parameters()),
        "runs": [],
    }
    print(
        f"{name}: UNet {result['unet_params'] / 1e9:.2f} B params, built in {time.perf_counter() - started:.0f} s"
    )

    def save():
        Path(args.out).write_text(json.dumps(result, indent=2))

    try:
        result["generation"] = bench_generation(c, device, args.smoke, resolution)
        print(f"generation: {result['generation']['pairs_per_s']:.3f} pairs/s")
    except torch.OutOfMemoryError as err:
        result["generation"] = {"error": str(err)[:200]}
    save()
    try:
        import bitsandbytes  # noqa: F401

        has_bnb = device.type == "cuda"
    except ImportError:
        has_bnb = False
    configs = [
        ("mapo", False, True, "adamw"),
        ("dpo", False, True, "adamw"),
        ("mapo", True, True, "adamw"),
        ("dpo", True, True, "adamw"),
    ]
    if has_bnb:
        configs += [("mapo", True, True, "adamw8bit"), ("dpo", False, True, "adamw8bit")]
    configs += [("mapo", True, False, "adamw")]  # no checkpointing: may not fit; recorded if not
    for loss_name, cached, ckpt, optim in configs:
        try:
            r = bench_training(c, device, loss_name, cached, ckpt, optim, resolution, args.steps, args.warmup)
            r["mfu"] = r["achieved_tflops"] / peak
        except torch.OutOfMemoryError as err:
            r = {
                "loss": loss_name,
                "cached": cached,
                "grad_ckpt": ckpt,
                "optimizer": optim,
                "error": "out of memory",
            }
            del err
            gc.collect()
            torch.cuda.empty_cache()
        result["runs"].append(r)
        print(json.dumps(r), flush=True)
        save()
    result["seconds"] = time.perf_counter() - started
    save()
    print(f"wrote {args.out} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
