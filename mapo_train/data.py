"""Reading pair datasets, deciding chosen/rejected, and preprocessing pairs into tensors.

Pairs are read through `datasets`, which memory-maps Arrow files, so even a large local copy is
never held in memory; only the label columns are read up front (to drop ties and decide winners).
Images are decoded lazily, one pair at a time, in the data loader's workers.

Every random choice for a pair (crop, flip, empty prompt) comes from a generator seeded with
(seed, epoch, position), never from global state, so a resumed run sees exactly the pairs and
crops an uninterrupted run would have seen.
"""

from __future__ import annotations

import glob
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mapo_data.errors import MapoError
from mapo_data.schema import CAPTION, IMAGE_COLUMNS, LABEL_COLUMNS, MANIFEST_NAME, REQUIRED_COLUMNS
from mapo_train.config import DataConfig

log = logging.getLogger(__name__)

# Pairs tried in a row after an undecodable one before giving up on the dataset altogether.
_MAX_CONSECUTIVE_BAD = 50


def resolve_parquet_files(path: str, split: str) -> list[str] | None:
    """Local parquet files for ``path``, or None when it is not local (then it is a Hub id).

    A `mapo-data build` folder (manifest.json + data/) or any folder with ``data/<split>-*.parquet``
    gives that split's shards; another folder gives every parquet file below it; a file or glob
    gives the matching files.
    """
    p = Path(path).expanduser()
    if p.is_dir():
        split_shards = sorted(glob.glob(str(p / "data" / f"{split}-*.parquet")))
        if split_shards:
            return split_shards
        if (p / MANIFEST_NAME).is_file():
            raise MapoError(f"{p} has a {MANIFEST_NAME} but no data/{split}-*.parquet shards")
        files = sorted(glob.glob(str(p / "**" / "*.parquet"), recursive=True))
        if not files:
            raise MapoError(f"no parquet files under {p}")
        return files
    if p.is_file():
        return [str(p)]
    if any(ch in path for ch in "*?["):
        files = sorted(glob.glob(str(p), recursive=True))
        if not files:
            raise MapoError(f"no files match {path}")
        return files
    return None


def load_pair_table(cfg: DataConfig):
    """The pair rows as a memory-mapped `datasets.Dataset` with only the pair-format columns."""
    import datasets

    files = resolve_parquet_files(cfg.path, cfg.split)
    try:
        if files is not None:
            ds = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=cfg.cache_dir)
        else:
            if cfg.path.startswith((".", "/", "~")) or cfg.path.count("/") != 1:
                raise MapoError(f"data.path {cfg.path} does not exist (and is not a Hub dataset id)")
            ds = datasets.load_dataset(cfg.path, split=cfg.split, cache_dir=cfg.cache_dir)
    except MapoError:
        raise
    except Exception as err:  # datasets raises many types; the user needs the gist, one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MapoError(f"could not load pairs from {cfg.path} (split {cfg.split}): {first}") from err
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise MapoError(
            f"{cfg.path} is not in the pair format: missing column(s) {', '.join(missing)} "
            f"(expected {', '.join(REQUIRED_COLUMNS)})"
        )
    return ds.select_columns(list(REQUIRED_COLUMNS))


@dataclass(frozen=True)
class PairIndex:
    """Which rows are trained on, and where the chosen image of each is (0 or 1)."""

    rows: np.ndarray  # int64 row numbers into the table
    chosen: np.ndarray  # int8, 0 or 1
    total: int
    ties: int
    ties_dropped: int
    invalid_labels: int

    def __len__(self) -> int:
        return len(self.rows)


def build_index(
    label_0: np.ndarray, label_1: np.ndarray, ties: str = "drop", seed: int = 0, max_pairs: int | None = None
) -> PairIndex:
    """Decide chosen/rejected from the labels (never from the position).

    Equal labels are a tie: dropped, or kept with a winner drawn from ``seed`` (so reruns agree).
    Rows whose labels are missing or NaN are skipped.
    """
    l0 = np.asarray(label_0, dtype=np.float64)
    l1 = np.asarray(label_1, dtype=np.float64)
    valid = np.isfinite(l0) & np.isfinite(l1)
    tie = valid & (l0 == l1)
    chosen = np.where(l1 > l0, 1, 0).astype(np.int8)
    if ties == "keep":
        coin = np.random.default_rng([seed, 0x7135]).integers(0, 2, size=len(l0)).astype(np.int8)
        chosen = np.where(tie, coin, chosen)
        keep = valid
    elif ties == "drop":
        keep = valid & ~tie
    else:
        raise ValueError(f"ties must be drop or keep, got {ties!r}")
    rows = np.flatnonzero(keep).astype(np.int64)
    if max_pairs is not None:
        rows = rows[:max_pairs]
    return PairIndex(
        rows=rows,
        chosen=chosen[rows],
        total=len(l0),
        ties=int(tie.sum()),
        ties_dropped=int(tie.sum()) if ties == "drop" else 0,
        invalid_labels=int((~valid).sum()),
    )


