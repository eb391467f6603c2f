"""`mapo-train eval`: render base and fine-tuned models on the same prompts and seeds, judge them,
and write side-by-side grids, per-image scores and a report (Markdown + JSON).

Only argument parsing lives here; the work is ``mapo_train.eval.run.run_eval``.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from mapo_data.errors import MapoError
from mapo_data.single_file import ALLOW_PICKLE_HELP, MODEL_CONFIG_HELP

EXAMPLES = """\
examples:
  mapo-train eval --base tiny --tuned runs/quickstart --preset pick-style --split pixel --num-prompts 8   # CPU
  mapo-train eval --base stabilityai/stable-diffusion-xl-base-1.0 --tuned runs/pixel-mapo \\
      --preset pick-style --split pixel --prompts held_out.txt --out eval/pixel
  mapo-train eval --tuned runs/mapo --tuned runs/dpo --tuned runs/sft --name mapo --name dpo --name sft \\
      --preset pick-safety --dataset data/safety-pairs --judge nudenet \\
      --judge clip:openai/clip-vit-large-patch14 --judge pickscore --out eval/safety
  mapo-train eval --tuned runs/pixel-mapo/pytorch_lora_weights.safetensors --tuned someone/sdxl-pixel-mapo \\
      --preset pick-style --split pixel --prompts data/pixel-pairs --prompts-split test   # held-out split

judges (--judge, repeatable; default: from --preset):
  clip:MODEL          CLIP style judge: preferred vs dispreferred description (Hub id, folder, or tiny)
  nudenet[:THRESH]    NudeNet exposed-content detector (pip install 'mapo[safety]')
  pickscore[:MODEL]   PickScore of image and prompt
  hpsv2[:MODEL]       HPS v2 of image and prompt (transformers-format checkpoint)
  clipscore[:MODEL]   any CLIP-format model you name: image-prompt cosine (default: CLIP ViT-L/14)
  aesthetic[:FOLDER]  LAION aesthetic predictor v2 (FOLDER: a CLIP folder with aesthetic_head.safetensors)
  Models load from the Hub, its local cache, or a folder; one that cannot be loaded stops the run with
  one line saying so, before anything is rendered.

outputs (in --out): images/<model>/NNNN.png, grids/base_vs_<model>.png, scores.csv, scores.json,
report.md, report.json. With one tuned run folder, --out defaults to <run>/eval. The model card
(README.md) of every evaluated run folder gets its Evaluation section rewritten with the headline
numbers and a link to the report.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mapo-train eval",
        description="Compare a base SDXL model with fine-tuned ones: same prompts (no prefix), same seeds, "
        "judged by style, safety and preference scorers; win rates with confidence intervals.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    models = p.add_argument_group("models")
    models.add_argument(
        "--base",
        default=None,
        help="base model: Hub id, diffusers folder, tiny, or an SDXL single-file .safetensors "
        "(default: SDXL base 1.0)",
    )
    models.add_argument(
        "--model-config",
        dest="model_config",
        metavar="DIR",
        help=MODEL_CONFIG_HELP.replace("--model", "--base"),
    )
    models.add_argument("--allow-pickle", action="store_true", help=ALLOW_PICKLE_HELP)
    models.add_argument(
        "--tuned",
        action="append",
        required=True,
        metavar="RUN|UNET|LORA|HUB_ID",
        help="fine-tuned model: a mapo-train run folder, a UNet folder, LoRA weights, or a Hub id (repeatable)",
    )
    models.add_argument(
        "--name", action="append", dest="names", metavar="LABEL", help="label per --tuned, in order"
    )
    models.add_argument(
        "--lora-scale",
        type=float,
        default=1.0,
        help="strength of LoRA weights; 1.0 (default) is the strength they were trained with",
    )

    judging = p.add_argument_group("judges")
    judging.add_argument(
        "--preset",
        choices=["pick-style", "pick-safety", "custom"],
        help="dataset preset: default judges and descriptions",
    )
    judging.add_argument("--split", help="preset split (pick-style: pixel, cartoon)")
    judging.add_argument(
        "--judge", action="append", dest="judges", metavar="SPEC", help="judge spec (repeatable; see below)"
    )
    judging.add_argument("--preferred-text", help="what the preferred side looks like (CLIP style judge)")
    judging.add_argument("--dispreferred-text", help="what the dispreferred side looks like")
    judging.add_argument(
        "--confidence", type=float, default=0.95, help="interval confidence level (default 0.95)"
    )

    prompts = p.add_argument_group("prompts")
    prompts.add_argument(
        "--prompts",
        metavar="SOURCE",
        help="context prompts: .txt (one a line), .jsonl/.json/.csv/.parquet, a dataset folder or a Hub "
        "dataset, as mapo-data build reads them (default: the package's prompt set)",
    )
    prompts.add_argument(
        "--prompts-column", metavar="NAME", help="prompt column (default: caption/prompt/text)"
    )
    prompts.add_argument(
        "--prompts-split", metavar="SPLIT", help="split of a prompt dataset, e.g. a held-out test split"
    )
    prompts.add_argument(
        "--num-prompts", type=int, help="use N prompts (default: all of a file, 32 of the default set)"
    )
    prompts.add_argument(
        "--dataset",
        metavar="PAIRS",
        help="training pairs (folder, parquet file or Hub id): prompts found there are left out "
        "(default: the run's data.path)",
    )
    prompts.add_argument(
        "--dataset-split",
        metavar="SPLIT",
        help="split trained on (default: the run's data.split, else train)",
    )
    prompts.add_argument("--include-train-prompts", action="store_true", help="keep prompts seen in training")
    prompts.add_argument("--images-per-prompt", type=int, default=1, help="seeds per prompt (default 1)")
    prompts.add_argument("--seed", type=int, default=0, help="first seed (default 0)")

    render = p.add_argument_group("rendering")
    render.add_argument("--steps", type=int, default=30, help="denoising steps per image (default 30)")
    render.add_argument(
        "--guidance-scale", type=float, default=5.0, help="classifier-free guidance scale (default 5.0)"
    )
    render.add_argument(
        "--height", type=int, help="image height in pixels (default: the base model's native size)"
    )
    render.add_argument(
        "--width", type=int, help="image width in pixels (default: the base model's native size)"
    )
    render.add_argument(
        "--dtype", choices=["fp16", "bf16", "fp32"], help="default: fp16 on CUDA, fp32 on CPU"
    )
    render.add_argument("--device", help="torch device (default: accelerate's)")
    render.add_argument("--scheduler", help="scheduler short name, as in mapo-data build")
    render.add_argument(
        "--negative-prompt", metavar="TEXT", help="negative prompt for every image (default: none)"
    )
    render.add_argument("--batch-size", type=int, default=4, help="images per pipeline call (default 4)")
    render.add_argument(
        "--judge-batch-size", type=int, default=16, help="images scored per judge call (default 16)"
    )

    output = p.add_argument_group("output")
    output.add_argument(
        "--out", help="output folder (default: <run>/eval for one tuned run folder, else eval)"
    )
    output.add_argument("--grid-cell", type=int, default=256, help="grid image side in pixels (default 256)")
    output.add_argument("--grid-columns", type=int, default=4, help="image pairs per grid row (default 4)")
    return p


