"""Does `mapo-data build` hide its own work behind rendering?

Times, in one process and interleaved, (a) `run_build` end to end and (b) a bare diffusers loop that
loads the same pipeline and renders the same prompts with the same model, steps, size and batch,
then throws the images away. Reports build / bare; the goal is <= 1.05 (target 1.03).

    python bench/build_overhead.py --pairs 24 --size 192 --steps 20 --repeats 5

On the CPU, torch renders with one thread (--threads) so the other core is free for what build
does beside rendering, as a GPU host's CPU is while the GPU renders.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from diffusers import StableDiffusionXLPipeline

from mapo_data.build import BuildConfig, prepare_prompts, run_build
from mapo_data.render import RenderConfig
from mapo_data.tiny import resolve_model_id


def bare_loop(config: BuildConfig) -> float:
    pairs, _ = prepare_prompts(config)  # same prompts and seeds as build; not timed
    render = config.render
    start = time.perf_counter()
    pipe = StableDiffusionXLPipeline.from_pretrained(resolve_model_id(render.model), dtype=render.torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    for i in range(0, len(pairs), config.batch_size):
        batch = pairs[i : i + config.batch_size]
        prompts = [p for pair in batch for p in (pair.prompt_chosen, pair.prompt_rejected)]
        generators = [
            torch.Generator().manual_seed(s) for pair in batch for s in (pair.seed_chosen, pair.seed_rejected)
        ]
        with torch.inference_mode():
            pipe(
                prompt=prompts,
                num_inference_steps=render.steps,
                guidance_scale=render.guidance_scale,
                height=render.height,
                width=render.width,
                generator=generators,
                output_type="pil",
            )
    return time.perf_counter() - start


def build_once(config: BuildConfig) -> float:
    start = time.perf_counter()
    run_build(config, progress=False, log=lambda _msg: None)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for rendering")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    workdir = Path(tempfile.mkdtemp(prefix="mapo-bench-"))
    bare_times, build_times = [], []
    try:
        for rep in range(args.repeats + 1):
            config = BuildConfig(
                preset="pick-style",
                split="pixel",
                out=str(workdir / f"run{rep}"),
                num_pairs=args.pairs,
                shard_size=args.shard_size,
                batch_size=args.batch_size,
                render=RenderConfig(
                    model=args.model,
                    dtype="fp32",
                    steps=args.steps,
                    height=args.size,
                    width=args.size,
                    cpu_threads=args.threads,
                ),
            )
            # Alternate the order so drift in machine load hits both sides alike; rep 0 warms up.
            if rep % 2:
                t_build, t_bare = build_once(config), bare_loop(config)
            else:
                t_bare, t_build = bare_loop(config), build_once(config)
            if rep:
                bare_times.append(t_bare)
                build_times.append(t_build)
            print(f"rep {rep}: bare {t_bare:.2f}s  build {t_build:.2f}s  ratio {t_build / t_bare:.3f}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    bare, built = statistics.median(bare_times), statistics.median(build_times)
    result = {
        "model": args.model,
        "pairs": args.pairs,
        "size": args.size,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "bare_s": round(bare, 3),
        "build_s": round(built, 3),
        "ratio": round(built / bare, 3),
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
