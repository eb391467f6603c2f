"""Resume is exact or refused: a resumed run sees exactly the pairs an uninterrupted run would have
seen next, whatever its batch size, gradient accumulation or process count (indexed data resumes
at a pair offset, a stream with its shuffle buffer), and a setting that would change which pairs
come next, or the adapters' shapes, is refused in one line naming it, before any model is loaded."""

from __future__ import annotations

import io
import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mapo_data.errors import MapoError
from mapo_train import data as data_module
from mapo_train import stream as stream_module
from mapo_train import train as train_module
from mapo_train.checkpoint import STATE_FILE
from mapo_train.config import config_from_dict
from mapo_train.data import DataPosition, PairBatchSampler
from mapo_train.stream import ShuffledRows, StreamingPairs, open_stream
from mapo_train.train import train

from .conftest import write_pairs


def _config(data_path, out, *overrides: str, streaming: bool = False):
    return config_from_dict(
        {
            "model": "tiny",
            "data": {
                "path": str(data_path),
                "resolution": 32,
                "num_workers": 0,
                "streaming": streaming,
                "shuffle_buffer": 8 if streaming else 1000,
            },
            "train": {
                "output_dir": str(out),
                "max_steps": 2,
                "batch_size": 2,
                "learning_rate": 1e-3,
                "lr_scheduler": "constant",
                "mixed_precision": "no",
                "checkpoint_every": 2,
                "report_to": "none",
            },
            "validation": {"enabled": False},
        },
        list(overrides),
    )


def _state(checkpoint):
    return json.loads((checkpoint / STATE_FILE).read_text())


@pytest.fixture
def sixteen_pairs(tmp_path):
    return write_pairs(tmp_path / "pairs" / "train-00000.parquet", n=16, size=32)


@pytest.fixture
def trained_keys(monkeypatch):
    """The (epoch, position) key of every pair the indexed dataset hands to training, in order
    (with data.num_workers=0 the loader fetches exactly the batches the loop takes)."""
    keys = []
    original = data_module.PairDataset.__getitem__

    def record(self, key):
        keys.append(tuple(key))
        return original(self, key)

    monkeypatch.setattr(data_module.PairDataset, "__getitem__", record)
    return keys


# ---------------------------------------------------------------------------------------------
# Indexed data: a pair offset, not a step count


@pytest.mark.parametrize(
    "change", ["train.batch_size=4", "train.gradient_accumulation_steps=2"], ids=["batch", "accumulation"]
)
def test_resume_with_another_batch_or_accumulation_trains_every_pair_of_the_epoch_once(
    tmp_path, sixteen_pairs, trained_keys, change
):
    # 2 steps of 2 pairs, then 3 steps of 4 pairs (4 x 1 or 2 x 2): 4 + 12 = the epoch's 16 pairs.
    first = train(_config(sixteen_pairs, tmp_path / "run"))
    assert first.global_step == 2
    assert _state(tmp_path / "run" / "checkpoint-0000002")["position"] == {"epoch": 0, "pairs": 4}
    resumed = train(_config(sixteen_pairs, tmp_path / "run", change, "train.max_steps=5"), resume="latest")
    assert resumed.global_step == 5 and [r["step"] for r in resumed.history] == [1, 2, 3, 4, 5]
    assert len(trained_keys) == 16
    assert {epoch for epoch, _ in trained_keys} == {0}
    assert sorted(position for _, position in trained_keys) == list(range(16))
    # In the order of epoch 0's permutation, continued at pair 4 (not at "step 2 of batch 4",
    # which is pair 8 and would never train pairs 4-7 of the permutation).
    order = data_module.epoch_order(0, 0, 16).tolist()
    assert [position for _, position in trained_keys] == order
    assert _state(tmp_path / "run" / "checkpoint-0000005")["position"] == {"epoch": 1, "pairs": 0}


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_sampler_resumes_at_a_pair_offset_under_another_world_size():
    """Simulated processes: 2 ranks x 2 pairs for one round, then 3 ranks x 2 pairs from the
    recorded offset: the epoch's 16 pairs, each once, in the permutation's order."""
    first = [_take(PairBatchSampler(16, 2, seed=3, rank=r, world=2), 1)[0] for r in range(2)]
    position = DataPosition().advance(2 * 2, 16)
    assert position == DataPosition(0, 4)
    rest = [_take(PairBatchSampler(16, 2, seed=3, rank=r, world=3, start=position), 2) for r in range(3)]
    # Round by round, rank by rank: the order an uninterrupted pass over the permutation has.
    seen = [k for batch in first for k in batch]
    seen += [k for step in range(2) for r in range(3) for k in rest[r][step]]
    assert [p for _, p in seen] == data_module.epoch_order(3, 0, 16).tolist()
    assert {e for e, _ in seen} == {0}
    assert position.advance(3 * 2, 16, rounds=2) == DataPosition(1, 0)


