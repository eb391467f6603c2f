"""Prompt choice for evaluation and the held-out check against the training pairs."""

from __future__ import annotations

import pandas as pd
import pytest

from mapo_data.errors import MapoError
from mapo_train.eval.prompts import (
    TrainingDataUnavailable,
    dataset_from_run,
    default_prompts,
    normalize_prompt,
    select_prompts,
    training_captions,
)


def write_captions(path, captions):
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"caption": c, "jpg_0": b"", "jpg_1": b"", "label_0": 1, "label_1": 0} for c in captions]
    pd.DataFrame(rows).to_parquet(path)
    return path


def select(**kwargs):
    defaults = dict(
        prompts_file=None,
        num_prompts=None,
        dataset=None,
        include_train_prompts=False,
        seed=0,
        default_count=8,
    )
    return select_prompts(**{**defaults, **kwargs})


def test_file_prompts_in_order_without_blanks_comments_or_duplicates(tmp_path):
    file = tmp_path / "p.txt"
    file.write_text("a red fox\n\n# a comment\nA  Red fox\na blue whale\na green frog\n")
    chosen = select(prompts_file=str(file))
    assert chosen.prompts == ["a red fox", "a blue whale", "a green frog"]
    assert select(prompts_file=str(file), num_prompts=2).prompts == ["a red fox", "a blue whale"]
    assert chosen.held_out_checked_against is None


def test_empty_or_missing_prompt_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(MapoError, match="no prompts"):
        select(prompts_file=str(empty))
    with pytest.raises(MapoError, match="no such local file or folder"):
        select(prompts_file=str(tmp_path / "nope.txt"))


def test_default_set_sample_is_seeded():
    first = select(num_prompts=5, seed=3).prompts
    assert first == select(num_prompts=5, seed=3).prompts
    assert first != select(num_prompts=5, seed=4).prompts
    assert len(first) == 5 and set(first) <= set(default_prompts())


def test_trained_prompts_are_left_out(tmp_path):
    file = tmp_path / "p.txt"
    file.write_text("a red fox\na blue whale\na green frog\n")
    dataset = tmp_path / "pairs"
    write_captions(dataset / "data" / "train-00000.parquet", ["A red fox", "a cat"])
    write_captions(dataset / "data" / "train-00001.parquet", ["a green  frog"])
    # A hidden temporary shard of an unfinished build is not training data.
    write_captions(dataset / "data" / ".train-00002.parquet.tmp.parquet", ["a blue whale"])
    assert training_captions(str(dataset)) == {"a red fox", "a cat", "a green frog"}

    chosen = select(prompts_file=str(file), dataset=str(dataset))
    assert chosen.prompts == ["a blue whale"]
    assert chosen.excluded_as_trained == ["a red fox", "a green frog"]
    assert chosen.to_dict()["num_prompts"] == 1

    kept = select(prompts_file=str(file), dataset=str(dataset), include_train_prompts=True)
    assert kept.prompts == ["a red fox", "a blue whale", "a green frog"]
    assert kept.trained_prompts_kept == 2


def test_default_set_excludes_trained_prompts(tmp_path):
    trained = default_prompts()[:-3]
    dataset = write_captions(tmp_path / "train.parquet", trained)
    chosen = select(dataset=str(dataset), num_prompts=10)
    assert sorted(chosen.prompts) == sorted(default_prompts()[-3:])  # only three were held out


def test_all_prompts_trained_is_an_error(tmp_path):
    file = tmp_path / "p.txt"
    file.write_text("a red fox\n")
    dataset = write_captions(tmp_path / "train.parquet", ["a red fox"])
    with pytest.raises(MapoError, match="every prompt"):
        select(prompts_file=str(file), dataset=str(dataset))
    with pytest.raises(TrainingDataUnavailable, match="no such local file or folder"):
        select(prompts_file=str(file), dataset=str(tmp_path / "missing"))
    no_caption = tmp_path / "other.parquet"
    pd.DataFrame([{"text": "x"}]).to_parquet(no_caption)
    with pytest.raises(MapoError, match="no caption column"):
        select(prompts_file=str(file), dataset=str(no_caption))


