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
import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from mapo_data.errors import MapoError

# The pair reader's one decode (orientation, transparency, bit depth, bomb limit), so training sees
# exactly what verify, curate and stats see; cache.py and stream.py take it from here.
from mapo_data.reader import decode_image
from mapo_data.resolve import no_download_count, resolve
from mapo_data.schema import (
    CAPTION,
    CHOSEN_0,
    CHOSEN_1,
    IMAGE_COLUMNS,
    INVALID,
    LABEL_COLUMNS,
    MANIFEST_NAME,
    REQUIRED_COLUMNS,
    TIE,
    classify_label_columns,
)
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
    common = check_pair_files(files) if files is not None else {}
    if files is not None:
        no_download_count()
    # `datasets` knows local files by path and mtime only: a file rewritten in place with its mtime
    # restored would load the old Arrow cache under the old fingerprint (and so the old latent cache
    # key). A config name from the files' content makes any change a new Arrow cache and a new
    # fingerprint; unchanged files (digests memoised) still reuse theirs.
    content = f"content-{local_files_digest(files)[:32]}" if files is not None else None
    try:
        if files is not None:
            ds = datasets.load_dataset(
                "parquet", name=content, data_files=files, split="train", cache_dir=cfg.cache_dir, **common
            )
        else:
            # Decided before datasets is asked, which would retry an unreachable Hub for a while.
            resolve(cfg.path, "data.path", repo_type="dataset", cache_dir=cfg.cache_dir)
            ds = datasets.load_dataset(cfg.path, split=cfg.split, cache_dir=cfg.cache_dir)
    except MapoError:
        raise
    except Exception as err:  # datasets raises many types; the user needs the gist, one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MapoError(f"could not load pairs from {cfg.path} (split {cfg.split}): {first}") from err
    check_pair_features(ds, f"{cfg.path} (split {cfg.split})")
    return image_bytes_columns(ds.select_columns(list(REQUIRED_COLUMNS)))


def local_files_digest(files: list[str]) -> str:
    """sha256 (hex) over the files' contents in order (row order follows file order); each file's
    digest is memoised by ``mapo_data.identity.file_digest``. MapoError names an unreadable file."""
    from mapo_data.identity import file_digest

    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file_digest(file)}\n".encode())
    return digest.hexdigest()


def check_pair_files(files: list[str]) -> dict[str, Any]:
    """Every local file through the pair reader's opening check (readable parquet; required columns
    present once, with usable types) before `datasets` sees it, whose own errors name neither the
    file nor the cause. Raises a one-line MapoError naming the file.

    Returns extra ``load_dataset`` arguments: none when the files agree on the pair columns' types;
    otherwise one set of types that holds every file's values (see ``_common_features``).
    """
    from mapo_data.reader import check_pair_file

    opened = [check_pair_file(file) for file in files]
    if sum(pf.metadata.num_rows for pf in opened) == 0:
        # `datasets` would say only 'Instruction "train" corresponds to no data'.
        raise MapoError(
            f"no pairs to train on: {', '.join(files) if len(files) <= 3 else f'{len(files)} files'} "
            "hold 0 rows (a curate run that kept nothing?)"
        )
    return _common_features(files, [pf.schema_arrow for pf in opened])