def test_sampler_drops_the_tail_that_fills_no_round_and_starts_the_next_epoch():
    # 16 pairs in rounds of 6: pairs 0-11 of the permutation, then epoch 1 (4 pairs left over).
    batches = _take(PairBatchSampler(16, 6, seed=0), 3)
    assert [[e for e, _ in b] for b in batches] == [[0] * 6, [0] * 6, [1] * 6]
    assert [p for _, p in batches[2]] == data_module.epoch_order(0, 1, 16)[:6].tolist()
    assert DataPosition(0, 12).settled(6, 16) == DataPosition(1, 0)
    # Resumed at pair 12 of 16 with rounds of 4 (a smaller batch): the tail fits and is trained.
    tail = _take(PairBatchSampler(16, 4, seed=0, start=DataPosition(0, 12)), 2)
    assert [p for _, p in tail[0]] == data_module.epoch_order(0, 0, 16)[12:].tolist()
    assert tail[1][0][0] == 1


def test_sampler_start_step_and_start_position_agree():
    """Counting micro-steps (older checkpoints) and a recorded position give the same batches."""
    for step in range(9):
        by_step = PairBatchSampler(20, 3, seed=1, rank=1, world=2, start_step=step)
        position = DataPosition().advance(6, 20, rounds=step)
        by_position = PairBatchSampler(20, 3, seed=1, rank=1, world=2, start=position)
        assert _take(by_step, 4) == _take(by_position, 4)


