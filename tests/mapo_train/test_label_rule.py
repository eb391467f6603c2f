"""The one label rule in training: the indexed and streamed trainers, the cache builder, the model
card and eval's training-prompt check train (or count as trained) exactly the pairs whose labels are
a preference, take the chosen image the labels name, and count ties and invalid rows apart."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from mapo_data.errors import MapoError
from mapo_data.schema import LABEL_RULE_VERSION
from mapo_train.config import DataConfig, config_from_dict
from mapo_train.data import build_index, load_pair_data
from mapo_train.eval.prompts import select_prompts, ties_from_run, training_captions
from mapo_train.stream import StreamData
from tests.hostile.labels import CARD_CASES, DATASET_GROUPS, GROUPS, column_of, write_cases, write_group

CARD_TRAINED = [0, 1, 4, 8]  # rows of CARD_CASES with a preference; 3 and 6 are ties
CARD_CHOSEN = [0, 1, 0, 1]


def as_uint8(pixels: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] back to the [H, W, 3] uint8 image it came from."""
    return ((pixels + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


def data_cfg(path, **kw) -> DataConfig:
    return DataConfig(path=str(path), resolution=32, num_workers=0, random_flip=False, **kw)


def run_cfg(tmp_path, path, name, *overrides):
    data = {
        "model": {"pretrained": "tiny"},
        "data": {"path": str(path), "resolution": 32, "num_workers": 0},
        "loss": {"name": "mapo"},
        "train": {
            "output_dir": str(tmp_path / name),
            "max_steps": 1,
            "batch_size": 2,
            "learning_rate": 1e-3,
            "mixed_precision": "no",
            "checkpoint_every": 0,
            "report_to": "none",
        },
        "validation": {"enabled": False},
    }
    return config_from_dict(data, list(overrides))


def assert_pair(item, row: int, chosen: str) -> None:
    """The pixels training receives are row ``row``'s, with the ``chosen`` column's image first."""
    rejected = "jpg_1" if chosen == "jpg_0" else "jpg_0"
    assert column_of(as_uint8(item["pixels_w"])) == (chosen, row)
    assert column_of(as_uint8(item["pixels_l"])) == (rejected, row)


@pytest.mark.parametrize("group", DATASET_GROUPS)
def test_indexed_trainer_trains_preferences_with_the_chosen_image_first(tmp_path, group):
    cases = GROUPS[group][1]
    path = write_group(tmp_path / "pairs.parquet", group)
    data = load_pair_data(data_cfg(path), seed=0)
    trained = [i for i, c in enumerate(cases) if c.trained]
    assert data.index.rows.tolist() == trained
    assert data.index.chosen.tolist() == [int(cases[i].expected == "jpg_1") for i in trained]
    ties = sum(c.expected == "tie" for c in cases)
    invalid = sum(c.expected == "invalid" for c in cases)
    assert (data.index.ties, data.index.ties_dropped, data.index.invalid_labels) == (ties, ties, invalid)
    for position, row in enumerate(trained):
        item = data.dataset[(0, position)]
        assert item["caption"] == f"label case {cases[row].name}"
        assert_pair(item, row, cases[row].expected)

    # ties=keep trains the ties (either image may win), never the invalid rows.
    kept = load_pair_data(data_cfg(path, ties="keep"), seed=0)
    assert kept.index.rows.tolist() == [i for i, c in enumerate(cases) if c.expected != "invalid"]
    assert (kept.index.ties, kept.index.ties_dropped, kept.index.invalid_labels) == (ties, 0, invalid)
    for position, row in enumerate(kept.index.rows.tolist()):
        chosen = "jpg_1" if kept.index.chosen[position] else "jpg_0"
        if cases[row].trained:
            assert chosen == cases[row].expected
        assert_pair(kept.dataset[(0, position)], row, chosen)


def test_build_index_on_the_issue_labels():
    # 2/-1 once trained with jpg_0 chosen; 1/1 was a tie, and under keep got a coin-flip winner.
    label_0 = pa.array([1, 2, 1, 0, 0, 1], pa.int64())
    label_1 = pa.array([0, -1, 1, 0, 1, 1], pa.int64())
    for ties in ("drop", "keep"):
        index = build_index(label_0, label_1, ties=ties, seed=3)
        assert index.rows.tolist() == [0, 4] and index.chosen.tolist() == [0, 1]
        assert (index.total, index.ties, index.ties_dropped, index.invalid_labels) == (6, 0, 0, 4)
    with pytest.raises(ValueError, match="ties must be drop or keep"):
        build_index(label_0, label_1, ties="maybe")


def test_no_usable_pairs_names_ties_and_invalid_apart(tmp_path):
    unusable = [c for c in CARD_CASES if not c.trained]  # 2 ties, 4 invalid
    path = write_cases(tmp_path / "pairs.parquet", unusable)
    with pytest.raises(MapoError) as err:
        load_pair_data(data_cfg(path), seed=0)
    assert str(err.value) == (
        f"no usable pairs in {path}: 6 rows, 2 ties dropped (data.ties=drop), "
        "4 with invalid labels (never trained)"
    )
    only_invalid = write_cases(tmp_path / "invalid.parquet", [c for c in unusable if c.expected == "invalid"])
    with pytest.raises(MapoError) as err:
        load_pair_data(data_cfg(only_invalid, ties="keep"), seed=0)
    assert str(err.value) == (
        f"no usable pairs in {only_invalid}: 4 rows, 0 ties, 4 with invalid labels (never trained)"
    )


def _stream(path, ties="drop"):
    cfg = data_cfg(path, ties=ties, streaming=True, shuffle_buffer=0)
    data = StreamData(cfg=cfg, seed=0, rank=0, world=1)
    return data, iter(data.loader(batch_size=1, seed=0, rank=0, world=1, start_step=0, num_workers=0))


def test_streamed_trainer_trains_preferences_and_counts_ties_and_invalid_apart(tmp_path):
    path = write_cases(tmp_path / "pairs" / "train-00000.parquet", CARD_CASES)
    data, batches = _stream(path.parent)
    for row in CARD_TRAINED:
        batch = next(batches)
        data.consumed(batch)
        assert batch["captions"] == [f"label case {CARD_CASES[row].name}"]
        item = {"pixels_w": batch["pixels_w"][0], "pixels_l": batch["pixels_l"][0]}
        assert_pair(item, row, CARD_CASES[row].expected)
    # Up to row 8, the last pair trained: ties at rows 3 and 6, invalid labels at rows 2, 5 and 7.
    assert (data.index.seen, data.index.ties_dropped, data.index.invalid_labels) == (4, 2, 3)
    data.consumed(next(batches))  # the next pass starts after row 9 (invalid)
    assert (data.index.seen, data.index.ties_dropped, data.index.invalid_labels) == (5, 2, 4)

    # ties=keep: the ties train too, the invalid rows never.
    data, batches = _stream(path.parent, ties="keep")
    captions = [next(batches)["captions"][0] for _ in range(7)]
    assert captions == [f"label case {CARD_CASES[i].name}" for i in (0, 1, 3, 4, 6, 8, 0)]


def test_stream_without_usable_pairs_fails_with_the_counts(tmp_path):
    unusable = [c for c in CARD_CASES if not c.trained]
    path = write_cases(tmp_path / "pairs" / "train-00000.parquet", unusable)
    _, batches = _stream(path.parent)
    with pytest.raises(MapoError) as err:
        next(batches)
    assert str(err.value) == (
        f"no usable pairs in the stream {path.parent} (this process/worker's share): 6 rows, "
        "2 ties dropped (data.ties=drop), 4 with invalid labels (never trained), 0 undecodable"
    )


def test_cache_builder_indexes_by_the_rule(tmp_path, tiny_model_path):
    from mapo_train.cache import build_cache, locate_cache, prepare_cached_data

    path = write_cases(tmp_path / "pairs" / "train-00000.parquet", CARD_CASES)
    cfg = run_cfg(tmp_path, path.parent, "run", f"data.cache={tmp_path / 'cache'}")
    assert locate_cache(cfg, "no").identity["label_rule"] == LABEL_RULE_VERSION
    assert build_cache(cfg, progress=False, say=lambda _: None).num_pairs == 4
    cached = prepare_cached_data(cfg, "no", progress=False)
    assert cached.index.rows.tolist() == CARD_TRAINED and cached.index.chosen.tolist() == CARD_CHOSEN
    assert (cached.index.ties, cached.index.ties_dropped, cached.index.invalid_labels) == (2, 2, 4)


def test_model_card_counts_ties_and_invalid_apart(tmp_path, tiny_model_path):
    from mapo_train.train import train

    path = write_cases(tmp_path / "pairs" / "train-00000.parquet", CARD_CASES)
    out = train(run_cfg(tmp_path, path.parent, "run")).output_dir
    card = (out / "README.md").read_text()
    assert "(split `train`, 4 pairs used, 2 ties dropped, 4 with invalid labels skipped)" in card

    streamed = train(
        run_cfg(
            tmp_path,
            path.parent,
            "streamed",
            "data.streaming=true",
            "data.shuffle_buffer=0",
            "train.max_steps=2",
        )
    )
    card = (streamed.output_dir / "README.md").read_text()
    # Four pairs streamed (rows 0, 1, 4, 8): the ties and invalid rows passed on the way.
    assert "(split `train`, 4 pairs used, 2 ties dropped, 3 with invalid labels skipped)" in card


def test_eval_counts_only_trained_captions_as_trained(tmp_path):
    path = write_cases(tmp_path / "pairs" / "data" / "train-00000.parquet", CARD_CASES)
    dataset = str(path.parent.parent)
    name = [f"label case {c.name}" for c in CARD_CASES]
    assert training_captions(dataset, ties="drop") == {name[i] for i in CARD_TRAINED}
    assert training_captions(dataset, ties="keep") == {name[i] for i in (*CARD_TRAINED, 3, 6)}

    prompts = tmp_path / "prompts.txt"
    prompts.write_text(f"{name[0]}\n{name[2]}\n{name[3]}\n")  # trained, invalid, tie
    chosen = select_prompts(
        prompts_file=str(prompts),
        num_prompts=None,
        dataset=dataset,
        include_train_prompts=False,
        seed=0,
        default_count=8,
        dataset_ties="drop",
    )
    assert chosen.excluded_as_trained == [name[0]] and chosen.prompts == [name[2], name[3]]

    run = tmp_path / "run"
    run.mkdir()
    assert ties_from_run([str(run)]) == "keep"  # unknown: ties count as trained
    (run / "training_config.yaml").write_text(f"data:\n  path: {dataset}\n")
    assert ties_from_run([str(run)]) == "drop"  # the trainer's default
    (run / "training_config.yaml").write_text(f"data:\n  path: {dataset}\n  ties: keep\n")
    assert ties_from_run([str(run)]) == "keep"
    # The run's weights file stands for the run: its training_config.yaml is beside it.
    (run / "training_config.yaml").write_text(f"data:\n  path: {dataset}\n")
    (run / "pytorch_lora_weights.safetensors").write_bytes(b"{}")
    assert ties_from_run([str(run / "pytorch_lora_weights.safetensors")]) == "drop"
