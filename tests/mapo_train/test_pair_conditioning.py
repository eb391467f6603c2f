"""A pair is conditioned as one: the rejected image is brought to the chosen image's size, then one
resize, one crop, one flip and one ``add_time_ids`` row serve both likelihoods, on the fly and in
the cache (as in the MaPO authors' and Diffusion-DPO's preprocessing)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mapo_train.config import DataConfig, config_from_dict
from mapo_train.data import collate_pairs, crop_and_flip, load_pair_data, pair_rng

from ..tolerances import CROSS_PATH, torch_kwargs

BICUBIC = Image.Resampling.BICUBIC


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def noise(width: int, height: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def ramp(width: int, height: int) -> np.ndarray:
    """Every row and column distinct, so a crop offset shows in the pixels."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([y % 256, (y // 256) * 50 + (x // 256) * 20, x % 256], axis=-1).astype(np.uint8)


def tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1).div(127.5).sub(1.0)


def write(path, pairs):
    """pairs: (chosen array, rejected array, chosen in jpg_0?) per row."""
    rows = []
    for i, (chosen, rejected, first) in enumerate(pairs):
        a, b = (chosen, rejected) if first else (rejected, chosen)
        rows.append(
            {
                "caption": f"pair {i}",
                "jpg_0": png(a),
                "jpg_1": png(b),
                "label_0": 1.0 if first else 0.0,
                "label_1": 0.0 if first else 1.0,
            }
        )
    pd.DataFrame(rows).to_parquet(path)
    return path


def before_the_fix(chosen, rejected, resolution, rng, random_crop, random_flip):
    """What mapo computed for an equal-size pair before pairs shared one frame, written out with
    PIL: shorter side to the resolution (rounded), one crop window, one flip, each image's own
    original size (equal here)."""
    imgs = [Image.fromarray(chosen), Image.fromarray(rejected)]
    w, h = imgs[0].size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    if size != (w, h):
        imgs = [img.resize(size, BICUBIC) for img in imgs]
    width, height = size
    if random_crop:
        top = int(rng.integers(0, height - resolution + 1))
        left = int(rng.integers(0, width - resolution + 1))
    else:
        top, left = (height - resolution) // 2, (width - resolution) // 2
    flip = bool(random_flip and rng.random() < 0.5)
    out = []
    for img in imgs:
        img = img.crop((left, top, left + resolution, top + resolution))
        out.append(tensor(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else img))
    crop_left = width - left - resolution if flip else left
    ids = torch.tensor([h, w, top, crop_left, resolution, resolution], dtype=torch.float32)
    return out[0], out[1], ids


@pytest.mark.parametrize("random_crop", [False, True])
@pytest.mark.parametrize("random_flip", [False, True])
def test_equal_size_pairs_are_bit_identical_to_before(tmp_path, random_crop, random_flip):
    sizes = [(40, 40), (48, 32), (32, 56), (45, 33), (32, 32), (101, 64)]  # (width, height)
    pairs = [(noise(w, h, 2 * i), noise(w, h, 2 * i + 1), i % 2 == 0) for i, (w, h) in enumerate(sizes)]
    path = write(tmp_path / "pairs.parquet", pairs)
    cfg = DataConfig(
        path=str(path), resolution=32, num_workers=0, random_crop=random_crop, random_flip=random_flip
    )
    data = load_pair_data(cfg, seed=3)
    for epoch in range(3):
        for position in range(len(pairs)):
            chosen, rejected, _ = pairs[int(data.index.rows[position])]
            item = data.dataset[(epoch, position)]
            want_w, want_l, want_ids = before_the_fix(
                chosen, rejected, 32, pair_rng(3, epoch, position), random_crop, random_flip
            )
            assert torch.equal(item["pixels_w"], want_w)
            assert torch.equal(item["pixels_l"], want_l)
            assert torch.equal(item["time_ids_w"], want_ids)
            assert torch.equal(item["time_ids_l"], want_ids)


@pytest.mark.parametrize("chosen_first", [True, False])
def test_larger_chosen_conditions_both_sides(tmp_path, chosen_first):
    """The 1024² vs 512² pair in small: 64² chosen, 32² rejected at resolution 32."""
    chosen, rejected = noise(64, 64, 0), noise(32, 32, 1)
    path = write(tmp_path / "pairs.parquet", [(chosen, rejected, chosen_first)])
    data = load_pair_data(DataConfig(path=str(path), resolution=32, num_workers=0, random_flip=False), 0)
    item = data.dataset[(0, 0)]
    want_ids = torch.tensor([64.0, 64.0, 0.0, 0.0, 32.0, 32.0])
    assert torch.equal(item["time_ids_w"], want_ids) and torch.equal(item["time_ids_l"], want_ids)
    assert torch.equal(item["pixels_w"], tensor(Image.fromarray(chosen).resize((32, 32), BICUBIC)))
    # The rejected image is first brought to the chosen one's 64x64, then resized with it.
    up = Image.fromarray(rejected).resize((64, 64), BICUBIC).resize((32, 32), BICUBIC)
    assert torch.equal(item["pixels_l"], tensor(up))