@pytest.mark.slow
def test_run_of_two_processes_resumed_by_one_trains_the_rest_of_the_epoch(
    tmp_path, sixteen_pairs, trained_keys
):
    """Two real processes (torchrun, as accelerate launch starts them) train 2 steps of 2 x 2
    pairs; one process resumes and trains the epoch's other 8 pairs, in the permutation's order."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "run"
    argv = ["--recipe", str(root / "recipes" / "train" / "quickstart-tiny.yaml")]
    argv += [
        f"data.path={sixteen_pairs}",
        "data.resolution=32",
        "data.num_workers=0",
        f"train.output_dir={out}",
    ]
    argv += ["train.max_steps=2", "train.batch_size=2", "train.checkpoint_every=2", "model.finetune=lora"]
    argv += ["validation.enabled=false", "train.report_to=none", "lora.rank=4"]
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        ACCELERATE_USE_CPU="true",
    )
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    proc = subprocess.run(
        [*command, "-m", "mapo_train", *argv], capture_output=True, text=True, env=env, cwd=root
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = _state(out / "checkpoint-0000002")
    assert state["num_processes"] == 2 and state["position"] == {"epoch": 0, "pairs": 8}
    assert not trained_keys  # the two processes trained in their own interpreters
    cfg = _config(sixteen_pairs, out, "model.finetune=lora", "lora.rank=4", "train.max_steps=6")
    resumed = train(cfg, resume="latest")
    assert resumed.global_step == 6
    assert [p for _, p in trained_keys] == data_module.epoch_order(0, 0, 16)[8:].tolist()
    assert {e for e, _ in trained_keys} == {0}


# ---------------------------------------------------------------------------------------------
# Refusals: one line naming the setting, before any model is loaded


@pytest.fixture
def lora_checkpoint(tmp_path, sixteen_pairs):
    settings = ("model.finetune=lora", "lora.rank=4", "train.max_steps=1", "train.checkpoint_every=1")
    train(_config(sixteen_pairs.parent, tmp_path / "run", *settings))
    return tmp_path / "run", settings


@pytest.fixture
def forbid_model_loading(monkeypatch):
    """Call to make loading a model fail the test: refusals come before it."""

    def tripwire(*args, **kwargs):
        raise AssertionError("the model was loaded before the resume was refused")

    return lambda: monkeypatch.setattr(train_module, "load_components", tripwire)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("train.seed=1", "saved with train.seed=0, but this run has train.seed=1"),
        ("data.max_pairs=12", "saved with data.max_pairs=empty, but this run has data.max_pairs=12"),
        ("data.ties=keep", "saved with data.ties=drop, but this run has data.ties=keep"),
        ("lora.rank=8", "saved with lora.rank=4, but this run has lora.rank=8"),
        ("lora.alpha=16", "saved with lora.alpha=4, but this run has lora.alpha=16.0"),
        ("lora.target_modules=to_q", "saved with lora.target_modules=to_k,to_out.0,to_q,to_v"),
        ("data.streaming=true", "saved with data.streaming=False, but this run has data.streaming=True"),
        ("loss.name=dpo", "saved with loss.name=mapo, but this run has loss.name=dpo: the rest of the run"),
        ("data.resolution=64", "saved with data.resolution=32, but this run has data.resolution=64"),
        (
            "data.random_flip=false",
            "saved with data.random_flip=True, but this run has data.random_flip=False",
        ),
        ("data.proportion_empty_prompts=0.5", "but this run has data.proportion_empty_prompts=0.5"),
    ],
)
def test_a_setting_that_changes_what_comes_next_is_refused_by_name(
    lora_checkpoint, forbid_model_loading, change, expected
):
    out, settings = lora_checkpoint
    forbid_model_loading()
    with pytest.raises(MapoError) as err:
        train(_config(out.parent / "pairs", out, *settings, "train.max_steps=2", change), resume="latest")
    message = str(err.value)
    assert expected in message and "\n" not in message
    assert message.startswith(f"checkpoint {out / 'checkpoint-0000001'} was saved with")


def test_other_data_under_the_same_path_or_another_path_is_refused(lora_checkpoint, forbid_model_loading):
    out, settings = lora_checkpoint
    forbid_model_loading()
    folder = out.parent / "pairs"
    # Another folder with the very same file: refused by its path.
    copy = out.parent / "copy"
    copy.mkdir()
    (copy / "train-00000.parquet").write_bytes((folder / "train-00000.parquet").read_bytes())
    with pytest.raises(MapoError, match=f"saved with data.path={folder}, but this run has data.path={copy}"):
        train(_config(copy, out, *settings, "train.max_steps=2"), resume="latest")
    # The same folder, rewritten with other pairs (same count, same labels): refused by content,
    # after the data is read but before the model is loaded.
    write_pairs(folder / "train-00000.parquet", n=16, size=32, seed=7)
    with pytest.raises(MapoError, match=rf"trained on other pairs than data.path={folder} holds now \(16"):
        train(_config(folder, out, *settings, "train.max_steps=2"), resume="latest")
    # Fewer pairs: refused the same way.
    write_pairs(folder / "train-00000.parquet", n=14, size=32)
    with pytest.raises(MapoError, match=r"\(16 usable pairs then, 14 now"):
        train(_config(folder, out, *settings, "train.max_steps=2"), resume="latest")


def test_refusal_through_the_command_line_is_one_line_with_exit_2(lora_checkpoint, capsys):
    from mapo_train import cli

    out, settings = lora_checkpoint
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "train" / "quickstart-tiny.yaml"
    argv = [
        "--recipe",
        str(recipe),
        f"data.path={out.parent / 'pairs'}",
        "data.resolution=32",
        "data.num_workers=0",
    ]
    argv += [f"train.output_dir={out}", "train.report_to=none", "validation.enabled=false", *settings]
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "lora.rank=8", "train.max_steps=2", "--resume", "latest"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    line = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert line.startswith("error: checkpoint ") and "lora.rank=4, but this run has lora.rank=8" in line


# ---------------------------------------------------------------------------------------------
# Streams: the shuffle buffer survives a resume


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def stream_files(tmp_path):
    """48 rows in 3 parquet files of 16 (row groups of 5), captions ``pair <n>``; rows 5 and 30
    are ties, row 20 has the invalid labels 1/1, row 40 an undecodable image: 44 usable pairs."""
    folder = tmp_path / "stream"
    folder.mkdir()
    for f in range(3):
        rows = []
        for i in range(16):
            n = f * 16 + i
            label_0, label_1 = (1.0, 0.0) if n % 2 else (0.0, 1.0)
            if n in (5, 30):
                label_0 = label_1 = 0.5
            if n == 20:
                label_0 = label_1 = 1.0
            jpg_0 = b"not an image" if n == 40 else _png(n)
            rows.append(
                {
                    "caption": f"pair {n}",
                    "jpg_0": jpg_0,
                    "jpg_1": _png(255 - n),
                    "label_0": label_0,
                    "label_1": label_1,
                }
            )
        pd.DataFrame(rows).to_parquet(folder / f"part-{f}.parquet", row_group_size=5)
    return folder


def _stream_config(folder, **data):
    return config_from_dict(
        {"model": "tiny", "data": {"path": str(folder), "resolution": 8, "streaming": True, **data}}
    )


def _stream(cfg, resume=None):
    return iter(StreamingPairs(open_stream(cfg.data, 0), cfg.data, 0, resume=resume))


def test_shuffled_stream_resumes_exactly_at_every_cut(stream_files):
    """Every cut through the first pass and into the second: the resumed stream yields exactly
    what the uninterrupted one yields next (no pair dropped, none replayed)."""
    cfg = _stream_config(stream_files, shuffle_buffer=8)
    straight = list(itertools.islice(_stream(cfg), 56))
    captions = [item["caption"] for item in straight]
    first_pass = captions[:44]
    usable = {f"pair {n}" for n in range(48) if n not in (5, 20, 30, 40)}
    assert sorted(first_pass) == sorted(usable)  # each usable pair once per pass
    assert first_pass != sorted(first_pass, key=lambda c: int(c.split()[1]))  # shuffled
    for cut in range(1, 52):
        worker, state = straight[cut - 1]["stream_state"]
        json.dumps(state)  # a checkpoint stores it as JSON
        resumed = [item["caption"] for item in itertools.islice(_stream(cfg, {worker: state}), 4)]
        assert resumed == captions[cut : cut + 4], cut
        # The counts a card reports go on from the saved ones.
        assert state["stats"] == straight[cut - 1]["stream_state"][1]["stats"]
    assert straight[43]["stream_state"][1]["stats"] == {"ties_dropped": 2, "invalid_labels": 1, "bad": 1}


def test_shuffle_buffer_keeps_row_ordinals_and_replays_them_without_decoding(stream_files):
    """The saved buffer is row ordinals plus the stream position before the oldest of them."""
    cfg = _stream_config(stream_files, shuffle_buffer=8)
    rows = ShuffledRows(open_stream(cfg.data, 0), 8, [0, 0, 0, 0])
    taken = list(itertools.islice(iter(rows), 13))
    state = rows.state()
    assert state["read"] == 21 and state["draws"] == 13 and len(state["buffer"]) == 8
    assert sorted([o for o, _ in taken] + state["buffer"]) == list(range(21))
    again = ShuffledRows(open_stream(cfg.data, 0), 8, [0, 0, 0, 0], saved=json.loads(json.dumps(state)))
    rest = [(o, row["caption"]) for o, row in again]
    straight = [(o, row["caption"]) for o, row in ShuffledRows(open_stream(cfg.data, 0), 8, [0, 0, 0, 0])]
    assert rest == straight[13:]
    assert sorted(o for o, _ in straight) == list(range(48))
    # An ordinal is a row's place in the unshuffled stream: the files (in a seeded order) row by row.
    number = {o: int(caption.split()[1]) for o, caption in straight}
    assert all(number[o] == number[o - 1] + 1 for o in range(48) if o % 16)
    assert sorted(number[o] for o in (0, 16, 32)) == [0, 16, 32]


def _consumed_captions(monkeypatch):
    """The captions of every batch the training loop takes from a stream, in order."""
    seen = []
    original = stream_module.StreamData.consumed

    def record(self, batch):
        seen.extend(batch["captions"])
        return original(self, batch)

    monkeypatch.setattr(stream_module.StreamData, "consumed", record)
    return seen


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_training_resumed_after_13_and_17_pairs_sees_what_comes_next(
    tmp_path, stream_files, monkeypatch, workers
):
    seen = _consumed_captions(monkeypatch)
    settings = (
        "model.finetune=lora",
        "lora.rank=4",
        "train.batch_size=1",
        "train.max_steps=20",
        "train.checkpoint_every=1",
        "train.checkpoints_keep=30",
        f"data.num_workers={workers}",
        "data.proportion_empty_prompts=0",
    )
    straight = train(_config(stream_files, tmp_path / "a", *settings, streaming=True))
    assert straight.global_step == 20
    uninterrupted = list(seen)
    assert len(uninterrupted) == len(set(uninterrupted)) == 20  # 20 of the 44 usable pairs, each once
    for cut in (13, 17):
        seen.clear()
        checkpoint = tmp_path / "a" / f"checkpoint-{cut:07d}"
        train(_config(stream_files, tmp_path / f"b{cut}", *settings, streaming=True), resume=str(checkpoint))
        assert seen == uninterrupted[cut:], cut
    if workers == 0:  # one stream: a larger batch after resuming takes the same next pairs
        seen.clear()
        checkpoint = tmp_path / "a" / "checkpoint-0000013"
        cfg = _config(stream_files, tmp_path / "c", *settings, "train.batch_size=2", streaming=True)
        train(cfg, resume=str(checkpoint))
        assert len(seen) == 14 and seen[:7] == uninterrupted[13:]
        assert len(set(uninterrupted + seen[7:])) == 27  # then pairs not trained before


def test_stream_refuses_another_buffer_worker_process_count_or_files(
    tmp_path, stream_files, forbid_model_loading, monkeypatch
):
    settings = ("model.finetune=lora", "train.max_steps=1", "train.checkpoint_every=1")
    train(_config(stream_files, tmp_path / "run", *settings, streaming=True))
    forbid_model_loading()
    for change, expected in (
        (
            "data.shuffle_buffer=16",
            "saved with data.shuffle_buffer=8, but this run has data.shuffle_buffer=16",
        ),
        ("data.num_workers=2", "saved with data.num_workers=1, but this run has data.num_workers=2"),
    ):
        cfg = _config(stream_files, tmp_path / "run", *settings, "train.max_steps=2", change, streaming=True)
        with pytest.raises(MapoError, match=expected):
            train(cfg, resume="latest")
    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = _config(stream_files, tmp_path / "run", *settings, "train.max_steps=2", streaming=True)
    with pytest.raises(
        MapoError, match=r"saved by 1 process\(es\), this run has 2: .*same number of processes"
    ):
        train(cfg, resume="latest")
    monkeypatch.delenv("WORLD_SIZE")
    # A file rewritten in place (here: one row fewer): the saved position would be elsewhere.
    pd.read_parquet(stream_files / "part-1.parquet").iloc[:15].to_parquet(stream_files / "part-1.parquet")
    with pytest.raises(MapoError, match=f"streamed other files than data.path={stream_files} holds now"):
        train(cfg, resume="latest")


def test_the_base_model_counts_by_content_not_by_path(
    tmp_path, sixteen_pairs, tiny_model_path, forbid_model_loading
):
    """A base copied elsewhere resumes (same files); the same path with UNet weights changed in
    place, same size, is refused naming model.pretrained, before any model is loaded."""
    import shutil

    from safetensors.torch import load_file, save_file

    copy, moved = tmp_path / "base", tmp_path / "moved"
    shutil.copytree(tiny_model_path, copy)
    out = tmp_path / "run"
    settings = (f"model.pretrained={copy}", "train.max_steps=1", "train.checkpoint_every=1")
    train(_config(sixteen_pairs.parent, out, *settings))
    shutil.copytree(copy, moved)
    resumed = train(
        _config(
            sixteen_pairs.parent,
            out,
            f"model.pretrained={moved}",
            "train.max_steps=2",
            "train.checkpoint_every=1",
        ),
        resume="latest",
    )
    assert [r["step"] for r in resumed.history] == [1, 2]  # the run's history, step 2 trained now
    weights = moved / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1.0
    save_file(tensors, weights)
    forbid_model_loading()
    with pytest.raises(MapoError) as err:
        train(
            _config(sixteen_pairs.parent, out, f"model.pretrained={moved}", "train.max_steps=3"),
            resume="latest",
        )
    assert str(err.value) == (
        f"checkpoint {out / 'checkpoint-0000002'} was trained from other base weights than model.pretrained="
        f"{moved} holds now (its files differ by content): resume on the same base model or start a new run"
    )


class _Planted:
    """Unpickling this writes a file: what a hostile checkpoint could do with unrestricted pickle."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (Path.write_text, (Path(self.target), "ran"))