def _common_features(files: list[str], schemas: list) -> dict[str, Any]:
    """`datasets` reads every file with the first file's types and fails, naming nothing, where a
    value does not fit: a 0.5/0.5 tie in a float64 file after an int64 one (Pick-a-Pic shards
    beside ours). Where files differ, the pair columns are read as labels float64, captions string,
    images binary (or a datasets Image struct); struct images beside binary ones are refused."""
    import datasets
    import pyarrow as pa

    types = {column: [schema.field(column).type for schema in schemas] for column in REQUIRED_COLUMNS}
    if all(len(set(kinds)) == 1 for kinds in types.values()):
        return {}
    features = {}
    for column, kinds in types.items():
        if len(set(kinds)) == 1:
            features[column] = datasets.Features.from_arrow_schema(pa.schema([schemas[0].field(column)]))[
                column
            ]
        elif column in LABEL_COLUMNS:
            features[column] = datasets.Value("float64")  # exact for ints below 2**53; bools as 1/0
        elif column == CAPTION:
            features[column] = datasets.Value("string")
        else:
            structs = [pa.types.is_struct(kind) for kind in kinds]
            if any(structs) and not all(structs):
                a, b = structs.index(True), structs.index(False)
                raise MapoError(
                    f"{files[a]} stores {column} as {kinds[a]} but {files[b]} as {kinds[b]}: "
                    "datasets cannot read them as one dataset; train on them separately or rewrite one"
                )
            features[column] = datasets.Image(decode=False) if all(structs) else datasets.Value("binary")
    return {"columns": list(REQUIRED_COLUMNS), "features": datasets.Features(features)}


def check_pair_features(ds, source: str) -> None:
    """The same column check on what `datasets` loaded (a Hub dataset's features); a no-op when a
    stream does not know its features before reading."""
    from mapo_data.schema import PairFormatError, check_schema

    if ds.features is None:
        return
    try:
        check_schema(ds.features.arrow_schema, source)
    except PairFormatError as err:
        raise MapoError(str(err)) from err


def image_bytes_columns(ds):
    """Image columns as `{"bytes": ...}` dicts instead of PIL images: a `datasets` Image feature
    decodes on access with its own rules; the pair reader's decode must be the only one."""
    import datasets

    for column in IMAGE_COLUMNS:
        feature = (ds.features or {}).get(column)
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds


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
    label_0: Any, label_1: Any, ties: str = "drop", seed: int = 0, max_pairs: int | None = None
) -> PairIndex:
    """Decide chosen/rejected from the labels (never from the position) by the pair schema's label
    rule (``mapo_data.schema.classify_label_columns``).

    ``label_0``/``label_1`` are whole columns of one length (numpy, pyarrow or lists). A tie
    (0.5/0.5) is dropped, or kept with a winner drawn from ``seed`` (so reruns agree). Rows with
    invalid labels (null, NaN, not numbers, 1/1, 2/-1...) are never trained, under either policy,
    and are counted apart from the ties.
    """
    if ties not in ("drop", "keep"):
        raise ValueError(f"ties must be drop or keep, got {ties!r}")
    outcome = classify_label_columns(label_0, label_1)
    tie = outcome == TIE
    chosen = (outcome == CHOSEN_1).astype(np.int8)
    keep = (outcome == CHOSEN_0) | (outcome == CHOSEN_1)
    if ties == "keep":
        coin = np.random.default_rng([seed, 0x7135]).integers(0, 2, size=len(outcome)).astype(np.int8)
        chosen = np.where(tie, coin, chosen)
        keep |= tie
    rows = np.flatnonzero(keep).astype(np.int64)
    if max_pairs is not None:
        rows = rows[:max_pairs]
    return PairIndex(
        rows=rows,
        chosen=chosen[rows],
        total=len(outcome),
        ties=int(tie.sum()),
        ties_dropped=int(tie.sum()) if ties == "drop" else 0,
        invalid_labels=int((outcome == INVALID).sum()),
    )