def test_dataset_from_run_reads_the_training_config(tmp_path):
    dataset = write_captions(tmp_path / "pairs" / "train.parquet", ["x"]).parent
    run = tmp_path / "run"
    run.mkdir()
    assert dataset_from_run([str(run)]) is None
    (run / "training_config.yaml").write_text(f"data:\n  path: {dataset}\n  split: dev\n")
    assert dataset_from_run(["not-a-folder", str(run)]) == (str(dataset), "dev")
    # The run's weights file or unet/ folder is the run: its training_config.yaml sits beside it.
    weights = run / "pytorch_lora_weights.safetensors"
    weights.write_bytes(b"{}")
    (run / "unet").mkdir()
    assert dataset_from_run([str(weights)]) == (str(dataset), "dev")
    assert dataset_from_run([str(run / "unet")]) == (str(dataset), "dev")
    lone = tmp_path / "elsewhere" / "pytorch_lora_weights.safetensors"  # a LoRA from outside a run
    lone.parent.mkdir()
    lone.write_bytes(b"{}")
    assert dataset_from_run([str(lone)]) is None
    (run / "training_config.yaml").write_text("data:\n  path: someone/hub-dataset\n")
    assert dataset_from_run([str(run)]) == ("someone/hub-dataset", "train")
    # A local path that does not exist here (trained on another machine) cannot be checked.
    (run / "training_config.yaml").write_text("data:\n  path: /elsewhere/pairs\n")
    assert dataset_from_run([str(run)]) is None


def test_prompts_from_table_files_like_mapo_data(tmp_path):
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a red fox", "id": 1}\n{"prompt": "  a blue whale ", "id": 2}\n')
    assert select(prompts_file=str(jsonl)).prompts == ["a red fox", "a blue whale"]
    csv = tmp_path / "p.csv"
    csv.write_text("id,text,note\n1,a green frog,x\n2,# not a comment in a table,y\n")
    assert select(prompts_file=str(csv), prompts_column="text").prompts == [
        "a green frog",
        "# not a comment in a table",
    ]
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"prompt": " "}\n')
    with pytest.raises(MapoError, match="no prompts in"):
        select(prompts_file=str(blank))


def test_held_out_split_of_the_training_folder(tmp_path):
    """Prompts from the test split of the very folder trained on: only the train split is excluded."""
    folder = tmp_path / "pairs"
    write_captions(folder / "data" / "train-00000.parquet", ["a red fox", "a cat"])
    write_captions(folder / "data" / "test-00000.parquet", ["a blue whale", "a cat", "a green frog"])
    assert training_captions(str(folder), "train") == {"a red fox", "a cat"}
    chosen = select(prompts_file=str(folder), prompts_split="test", dataset=str(folder))
    assert chosen.prompts == ["a blue whale", "a green frog"]
    assert chosen.excluded_as_trained == ["a cat"]  # in both splits: seen in training
    assert chosen.source == f"{folder} (split test)"
    assert chosen.held_out_checked_against == f"{folder} (split train)"


def test_hub_training_data_offline_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    file = tmp_path / "p.txt"
    file.write_text("a red fox\n")
    with pytest.raises(TrainingDataUnavailable, match="nobody/no-such-pairs"):
        select(prompts_file=str(file), dataset="nobody/no-such-pairs")


def test_normalize_prompt():
    assert normalize_prompt("  A  Red\tFox ") == "a red fox"


def test_run_recorded_hub_data_unreadable_is_a_report_warning(tmp_path, monkeypatch):
    """Data named by --dataset must be readable; data a run only records is checked when possible."""
    from mapo_train.eval.config import EvalConfig
    from mapo_train.eval.run import _choose_prompts

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_config.yaml").write_text("data:\n  path: nobody/no-such-pairs\n")
    file = tmp_path / "p.txt"
    file.write_text("a red fox\n")
    config = EvalConfig(tuned=[str(run)], base="tiny", judges=["nudenet"], prompts=str(file))
    selection, dataset, warnings = _choose_prompts(config)
    assert selection.prompts == ["a red fox"] and dataset is None
    assert selection.held_out_checked_against is None
    assert (
        len(warnings) == 1
        and "not checked against the run's training data nobody/no-such-pairs" in warnings[0]
    )
    config.dataset = "nobody/no-such-pairs"
    with pytest.raises(TrainingDataUnavailable):
        _choose_prompts(config)
