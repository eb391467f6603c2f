"""`mapo-train export`: write a finished run's weights in the formats other tools load.

mapo-train export RUN --to single-file|kohya-lora [--to ...]
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  mapo-train export runs/pixel-mapo --to single-file      # full fine-tune -> runs/pixel-mapo/sdxl_checkpoint.safetensors
  mapo-train export runs/pixel-lora --to kohya-lora       # LoRA run -> runs/pixel-lora/lora_kohya.safetensors
the same at the end of training: train.export=diffusers,single-file (or diffusers,kohya-lora)
single-file: one SDXL checkpoint (trained UNet, the base's VAE and text encoders) for ComfyUI,
  A1111/Forge and diffusers' from_single_file; kohya-lora: kohya's LoRA layout with per-module alpha,
  for kohya's scripts, ComfyUI, A1111/Forge and diffusers' load_lora_weights.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mapo-train export",
        description="Convert a finished mapo-train run (its unet/ or LoRA weights and training_config.yaml) "
        "into an SDXL single-file checkpoint or a kohya-format LoRA, written into the run folder. "
        "A single-file export loads the run's base model (model.pretrained) for its VAE and text encoders.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("run", metavar="RUN", help="a finished mapo-train run folder (train.output_dir)")
    parser.add_argument(
        "--to",
        action="append",
        required=True,
        choices=["single-file", "kohya-lora"],
        help="format to write (repeatable): single-file (full fine-tunes) or kohya-lora (LoRA runs)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from mapo_train.export import export_run

    for path in export_run(args.run, list(dict.fromkeys(args.to))):
        print(f"exported {path}")
    return 0