def index_table(ds, cfg: DataConfig, seed: int) -> PairIndex:
    """Build the PairIndex of a loaded table; a table without usable pairs is a MapoError."""
    # The Arrow columns go to the rule as they are: nulls, strings and other types are its to judge.
    index = build_index(
        ds.data.column(LABEL_COLUMNS[0]),
        ds.data.column(LABEL_COLUMNS[1]),
        ties=cfg.ties,
        seed=seed,
        max_pairs=cfg.max_pairs,
    )
    if len(index) == 0:
        ties = (
            f"{index.ties_dropped} ties dropped (data.ties=drop)"
            if cfg.ties == "drop"
            else f"{index.ties} ties"
        )
        raise MapoError(
            f"no usable pairs in {cfg.path}: {index.total} rows, {ties}, "
            f"{index.invalid_labels} with invalid labels (never trained)"
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
) -> tuple[list[Image.Image], tuple[int, int, int, int, int, int]]:
    """Bring a pair (chosen first, rejected second) into one frame, then crop and flip it as one.

    The rejected image is resized to the chosen image's size (when they differ), so the pair has
    one original size; both are then resized so the shorter side is ``resolution`` and share one
    crop window (centred, or drawn from ``rng``) and one flip. Returns the two images, each
    ``resolution`` x ``resolution``, and the pair's single SDXL micro-conditioning row
    ``add_time_ids``: the chosen image's original height and width, crop top and left (in the
    final, possibly flipped, frame), target height and width. Both likelihoods are conditioned on
    this one row.

    This follows the MaPO authors' and Diffusion-DPO's preprocessing (the second image resized to
    the first's size, one crop, one time-ids row), with one difference: they anchor on ``jpg_0``
    because they resize before ordering the pair, whereas the anchor here is the chosen image, so
    a pair trains the same whichever column holds the winner and the chosen image always keeps its
    own size, aspect and truthful conditioning. Resizing the rejected image to the chosen one's
    size first (not straight to the target) is deliberate: it then carries no more detail than an
    image of that original size, which is what the shared conditioning says. Pairs of equal size
    are unaffected by the anchoring (today's Pick-Style and Pick-Safety pairs all are).
    """
    chosen, rejected = images
    if rejected.size != chosen.size:
        rejected = rejected.resize(chosen.size, Image.Resampling.BICUBIC)
    w, h = chosen.size
    scale = resolution / min(w, h)
    size = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
    resized = [
        img.resize(size, Image.Resampling.BICUBIC) if size != img.size else img for img in (chosen, rejected)
    ]
    width, height = size
    if random_crop:
        top = int(rng.integers(0, height - resolution + 1))
        left = int(rng.integers(0, width - resolution + 1))
    else:
        top, left = (height - resolution) // 2, (width - resolution) // 2
    flip = bool(random_flip and rng.random() < 0.5)
    out = []
    for img in resized:
        img = img.crop((left, top, left + resolution, top + resolution))
        if flip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out.append(img)
    # Seen in the flipped image, the window starts this far from the (new) left edge.
    crop_left = width - left - resolution if flip else left
    return out, (h, w, top, crop_left, resolution, resolution)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB image -> float tensor [3, H, W] in [-1, 1] (what the VAE expects)."""
    array = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).div(127.5).sub(1.0)


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
    (img_w, img_l), time_ids = crop_and_flip(images, cfg.resolution, rng, cfg.random_crop, cfg.random_flip)
    caption = row[CAPTION] or ""
    if cfg.proportion_empty_prompts and rng.random() < cfg.proportion_empty_prompts:
        caption = ""
    return {
        "pixels_w": to_tensor(img_w),
        "pixels_l": to_tensor(img_l),
        "caption": caption,
        # One micro-conditioning row for both likelihoods (see crop_and_flip).
        "time_ids_w": torch.tensor(time_ids, dtype=torch.float32),
        "time_ids_l": torch.tensor(time_ids, dtype=torch.float32),
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


@dataclass(frozen=True)
class DataPosition:
    """Where an indexed run stands in its data: ``pairs`` consumed (by all processes together) of
    epoch ``epoch``'s permutation. Recorded in checkpoints; independent of batch size, gradient
    accumulation and process count, so a run resumed with other values of these continues the
    same permutation at the same pair."""

    epoch: int = 0
    pairs: int = 0

    def settled(self, round_size: int, num_pairs: int) -> DataPosition:
        """The same position, moved to the next epoch's start when fewer than ``round_size``
        pairs are left in this one (an epoch's tail that fills no round is skipped, so every
        process takes the same number of steps)."""
        if self.pairs + round_size > num_pairs:
            return DataPosition(self.epoch + 1, 0)
        return self

    def advance(self, round_size: int, num_pairs: int, rounds: int = 1) -> DataPosition:
        """The position after ``rounds`` rounds of ``round_size`` pairs (batch x processes)."""
        pos = self.settled(round_size, num_pairs)
        for _ in range(rounds):
            pos = DataPosition(pos.epoch, pos.pairs + round_size).settled(round_size, num_pairs)
        return pos

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pairs": self.pairs}


def epoch_order(seed: int, epoch: int, num_pairs: int) -> np.ndarray:
    """Epoch ``epoch``'s permutation of the pair positions 0..num_pairs-1."""
    return np.random.default_rng([seed, epoch, 0x5EED]).permutation(num_pairs)


