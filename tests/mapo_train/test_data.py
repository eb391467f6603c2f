"""Reading pairs: chosen from labels (not position), ties, preprocessing shared within a pair,
bad images, and the seeded, resumable, rank-aware order."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mapo_data.errors import MapoError
from mapo_train.config import DataConfig
from mapo_train.data import PairBatchSampler, build_index, crop_and_flip, load_pair_data, pair_rng

from .conftest import write_pairs

RED, BLUE = (255, 0, 0), (0, 0, 255)


def solid(color, size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def gradient(width=96, height=64) -> bytes:
    """An image whose every pixel differs, so any crop offset or flip shows."""
    x = np.linspace(0, 255, width)[None, :, None]
    y = np.linspace(0, 255, height)[:, None, None]
    array = np.concatenate(
        [
            np.broadcast_to(x, (height, width, 1)),
            np.broadcast_to(y, (height, width, 1)),
            np.broadcast_to((x + y) / 2, (height, width, 1)),
        ],
        axis=2,
    )
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_labelled(path, labels, dtype="float64"):
    """Chosen image red, rejected blue; where each sits follows the labels."""
    rows = []
    for i, (l0, l1) in enumerate(labels):
        first_is_chosen = l0 >= l1
        rows.append(
            {
                "caption": f"pair {i}",
                "jpg_0": solid(RED if first_is_chosen else BLUE),
                "jpg_1": solid(BLUE if first_is_chosen else RED),
                "label_0": l0,
                "label_1": l1,
            }
        )
    df = pd.DataFrame(rows).astype({"label_0": dtype, "label_1": dtype})
    df.to_parquet(path)
    return path


def cfg_for(path, **kw) -> DataConfig:
    return DataConfig(path=str(path), resolution=64, num_workers=0, **kw)


@pytest.mark.parametrize("dtype", ["float64", "int64"])
def test_chosen_comes_from_labels_not_position(tmp_path, dtype):
    labels = [(1, 0), (0, 1), (0, 1), (1, 0), (0, 1)]
    path = write_labelled(tmp_path / "pairs.parquet", labels, dtype)
    data = load_pair_data(cfg_for(path, random_flip=False), seed=0)
    assert list(data.index.chosen) == [0, 1, 1, 0, 1]
    for position in range(len(data.dataset)):
        item = data.dataset[(0, position)]
        # red chosen: channel 0 at +1, channel 2 at -1; blue rejected the other way round
        assert item["pixels_w"][0].mean().item() == pytest.approx(1.0)
        assert item["pixels_w"][2].mean().item() == pytest.approx(-1.0)
        assert item["pixels_l"][2].mean().item() == pytest.approx(1.0)
        assert item["caption"] == f"pair {position}"


def test_ties_drop_and_keep(tmp_path):
    labels = [(1.0, 0.0), (0.5, 0.5), (0.0, 1.0), (0.5, 0.5)]
    path = write_labelled(tmp_path / "pairs.parquet", labels)
    dropped = load_pair_data(cfg_for(path), seed=0)
    assert list(dropped.index.rows) == [0, 2]
    assert dropped.index.ties == 2 and dropped.index.ties_dropped == 2
    kept = load_pair_data(cfg_for(path, ties="keep"), seed=0)
    assert list(kept.index.rows) == [0, 1, 2, 3] and kept.index.ties_dropped == 0
    assert kept.index.chosen[0] == 0 and kept.index.chosen[2] == 1
    again = load_pair_data(cfg_for(path, ties="keep"), seed=0)
    assert list(again.index.chosen) == list(kept.index.chosen)  # the random winner is seeded


def test_build_index_random_ties_both_ways_and_invalid_labels():
    idx = build_index(np.full(200, 0.5), np.full(200, 0.5), ties="keep", seed=3)
    assert 60 < idx.chosen.sum() < 140
    idx = build_index(np.array([1.0, np.nan, 0.0]), np.array([0.0, 1.0, 1.0]))
    assert list(idx.rows) == [0, 2] and idx.invalid_labels == 1
    assert list(build_index(np.ones(10), np.zeros(10), max_pairs=3).rows) == [0, 1, 2]


def test_empty_after_filtering_is_a_clear_error(tmp_path):
    path = write_labelled(tmp_path / "pairs.parquet", [(0.5, 0.5), (0.5, 0.5)])
    with pytest.raises(MapoError, match=r"no usable pairs .* 2 ties dropped"):
        load_pair_data(cfg_for(path), seed=0)


def test_same_crop_and_flip_for_both_images_of_a_pair(tmp_path):
    g = gradient(96, 64)
    pd.DataFrame([{"caption": "g", "jpg_0": g, "jpg_1": g, "label_0": 0.0, "label_1": 1.0}] * 4).to_parquet(
        tmp_path / "g.parquet"
    )
    data = load_pair_data(cfg_for(tmp_path / "g.parquet", random_crop=True, random_flip=True), seed=0)
    crops, flips = set(), set()
    for epoch in range(6):
        for position in range(4):
            item = data.dataset[(epoch, position)]
            assert item["pixels_w"].shape == (3, 64, 64)
            assert torch.equal(item["pixels_w"], item["pixels_l"])
            assert torch.equal(item["time_ids_w"], item["time_ids_l"])
            h, w, top, left, th, tw = item["time_ids_w"].tolist()
            assert (h, w, th, tw) == (64, 96, 64, 64) and top == 0 and 0 <= left <= 32
            # Red channel rises left to right unless flipped.
            flipped = item["pixels_w"][0, 0, 0] > item["pixels_w"][0, 0, -1]
            flips.add(bool(flipped))
            crops.add(left)
            # Same (epoch, position): the same result.
            assert torch.equal(data.dataset[(epoch, position)]["pixels_w"], item["pixels_w"])
    assert flips == {True, False} and len(crops) > 2


def test_pair_of_different_sizes_gets_the_chosen_images_frame():
    a = Image.new("RGB", (128, 64))
    b = Image.new("RGB", (64, 96))
    (ia, ib), ids = crop_and_flip((a, b), 32, pair_rng(0, 0, 0), random_crop=True, random_flip=False)
    assert ia.size == ib.size == (32, 32)
    # One row for the pair: the chosen (first) image's original size, a window inside its 64x32 resize.
    assert ids[:2] == (64, 128) and ids[2] == 0 and 0 <= ids[3] <= 32 and ids[4:] == (32, 32)


def test_undecodable_images_are_skipped_and_counted(tmp_path):
    path = write_pairs(tmp_path / "p.parquet", n=6, bad=2)
    data = load_pair_data(cfg_for(path), seed=0)
    item = data.dataset[(0, 0)]  # rows 0 and 1 are broken: row 2 stands in
    assert item["bad"] == 2 and item["caption"] == "a cat number 2"
    all_bad = write_pairs(tmp_path / "q.parquet", n=3, bad=3)
    with pytest.raises(MapoError, match="could not be decoded"):
        load_pair_data(cfg_for(all_bad), seed=0).dataset[(0, 0)]


def test_mapo_data_folder_layout_and_column_check(tmp_path):
    out = tmp_path / "built"
    write_pairs(out / "data" / "train-00000.parquet", n=4)
    write_pairs(out / "data" / "train-00001.parquet", n=4, seed=1)
    write_pairs(out / "data" / "test-00000.parquet", n=2, seed=2)
    (out / "manifest.json").write_text(json.dumps({"format": "mapo-pairs"}))
    assert len(load_pair_data(cfg_for(out), seed=0).index) == 8
    assert len(load_pair_data(cfg_for(out, split="test"), seed=0).index) == 2
    pd.DataFrame({"caption": ["x"], "jpg_0": [b""], "label_0": [1]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(MapoError, match="missing column.*jpg_1"):
        load_pair_data(cfg_for(tmp_path / "bad.parquet"), seed=0)
    with pytest.raises(MapoError, match="no such local file or folder"):
        load_pair_data(cfg_for(tmp_path / "nowhere"), seed=0)


def test_sampler_is_seeded_rank_disjoint_and_resumable():
    def take(sampler, n):
        it = iter(sampler)
        return [next(it) for _ in range(n)]

    r0 = take(PairBatchSampler(20, 3, seed=1, rank=0, world=2), 7)
    r1 = take(PairBatchSampler(20, 3, seed=1, rank=1, world=2), 7)
    for a, b in zip(r0, r1, strict=True):
        assert not {p for _, p in a} & {p for _, p in b}
    # 20 // 6 = 3 steps per epoch; step 3 starts epoch 1
    assert [k[0] for k in r0[3]] == [1, 1, 1]
    assert take(PairBatchSampler(20, 3, seed=1, rank=0, world=2, start_step=4), 3) == r0[4:7]
    assert take(PairBatchSampler(20, 3, seed=2), 1) != take(PairBatchSampler(20, 3, seed=1), 1)
    with pytest.raises(MapoError, match="fewer than one batch"):
        PairBatchSampler(3, 2, seed=0, world=2)
