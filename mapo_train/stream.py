"""Training on a stream: pair datasets too big for the disk or memory (Pick-a-Pic v2, 335 GB).

``data.streaming: true`` reads the pairs through `datasets` streaming (a Hub id or local parquet
files), shuffled by a buffer of ``data.shuffle_buffer`` pairs, with no index built up front.
Chosen/rejected, ties, crops, flips and empty prompts are decided per row exactly as in
``mapo_train.data``, from generators keyed by (seed, epoch, rank, worker, count).

Resuming: every batch carries the state of the stream that produced it (datasets'
``IterableDataset.state_dict()``, taken inside the data loader worker, plus the epoch and count).
The trainer keeps the latest state per worker and stores it in each checkpoint; ``--resume``
hands the states back, and each worker continues its stream from there instead of starting over.
As datasets documents, the shuffle buffer itself is not saved: it is refilled from the saved
position, so the few pairs that sat in the buffer at save time are not replayed.

A stream has no length: an "epoch" is one pass of a worker over its share, after which it starts
the next (reshuffled) pass; DDP ranks and loader workers each read their own share of the files.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from mapo_data.errors import MapoError
from mapo_data.schema import LABEL_COLUMNS, REQUIRED_COLUMNS
from mapo_train.config import DataConfig
from mapo_train.data import collate_pairs, preprocess_pair, resolve_parquet_files

log = logging.getLogger(__name__)

STATE_KEY = "stream"


def open_stream(cfg: DataConfig, seed: int, rank: int = 0, world: int = 1):
    """The pair rows as a shuffled `datasets.IterableDataset`, this rank's share only."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    files = resolve_parquet_files(cfg.path, cfg.split)
    try:
        if files is not None:
            ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
        else:
            if cfg.path.startswith((".", "/", "~")) or cfg.path.count("/") != 1:
                raise MapoError(f"data.path {cfg.path} does not exist (and is not a Hub dataset id)")
            ds = datasets.load_dataset(cfg.path, split=cfg.split, streaming=True)
    except MapoError:
        raise
    except Exception as err:  # datasets raises many types; the user needs the gist, one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MapoError(f"could not stream pairs from {cfg.path} (split {cfg.split}): {first}") from err
    columns = ds.column_names
    if columns is not None:  # some Hub datasets only know their columns once read
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise MapoError(f"{cfg.path} is not in the pair format: missing column(s) {', '.join(missing)}")
        ds = ds.select_columns(list(REQUIRED_COLUMNS))
    if cfg.shuffle_buffer:
        ds = ds.shuffle(seed=seed, buffer_size=cfg.shuffle_buffer)
    if world > 1:
        ds = split_dataset_by_node(ds, rank=rank, world_size=world)
    return ds


def decide(label_0: Any, label_1: Any, ties: str, rng: np.random.Generator) -> int | None:
    """The chosen image's column (0 or 1) from one row's labels, or None to skip the row
    (a tie under ties=drop, or missing labels), as ``data.build_index`` decides for a table."""
    try:
        l0, l1 = float(label_0), float(label_1)
    except (TypeError, ValueError):
        return None
    if not (np.isfinite(l0) and np.isfinite(l1)):
        return None
    if l0 == l1:
        return int(rng.integers(0, 2)) if ties == "keep" else None
    return 1 if l1 > l0 else 0


