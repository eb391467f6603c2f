"""`mapo-train` (training): parse a recipe and overrides, call ``mapo_train.train.train``.

mapo-train --recipe RECIPE.yaml [section.key=value ...] [--resume latest|PATH]
"""

from __future__ import annotations

import argparse

from mapo_data.errors import MapoError

EXAMPLES = """\
examples:
  mapo-train --recipe recipes/train/quickstart-tiny.yaml          # CPU, offline, about 15 s
  mapo-train --recipe recipes/train/pick-style-pixel.yaml train.learning_rate=5e-6 data.path=runs/pixel
  mapo-train --recipe recipes/train/pick-style-pixel.yaml --resume latest
  accelerate launch --config_file recipes/accelerate/8gpu-zero2.yaml -m mapo_train --recipe recipes/train/pickapic-v2.yaml
  mapo-train --recipe recipes/train/pick-safety.yaml --print-config   # show the resolved settings
  mapo-train --keys                                                   # every setting, with its meaning

subcommands:
  mapo-train eval ...    compare base and fine-tuned models (mapo-train eval --help)
  mapo-train cache ...   precompute latents and text embeddings (mapo-train cache --help)
  mapo-train export ...  write a finished run as a single-file checkpoint or kohya LoRA (mapo-train export --help)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mapo-train",
        description="Fine-tune SDXL on preference pairs with MaPO (or Diffusion-DPO / SFT), through accelerate.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--recipe", metavar="YAML", help="training recipe (see recipes/train/)")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="section.key=value",
        help="override recipe settings, e.g. train.max_steps=10",
    )
    parser.add_argument(
        "--resume",
        metavar="latest|PATH",
        help="continue from the newest checkpoint in train.output_dir, or a folder",
    )
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration and exit"
    )
    parser.add_argument("--keys", action="store_true", help="list every configuration key and exit")
    return parser


def run(argv: list[str]) -> int:
    # Overrides may come anywhere on the line, before or after --resume and --print-config.
    args = build_parser().parse_intermixed_args(argv)
    from mapo_train.config import describe_fields, dump_config, load_config

    if args.keys:
        print(describe_fields())
        return 0
    if args.recipe is None and not args.overrides:
        raise MapoError("give a recipe: mapo-train --recipe recipes/train/quickstart-tiny.yaml (see --help)")
    cfg = load_config(args.recipe, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    from mapo_train.train import train

    result = train(cfg, resume=args.resume)
    if not result.main_process:
        return 0
    weights = result.weights or result.output_dir
    steps = f"{result.global_step} step" + ("" if result.global_step == 1 else "s")
    print(f"done: {steps}; weights in {weights}")
    if result.validation_grid is not None:
        print(f"validation grid: {result.validation_grid}")
    print(f"curves: {result.output_dir / 'curves.png'}; model card: {result.output_dir / 'README.md'}")
    return 0
