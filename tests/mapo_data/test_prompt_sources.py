"""Reading prompts from every kind of source, and a one-line MapoError for every bad one."""

from __future__ import annotations

import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mapo_data.errors import MapoError
from mapo_data.prompts import load_prompts

PROMPTS = ["a cat on a mat", "a dog in the rain", "two boats at dawn"]


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_default_set_is_the_shipped_resource():
    prompts = load_prompts(None)
    assert len(prompts) >= 200
    assert prompts[0] == "a red fox sleeping under a pine tree in the snow"


def test_txt_one_prompt_a_line_kept_as_written(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat on a mat\n  a dog  \n\nlast line without newline", encoding="utf-8")
    # Raw lines; cleaning is curation's job (and is counted there).
    assert load_prompts(str(path)) == ["a cat on a mat", "  a dog  ", "", "last line without newline"]


def test_txt_with_byte_order_mark(tmp_path):
    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffa cat\na dog\n".encode())
    assert load_prompts(str(path)) == ["a cat", "a dog"]


def test_jsonl_rows_pick_caption_without_column(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"id": i, "caption": p, "note": "x"} for i, p in enumerate(PROMPTS)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    assert load_prompts(str(path)) == PROMPTS
    assert load_prompts(str(path), column="note") == ["x", "x", "x"]


def test_jsonl_plain_strings_and_missing_values(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('"a cat"\n"a dog"\n', encoding="utf-8")
    assert load_prompts(str(path)) == ["a cat", "a dog"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text('{"text": "a cat"}\n{"text": null}\n{"other": 1}\n', encoding="utf-8")
    assert load_prompts(str(rows), column="text") == ["a cat", "", ""]


def test_json_list_of_rows_and_column_oriented(tmp_path):
    rows = tmp_path / "rows.json"
    rows.write_text(json.dumps([{"prompt": p, "n": 1} for p in PROMPTS]), encoding="utf-8")
    assert load_prompts(str(rows)) == PROMPTS
    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({"sentence": PROMPTS, "n": [1, 2, 3]}), encoding="utf-8")
    # The only text column is taken when no preferred name exists.
    assert load_prompts(str(columns)) == PROMPTS


def test_csv_with_and_without_column(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"id": [1, 2, 3], "text": PROMPTS, "author": ["a", "b", "c"]}).to_csv(path, index=False)
    assert load_prompts(str(path)) == PROMPTS  # "text" is a preferred name
    assert load_prompts(str(path), column="author") == ["a", "b", "c"]


def test_csv_keeps_na_like_prompts_as_text(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("caption\nNone\nNA\na cat\n", encoding="utf-8")
    assert load_prompts(str(path)) == ["None", "NA", "a cat"]


def test_parquet_reads_only_the_text_column(tmp_path):
    path = tmp_path / "pairs.parquet"
    table = pa.table(
        {
            "caption": PROMPTS,
            "jpg_0": pa.array([b"\xff\xd8"] * 3, type=pa.binary()),
            "label_0": pa.array([1, 0, 1], type=pa.int64()),
        }
    )
    pq.write_table(table, path)
    assert load_prompts(str(path)) == PROMPTS
    with pytest.raises(MapoError) as excinfo:
        load_prompts(str(path), column="label_0")
    assert "not text" in _one_line_error(excinfo)


def test_local_dataset_folder_through_datasets(tmp_path):
    # The layout `mapo-data build` writes, and the one Hub datasets use: the same load_dataset call
    # as for a Hub id, with the column pushed down to the parquet reader.
    (tmp_path / "data").mkdir()
    pq.write_table(
        pa.table({"caption": PROMPTS[:2], "jpg_0": pa.array([b"x", b"y"], type=pa.binary())}),
        tmp_path / "data" / "train-00000.parquet",
    )
    pq.write_table(
        pa.table({"caption": PROMPTS[2:], "jpg_0": pa.array([b"z"], type=pa.binary())}),
        tmp_path / "data" / "train-00001.parquet",
    )
    assert load_prompts(str(tmp_path)) == PROMPTS
    assert load_prompts(str(tmp_path), column="caption", split="train") == PROMPTS
    with pytest.raises(MapoError) as excinfo:
        load_prompts(str(tmp_path), column="prompt")
    assert "available columns: caption, jpg_0" in _one_line_error(excinfo)
    with pytest.raises(MapoError) as excinfo:
        load_prompts(str(tmp_path), split="validation")
    assert "validation" in _one_line_error(excinfo)


def test_local_json_dataset_folder_without_column_pushdown(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        "\n".join(json.dumps({"caption": p, "score": 1}) for p in PROMPTS), encoding="utf-8"
    )
    assert load_prompts(str(tmp_path), column="caption") == PROMPTS


def test_saved_dataset_folder(tmp_path):
    import datasets

    datasets.DatasetDict(
        {"test": datasets.Dataset.from_dict({"prompt": PROMPTS, "n": [1, 2, 3]})}
    ).save_to_disk(str(tmp_path / "saved"))
    assert load_prompts(str(tmp_path / "saved"), split="test") == PROMPTS
    with pytest.raises(MapoError) as excinfo:
        load_prompts(str(tmp_path / "saved"))  # default split train is not there
    assert "available splits: test" in _one_line_error(excinfo)


def test_hub_id_offline_is_a_clear_error():
    with pytest.raises(MapoError) as excinfo:
        load_prompts("someone/prompts-that-are-not-cached", column="caption")
    message = _one_line_error(excinfo)
    assert "someone/prompts-that-are-not-cached" in message
    assert "not reachable" in message


@pytest.mark.parametrize("name", ["missing.txt", "missing.parquet", "./missing", "dir/sub/missing"])
def test_missing_file(tmp_path, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MapoError) as excinfo:
        load_prompts(name)
    assert _one_line_error(excinfo) == f"prompt source {name}: no such local file or folder"


@pytest.mark.parametrize(
    ("name", "content"),
    [("empty.txt", ""), ("blank.txt", "\n  \n\t\n"), ("empty.jsonl", "\n"), ("empty.json", "[]")],
)
def test_empty_sources(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(MapoError) as excinfo:
        load_prompts(str(path))
    assert _one_line_error(excinfo).startswith(f"no prompts in {path}")


def test_empty_parquet_column(tmp_path):
    path = tmp_path / "p.parquet"
    pq.write_table(pa.table({"caption": pa.array([], type=pa.string())}), path)
    with pytest.raises(MapoError, match="no prompts in"):
        load_prompts(str(path))


@pytest.mark.parametrize("suffix", [".txt", ".jsonl", ".csv"])
def test_non_utf8_bytes(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    path.write_bytes("caption\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(MapoError) as excinfo:
        load_prompts(str(path))
    message = _one_line_error(excinfo)
    assert "is not UTF-8 text" in message
    assert "0xe9" in message


def test_missing_column_lists_available_columns(tmp_path):
    path = tmp_path / "p.csv"
    pd.DataFrame({"id": [1], "caption": ["a cat"], "url": ["u"]}).to_csv(path, index=False)
    with pytest.raises(MapoError) as excinfo:
        load_prompts(str(path), column="prompt")
    assert _one_line_error(excinfo) == f"no column 'prompt' in {path}; available columns: id, caption, url"


def test_ambiguous_columns_ask_for_column(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": "x", "b": "y"}\n', encoding="utf-8")
    with pytest.raises(MapoError) as excinfo:
        load_prompts(str(path))
    assert "choose one of a, b with --column" in _one_line_error(excinfo)


def test_invalid_json_line_and_unsupported_suffix(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(MapoError, match="line 2 is not valid JSON"):
        load_prompts(str(bad))
    odd = tmp_path / "prompts.xlsx"
    odd.write_bytes(b"PK")
    with pytest.raises(MapoError, match="unsupported prompt file type '.xlsx'"):
        load_prompts(str(odd))


def test_split_and_column_that_do_not_apply(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("a cat\n", encoding="utf-8")
    with pytest.raises(MapoError, match="--column does not apply"):
        load_prompts(str(path), column="caption")
    with pytest.raises(MapoError, match="--split only applies to datasets"):
        load_prompts(str(path), split="train")
