"""MaPO against Diffusion-DPO: step time and peak memory, same data, batch, model and settings.

    python bench/train_vs_dpo.py --models tiny,mid --threads 2

Each configuration runs in its own process (see bench/_common.py): MaPO on the fly, DPO on the
fly (full fine-tune, so DPO carries a frozen reference UNet), and MaPO on the latent cache.
Ratios are computed from figures measured in this one run. Writes train_vs_dpo.json to --work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import build_cache_for, measure  # noqa: E402

CONFIGS = [("mapo", "off"), ("dpo", "off"), ("mapo", "on"), ("dpo", "on")]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--work", default="runs/bench-train")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    for model in args.models.split(","):
        build_cache_for(model, work)
        rows = {f"{loss}/{cache}": measure(model, loss, cache, work, args.threads) for loss, cache in CONFIGS}
        base_t = rows["dpo/off"]["step_s_median"]
        base_m = rows["dpo/off"]["peak_above_baseline_mib"]
        print(f"\n{model} (threads={args.threads}):")
        print(f"{'config':<14}{'step s':>10}{'x DPO':>8}{'peak RSS MiB':>14}{'above base':>12}{'x DPO':>8}")
        for name, r in rows.items():
            t, m = r["step_s_median"], r["peak_above_baseline_mib"]
            print(
                f"{name:<14}{t:>10.4f}{t / base_t:>8.3f}{r['peak_rss_mib']:>14.0f}{m:>12.0f}{m / base_m:>8.3f}"
            )
        results[model] = rows
    (work / "train_vs_dpo.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
