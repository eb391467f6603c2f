"""`mapo-data build`: options in, BuildConfig out, run_build called. Nothing else lives here."""

from __future__ import annotations

import typer

from mapo_data.cli.app import app, split_words
from mapo_data.render import DEFAULT_MODEL


@app.command(
    epilog=(
        "Examples:\n\n"
        "  mapo-data build pick-style --split pixel --model tiny --num-pairs 32 --out runs/pixel\n\n"
        "  mapo-data build pick-safety --require-words woman,women,girl,female\n\n"
        '  mapo-data build custom --chosen-prefix "Watercolor painting." --rejected-prefix "Photograph."\n\n'
        "  accelerate launch -m mapo_data build pick-style --split cartoon --out runs/cartoon"
    )
)
def build(
    preset: str = typer.Argument(..., help="pick-style, pick-safety or custom."),
    split: str | None = typer.Option(None, help="Preset split: cartoon or pixel (pick-style)."),
    chosen_prefix: str | None = typer.Option(None, help="custom: prefix of the chosen prompt."),
    rejected_prefix: str | None = typer.Option(None, help="custom: prefix of the rejected prompt."),
    out: str | None = typer.Option(None, help="Output folder [default: runs/<preset>-<split>]."),
    prompts: str | None = typer.Option(
        None, help="Prompt file (txt/jsonl/csv/parquet) or Hub dataset id [default: shipped prompt set]."
    ),
    prompt_column: str | None = typer.Option(None, help="Column with the prompts (jsonl/csv/parquet/Hub)."),
    prompt_split: str | None = typer.Option(None, help="Split of a Hub prompt dataset [default: train]."),
    num_pairs: int | None = typer.Option(None, help="Number of pairs [default: every curated prompt]."),
    style_words: str | None = typer.Option(
        None, help="drop | strip | off for prompts with style words [default: drop; off for pick-safety]."
    ),
    require_words: str | None = typer.Option(None, help="Comma-separated: keep prompts mentioning one."),
    max_tokens: int = typer.Option(77, help="CLIP token budget of the full prompt, prefix included."),
    model: str = typer.Option(DEFAULT_MODEL, help="Hub id, local diffusers folder, or 'tiny'."),
    revision: str | None = typer.Option(None, help="Hub revision of the model."),
    vae: str | None = typer.Option(None, help="VAE override [default: sdxl-vae-fp16-fix with fp16]."),
    dtype: str = typer.Option("auto", help="fp16, bf16, fp32 or auto (fp16 on CUDA, fp32 on the CPU)."),
    device: str | None = typer.Option(None, help="torch device [default: the accelerate process's]."),
    steps: int = typer.Option(30, help="Denoising steps."),
    guidance_scale: float = typer.Option(5.0, help="Classifier-free guidance scale."),
    height: int | None = typer.Option(None, help="Height, multiple of 8 [default: model native, 1024]."),
    width: int | None = typer.Option(None, help="Width, multiple of 8 [default: model native, 1024]."),
    scheduler: str | None = typer.Option(
        None, help="euler, euler_a, ddim, dpmpp_2m, dpmpp_2m_karras, unipc, pndm."
    ),
    negative_prompt: str | None = typer.Option(None, help="Negative prompt for every image."),
    batch_size: int = typer.Option(4, help="Pairs per pipeline call."),
    compile: bool = typer.Option(False, "--compile", help="torch.compile the UNet."),
    cpu_threads: int | None = typer.Option(None, help="torch threads on the CPU [default: 1 for tiny]."),
    seed: int = typer.Option(0, help="Global seed (prompt sampling and per-pair noise)."),
    independent_noise: bool = typer.Option(
        False, "--independent-noise", help="Different initial noise for chosen and rejected."
    ),
    chosen_position: str = typer.Option(
        "random",
        help="random: the chosen image in jpg_0 or jpg_1 by a coin from --seed and the pair id; "
        "first: always jpg_0.",
    ),
    shard_size: int = typer.Option(500, help="Pairs per parquet shard."),
    image_format: str = typer.Option("jpeg", help="jpeg, png or webp."),
    quality: int = typer.Option(95, help="JPEG/WebP quality."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard a previous run in --out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show prompts and settings; load no model."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Render SDXL preference pairs (chosen prefix vs rejected prefix on the same context prompt)
    into sharded parquet in the Pick-a-Pic column format."""
    from mapo_data.build import BuildConfig, prepare_prompts, run_build
    from mapo_data.render import RenderConfig

    render = RenderConfig(
        model=model,
        revision=revision,
        vae=vae,
        dtype=dtype,
        device=device,
        steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        scheduler=scheduler,
        negative_prompt=negative_prompt,
        compile=compile,
        cpu_threads=cpu_threads,
    )
    config = BuildConfig(
        preset=preset,
        split=split,
        chosen_prefix=chosen_prefix,
        rejected_prefix=rejected_prefix,
        out=out or f"runs/{preset}" + (f"-{split}" if split else ""),
        prompts=prompts,
        prompt_column=prompt_column,
        prompt_split=prompt_split,
        num_pairs=num_pairs,
        style_words=style_words,
        require_words=split_words(require_words),
        max_tokens=max_tokens,
        seed=seed,
        independent_noise=independent_noise,
        chosen_position=chosen_position,
        shard_size=shard_size,
        batch_size=batch_size,
        image_format=image_format,
        quality=quality,
        overwrite=overwrite,
        render=render,
    )
    preset_info = config.resolved_preset()
    if dry_run:
        pairs, info = prepare_prompts(config)
        typer.echo(
            f"preset {preset_info.label}: chosen prefix {preset_info.chosen_prefix!r}, "
            f"rejected prefix {preset_info.rejected_prefix!r}"
        )
        for step in info["curation"]:
            typer.echo(f"  curation {step['step']}: {step['before']} -> {step['after']}")
        typer.echo(
            f"{len(pairs)} pairs -> {config.out} ({-(-len(pairs) // shard_size)} shards); "
            f"model {model}, {steps} steps, guidance {guidance_scale}, dtype {dtype}, seed {seed}"
        )
        for pair in pairs:
            typer.echo(f"[{pair.pair_id}] chosen:   {pair.prompt_chosen}")
            typer.echo(f"[{pair.pair_id}] rejected: {pair.prompt_rejected}")
        return
    result = run_build(config, progress=progress)
    from accelerate import PartialState

    if result.manifest is not None and PartialState().is_main_process:
        rate = result.rendered_pairs / result.seconds if result.seconds else 0.0
        typer.echo(
            f"done: {result.num_pairs} pairs in {result.num_shards} shards, {result.bytes / 2**20:.1f} MiB, "
            f"rendered {result.rendered_pairs} in {result.seconds:.1f}s ({rate:.2f} pairs/s) -> {result.out}",
            err=True,
        )
