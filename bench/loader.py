"""Data loader throughput: decoded and preprocessed pairs/s per worker against what a step consumes.

    python bench/loader.py --pairs 64

Measures ``mapo_train.data.PairDataset`` (decode both images, resize the shorter side, one crop and
one flip for the pair, to tensors) in this process, i.e. one worker, and through a DataLoader with
2 workers, at the tiny model's 64² and at SDXL's 1024² (sources 1152x896 JPEG, like typical
Pick-a-Pic images).
Consumption is read from runs/bench-train/train_vs_dpo.json when present (CPU) and estimated
for SDXL on one H100 from DESIGN.md's FLOP counts.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# SDXL at 1024²: UNet forward+backward about 20 TFLOP per image (DESIGN.md), two images a pair.
SDXL_TFLOP_PER_PAIR = 2 * 20.0
H100_BF16_DENSE_TFLOPS = 989.0


def write_jpeg_pairs(path: Path, n: int, width: int, height: int) -> Path:
    import numpy as np
    import pandas as pd
    from PIL import Image

    from mapo_train.learning_check import blocky_image, smooth_image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        images = []
        for make in (blocky_image, smooth_image):
            array = make(rng, max(width, height))[:height, :width]
            buf = io.BytesIO()
            Image.fromarray(array).save(buf, format="JPEG", quality=90)
            images.append(buf.getvalue())
        rows.append(
            {"caption": f"pair {i}", "jpg_0": images[0], "jpg_1": images[1], "label_0": 1, "label_1": 0}
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path.parent


def rate(dataset, keys, workers: int, collate) -> float:
    import torch

    if workers == 0:
        start = time.perf_counter()
        for key in keys:
            dataset[key]
        return len(keys) / (time.perf_counter() - start)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, sampler=keys, num_workers=workers, collate_fn=lambda x: x, prefetch_factor=4
    )
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    start = time.perf_counter()
    count = sum(1 for _ in it)
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--work", default="runs/bench-loader")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed H100 MFU for the SDXL estimate")
    args = parser.parse_args()

    import torch

    from mapo_train.config import DataConfig
    from mapo_train.data import collate_pairs, load_pair_data

    torch.set_num_threads(1)
    work = Path(args.work)
    results = {}
    for resolution, (w, h) in ((64, (80, 64)), (1024, (1152, 896))):
        folder = write_jpeg_pairs(work / f"pairs-{resolution}" / "train-00000.parquet", args.pairs, w, h)
        data = load_pair_data(DataConfig(path=str(folder), resolution=resolution), seed=0)
        keys = [(0, i) for i in range(len(data.index))]
        one = rate(data.dataset, keys, 0, collate_pairs)
        two = rate(data.dataset, keys * 2, 2, collate_pairs)
        results[f"{resolution}"] = {"pairs_per_s_one_worker": one, "pairs_per_s_two_workers": two}
        print(f"{resolution}²: {one:.1f} pairs/s in one worker, {two:.1f} pairs/s with 2 workers (2 cores)")

    consumption = {}
    bench = Path("runs/bench-train/train_vs_dpo.json")
    if bench.is_file():
        for model, rows in json.loads(bench.read_text()).items():
            for name, r in rows.items():
                consumption[f"{model} {name} (CPU)"] = r["batch_pairs"] / r["step_s_median"]
    sdxl = H100_BF16_DENSE_TFLOPS * args.mfu / SDXL_TFLOP_PER_PAIR
    consumption[f"SDXL 1024² MaPO on one H100 at {args.mfu:.0%} MFU (estimate)"] = sdxl
    for name, pairs_per_s in consumption.items():
        res = "1024" if "SDXL" in name else ("64" if name.startswith("tiny") else None)
        need = f", {pairs_per_s / results[res]['pairs_per_s_one_worker']:.2f} workers needed" if res else ""
        print(f"consumes {pairs_per_s:.1f} pairs/s: {name}{need}")
    results["consumption_pairs_per_s"] = consumption
    (work / "loader.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