def test_smaller_chosen_conditions_both_sides_and_position_does_not_matter(tmp_path):
    chosen, rejected = noise(32, 32, 0), noise(64, 64, 1)
    path = write(tmp_path / "pairs.parquet", [(chosen, rejected, True), (chosen, rejected, False)])
    data = load_pair_data(DataConfig(path=str(path), resolution=32, num_workers=0, random_flip=False), 0)
    a, b = data.dataset[(0, 0)], data.dataset[(0, 1)]
    want_ids = torch.tensor([32.0, 32.0, 0.0, 0.0, 32.0, 32.0])
    for item in (a, b):
        assert torch.equal(item["time_ids_w"], want_ids) and torch.equal(item["time_ids_l"], want_ids)
        assert torch.equal(item["pixels_w"], tensor(Image.fromarray(chosen)))
        assert torch.equal(item["pixels_l"], tensor(Image.fromarray(rejected).resize((32, 32), BICUBIC)))
    # Whichever column holds the winner, the pair trains the same.
    for key in ("pixels_w", "pixels_l", "time_ids_w", "time_ids_l"):
        assert torch.equal(a[key], b[key])


@pytest.mark.parametrize("random_flip", [False, True])
def test_tall_chosen_is_centre_cropped_not_at_the_other_images_edge(tmp_path, random_flip):
    """1152x896 (height x width) chosen against 1025x1023 rejected at resolution 896: before the fix
    the shared window had to fit the rejected image's 898-pixel height, so the chosen image was
    cropped at top 1; now it is centred: top (1152 - 896) / 2 = 128."""
    chosen, rejected = ramp(896, 1152), ramp(1023, 1025)[::-1].copy()
    path = write(tmp_path / "pairs.parquet", [(chosen, rejected, False)])
    data = load_pair_data(
        DataConfig(path=str(path), resolution=896, num_workers=0, random_flip=random_flip), 0
    )
    item = data.dataset[(0, 0)]
    want_ids = torch.tensor([1152.0, 896.0, 128.0, 0.0, 896.0, 896.0])
    assert torch.equal(item["time_ids_w"], want_ids) and torch.equal(item["time_ids_l"], want_ids)
    flipped = bool(random_flip and pair_rng(0, 0, 0).random() < 0.5)
    window = Image.fromarray(chosen).crop((0, 128, 896, 1024))
    if flipped:
        window = window.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert torch.equal(item["pixels_w"], tensor(window))
    # Row 0 of the crop is row 128 of the chosen image (red channel holds the row number).
    assert round((item["pixels_w"][0, 0, 0].item() + 1) * 127.5) == 128


def test_off_centre_window_and_flip_offsets():
    """Chosen 60 wide, 40 high at resolution 32 -> 48x32; the centred window starts at left 8, and
    seen in a flipped image it starts 48 - 8 - 32 = 8 from the new left edge. A random window's
    left offset L is reported as 16 - L once flipped."""
    chosen, rejected = Image.new("RGB", (60, 40)), Image.new("RGB", (30, 50))
    _, ids = crop_and_flip((chosen, rejected), 32, pair_rng(0, 0, 0), random_crop=False, random_flip=False)
    assert ids == (40, 60, 0, 8, 32, 32)
    for position in range(40):
        rng = pair_rng(1, 0, position)
        top, left = int(rng.integers(0, 1)), int(rng.integers(0, 17))
        flip = rng.random() < 0.5
        _, ids = crop_and_flip(
            (chosen, rejected), 32, pair_rng(1, 0, position), random_crop=True, random_flip=True
        )
        assert ids == (40, 60, top, 16 - left if flip else left, 32, 32)


def test_cache_stores_the_pairs_one_conditioning(tmp_path, tiny_model_path):
    from diffusers import AutoencoderKL

    from mapo_train.cache import prepare_cached_data

    pairs = [
        (noise(64, 64, 0), noise(32, 32, 1), True),
        (noise(32, 32, 2), noise(64, 64, 3), False),
        (noise(60, 40, 4), noise(40, 56, 5), True),
        (noise(40, 56, 6), noise(60, 40, 7), False),
    ]
    write(tmp_path / "pairs.parquet", pairs)
    cfg = config_from_dict(
        {
            "model": "tiny",
            "data": {
                "path": str(tmp_path / "pairs.parquet"),
                "resolution": 32,
                "num_workers": 0,
                "random_flip": True,
                "cache": str(tmp_path / "cc"),
            },
            "train": {"mixed_precision": "no", "report_to": "none"},
            "validation": {"enabled": False},
        }
    )
    cached = prepare_cached_data(cfg, "no", progress=False)
    fly = load_pair_data(cfg.data, cfg.train.seed)
    vae = AutoencoderKL.from_pretrained(tiny_model_path, subfolder="vae").eval()
    for epoch in range(3):  # different flips per epoch
        items = [fly.dataset[(epoch, p)] for p in range(len(pairs))]
        batch = collate_pairs(items)
        with torch.no_grad():
            means = vae.encode(torch.cat([batch["pixels_w"], batch["pixels_l"]])).latent_dist.mean
        mean_w, mean_l = means.chunk(2)
        for p, item in enumerate(items):
            c = cached.dataset[(epoch, p)]
            assert torch.equal(c["time_ids_w"], item["time_ids_w"])
            assert torch.equal(c["time_ids_l"], item["time_ids_w"])
            torch.testing.assert_close(c["mean_w"], mean_w[p], **torch_kwargs(CROSS_PATH))
            torch.testing.assert_close(c["mean_l"], mean_l[p], **torch_kwargs(CROSS_PATH))
