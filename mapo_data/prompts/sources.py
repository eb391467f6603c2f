"""Read context prompts from wherever they live: the shipped default set, a local file, a local dataset
folder or a Hugging Face Hub dataset. Every failure a user can fix becomes a one-line `MapoError`."""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from mapo_data.errors import MapoError
from mapo_data.resolve import no_download_count, resolve

DEFAULT_PROMPTS_RESOURCE = "default_prompts.txt"
TEXT_SUFFIXES = (".txt",)
TABLE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
# Tried in this order when no column is named: the Pick-a-Pic column first, then common spellings.
PREFERRED_COLUMNS = ("caption", "prompt", "text")


def load_prompts(
    source: str | None, column: str | None = None, split: str | None = None, *, what: str = "prompt source"
) -> list[str]:
    """Read the raw prompts of `source`, in order and as written (curation cleans them later).

    - None: the default set shipped with mapo (`mapo_data/resources/default_prompts.txt`).
    - `.txt`: one prompt a line.
    - `.jsonl` / `.json` / `.csv` / `.parquet`: the text column `column`; without one, a column
      named caption/prompt/text, or the only text column.
    - an existing folder: a dataset folder read with `datasets` (parquet/json/csv files, or a
      `save_to_disk` folder).
    - anything else: a Hugging Face Hub dataset id read with `datasets`, split `split` (default train).

    `what` names the argument in errors. A missing file, or a Hub id that neither the Hub nor the
    local cache has, fails before `datasets` is asked (``mapo_data.resolve``).
    """
    if source is None:
        text = resources.files("mapo_data.resources").joinpath(DEFAULT_PROMPTS_RESOURCE).read_text("utf-8")
        return _require_some(text.splitlines(), "the default prompt set")
    path = Path(source).expanduser()
    if path.is_dir():
        return _require_some(_load_dataset_column(str(path), column, split, local=True), source)
    if path.is_file():
        if split:
            raise MapoError(f"--split only applies to datasets, not to the file {source}")
        return _require_some(_load_file(path, column), source)
    resolve(source, what, repo_type="dataset")
    return _require_some(_load_dataset_column(source, column, split, local=False), source)


def _require_some(prompts: list[str], where: str) -> list[str]:
    if not any(p.strip() for p in prompts):
        raise MapoError(f"no prompts in {where}: it is empty or holds only blank values")
    return prompts


# --- local files ---------------------------------------------------------------------------------


def _read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        # utf-8-sig also accepts the byte-order mark some editors write at the start.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise MapoError(
            f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
            "re-save it as UTF-8"
        ) from None


def _load_file(path: Path, column: str | None) -> list[str]:
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        if column:
            raise MapoError(f"--column does not apply to a .txt file ({path}): it holds one prompt a line")
        return _read_utf8(path).splitlines()
    if suffix == ".jsonl":
        return _rows_column(_read_jsonl(path), column, str(path))
    if suffix == ".json":
        return _load_json(path, column)
    if suffix == ".csv":
        return _load_csv(path, column)
    if suffix == ".parquet":
        return _load_parquet(path, column)
    raise MapoError(
        f"unsupported prompt file type {suffix or '(none)'!r} for {path}; "
        f"use one of {', '.join(TEXT_SUFFIXES + TABLE_SUFFIXES)} or a dataset folder"
    )


