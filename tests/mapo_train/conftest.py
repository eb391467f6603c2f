"""Fixtures for mapo_train tests: small pair parquet files written with pandas and PIL only (not
with mapo-data, so the reader is tested against the format, not against our writer)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image


def encode_png(array: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def write_pairs(path: Path, n: int = 8, size: int = 64, seed: int = 0, ties: int = 0, bad: int = 0) -> Path:
    """n pairs of random images; labels float64; the chosen image alternates between jpg_0 and
    jpg_1; the last ``ties`` rows are 0.5/0.5 ties; the first ``bad`` rows have broken bytes."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a = encode_png(rng.integers(0, 256, (size, size, 3)))
        b = encode_png(rng.integers(0, 256, (size, size, 3)), fmt="JPEG")
        label_0, label_1 = (1.0, 0.0) if i % 2 == 0 else (0.0, 1.0)
        if i >= n - ties:
            label_0 = label_1 = 0.5
        if i < bad:
            a = b"not an image"
        rows.append(
            {
                "caption": f"a cat number {i}",
                "jpg_0": a,
                "jpg_1": b,
                "label_0": label_0,
                "label_1": label_1,
                "pair": i,
            }
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.fixture
def pairs_parquet(tmp_path) -> Path:
    return write_pairs(tmp_path / "pairs" / "train-00000.parquet")


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """accelerate keeps process-wide singletons; each test starts from a clean one. Torch runs on
    one thread: the tiny model's ops are too small to gain from more, and on a shared 2-core
    machine a second thread that has to wait for a core makes every op many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