def _column_as_numpy(ds, name: str) -> np.ndarray:
    column = ds.data.column(name)
    # Nulls become NaN so that build_index counts them as invalid.
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)


def index_table(ds, cfg: DataConfig, seed: int) -> PairIndex:
    """Build the PairIndex of a loaded table; a table without usable pairs is a MapoError."""
    index = build_index(
        _column_as_numpy(ds, LABEL_COLUMNS[0]),
        _column_as_numpy(ds, LABEL_COLUMNS[1]),
        ties=cfg.ties,
        seed=seed,
        max_pairs=cfg.max_pairs,
    )
    if len(index) == 0:
        raise MapoError(
            f"no usable pairs in {cfg.path}: {index.total} rows, {index.ties_dropped} ties dropped "
            f"(data.ties=drop), {index.invalid_labels} with invalid labels"
        )
    return index


def pair_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator for one pair's random choices; depends on nothing but its arguments."""
    return np.random.default_rng([seed, epoch, position])


def crop_and_flip(
    images: tuple[Image.Image, Image.Image],
    resolution: int,
    rng: np.random.Generator,
    random_crop: bool,
    random_flip: bool,
) -> tuple[list[Image.Image], list[tuple[int, ...]]]:
    """Resize the shorter side to ``resolution``, then apply one crop and one flip to both images.

    Returns the images and, per image, SDXL's micro-conditioning ``add_time_ids``: original height
    and width, crop top and left (in the final, possibly flipped, frame), target height and width.
    """
    resized = []
    for img in images:
        w, h = img.size
        scale = resolution / min(w, h)
        size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        resized.append(img.resize(size, Image.Resampling.BICUBIC) if size != img.size else img)
    # The crop window must fit both images, which may differ in aspect ratio.
    width = min(img.size[0] for img in resized)
    height = min(img.size[1] for img in resized)
    if random_crop:
        top = int(rng.integers(0, height - resolution + 1))
        left = int(rng.integers(0, width - resolution + 1))
    else:
        top, left = (height - resolution) // 2, (width - resolution) // 2
    flip = bool(random_flip and rng.random() < 0.5)
    out, time_ids = [], []
    for original, img in zip(images, resized, strict=True):
        resized_width = img.size[0]
        img = img.crop((left, top, left + resolution, top + resolution))
        crop_left = left
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            # Seen in the flipped image, the window starts this far from the (new) left edge.
            crop_left = resized_width - left - resolution
        out.append(img)
        time_ids.append((original.size[1], original.size[0], top, crop_left, resolution, resolution))
    return out, time_ids


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> float tensor [3, H, W] in [-1, 1] (what the VAE expects)."""
    array = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0)


def decode_image(data: Any) -> Image.Image:
    """Encoded image bytes (or a datasets Image dict) -> a loaded PIL image; raises on bad data."""
    if isinstance(data, dict):
        data = data.get("bytes")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ValueError(f"image cell holds {type(data).__name__}, not bytes")
    img = Image.open(io.BytesIO(bytes(data)))
    img.load()
    return img.convert("RGB")


class PairDataset(torch.utils.data.Dataset):
    """Map-style dataset of preprocessed pairs, addressed by (epoch, position) keys.

    Each item: ``pixels_w``/``pixels_l`` [3, R, R], ``caption`` (empty when dropped for
    classifier-free guidance), ``time_ids_w``/``time_ids_l`` [6], and ``bad``: how many pairs were
    skipped as undecodable before this one was found.
    """

    def __init__(self, table, index: PairIndex, cfg: DataConfig, seed: int):
        self.table = table
        self.index = index
        self.cfg = cfg
        self.seed = seed

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, position = key
        bad = 0
        while True:
            try:
                item = self._load(epoch, position)
                item["bad"] = bad
                return item
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                bad += 1
                log.debug("skipping undecodable pair at row %s: %s", self.index.rows[position], err)
                if bad >= min(_MAX_CONSECUTIVE_BAD, len(self.index)):
                    raise MapoError(
                        f"{bad} pairs in a row could not be decoded in {self.cfg.path}; is it image data?"
                    ) from err
                # The next pair stands in, so batches keep their size (and DDP its step count).
                position = (position + 1) % len(self.index)

    def _load(self, epoch: int, position: int) -> dict[str, Any]:
        row = self.table[int(self.index.rows[position])]
        chosen = int(self.index.chosen[position])
        return preprocess_pair(row, chosen, self.cfg, pair_rng(self.seed, epoch, position))


def preprocess_pair(
    row: dict[str, Any], chosen: int, cfg: DataConfig, rng: np.random.Generator
) -> dict[str, Any]:
    """Decode a pair (chosen first), crop and flip both images alike, drop the caption for the
    pair as one with ``proportion_empty_prompts``; shared by the indexed and the streamed paths."""
    images = (decode_image(row[IMAGE_COLUMNS[chosen]]), decode_image(row[IMAGE_COLUMNS[1 - chosen]]))
    (img_w, img_l), (ids_w, ids_l) = crop_and_flip(
        images, cfg.resolution, rng, cfg.random_crop, cfg.random_flip
    )
    caption = row[CAPTION] or ""
    if cfg.proportion_empty_prompts and rng.random() < cfg.proportion_empty_prompts:
        caption = ""
    return {
        "pixels_w": to_tensor(img_w),
        "pixels_l": to_tensor(img_l),
        "caption": caption,
        "time_ids_w": torch.tensor(ids_w, dtype=torch.float32),
        "time_ids_l": torch.tensor(ids_l, dtype=torch.float32),
    }


def collate_pairs(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "pixels_w": torch.stack([i["pixels_w"] for i in items]),
        "pixels_l": torch.stack([i["pixels_l"] for i in items]),
        "captions": [i["caption"] for i in items],
        "time_ids_w": torch.stack([i["time_ids_w"] for i in items]),
        "time_ids_l": torch.stack([i["time_ids_l"] for i in items]),
        "bad": sum(i["bad"] for i in items),
    }


class PairBatchSampler(torch.utils.data.Sampler):
    """Endless, seeded, rank-aware batches of (epoch, position) keys, starting at any micro-step.

    Epoch e visits a permutation drawn from (seed, e); micro-step s of rank r takes the slice
    [(s*world + r)*B, ...+B) of it. The last incomplete round of an epoch is dropped so every
    rank takes the same number of steps. Knowing the micro-step is therefore knowing the data
    position: resuming only needs ``start_step``.
    """

    def __init__(
        self, num_pairs: int, batch_size: int, seed: int, rank: int = 0, world: int = 1, start_step: int = 0
    ):
        self.num_pairs, self.batch_size, self.seed = num_pairs, batch_size, seed
        self.rank, self.world, self.start_step = rank, world, start_step
        self.steps_per_epoch = num_pairs // (batch_size * world)
        if self.steps_per_epoch == 0:
            raise MapoError(
                f"{num_pairs} usable pairs are fewer than one batch across processes "
                f"({batch_size} x {world}); lower train.batch_size or add data"
            )

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        step = self.start_step
        while True:
            epoch, within = divmod(step, self.steps_per_epoch)
            order = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.num_pairs)
            for s in range(within, self.steps_per_epoch):
                start = (s * self.world + self.rank) * self.batch_size
                yield [(epoch, int(p)) for p in order[start : start + self.batch_size]]
            step = (epoch + 1) * self.steps_per_epoch


class IndexedLoaderMixin:
    """``loader()`` for data that has an ``index``, a ``dataset`` and a ``collate`` function."""

    index: PairIndex
    dataset: Any
    collate: Any

    def loader(
        self, batch_size: int, seed: int, rank: int, world: int, start_step: int, num_workers: int
    ) -> torch.utils.data.DataLoader:
        return indexed_loader(
            self.dataset,
            len(self.index),
            self.collate,
            batch_size,
            seed,
            rank,
            world,
            start_step,
            num_workers,
        )


@dataclass
class PairData(IndexedLoaderMixin):
    """Everything the trainer needs from the data side."""

    table: Any
    index: PairIndex
    dataset: PairDataset
    collate = staticmethod(collate_pairs)


def indexed_loader(
    dataset,
    length: int,
    collate,
    batch_size: int,
    seed: int,
    rank: int,
    world: int,
    start_step: int,
    num_workers: int,
) -> torch.utils.data.DataLoader:
    """A loader over an indexed pair dataset whose seeded batch order resumes at ``start_step``."""
    sampler = PairBatchSampler(length, batch_size, seed, rank, world, start_step)
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        prefetch_factor=2 if num_workers else None,
    )


def load_pair_data(cfg: DataConfig, seed: int) -> PairData:
    """Load, index and wrap a pair dataset (the on-the-fly path; a latent cache replaces this)."""
    table = load_pair_table(cfg)
    index = index_table(table, cfg, seed)
    return PairData(table=table, index=index, dataset=PairDataset(table, index, cfg, seed))
