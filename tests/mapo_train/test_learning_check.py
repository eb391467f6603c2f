"""The synthetic preference task: the property is measurable and the pairs follow the format."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mapo_train.learning_check import blocky_image, flatness, smooth_image, write_synthetic_pairs


def test_flatness_separates_the_two_kinds():
    rng = np.random.default_rng(0)
    blocky = [flatness(blocky_image(rng, 64)) for _ in range(20)]
    smooth = [flatness(smooth_image(rng, 64)) for _ in range(20)]
    assert min(blocky) > 0.8 and max(smooth) < 0.1
    assert flatness(np.zeros((8, 8, 3), np.uint8)) == 1.0


def test_pairs_follow_the_format_and_the_preference(tmp_path):
    from mapo_train.data import decode_image

    path = write_synthetic_pairs(tmp_path / "p.parquet", n=12, seed=3, size=32, prefer="blocky")
    df = pd.read_parquet(path)
    assert set(df.columns) >= {"caption", "jpg_0", "jpg_1", "label_0", "label_1"}
    assert 0 < df.label_0.sum() < 12  # the chosen image is not always in the same column
    for row in df.itertuples():
        chosen, rejected = (row.jpg_0, row.jpg_1) if row.label_0 == 1 else (row.jpg_1, row.jpg_0)
        assert flatness(decode_image(chosen)) > flatness(decode_image(rejected))
