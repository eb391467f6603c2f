"""Streaming: a local parquet folder read as a stream trains, and --resume continues the stream."""

from __future__ import annotations

import numpy as np
import pytest

from mapo_data.schema import INVALID, TIE
from mapo_train.config import config_from_dict
from mapo_train.stream import StreamData, decide
from mapo_train.train import train

from ..tolerances import REPLAY
from .conftest import write_pairs


@pytest.fixture
def stream_folder(tmp_path):
    # Three files, so the stream has several shards; captions carry the pair number.
    for i in range(3):
        write_pairs(tmp_path / "pairs" / f"part-{i}.parquet", n=6, size=32, seed=i, ties=1)
    return tmp_path / "pairs"


def _cfg(tmp_path, folder, steps: int, *overrides: str):
    data = {
        "model": "tiny",
        "data": {
            "path": str(folder),
            "resolution": 32,
            "num_workers": 0,
            "streaming": True,
            "shuffle_buffer": 0,
        },
        "train": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": steps,
            "batch_size": 2,
            "learning_rate": 1e-3,
            "mixed_precision": "no",
            "checkpoint_every": 2,
            "report_to": "none",
        },
        "validation": {"enabled": False},
    }
    return config_from_dict(data, list(overrides))


def test_decide_follows_the_labels():
    rng = np.random.default_rng(0)
    assert decide(1.0, 0.0, "drop", rng) == 0
    assert decide(0, 1, "drop", rng) == 1
    assert decide(0.5, 0.5, "drop", rng) == TIE
    assert decide(0.5, 0.5, "keep", rng) in (0, 1)
    # Invalid labels are skipped as invalid, never as a tie and never trained (not under keep either).
    assert decide(None, 1.0, "drop", rng) == INVALID
    assert decide(1, 1, "keep", rng) == INVALID


def test_stream_reads_every_pair_and_drops_ties(stream_folder, tmp_path):
    cfg = _cfg(tmp_path, stream_folder, 1)
    data = StreamData(cfg=cfg.data, seed=0, rank=0, world=1)
    loader = data.loader(batch_size=3, seed=0, rank=0, world=1, start_step=0, num_workers=0)
    captions = []
    for batch, _ in zip(loader, range(5), strict=False):  # 15 usable pairs = one pass
        data.consumed(batch)
        captions += batch["captions"]
    assert len(captions) == 15 and data.index.seen == 15
    assert data.index.ties_dropped >= 2  # the stream met the tie rows of the files read so far


def test_resume_continues_the_stream(stream_folder, tmp_path):
    straight = train(_cfg(tmp_path / "a", stream_folder, 6))
    first = train(_cfg(tmp_path / "b", stream_folder, 3))
    assert len(first.history) == 3
    resumed = train(_cfg(tmp_path / "b", stream_folder, 6), resume="latest")
    # Steps 4-6 after resuming equal those of the uninterrupted run: the stream continued from
    # the saved position (starting over would repeat steps 1-3's pairs and losses).
    for a, b in zip(straight.history[3:], resumed.history[3:], strict=True):
        assert b["step"] == a["step"]
        assert b["loss"] == pytest.approx(a["loss"], **REPLAY)
    assert resumed.history[3]["loss"] != pytest.approx(straight.history[0]["loss"], rel=1e-4)


def test_shuffled_stream_trains(stream_folder, tmp_path):
    result = train(_cfg(tmp_path, stream_folder, 2, "data.shuffle_buffer=8", "data.num_workers=1"))
    assert len(result.history) == 2 and all(np.isfinite(r["loss"]) for r in result.history)