def config_from_args(args: argparse.Namespace):
    from pathlib import Path

    from mapo_data.render import DEFAULT_MODEL
    from mapo_train.eval.config import EvalConfig

    out = args.out
    if out is None:
        run = Path(args.tuned[0])
        out = str(run / "eval") if len(args.tuned) == 1 and run.is_dir() else "eval"
    return EvalConfig(
        tuned=list(args.tuned),
        base=args.base or DEFAULT_MODEL,
        base_config=args.model_config,
        allow_pickle=args.allow_pickle,
        names=args.names,
        preset=args.preset,
        split=args.split,
        preferred_text=args.preferred_text,
        dispreferred_text=args.dispreferred_text,
        judges=args.judges,
        prompts=args.prompts,
        prompts_column=args.prompts_column,
        prompts_split=args.prompts_split,
        num_prompts=args.num_prompts,
        dataset=args.dataset,
        dataset_split=args.dataset_split,
        include_train_prompts=args.include_train_prompts,
        out=out,
        seed=args.seed,
        images_per_prompt=args.images_per_prompt,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        height=args.height,
        width=args.width,
        dtype=args.dtype,
        device=args.device,
        scheduler=args.scheduler,
        negative_prompt=args.negative_prompt,
        lora_scale=args.lora_scale,
        batch_size=args.batch_size,
        judge_batch_size=args.judge_batch_size,
        confidence=args.confidence,
        grid_cell=args.grid_cell,
        grid_columns=args.grid_columns,
    )


def headline(report: dict) -> list[str]:
    """The closing lines: per judge, each model's verdict share and its change against the base,
    then each tuned model's win rate over prompts."""
    base = report["models"][0]["label"]
    conf = round(100 * report["settings"]["confidence"])
    lines = []
    for spec, res in report["results"].items():
        shares = {label: entry["verdict"] for label, entry in res["per_model"].items() if entry["verdict"]}
        for label, change in res.get("verdict_change", {}).items():
            b, t = shares[base], shares[label]
            lines.append(
                f"{spec}: {res['verdict_label']}: {base} {100 * b['rate']:.0f}% -> {label} {100 * t['rate']:.0f}% "
                f"({change['points']:+.0f} points, {conf}% CI [{change['low']:+.0f}, {change['high']:+.0f}])"
            )
        for label, h2h in res["versus_base"].items():
            lines.append(
                f"{spec}: {label} wins {100 * h2h['win_rate']:.1f}% of prompts against {base} "
                f"[{100 * h2h['low']:.1f}%, {100 * h2h['high']:.1f}%]"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Entry point for `mapo-train eval`; returns the exit status (user errors: one line, 2)."""
    from mapo_data.quiet import quiet_libraries

    # Library chatter (torchvision fallbacks, Hub retries) would bury the one-line messages.
    quiet_libraries()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # argparse prints usage errors and exits 2 itself
    try:
        config = config_from_args(args)
        from mapo_train.eval.run import run_eval

        result = run_eval(config, command=shlex.join(["mapo-train", "eval", *argv]))
    except MapoError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    if result is not None:
        print(f"report: {result.report_md}")
        for grid in result.grids:
            print(f"grid: {grid}")
        for card in result.cards:
            print(f"model card updated: {card}")
        for line in headline(result.report):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