def _read_jsonl(path: Path) -> list:
    rows = []
    for number, line in enumerate(_read_utf8(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise MapoError(f"{path} line {number} is not valid JSON: {err.msg}") from None
    return rows


def _load_json(path: Path, column: str | None) -> list[str]:
    try:
        data = json.loads(_read_utf8(path))
    except json.JSONDecodeError as err:
        raise MapoError(f"{path} is not valid JSON: {err.msg} (line {err.lineno})") from None
    if isinstance(data, dict):
        # Column-oriented JSON: {"caption": [...], "other": [...]}.
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if not lists:
            raise MapoError(f"{path} holds a JSON object without lists; expected a list of prompts or rows")
        name = _choose_column(
            list(lists), column, str(path), text_columns=[k for k, v in lists.items() if _all_text(v)]
        )
        return _as_text(lists[name], name, str(path))
    if not isinstance(data, list):
        raise MapoError(f"{path} holds a JSON {type(data).__name__}; expected a list of prompts or rows")
    return _rows_column(data, column, str(path))


def _rows_column(rows: list, column: str | None, where: str) -> list[str]:
    """Prompts from JSON rows: plain strings, or objects from which one key is taken."""
    if not rows:
        return []
    if rows and all(isinstance(r, str) for r in rows):
        if column:
            raise MapoError(f"{where} holds plain strings, not rows with columns; drop --column")
        return list(rows)
    if not all(isinstance(r, dict) for r in rows):
        raise MapoError(f"{where} mixes rows of different kinds; expected all strings or all objects")
    names: dict[str, None] = {}  # ordered set of keys over all rows
    for row in rows:
        names.update(dict.fromkeys(row))
    text_columns = [n for n in names if _all_text(r.get(n) for r in rows)]
    name = _choose_column(list(names), column, where, text_columns=text_columns)
    return _as_text([r.get(name) for r in rows], name, where)


def _load_csv(path: Path, column: str | None) -> list[str]:
    import pandas as pd

    text = _read_utf8(path)  # decode ourselves so bad bytes give the same message as for .txt
    try:
        # dtype=str and no NA parsing: a prompt like "None" or "NA" stays a prompt.
        frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        raise MapoError(f"cannot read {path} as CSV: {str(err).strip().splitlines()[0]}") from None
    names = [str(c) for c in frame.columns]
    name = _choose_column(names, column, str(path), text_columns=names)
    return frame[name].tolist()


def _load_parquet(path: Path, column: str | None) -> list[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise MapoError(f"cannot read {path} as parquet: {str(err).splitlines()[0]}") from None
    text_columns = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    name = _choose_column(schema.names, column, str(path), text_columns=text_columns)
    if name not in text_columns:
        raise MapoError(f"column {name!r} of {path} holds {schema.field(name).type}, not text")
    # Only the one column is read: prompt files are often full pair datasets with image bytes.
    return pq.read_table(path, columns=[name]).column(name).to_pylist()


# --- datasets (local folders and the Hub) --------------------------------------------------------


def _load_dataset_column(source: str, column: str | None, split: str | None, *, local: bool) -> list[str]:
    """One text column of a dataset, read without loading the other columns.

    Streaming with the column pushed down to the parquet reader means only that column's bytes are
    fetched: Pick-a-Pic v2 is 335 GB, almost all of it images, while its captions are a few MB.
    """
    import datasets

    split = split or "train"
    if local:
        no_download_count()
    if local and _is_saved_dataset(Path(source)):
        return _load_saved_dataset_column(Path(source), column, split)
    try:
        stream = datasets.load_dataset(source, split=split, streaming=True)
        names = list(stream.column_names or stream.features or _first_row_keys(stream))
        text_columns = [n for n in names if _is_text_feature((stream.features or {}).get(n))]
        if not stream.features:  # unknown schema: trust the first row
            text_columns = names
        name = _choose_column(names, column, source, text_columns=text_columns)
        if name not in text_columns:
            raise MapoError(f"column {name!r} of {source} holds {stream.features[name]}, not text")
        try:
            stream = datasets.load_dataset(source, split=split, streaming=True, columns=[name])
        except ValueError as err:
            if "columns" not in str(err):
                raise
            # Builders other than parquet (json, csv) have no column pushdown; select after reading.
            stream = stream.select_columns([name])
        return _as_text((row[name] for row in stream), name, source)
    except MapoError:
        raise
    except ConnectionError as err:
        if local:
            raise MapoError(f"cannot load the dataset folder {source}: {_first_line(err)}") from None
        return _load_cached_hub_column(source, column, split, err)
    except Exception as err:  # datasets raises many types (FileNotFoundError, ValueError, Arrow errors)
        what = "dataset folder" if local else "dataset"
        raise MapoError(f"cannot load the {what} {source!r} (split {split}): {_first_line(err)}") from None


def _load_cached_hub_column(
    source: str, column: str | None, split: str, stream_error: Exception
) -> list[str]:
    """Offline, streaming cannot work; a copy in the local datasets cache still can."""
    import datasets

    try:
        table = datasets.load_dataset(source, split=split)
    except Exception:
        raise MapoError(
            f"cannot load the dataset {source!r}: {_first_line(stream_error)}. The Hugging Face Hub is "
            "not reachable and the dataset is not in the local cache; use a local file "
            "(.txt, .jsonl, .csv, .parquet) or dataset folder, or leave SOURCE out for the default prompts"
        ) from None
    return _dataset_table_column(table, column, source)


def _is_saved_dataset(path: Path) -> bool:
    return (path / "state.json").is_file() or (path / "dataset_dict.json").is_file()


def _load_saved_dataset_column(path: Path, column: str | None, split: str) -> list[str]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise MapoError(f"cannot load the saved dataset {path}: {_first_line(err)}") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise MapoError(f"{path} has no split {split!r}; available splits: {', '.join(loaded)}")
        loaded = loaded[split]
    return _dataset_table_column(loaded, column, str(path))


def _dataset_table_column(table, column: str | None, where: str) -> list[str]:
    names = list(table.column_names)
    text_columns = [n for n in names if _is_text_feature(table.features.get(n))]
    name = _choose_column(names, column, where, text_columns=text_columns)
    if name not in text_columns:
        raise MapoError(f"column {name!r} of {where} holds {table.features[name]}, not text")
    return _as_text(table[name], name, where)


def _first_row_keys(stream) -> list[str]:
    for row in stream:
        return list(row)
    return []


def _is_text_feature(feature) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- shared helpers ------------------------------------------------------------------------------


def _choose_column(
    names: Sequence[str], column: str | None, where: str, *, text_columns: Sequence[str]
) -> str:
    """The named column, else a preferred name, else the only text column; otherwise a clear error."""
    available = ", ".join(names) if names else "(none)"
    if column is not None:
        if column not in names:
            raise MapoError(f"no column {column!r} in {where}; available columns: {available}")
        return column
    for preferred in PREFERRED_COLUMNS:
        if preferred in names:
            return preferred
    if len(text_columns) == 1:
        return text_columns[0]
    raise MapoError(
        f"cannot tell which column of {where} holds the prompts; choose one of {available} with --column"
    )


def _all_text(values: Iterable) -> bool:
    return all(v is None or isinstance(v, str) for v in values)


def _as_text(values: Iterable, name: str, where: str) -> list[str]:
    """Missing values become empty prompts (curation drops and counts them); non-text is refused."""
    prompts = []
    for value in values:
        if value is None:
            prompts.append("")
        elif isinstance(value, str):
            prompts.append(value)
        else:
            raise MapoError(f"column {name!r} of {where} holds {type(value).__name__} values, not text")
    return prompts
