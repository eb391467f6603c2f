"""Cached against on the fly: MaPO step time (and peak memory) with and without the latent cache.

    python bench/cache_vs_fly.py --models tiny,mid --threads 2

Same runner as bench/train_vs_dpo.py (one process per configuration, real trainer loop); the cache
is built beforehand in another process, so neither its build time nor its memory is counted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import build_cache_for, measure  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="tiny,mid")
    parser.add_argument("--work", default="runs/bench-train")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    work = Path(args.work)
    results = {}
    for model in args.models.split(","):
        build_cache_for(model, work)
        fly = measure(model, "mapo", "off", work, args.threads)
        cached = measure(model, "mapo", "on", work, args.threads)
        ratio = cached["step_s_median"] / fly["step_s_median"]
        print(
            f"{model}: on the fly {fly['step_s_median']:.4f} s/step, cached {cached['step_s_median']:.4f} s/step "
            f"({ratio:.3f}x); peak RSS {fly['peak_rss_mib']:.0f} -> {cached['peak_rss_mib']:.0f} MiB"
        )
        results[model] = {"fly": fly, "cached": cached, "ratio": ratio}
    (work / "cache_vs_fly.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