def test_scheduler_and_ema_states_are_never_unpickled_unrestricted(tmp_path, sixteen_pairs):
    import pickle

    out = tmp_path / "run"
    settings = ("train.max_steps=1", "train.checkpoint_every=1", "train.ema=true")
    train(_config(sixteen_pairs.parent, out, *settings))
    checkpoint = out / "checkpoint-0000001"
    assert sorted(p.name for p in checkpoint.glob("extra_state_*.pt")) == [
        "extra_state_0.pt",
        "extra_state_1.pt",
    ]
    planted = tmp_path / "planted.txt"
    (checkpoint / "extra_state_1.pt").write_bytes(pickle.dumps(_Planted(str(planted))))
    resume = _config(
        sixteen_pairs.parent, out, "train.max_steps=2", "train.checkpoint_every=1", "train.ema=true"
    )
    with pytest.raises(MapoError) as err:
        train(resume, resume="latest")
    assert str(err.value) == (
        f"{checkpoint / 'extra_state_1.pt'}: not plain tensors and numbers; refusing to unpickle it"
    )
    assert not planted.exists()
    # A checkpoint in accelerate's registered-object layout (older mapo) is refused before loading.
    (checkpoint / "extra_state_1.pt").rename(checkpoint / "custom_checkpoint_1.pkl")
    with pytest.raises(MapoError, match="written by an older mapo"):
        train(resume, resume="latest")
    assert not planted.exists()