class StreamingPairs(torch.utils.data.IterableDataset):
    """Preprocessed pairs from a stream; each item carries the stream state after it."""

    def __init__(self, ds, cfg: DataConfig, seed: int, rank: int = 0, resume: dict[int, Any] | None = None):
        self.ds = ds
        self.cfg = cfg
        self.seed = seed
        self.rank = rank
        self.resume = resume or {}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        saved = self.resume.get(worker)
        epoch, count = (saved["epoch"], saved["count"]) if saved else (0, 0)
        stats = dict(saved["stats"]) if saved else {"ties_dropped": 0, "bad": 0}
        ds = self.ds
        pending_bad = 0  # skipped since the last item, reported with the next one
        ds.set_epoch(epoch)
        if saved:
            ds.load_state_dict(saved["hf"])
        while True:
            produced = False
            for row in ds:
                produced = True
                rng = np.random.default_rng([self.seed, epoch, self.rank, worker, count])
                count += 1
                chosen = decide(row[LABEL_COLUMNS[0]], row[LABEL_COLUMNS[1]], self.cfg.ties, rng)
                if chosen is None:
                    stats["ties_dropped"] += 1
                    continue
                try:
                    item = self._preprocess(row, chosen, rng)
                except (OSError, ValueError, Image.DecompressionBombError) as err:
                    stats["bad"] += 1
                    pending_bad += 1
                    log.debug("skipping undecodable pair: %s", err)
                    continue
                item["bad"], pending_bad = pending_bad, 0
                item["stream_state"] = (
                    worker,
                    {"epoch": epoch, "count": count, "hf": ds.state_dict(), "stats": dict(stats)},
                )
                yield item
            if not produced:
                raise MapoError(f"the stream {self.cfg.path} gave no rows to this process/worker")
            epoch, count = epoch + 1, 0
            ds.set_epoch(epoch)  # a new pass, reshuffled

    def _preprocess(self, row: dict[str, Any], chosen: int, rng: np.random.Generator) -> dict[str, Any]:
        return preprocess_pair(row, chosen, self.cfg, rng)


def collate_stream(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch = collate_pairs(items)
    batch["stream_state"] = items[-1]["stream_state"]  # (worker, state after its last item)
    return batch


@dataclass
class StreamIndex:
    """What a stream knows of its pairs so far (the card and logs ask an index for these)."""

    seen: int = 0
    ties_dropped: int = 0

    def __len__(self) -> int:
        return self.seen


@dataclass
class StreamData:
    """The streaming counterpart of ``data.PairData``: a loader, and the stream position to
    checkpoint (``position``) and to resume from (``restore``)."""

    cfg: DataConfig
    seed: int
    rank: int
    world: int
    index: StreamIndex = field(default_factory=StreamIndex)
    states: dict[int, Any] = field(default_factory=dict)
    num_workers: int | None = None

    def loader(
        self, batch_size: int, seed: int, rank: int, world: int, start_step: int, num_workers: int
    ) -> torch.utils.data.DataLoader:
        # start_step is not needed: the saved states say where each worker's stream stands.
        if self.states and self.num_workers is not None and self.num_workers != max(num_workers, 1):
            raise MapoError(
                f"the checkpoint's stream position was saved with data.num_workers={self.num_workers}; "
                f"resume with the same number (now {num_workers})"
            )
        self.num_workers = max(num_workers, 1)
        ds = open_stream(self.cfg, seed, rank, world)
        return torch.utils.data.DataLoader(
            StreamingPairs(ds, self.cfg, seed, rank, resume=dict(self.states)),
            batch_size=batch_size,
            collate_fn=collate_stream,
            num_workers=num_workers,
            prefetch_factor=2 if num_workers else None,
        )

    def consumed(self, batch: dict[str, Any]) -> None:
        """Record that the trainer used ``batch``: its worker's stream now stands after it."""
        worker, state = batch["stream_state"]
        self.states[worker] = state
        self.index.seen += len(batch["captions"])
        self.index.ties_dropped = sum(s["stats"]["ties_dropped"] for s in self.states.values())

    def position(self, accelerator=None) -> dict[str, Any]:
        """The stream position of every process, for a checkpoint's trainer state (JSON-ready).
        Collective under several processes: every process must call it."""
        mine = {
            "num_workers": self.num_workers,
            "seen": self.index.seen,
            "workers": {str(k): v for k, v in self.states.items()},
        }
        ranks = [mine]
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            ranks = gather_object([mine])
        return {STATE_KEY: {"world": self.world, "ranks": ranks}}

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint's trainer state (a no-op when it holds no stream position)."""
        saved = state.get(STATE_KEY)
        if not saved:
            return
        if saved["world"] != self.world:
            raise MapoError(
                f"the checkpoint's stream position was saved with {saved['world']} processes; "
                f"resume with the same number (now {self.world})"
            )
        mine = saved["ranks"][self.rank]
        self.num_workers = mine["num_workers"]
        self.states = {int(k): v for k, v in mine["workers"].items()}
        self.index.seen = int(mine["seen"])


def load_stream_data(cfg: DataConfig, seed: int, rank: int, world: int) -> StreamData:
    """Check that the stream opens (fail before any model is loaded), and wrap it."""
    open_stream(cfg, seed, rank, world)
    return StreamData(cfg=cfg, seed=seed, rank=rank, world=world)
