"""`mapo-data build`: options in, BuildConfig out, run_build called. Nothing else lives here."""

from __future__ import annotations

import typer

from mapo_data.cli.app import app, split_words
from mapo_data.render import DEFAULT_MODEL
from mapo_data.single_file import ALLOW_PICKLE_HELP, MODEL_CONFIG_HELP
from mapo_data.text import human_bytes, plural


@app.command(
    epilog=(
        "Examples:\n\n"
        "  mapo-data build pick-style --split pixel --model tiny --num-pairs 32 --out runs/pixel\n\n"
        "  mapo-data build pick-safety --require-words woman,women,girl,female\n\n"
        '  mapo-data build custom --chosen-prefix "Watercolor painting." --rejected-prefix "Photograph."\n\n'
        "  accelerate launch -m mapo_data build pick-style --split cartoon --out runs/cartoon\n\n"
        "  mapo-data build judged --candidates 4 --judge pickscore --judge aesthetic --weights 1,0.5 "
        "--pairs best-worst --min-margin 0.1 --out runs/judged"
    )
)
def build(
    preset: str = typer.Argument(
        ..., help="pick-style, pick-safety, custom, or judged (N candidates per prompt ranked by --judge)."
    ),
    split: str | None = typer.Option(None, help="Preset split: cartoon or pixel (pick-style)."),
    chosen_prefix: str | None = typer.Option(None, help="custom: prefix of the chosen prompt."),
    rejected_prefix: str | None = typer.Option(None, help="custom: prefix of the rejected prompt."),
    out: str | None = typer.Option(None, help="Output folder [default: runs/<preset>-<split>]."),
    prompts: str | None = typer.Option(
        None, help="Prompt file (txt/jsonl/csv/parquet) or Hub dataset id [default: shipped prompt set]."
    ),
    prompt_column: str | None = typer.Option(None, help="Column with the prompts (jsonl/csv/parquet/Hub)."),
    prompt_split: str | None = typer.Option(None, help="Split of a Hub prompt dataset [default: train]."),
    num_pairs: int | None = typer.Option(
        None, help="Number of pairs (judged: of prompts) [default: every curated prompt]."
    ),
    style_words: str | None = typer.Option(
        None, help="drop | strip | off for prompts with style words [default: drop; off for pick-safety]."
    ),
    require_words: str | None = typer.Option(None, help="Comma-separated: keep prompts mentioning one."),
    max_tokens: int = typer.Option(77, help="CLIP token budget of the full prompt, prefix included."),
    model: str = typer.Option(
        DEFAULT_MODEL, help="Hub id, local diffusers folder, 'tiny', or an SDXL single-file .safetensors."
    ),
    model_config: str | None = typer.Option(None, help=MODEL_CONFIG_HELP),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help=ALLOW_PICKLE_HELP),
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
    batch_size: int = typer.Option(4, help="Pairs per pipeline call (judged: images per call)."),
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
    shard_size: int = typer.Option(500, help="Pairs per parquet shard (judged: prompts per shard)."),
    image_format: str = typer.Option("jpeg", help="jpeg, png or webp."),
    quality: int = typer.Option(95, help="JPEG/WebP quality."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Discard a previous run in --out."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show prompts and settings; load no model."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    candidates: int = typer.Option(4, help="judged: images per prompt (different seeds)."),
    judge: list[str] | None = typer.Option(
        None,
        help="judged: a judge spec (pickscore, hpsv2, aesthetic[:MODEL], clip:MODEL, clipscore[:MODEL], "
        "nudenet); repeat for a weighted sum.",
    ),
    weights: str | None = typer.Option(
        None, help="judged: comma-separated weight per --judge, e.g. 1,0.5 [default: all 1]."
    ),
    pairs: str = typer.Option("best-worst", help="judged: best-worst, adjacent or all ranked candidates."),
    min_margin: float = typer.Option(0.0, help="judged: smallest score gap of a written pair."),
    prefix: str | None = typer.Option(None, help="judged: prefix put in front of every caption."),
    keep_candidates: str | None = typer.Option(
        None, help="judged: also write every candidate to this folder (ranked layout, for import)."
    ),
    preferred_text: str | None = typer.Option(None, help="judged with clip:MODEL: the preferred look."),
    dispreferred_text: str | None = typer.Option(None, help="judged with clip:MODEL: the dispreferred look."),
    judge_batch_size: int = typer.Option(16, help="judged: images per judge call."),
) -> None:
    """Render SDXL preference pairs (chosen prefix vs rejected prefix on the same context prompt)
    into sharded parquet in the Pick-a-Pic column format."""
    from mapo_data.build import JUDGED, BuildConfig, prepare_prompts, run_build
    from mapo_data.errors import MapoError
    from mapo_data.judged import JudgedConfig, parse_weights
    from mapo_data.render import RenderConfig

    render = RenderConfig(
        model=model,
        model_config=model_config,
        allow_pickle=allow_pickle,
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
        judged=JudgedConfig(
            judges=tuple(judge or ()),
            weights=parse_weights(weights),
            candidates=candidates,
            pairs=pairs,
            min_margin=min_margin,
            prefix=prefix,
            keep_candidates=keep_candidates,
            preferred=preferred_text,
            dispreferred=dispreferred_text,
            judge_batch_size=judge_batch_size,
        )
        if preset == JUDGED or judge
        else None,
    )
    if config.judged is None:
        # Judged-only options on a prefix build would be ignored without a word.
        given = [
            name
            for name, value, default in (
                ("--candidates", candidates, 4),
                ("--weights", weights, None),
                ("--pairs", pairs, "best-worst"),
                ("--min-margin", min_margin, 0.0),
                ("--prefix", prefix, None),
                ("--keep-candidates", keep_candidates, None),
                ("--preferred-text", preferred_text, None),
                ("--dispreferred-text", dispreferred_text, None),
                ("--judge-batch-size", judge_batch_size, 16),
            )
            if value != default
        ]
        if given:
            raise MapoError(f"{', '.join(given)} only apply to build judged, not {preset}")
    preset_info = config.resolved_preset()
    if dry_run and config.judged is not None:
        units, info = prepare_prompts(config)
        for step in info["curation"]:
            typer.echo(f"  curation {step['step']}: {step['before']} -> {step['after']}")
        typer.echo(
            f"{len(units)} prompts x {candidates} candidates -> {config.out}; judge {config.judged.spec()}, "
            f"pairs {pairs}, min margin {min_margin:g}; model {model}, {steps} steps, seed {seed}"
        )
        for unit in units:
            typer.echo(f"[{unit.prompt_id}] {unit.prompt}")
        return
    if dry_run:
        pairs, info = prepare_prompts(config)
        typer.echo(
            f"preset {preset_info.label}: chosen prefix {preset_info.chosen_prefix!r}, "
            f"rejected prefix {preset_info.rejected_prefix!r}"
        )
        for step in info["curation"]:
            typer.echo(f"  curation {step['step']}: {step['before']} -> {step['after']}")
        typer.echo(
            f"{plural(len(pairs), 'pair')} -> {config.out} ({plural(-(-len(pairs) // shard_size), 'shard')}); "
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
        unit = "prompts" if config.judged is not None else "pairs"
        typer.echo(
            f"done: {plural(result.num_pairs, 'pair')} in {plural(result.num_shards, 'shard')}, "
            f"{human_bytes(result.bytes)}, "
            # A judged build renders prompts (each --candidates images), not pairs.
            f"rendered {result.rendered_pairs} in {result.seconds:.1f}s ({rate:.2f} {unit}/s) -> {result.out}",
            err=True,
        )
