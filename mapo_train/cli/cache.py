"""`mapo-train cache`: precompute a recipe's VAE latents and text embeddings.

mapo-train cache --recipe RECIPE.yaml [section.key=value ...]
accelerate launch -m mapo_train cache --recipe RECIPE.yaml      (shards split across processes)

The cache goes where ``data.cache`` says (``auto`` when the recipe says ``off``), in a folder
named by its key; training with ``data.cache=auto`` (or the same folder) then finds it.
"""

from __future__ import annotations

import argparse

EXAMPLES = """\
examples:
  mapo-train cache --recipe recipes/train/quickstart-tiny.yaml
  mapo-train cache --recipe recipes/train/pick-style-pixel.yaml data.cache=/data/mapo-cache data.cache_dtype=float16
  accelerate launch -m mapo_train cache --recipe recipes/train/pickapic-v2.yaml
then train on it:
  mapo-train --recipe recipes/train/quickstart-tiny.yaml data.cache=auto
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mapo-train cache",
        description="Encode every pair of a recipe's dataset once (VAE latents of both images, both "
        "flips, and the caption's text embeddings) so training needs neither the VAE nor the text encoders.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--recipe", metavar="YAML", required=True, help="training recipe (see recipes/train/)"
    )
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="override recipe settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides anywhere on the line
    from mapo_train.cache import build_cache
    from mapo_train.config import load_config

    cfg = load_config(args.recipe, args.overrides)
    if cfg.data.streaming:
        from mapo_train.config import ConfigError

        raise ConfigError(
            "a streamed dataset cannot be cached (data.streaming=true); set data.streaming=false"
        )
    if cfg.data.cache == "off":
        cfg.data.cache = "auto"
    result = build_cache(cfg, progress=not args.no_progress)
    from accelerate import PartialState

    if PartialState().is_main_process:
        where = "auto" if result.root.parent == _default() else result.root.parent
        print(
            f"cache: {_count(result.num_pairs, 'pair')} in {result.root} ({result.shards_written} "
            f"{'shard' if result.shards_written == 1 else 'shards'} written, {result.shards_skipped} already "
            f"complete, {result.bad_pairs} undecodable); train on it with data.cache={where}"
        )
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _default():
    from mapo_train.cache import default_cache_root

    return default_cache_root()