def index_digest(index: PairIndex) -> str:
    """A short hash of which rows are trained and which image of each is chosen: two indexes
    with the same digest address the same pairs at the same positions."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(index.rows, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(index.chosen, dtype=np.int8).tobytes())
    return h.hexdigest()[:16]


class PairBatchSampler(torch.utils.data.Sampler):
    """Endless, seeded, rank-aware batches of (epoch, position) keys, starting at any pair offset.

    Epoch e visits a permutation drawn from (seed, e) in rounds of B x world pairs: from offset o,
    rank r takes [o + r*B, o + (r+1)*B). The last incomplete round of an epoch is dropped so every
    rank takes the same number of steps. ``start`` (a ``DataPosition``, what checkpoints record)
    says where to begin; without it, ``start_step`` micro-steps of this batch size and world are
    counted from the beginning.
    """

    def __init__(
        self,
        num_pairs: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        start_step: int = 0,
        start: DataPosition | None = None,
    ):
        self.num_pairs, self.batch_size, self.seed = num_pairs, batch_size, seed
        self.rank, self.world, self.start_step = rank, world, start_step
        self.round_size = batch_size * world
        self.steps_per_epoch = num_pairs // self.round_size
        if self.steps_per_epoch == 0:
            raise MapoError(
                f"{num_pairs} usable pairs are fewer than one batch across processes "
                f"({batch_size} x {world}); lower train.batch_size or add data"
            )
        if start is None:
            epoch, within = divmod(start_step, self.steps_per_epoch)
            start = DataPosition(epoch, within * self.round_size)
        self.start = start.settled(self.round_size, num_pairs)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        pos = self.start
        while True:
            order = epoch_order(self.seed, pos.epoch, self.num_pairs)
            for offset in range(pos.pairs, self.num_pairs - self.round_size + 1, self.round_size):
                start = offset + self.rank * self.batch_size
                yield [(pos.epoch, int(p)) for p in order[start : start + self.batch_size]]
            pos = DataPosition(pos.epoch + 1, 0)


class IndexedLoaderMixin:
    """``loader()`` for data that has an ``index``, a ``dataset`` and a ``collate`` function."""

    index: PairIndex
    dataset: Any
    collate: Any

    def loader(
        self,
        batch_size: int,
        seed: int,
        rank: int,
        world: int,
        start_step: int,
        num_workers: int,
        start: DataPosition | None = None,
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
            start=start,
        )


@dataclass
class PairData(IndexedLoaderMixin):
    """Everything the trainer needs from the data side."""

    table: Any
    index: PairIndex
    dataset: PairDataset
    collate = staticmethod(collate_pairs)

    @property
    def fingerprint(self) -> str | None:
        """`datasets`' fingerprint of the table (changes when its files do)."""
        return getattr(self.table, "_fingerprint", None)


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
    start: DataPosition | None = None,
) -> torch.utils.data.DataLoader:
    """A loader over an indexed pair dataset whose seeded batch order resumes at ``start`` (a
    checkpoint's pair position), else at micro-step ``start_step``."""
    sampler = PairBatchSampler(length, batch_size, seed, rank, world, start_step, start=start)
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
