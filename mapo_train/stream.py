"""Training on a stream: pair datasets too big for the disk or memory (Pick-a-Pic v2, 335 GB).

``data.streaming: true`` reads the pairs through `datasets` streaming (a Hub id or local parquet
files), shuffled by a buffer of ``data.shuffle_buffer`` rows, with no index built up front.
Chosen/rejected, ties, crops, flips and empty prompts are decided per row exactly as in
``mapo_train.data``, from generators keyed by (seed, epoch, rank, worker, count).

Resuming is exact: a resumed stream yields exactly the rows the uninterrupted one would have
yielded next. Every batch carries the state of the stream that produced it, taken inside the data
loader worker: datasets' ``IterableDataset.state_dict()`` for the read position, and the shuffle
buffer as row ordinals (``ShuffledRows``; datasets' own buffer would be lost on resume). The
trainer keeps the latest state per worker and stores it in each checkpoint; ``--resume`` hands the
states back, each worker re-reads the rows its buffer held (bytes only, no image is decoded) and
continues, and the loader hands out the workers' batches in the same turn as before.

A stream has no length: an "epoch" is one pass of a worker over its share, after which it starts
the next (reshuffled) pass; DDP ranks and loader workers each read their own share of the files.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from mapo_data.errors import MapoError
from mapo_data.resolve import no_download_count, resolve
from mapo_data.schema import INVALID, LABEL_COLUMNS, REQUIRED_COLUMNS, TIE, classify_labels
from mapo_train.config import DataConfig
from mapo_train.data import (
    check_pair_features,
    check_pair_files,
    collate_pairs,
    image_bytes_columns,
    preprocess_pair,
    resolve_parquet_files,
)

log = logging.getLogger(__name__)

STATE_KEY = "stream"


def open_stream(cfg: DataConfig, seed: int, rank: int = 0, world: int = 1):
    """The pair rows as an unshuffled `datasets.IterableDataset`, this rank's share only (the
    rows are shuffled by ``ShuffledRows``, whose buffer survives a resume)."""
    import datasets
    from datasets.distributed import split_dataset_by_node

    files = resolve_parquet_files(cfg.path, cfg.split)
    common = check_pair_files(files) if files is not None else {}
    if files is not None:
        no_download_count()
    if files is not None and cfg.shuffle_buffer:
        # datasets reorders the files itself from the second pass on; the first pass's order is seeded.
        files = [files[i] for i in np.random.default_rng([seed, 0xF11E]).permutation(len(files))]
    try:
        if files is not None:
            ds = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True, **common)
        else:
            # Decided before datasets is asked, which would retry an unreachable Hub for a while.
            resolve(cfg.path, "data.path", repo_type="dataset", cache_dir=cfg.cache_dir)
            ds = datasets.load_dataset(cfg.path, split=cfg.split, streaming=True)
    except MapoError:
        raise
    except Exception as err:  # datasets raises many types; the user needs the gist, one line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise MapoError(f"could not stream pairs from {cfg.path} (split {cfg.split}): {first}") from err
    check_pair_features(ds, f"{cfg.path} (split {cfg.split})")
    if ds.column_names is not None:  # some Hub datasets only know their columns once read
        ds = image_bytes_columns(ds.select_columns(list(REQUIRED_COLUMNS)))
    if world > 1:
        ds = split_dataset_by_node(ds, rank=rank, world_size=world)
    return ds


def decide(label_0: Any, label_1: Any, ties: str, rng: np.random.Generator) -> int:
    """One row's outcome under the pair schema's label rule (``mapo_data.schema.classify_labels``),
    as ``data.build_index`` decides for a table: the chosen image's column (CHOSEN_0 or CHOSEN_1,
    i.e. 0 or 1), TIE for a tie under ties=drop, INVALID for labels that are never trained. Under
    ties=keep a tie's winner is drawn from ``rng``."""
    outcome = classify_labels(label_0, label_1).outcome
    if outcome == TIE and ties == "keep":
        return int(rng.integers(0, 2))
    return outcome


#: The stream's counter for each kind of row it skips by its labels.
SKIPPED = {TIE: "ties_dropped", INVALID: "invalid_labels"}


class ShuffledRows:
    """One pass of one worker over its stream rows, shuffled by a buffer of ``size`` rows whose
    state can be saved and restored exactly.

    datasets' own shuffle buffer is lost on resume (its documented limit), which skips or repeats
    the rows it held. Here the buffer is ours: each row is known by its ordinal in the pass (the
    order the unshuffled stream gives it), the buffer's content is saved as ordinals (plus the
    stream position just before the oldest of them), and a resume re-reads that stretch of the
    stream once, without decoding any image, to put the same rows back in the same slots. Which
    slot is handed out next is drawn from a generator keyed by (``key``, draw number), so nothing
    depends on when the state was saved. ``size`` 0 hands rows out in stream order.

    Iterating yields ``(ordinal, row)``; ``state()`` (JSON-ready) is the position after the row
    last yielded, and ``ShuffledRows(ds, size, key, saved=state)`` continues from it.
    """

    def __init__(self, ds, size: int, key: list[int], saved: dict[str, Any] | None = None):
        self.ds, self.size, self.key = ds, size, list(key)
        self.read = 0  # rows taken from the stream in this pass: the next row's ordinal
        self.draws = 0  # rows handed out
        self.buffer: list[tuple[int, dict[str, Any], Any]] = []  # (ordinal, row, stream state before it)
        self._after = None  # the stream state after the last row read (None: the pass's start)
        self._saved = saved

    def state(self) -> dict[str, Any]:
        oldest = min(self.buffer, key=lambda entry: entry[0]) if self.buffer else None
        return {
            "read": self.read,
            "draws": self.draws,
            "buffer": [entry[0] for entry in self.buffer],
            "replay_ordinal": oldest[0] if oldest else None,
            "replay_from": oldest[2] if oldest else None,
            "hf": self._after,
        }

    def _restore(self) -> Iterator[dict[str, Any]]:
        """The stream iterator positioned after the saved state's last row read, with the saved
        buffer refilled."""
        saved, ds = self._saved, self.ds
        self.read, self.draws = int(saved["read"]), int(saved["draws"])
        if not saved["buffer"]:
            if saved["hf"] is not None:
                ds.load_state_dict(saved["hf"])
            self._after = saved["hf"]
            return iter(ds)
        if saved["replay_from"] is not None:
            ds.load_state_dict(saved["replay_from"])
        rows = iter(ds)
        wanted, found = set(saved["buffer"]), {}
        before = saved["replay_from"]
        for ordinal in range(int(saved["replay_ordinal"]), self.read):
            row = next(rows, None)
            if row is None:
                raise MapoError(
                    "the stream ended before its saved position: the files under data.path changed "
                    "since the checkpoint; resume on the same data or start a new run"
                )
            if ordinal in wanted:
                found[ordinal] = (row, before)
            before = ds.state_dict()
        self._after = before
        self.buffer = [(ordinal, *found[ordinal]) for ordinal in saved["buffer"]]
        return rows

    def _take(self) -> tuple[int, dict[str, Any]]:
        n = len(self.buffer)
        i = int(np.random.default_rng([*self.key, self.draws, 0xB0FF]).integers(n)) if n > 1 else 0
        self.draws += 1
        ordinal, row, _ = self.buffer[i]
        self.buffer[i] = self.buffer[-1]
        self.buffer.pop()
        return ordinal, row

    def __iter__(self) -> Iterator[tuple[int, dict[str, Any]]]:
        rows = self._restore() if self._saved else iter(self.ds)
        for row in rows:
            before, self._after = self._after, self.ds.state_dict()
            self.buffer.append((self.read, row, before))
            self.read += 1
            if len(self.buffer) > self.size:
                yield self._take()
        while self.buffer:  # the stream's end: hand out what the buffer holds
            yield self._take()


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
        if saved and "rows" not in saved:  # an unshuffled stream's position from an older mapo-train
            count = saved["count"]
            rows = {"read": count, "draws": count, "buffer": [], "replay_ordinal": None, "replay_from": None}
            saved = {**saved, "rows": {**rows, "hf": saved["hf"]}}
        epoch, count = (saved["epoch"], saved["count"]) if saved else (0, 0)
        stats = {"ties_dropped": 0, "invalid_labels": 0, "bad": 0} | (dict(saved["stats"]) if saved else {})
        ds = self.ds
        pending_bad = 0  # skipped since the last item, reported with the next one
        ds.set_epoch(epoch)
        while True:
            # The pass's rows, shuffled by a buffer whose content checkpoints keep (see ShuffledRows).
            shuffled = ShuffledRows(
                ds,
                self.cfg.shuffle_buffer,
                [self.seed, epoch, self.rank, worker],
                saved["rows"] if saved else None,
            )
            saved = None
            produced = count > 0  # a resumed pass (possibly resumed at its very end) has had rows
            # A whole pass that trains nothing would loop forever; the pass's counts say why.
            full_pass, pass_start, rows, yielded = count == 0, dict(stats), 0, 0
            for ordinal, row in shuffled:
                produced = True
                rows += 1
                # Keyed by the row's place in the unshuffled stream: the same row, the same draws.
                rng = np.random.default_rng([self.seed, epoch, self.rank, worker, ordinal])
                chosen = decide(row[LABEL_COLUMNS[0]], row[LABEL_COLUMNS[1]], self.cfg.ties, rng)
                if chosen in SKIPPED:
                    stats[SKIPPED[chosen]] += 1
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
                    {"epoch": epoch, "count": shuffled.read, "rows": shuffled.state(), "stats": dict(stats)},
                )
                yielded += 1
                yield item
            if not produced:
                raise MapoError(f"the stream {self.cfg.path} gave no rows to this process/worker")
            if full_pass and not yielded:
                skipped = {k: stats[k] - pass_start[k] for k in stats}
                raise MapoError(
                    f"no usable pairs in the stream {self.cfg.path} (this process/worker's share): {rows} rows, "
                    f"{skipped['ties_dropped']} ties dropped (data.ties={self.cfg.ties}), "
                    f"{skipped['invalid_labels']} with invalid labels (never trained), "
                    f"{skipped['bad']} undecodable"
                )
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
    invalid_labels: int = 0

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
    next_worker: int = 0  # whose batch the trainer takes next (the loader takes workers in turn)

    def loader(
        self,
        batch_size: int,
        seed: int,
        rank: int,
        world: int,
        start_step: int,
        num_workers: int,
        start: Any = None,
    ):
        """Batches of this process's stream: a DataLoader, or (when resuming mid-turn with several
        workers) an iterable over one that keeps the workers' turn."""
        # start_step and start are not needed: the saved states say where each worker's stream stands.
        if self.states and self.num_workers is not None and self.num_workers != max(num_workers, 1):
            raise MapoError(
                f"the checkpoint's stream position was saved with data.num_workers={self.num_workers}; "
                f"resume with the same number (now {num_workers})"
            )
        self.num_workers = max(num_workers, 1)
        ds = open_stream(self.cfg, seed, rank, world)
        loader = torch.utils.data.DataLoader(
            StreamingPairs(ds, self.cfg, seed, rank, resume=dict(self.states)),
            batch_size=batch_size,
            collate_fn=collate_stream,
            num_workers=num_workers,
            prefetch_factor=2 if num_workers else None,
        )
        if self.num_workers > 1 and self.next_worker:
            return _TakeInTurn(loader, self.num_workers, self.next_worker)
        return loader

    def consumed(self, batch: dict[str, Any]) -> None:
        """Record that the trainer used ``batch``: its worker's stream now stands after it."""
        worker, state = batch["stream_state"]
        self.states[worker] = state
        self.next_worker = (worker + 1) % (self.num_workers or 1)
        self.index.seen += len(batch["captions"])
        self.index.ties_dropped = sum(s["stats"]["ties_dropped"] for s in self.states.values())
        self.index.invalid_labels = sum(s["stats"].get("invalid_labels", 0) for s in self.states.values())

    def position(self, accelerator=None) -> dict[str, Any]:
        """The stream position of every process, for a checkpoint's trainer state (JSON-ready).
        Collective under several processes: every process must call it."""
        mine = {
            "num_workers": self.num_workers,
            "seen": self.index.seen,
            "next_worker": self.next_worker,
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
        self.next_worker = int(mine.get("next_worker", 0))


class _TakeInTurn:
    """A loader's batches in the workers' turn starting at worker ``first``.

    A DataLoader takes an iterable dataset's workers in turn from worker 0 (batch k comes from
    worker k mod n). An uninterrupted run saved after worker ``first - 1``'s batch would take
    worker ``first``'s next: each turn of a fresh loader is rotated to start there."""

    def __init__(self, loader, workers: int, first: int):
        self.loader, self.workers, self.first = loader, workers, first

    def __iter__(self) -> Iterator[dict[str, Any]]:
        batches = iter(self.loader)
        while True:
            turn = list(itertools.islice(batches, self.workers))
            yield from turn[self.first :] + turn[: self.first]
            if len(turn) < self.workers:
                return


def load_stream_data(cfg: DataConfig, seed: int, rank: int, world: int) -> StreamData:
    """Check that the stream opens (fail before any model is loaded), and wrap it."""
    open_stream(cfg, seed, rank, world)
    return StreamData(cfg=cfg, seed=seed, rank=rank, world=world)
