"""`mapo-data import`: preference pairs people already have, turned into the pair format.

Three layouts (``--layout``, or detected from SOURCE):

- **folder**: ``chosen/`` + ``rejected/`` (or ``w/`` + ``l/``) holding images with matching stems;
  each caption from ``STEM.txt`` / ``STEM.caption`` beside the chosen image, or from a
  ``metadata.jsonl`` / ``captions.csv`` at the top (``file_name`` + ``caption``/``text``/``prompt``).
- **table**: a JSONL, CSV or parquet file, one row per pair: a caption, two images (paths relative
  to the file, or bytes; URLs are refused) and either a preference column (``winner`` a/b or 0/1,
  ``chosen`` 0/1 = the index of the chosen image, ``preference`` +/-/=) or two score columns
  (``score_0``/``score_1``: higher wins).
- **ranked**: a Hub dataset id, a local ``datasets`` folder or a parquet/JSONL file whose rows hold
  a list of images and a list of ranks (1 = best) or scores (higher = better) per image, turned
  into pairs by ``best-worst``, ``adjacent`` or ``all``, at most ``max_pairs_per_caption`` per
  caption (largest gaps first).

The plan (which pairs, in which order, with which pair ids) is made from the source alone, before
any image is read; pair ``i`` lives in shard ``i // shard_size`` and its chosen image goes to the
column ``build.chosen_column(seed, i)``. Shards are written, staged and resumed through
``mapo_data.shards`` exactly as build's, so a killed import rerun gives identical bytes.

Images: an image that decodes through the shared decode and that any reader sees the same way
(JPEG, PNG or WebP, 8-bit RGB or greyscale, no EXIF rotation, no transparency, one frame) keeps
its encoded bytes. Any other decodable image (16-bit, CMYK, palette, transparency, EXIF-rotated,
TIFF/BMP/GIF, ...) is stored as a PNG of exactly what the shared decode gives, so mapo's readers
see the same pixels as before and a Pick-a-Pic trainer with its own decoding sees them too. An
undecodable or missing image drops its pair, named on stderr and counted by reason. Ties (equal
scores or ranks, ``=``) are dropped and counted: the pair format's tie rows teach a trainer nothing.
Ranking, tie and margin rules are build judged's (``judged.rank_pairs``, ``judged.keep_pair``).

Drop reasons: ``null_caption``, ``missing_image``, ``undecodable``, ``missing_preference``,
``missing_score``, ``tie``, ``below_margin``, ``over_cap``, ``fewer_than_two_images``. They are
recorded in the manifest's provenance step (``{"step": "import", "method": "import", "source",
"layout", "column_map", "pairing", "min_margin", "counts": {"rows_read", "pairs_written",
"dropped", "reencoded_png"}, "score_gaps"}``; ``score_gaps`` only when the source has scores).
Output columns: the pair format's, ``pair_id``, ``source_0``/``source_1`` (where each image came
from) and, with scores, ``score_0``/``score_1``; labels and scores follow their image.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from mapo_data.build import chosen_column, library_versions
from mapo_data.errors import MapoError
from mapo_data.images import UndecodableImage, decode_image, image_info
from mapo_data.judged import keep_pair, rank_pairs
from mapo_data.schema import FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME, PROMPT_ID
from mapo_data.shards import STATE_DIR, DatasetWriter, atomic_write_json, read_json, shard_entries

LAYOUTS = ("folder", "table", "ranked")
PAIRINGS = ("best-worst", "adjacent", "all")
FOLDER_PAIRS = (("chosen", "rejected"), ("w", "l"))
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Formats every image reader (PIL, browsers, the Hub viewer, other trainers) decodes alike.
KEPT_FORMATS = ("JPEG", "PNG", "WEBP")
KEPT_MODES = ("RGB", "L")
# Column roles --map may name, and the column names tried when it does not.
TABLE_ROLES = {
    "caption": ("caption", "prompt", "text"),
    "jpg_0": ("jpg_0", "image_0", "image_a", "img_a"),
    "jpg_1": ("jpg_1", "image_1", "image_b", "img_b"),
    "winner": ("winner",),
    "chosen": ("chosen",),
    "preference": ("preference",),
    "score_0": ("score_0", "score_a"),
    "score_1": ("score_1", "score_b"),
}
RANKED_ROLES = {
    "caption": ("caption", "prompt", "text"),
    "images": ("images", "jpgs", "image_list"),
    "ranks": ("ranks", "rank", "ranking"),
    "scores": ("scores", "score"),
}
WRITE_BATCH = 64  # rows handed to the shard writer at a time
STEP_DIR = "import"  # per-shard drop counts and score gaps, beside the completion markers


@dataclass
class ImportConfig:
    """Everything `mapo-data import` needs; the CLI maps its options one to one onto these fields."""

    source: str
    """Folder, JSONL/CSV/parquet file, local `datasets` folder or Hub dataset id."""
    out: str
    """Output folder (created; refused if it is a file or another run's folder)."""
    layout: str | None = None
    """folder, table or ranked; None = detect from the source."""
    column_map: dict[str, str] = field(default_factory=dict)
    """Role -> column name (roles: caption, jpg_0, jpg_1, winner, chosen, preference, score_0,
    score_1 for tables; caption, images, ranks, scores for ranked sources)."""
    pairs: str = "best-worst"
    """ranked only: best-worst (one pair per row), adjacent (N-1) or all (N(N-1)/2)."""
    max_pairs_per_caption: int | None = None
    """ranked only: most pairs per caption, largest quality gaps first; None = no cap."""
    min_margin: float | None = None
    """Scores only: drop pairs whose score gap is below this."""
    split: str | None = None
    """Split of a Hub or local `datasets` source (default train)."""
    seed: int = 0
    """Seed of the coin that puts each chosen image in jpg_0 or jpg_1 (build's coin)."""
    shard_size: int = 500
    """Pairs per parquet shard."""
    overwrite: bool = False
    """Delete a previous run's output in `out` and start over."""

    def __post_init__(self) -> None:
        if self.layout is not None and self.layout not in LAYOUTS:
            raise MapoError(f"unknown --layout {self.layout!r}; choose folder, table or ranked")
        if self.pairs not in PAIRINGS:
            raise MapoError(f"unknown --pairs {self.pairs!r}; choose best-worst, adjacent or all")
        if self.shard_size < 1:
            raise MapoError("--shard-size must be at least 1")
        if self.max_pairs_per_caption is not None and self.max_pairs_per_caption < 1:
            raise MapoError(f"--max-pairs-per-caption must be at least 1, got {self.max_pairs_per_caption}")
        if self.min_margin is not None and not (math.isfinite(self.min_margin) and self.min_margin >= 0):
            raise MapoError(f"--min-margin must be a number >= 0, got {self.min_margin}")


def parse_column_map(text: str | None) -> dict[str, str]:
    """``caption=prompt,jpg_0=image_a`` -> {"caption": "prompt", "jpg_0": "image_a"}."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        role, sep, column = part.partition("=")
        if not sep or not role.strip() or not column.strip():
            raise MapoError(f"--map expects ROLE=COLUMN pairs separated by commas, got {part.strip()!r}")
        mapping[role.strip()] = column.strip()
    return mapping


# --- reading the source --------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """Where one image's bytes come from: a file, or a cell (optionally an item of a list cell)."""

    origin: str  # shown in messages and stored in source_0/source_1
    path: Path | None = None
    rows: Any = None
    row: int = 0
    column: str = ""
    item: int | None = None


class Rows:
    """Uniform row access over a list of dicts (JSONL, CSV) or an Arrow table (parquet, datasets)."""

    def __init__(self, where: str, base: Path | None, dicts: list[dict] | None = None, table=None):
        self.where, self.base, self._dicts, self._table = where, base, dicts, table
        self.fingerprint: str | None = None  # set for `datasets` sources
        if table is not None:
            self.columns = list(table.column_names)
        else:
            seen: dict[str, None] = {}
            for d in dicts or []:
                seen.update(dict.fromkeys(d))
            self.columns = list(seen)

    def __len__(self) -> int:
        return self._table.num_rows if self._table is not None else len(self._dicts or [])

    def value(self, i: int, column: str) -> Any:
        if self._table is not None:
            return self._table.column(column)[i].as_py()
        return self._dicts[i].get(column)

    def is_list(self, column: str) -> bool:
        if self._table is not None:
            kind = self._table.schema.field(column).type
            return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
        first = next((d.get(column) for d in self._dicts or [] if d.get(column) is not None), None)
        return isinstance(first, list)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise MapoError(f"cannot read {path}: {_first_line(err)}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise MapoError(f"{path} line {number} is not valid JSON: {_first_line(err)}") from None
        if not isinstance(row, dict):
            raise MapoError(f"{path} line {number} is not a JSON object")
        rows.append(row)
    return rows


def _read_csv(path: Path) -> list[dict]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [dict(row) for row in csv.DictReader(f)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise MapoError(f"cannot read {path}: {_first_line(err)}") from None


def _read_file(path: Path) -> Rows:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return Rows(str(path), path.parent, dicts=_read_jsonl(path))
    if suffix == ".csv":
        return Rows(str(path), path.parent, dicts=_read_csv(path))
    if suffix == ".parquet":
        try:
            return Rows(str(path), path.parent, table=pq.read_table(path))
        except Exception as err:  # pyarrow raises several types for bad files
            raise MapoError(f"cannot read {path}: {_first_line(err)}") from None
    raise MapoError(
        f"{path}: a table must be .jsonl, .csv or .parquet, not {suffix or 'a file without suffix'}"
    )


def _read_dataset(source: str, split: str | None, local: bool) -> Rows:
    """A local `datasets` folder or a Hub dataset id, read with `datasets` (images left as bytes)."""
    import datasets

    split = split or "train"
    what = "dataset folder" if local else "dataset"
    try:
        if local and (
            (Path(source) / "state.json").is_file() or (Path(source) / "dataset_dict.json").is_file()
        ):
            loaded = datasets.load_from_disk(source)
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise MapoError(f"{source} has no split {split!r}; available splits: {', '.join(loaded)}")
                loaded = loaded[split]
        elif local and sorted(Path(source).glob(f"data/{split}-*.parquet")):
            # The shard layout mapo writes (build judged --keep-candidates): read exactly those
            # shards, whatever else (manifest, side files) lies beside them.
            files = [str(f) for f in sorted(Path(source).glob(f"data/{split}-*.parquet"))]
            loaded = datasets.load_dataset("parquet", data_files=files, split="train")
        else:
            loaded = datasets.load_dataset(source, split=split)
    except MapoError:
        raise
    except Exception as err:  # datasets raises many types (offline, not found, bad files)
        raise MapoError(f"cannot load the {what} {source!r} (split {split}): {_first_line(err)}") from None
    if getattr(loaded, "_indices", None) is not None:
        loaded = loaded.flatten_indices()
    # The Arrow table holds image features as {bytes, path} structs: nothing is decoded here.
    base = Path(source) if local else None
    rows = Rows(f"{source} (split {split})", base, table=loaded.data.table)
    rows.fingerprint = loaded._fingerprint
    return rows


def _folder_sides(root: Path) -> tuple[Path, Path] | None:
    for chosen, rejected in FOLDER_PAIRS:
        if (root / chosen).is_dir() and (root / rejected).is_dir():
            return root / chosen, root / rejected
    return None


def _pick(rows: Rows, roles: dict[str, tuple[str, ...]], mapping: dict[str, str]) -> dict[str, str]:
    """Role -> column present in ``rows``: the mapped one (an error if absent), else a default name."""
    unknown = sorted(set(mapping) - set(roles))
    if unknown:
        raise MapoError(f"--map names unknown role(s) {', '.join(unknown)}; roles here: {', '.join(roles)}")
    found = {}
    for role, names in roles.items():
        if role in mapping:
            if mapping[role] not in rows.columns:
                raise MapoError(
                    f"{rows.where} has no column {mapping[role]!r} (--map {role}={mapping[role]}); "
                    f"its columns: {', '.join(rows.columns) or '(none)'}"
                )
            found[role] = mapping[role]
        else:
            present = [n for n in names if n in rows.columns]
            if present:
                found[role] = present[0]
    return found


def detect_layout(config: ImportConfig) -> tuple[str, Rows | None]:
    """The layout of the source and, for tables and ranked sources, its rows."""
    path = Path(config.source).expanduser()
    if path.is_dir() and _folder_sides(path) is not None:
        if config.layout not in (None, "folder"):
            raise MapoError(f"{path} is a chosen/rejected image folder, not a {config.layout} source")
        return "folder", None
    if config.layout == "folder":
        raise MapoError(f"{path} has no chosen/ and rejected/ (or w/ and l/) folders")
    if path.is_file():
        if config.split:
            raise MapoError(f"--split only applies to datasets, not to the file {path}")
        rows = _read_file(path)
    elif path.is_dir():
        rows = _read_dataset(str(path), config.split, local=True)
    else:  # the one resolver: a path-like name that does not exist fails here, in one line
        from mapo_data.resolve import resolve

        source = resolve(config.source, "SOURCE", repo_type="dataset")
        rows = _read_dataset(source, config.split, local=False)
    if config.layout is not None:
        return config.layout, rows
    images = config.column_map.get("images") or next(
        (n for n in RANKED_ROLES["images"] if n in rows.columns), None
    )
    return ("ranked" if images in rows.columns and rows.is_list(images) else "table"), rows


# --- planning: which pairs, from the source alone -------------------------------------------------


@dataclass(frozen=True)
class PlannedPair:
    pair_id: int
    caption: str
    chosen: ImageRef
    rejected: ImageRef
    scores: tuple[float, float] | None = None
    """(chosen score, rejected score) when the source has scores."""
    prompt_id: int | None = None
    """The source row of a ranked source: its pairs share images on purpose (curate's duplicate
    filter lets pairs of one prompt_id reuse them)."""


@dataclass
class Plan:
    layout: str
    pairs: list[PlannedPair]
    rows_read: int
    dropped: Counter
    column_map: dict[str, str]
    has_scores: bool
    pairing: str | None
    fingerprint: str | None = None
    """`datasets`' fingerprint of a Hub source (its identity for resume)."""


def _image_ref(value: Any, rows: Rows, row: int, column: str, item: int | None = None) -> ImageRef | None:
    """An image cell -> where its bytes are; None for a null cell. URLs are refused."""
    where = f"{rows.where} row {row}" + (f" image {item}" if item is not None else "")
    if isinstance(value, dict):  # a `datasets` Image struct
        if value.get("bytes") is not None:
            return ImageRef(where, rows=rows, row=row, column=column, item=item)
        value = value.get("path")
    if value is None:
        return None
    if isinstance(value, bytes | bytearray | memoryview):
        return ImageRef(where, rows=rows, row=row, column=column, item=item)
    if not isinstance(value, str):
        raise MapoError(f"{where}: column {column!r} holds {type(value).__name__}, not image bytes or a path")
    if value.lower().startswith(("http://", "https://", "ftp://", "s3://", "gs://", "hf://")):
        raise MapoError(
            f"{where}: {value} is a URL; import reads local files only (download the images and give "
            "paths relative to the table)"
        )
    if not value.strip():
        return None
    path = Path(value).expanduser()
    if not path.is_absolute() and rows.base is not None:
        path = rows.base / path
    return ImageRef(value, path=path)


def _caption(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _score(value: Any, where: str, column: str) -> float | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MapoError(f"{where}: {column} {value!r} is not a number") from None
    return number if math.isfinite(number) else None


_WINNER = {"a": 0, "0": 0, "b": 1, "1": 1}
_PREFERENCE = {"+": 0, "-": 1, "\u2212": 1, "=": None}


def _first_wins(rows: Rows, i: int, cols: dict[str, str]) -> int | None | str:
    """0 (first image chosen), 1 (second), None (tie) or "missing" from the preference column."""
    where = f"{rows.where} row {i}"
    for role, table, allowed in (
        ("winner", _WINNER, "a, b, 0 or 1"),
        ("chosen", {"0": 0, "1": 1}, "0 or 1 (the index of the chosen image)"),
        ("preference", _PREFERENCE, "+, - or ="),
    ):
        if role in cols:
            value = rows.value(i, cols[role])
            if value is None or (isinstance(value, str) and not value.strip()):
                return "missing"
            key = str(value).strip().lower()
            if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()):
                key = str(int(value))
            if key not in table:
                raise MapoError(f"{where}: {cols[role]} {value!r} is not {allowed}")
            return table[key]
    raise AssertionError("no preference column")


def _plan_table(rows: Rows, config: ImportConfig) -> Plan:
    cols = _pick(rows, TABLE_ROLES, config.column_map)
    missing = [role for role in ("caption", "jpg_0", "jpg_1") if role not in cols]
    preference = [role for role in ("winner", "chosen", "preference") if role in cols]
    scored = "score_0" in cols and "score_1" in cols
    if not preference and not scored:
        missing.append("a preference (winner, chosen or preference) or two scores (score_0, score_1)")
    if missing:
        raise MapoError(
            f"{rows.where} has no column for {', '.join(missing)}; its columns: "
            f"{', '.join(rows.columns) or '(none)'} (name them with --map ROLE=COLUMN)"
        )
    if len(preference) > 1:
        named = ", ".join(cols[r] for r in preference)
        raise MapoError(f"{rows.where} has several preference columns ({named}); --map the one to use")
    if preference:
        # The preference column decides; score columns beside it are not used.
        cols = {k: v for k, v in cols.items() if k not in ("score_0", "score_1")}
        if config.min_margin is not None:
            raise MapoError(
                f"--min-margin applies to score columns; in {rows.where} the column "
                f"{cols[preference[0]]!r} decides"
            )
    dropped: Counter = Counter()
    pairs: list[PlannedPair] = []
    for i in range(len(rows)):
        where = f"{rows.where} row {i}"
        caption = _caption(rows.value(i, cols["caption"]))
        if caption is None:
            dropped["null_caption"] += 1
            continue
        refs = [_image_ref(rows.value(i, cols[r]), rows, i, cols[r]) for r in ("jpg_0", "jpg_1")]
        if refs[0] is None or refs[1] is None:
            dropped["missing_image"] += 1
            continue
        scores = None
        if preference:
            first = _first_wins(rows, i, cols)
            if first == "missing":
                dropped["missing_preference"] += 1
                continue
        else:
            scores = tuple(_score(rows.value(i, cols[r]), where, cols[r]) for r in ("score_0", "score_1"))
            if None in scores:
                dropped["missing_score"] += 1
                continue
            first = 0 if scores[0] >= scores[1] else 1
            reason = keep_pair(scores[first], scores[1 - first], config.min_margin or 0.0)
            if reason is not None:
                dropped[reason] += 1
                continue
        if first is None:
            dropped["tie"] += 1
            continue
        ordered = (scores[first], scores[1 - first]) if scores is not None else None
        pairs.append(PlannedPair(len(pairs), caption, refs[first], refs[1 - first], ordered))
    return Plan("table", pairs, len(rows), dropped, cols, not preference, None, rows.fingerprint)


def _plan_ranked(rows: Rows, config: ImportConfig) -> Plan:
    cols = _pick(rows, RANKED_ROLES, config.column_map)
    missing = [role for role in ("caption", "images") if role not in cols]
    if "ranks" not in cols and "scores" not in cols:
        missing.append("ranks or scores")
    if missing:
        raise MapoError(
            f"{rows.where} has no column for {', '.join(missing)}; "
            f"its columns: {', '.join(rows.columns) or '(none)'}"
            " (name them with --map ROLE=COLUMN)"
        )
    use_scores = "scores" in cols
    if config.min_margin is not None and not use_scores:
        raise MapoError(f"--min-margin needs a scores column; {rows.where} has ranks only")
    key = cols["scores"] if use_scores else cols["ranks"]
    cols = {k: v for k, v in cols.items() if k != ("ranks" if use_scores else "scores")}
    dropped: Counter = Counter()
    per_caption: Counter = Counter()
    pairs: list[PlannedPair] = []
    for i in range(len(rows)):
        where = f"{rows.where} row {i}"
        caption = _caption(rows.value(i, cols["caption"]))
        images = rows.value(i, cols["images"]) or []
        values = rows.value(i, key) or []
        if not isinstance(images, list) or not isinstance(values, list) or len(images) != len(values):
            raise MapoError(
                f"{where}: {cols['images']} and {key} must be lists of the same length "
                f"(got {len(images) if isinstance(images, list) else type(images).__name__} and "
                f"{len(values) if isinstance(values, list) else type(values).__name__})"
            )
        numbers = [_score(v, where, key) for v in values]
        if caption is None:
            dropped["null_caption"] += 1
            continue
        if any(n is None for n in numbers):
            dropped["missing_score"] += 1
            continue
        if len(numbers) < 2:
            dropped["fewer_than_two_images"] += 1
            continue
        quality = numbers if use_scores else [-n for n in numbers]  # rank 1 is the best
        chosen_pairs = []
        # build judged's ranking and margin rule, so imported and judged pairs are made alike.
        for better, worse in rank_pairs(quality, config.pairs):
            reason = keep_pair(quality[better], quality[worse], config.min_margin or 0.0)
            if reason is not None:
                dropped[reason] += 1
            else:
                chosen_pairs.append((better, worse, quality[better] - quality[worse]))
        if config.max_pairs_per_caption is not None:
            chosen_pairs.sort(key=lambda p: -p[2])  # stable: ties in gap keep their order
            room = max(config.max_pairs_per_caption - per_caption[caption], 0)
            dropped["over_cap"] += max(len(chosen_pairs) - room, 0)
            chosen_pairs = chosen_pairs[:room]
        per_caption[caption] += len(chosen_pairs)
        for better, worse, _ in chosen_pairs:
            refs = [_image_ref(images[k], rows, i, cols["images"], k) for k in (better, worse)]
            if refs[0] is None or refs[1] is None:
                dropped["missing_image"] += 1
                continue
            scores = (numbers[better], numbers[worse]) if use_scores else None
            pairs.append(PlannedPair(len(pairs), caption, refs[0], refs[1], scores, prompt_id=i))
    return Plan("ranked", pairs, len(rows), dropped, cols, use_scores, config.pairs, rows.fingerprint)


def _folder_images(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            raise MapoError(
                f"two images with the stem {path.stem!r} in {folder}: {found[path.stem].name} and {path.name}"
            )
        found[path.stem] = path
    return found


def _top_captions(root: Path) -> dict[str, str]:
    """Stem -> caption from metadata.jsonl or captions.csv at the top of a folder source."""
    for name, reader in (("metadata.jsonl", _read_jsonl), ("captions.csv", _read_csv)):
        path = root / name
        if not path.is_file():
            continue
        rows = reader(path)
        captions = {}
        for number, row in enumerate(rows):
            file_name = row.get("file_name") or row.get("file") or row.get("stem")
            text = next((row[k] for k in ("caption", "text", "prompt") if row.get(k) is not None), None)
            if file_name is None or text is None:
                raise MapoError(
                    f"{path} row {number} needs file_name and caption (or text/prompt); "
                    f"it has {', '.join(row) or 'nothing'}"
                )
            captions[Path(str(file_name)).stem] = str(text)
        return captions
    return {}


def _plan_folder(root: Path, config: ImportConfig, log: Callable[[str], None]) -> Plan:
    if config.column_map:
        raise MapoError("--map applies to tables and ranked sources, not to a chosen/rejected folder")
    if config.min_margin is not None:
        raise MapoError(f"--min-margin needs scores; the folder {root} has none")
    chosen_dir, rejected_dir = _folder_sides(root)  # type: ignore[misc]
    chosen, rejected = _folder_images(chosen_dir), _folder_images(rejected_dir)
    only_chosen = sorted(set(chosen) - set(rejected))
    only_rejected = sorted(set(rejected) - set(chosen))
    if only_chosen or only_rejected:
        names = [chosen[s].relative_to(root).as_posix() for s in only_chosen]
        names += [rejected[s].relative_to(root).as_posix() for s in only_rejected]
        shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
        raise MapoError(f"mismatched stems in {root}: no partner for {shown}")
    top = _top_captions(root)
    dropped: Counter = Counter()
    pairs = []
    for stem in sorted(chosen):
        caption = None
        for suffix in (".txt", ".caption"):
            side = chosen_dir / f"{stem}{suffix}"
            if side.is_file():
                caption = _caption(side.read_text(encoding="utf-8", errors="replace"))
                break
        else:
            caption = _caption(top.get(stem))
        if caption is None:
            if not dropped["null_caption"]:
                log(
                    f"skipped {chosen[stem]}: no caption ({stem}.txt, {stem}.caption or an entry in "
                    "metadata.jsonl/captions.csv)"
                )
            dropped["null_caption"] += 1
            continue
        refs = [ImageRef(p.relative_to(root).as_posix(), path=p) for p in (chosen[stem], rejected[stem])]
        pairs.append(PlannedPair(len(pairs), caption, refs[0], refs[1]))
    return Plan("folder", pairs, len(chosen), dropped, {}, False, None)


def plan_import(config: ImportConfig, log: Callable[[str], None] = lambda msg: None) -> Plan:
    """Read the source (no image decoded) and list the pairs to write, in order, with their ids."""
    layout, rows = detect_layout(config)
    if layout != "ranked" and (config.max_pairs_per_caption is not None or config.pairs != "best-worst"):
        raise MapoError(
            f"--pairs and --max-pairs-per-caption apply to ranked sources; {config.source} is a {layout}"
        )
    if layout == "folder":
        return _plan_folder(Path(config.source).expanduser(), config, log)
    if layout == "table":
        return _plan_table(rows, config)
    return _plan_ranked(rows, config)


# --- images ---------------------------------------------------------------------------------------


def _read_bytes(ref: ImageRef) -> bytes:
    if ref.path is not None:
        try:
            return ref.path.read_bytes()
        except OSError as err:
            raise UndecodableImage(f"cannot read {ref.path}: {err.strerror or err}") from None
    value = ref.rows.value(ref.row, ref.column)
    if ref.item is not None:
        value = value[ref.item]
    if isinstance(value, dict):
        value = value.get("bytes")
    if not isinstance(value, bytes | bytearray | memoryview) or not len(value):
        raise UndecodableImage("empty image bytes")
    return bytes(value)


def prepare_image(data: bytes) -> tuple[bytes, str | None]:
    """Bytes to store for one image, and why they were re-encoded (None when kept as they are).

    Raises UndecodableImage (with a one-line reason) when the shared decode cannot read them.
    """
    from PIL import Image

    picture = decode_image(data)
    info = image_info(data)
    header = Image.open(io.BytesIO(data))
    reason = None
    if info.format not in KEPT_FORMATS:
        reason = f"format {info.format}"
    elif header.mode not in KEPT_MODES:
        reason = f"mode {header.mode}"
    elif "transparency" in header.info:
        reason = "transparency"
    elif getattr(header, "n_frames", 1) > 1:
        reason = "animated"
    elif header.getexif().get(0x0112, 1) not in (1, None):
        reason = "EXIF orientation"
    if reason is None:
        return data, None
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue(), reason


def _schema(has_scores: bool, ranked: bool = False) -> pa.Schema:
    fields = [
        pa.field("caption", pa.string()),
        pa.field("jpg_0", pa.binary()),
        pa.field("jpg_1", pa.binary()),
        pa.field("label_0", pa.int64()),
        pa.field("label_1", pa.int64()),
        pa.field("pair_id", pa.int64()),
        pa.field("source_0", pa.string()),
        pa.field("source_1", pa.string()),
    ]
    if has_scores:
        fields += [pa.field("score_0", pa.float64()), pa.field("score_1", pa.float64())]
    if ranked:
        fields.append(pa.field(PROMPT_ID, pa.int64()))
    return pa.schema(fields)


def _pair_row(pair: PlannedPair, seed: int, images: tuple[bytes, bytes]) -> dict[str, Any]:
    """One output row: each image's label, origin and score go with it to its column."""
    sides = [(images[0], 1, pair.chosen.origin), (images[1], 0, pair.rejected.origin)]
    scores = list(pair.scores) if pair.scores is not None else None
    if chosen_column(seed, pair.pair_id) == 1:
        sides.reverse()
        scores = scores[::-1] if scores is not None else None
    row: dict[str, Any] = {"caption": pair.caption}
    for k, (image, label, _) in enumerate(sides):
        row.update({f"jpg_{k}": image, f"label_{k}": label})
    row["pair_id"] = pair.pair_id
    row.update({f"source_{k}": origin for k, (_, _, origin) in enumerate(sides)})
    if scores is not None:
        row.update({"score_0": scores[0], "score_1": scores[1]})
    if pair.prompt_id is not None:
        row[PROMPT_ID] = pair.prompt_id
    return row


def _convert_pair(
    pair: PlannedPair, seed: int, log: Callable[[str], None]
) -> tuple[dict | None, str | None, int]:
    """(row, None, re-encoded images) or (None, drop reason, 0) with the bad file logged."""
    images, reencoded = [], 0
    for ref in (pair.chosen, pair.rejected):
        try:
            stored, why = prepare_image(_read_bytes(ref))
        except UndecodableImage as err:
            log(f"skipped pair {pair.pair_id}: {ref.path or ref.origin}: {err}")
            missing = ref.path is not None and not ref.path.is_file()
            return None, "missing_image" if missing else "undecodable", 0
        images.append(stored)
        reencoded += why is not None
    return _pair_row(pair, seed, (images[0], images[1])), None, reencoded


# --- writing ----------------------------------------------------------------------------------------


@dataclass
class ImportResult:
    out: Path
    num_pairs: int
    num_shards: int
    skipped_shards: int
    dropped: dict[str, int]
    seconds: float
    manifest: Path | None


def _source_identity(config: ImportConfig, plan: Plan) -> str:
    """What the source is by content: a file's or folder's digest; for a Hub dataset, the
    fingerprint `datasets` gives the loaded data (it follows the files' commit)."""
    from mapo_data.identity import file_digest, folder_digest

    path = Path(config.source).expanduser()
    if path.is_file():
        return f"sha256:{file_digest(path)}"
    if path.is_dir():
        return f"sha256:{folder_digest(path)}"
    return f"datasets:{plan.fingerprint}"


def _referenced_files_identity(plan: Plan) -> str | None:
    """sha256 over the images a table or dataset names by path (a folder source's digest already
    covers its images): a rerun after one of them changed must not resume."""
    import hashlib

    from mapo_data.identity import file_digest

    if plan.layout == "folder":
        return None
    digest = hashlib.sha256()
    for pair in plan.pairs:
        for ref in (pair.chosen, pair.rejected):
            if ref.path is not None:  # missing files are dropped, and count as missing here
                content = file_digest(ref.path) if ref.path.is_file() else "missing"
                digest.update(f"{ref.path}\0{content}\n".encode())
    return digest.hexdigest()


def identity(config: ImportConfig, plan: Plan) -> dict[str, Any]:
    """What decides the bytes an import writes: the settings, the source's content and the
    content of the image files it refers to."""
    data = {k: v for k, v in asdict(config).items() if k not in ("out", "overwrite")}
    data["source_content"] = _source_identity(config, plan)
    data["referenced_images"] = _referenced_files_identity(plan)
    return data


def _check_out_folder(out: Path, config: ImportConfig, ident: dict[str, Any]) -> None:
    if out.exists() and not out.is_dir():
        raise MapoError(f"--out {out} exists and is not a folder")
    config_path = out / STATE_DIR / "config.json"
    if config.overwrite:
        DatasetWriter(out).clear()
        return
    if config_path.is_file():
        old = read_json(config_path)
        changed = sorted(k for k in set(old) | set(ident) if old.get(k) != ident.get(k))
        if changed:
            raise MapoError(
                f"{out} was written by a different import (differs in: {', '.join(changed)}); "
                "use --overwrite to start over or choose another --out"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise MapoError(
            f"--out {out} is not empty and was not made by mapo-data import; use another --out or --overwrite"
        )


def _step_path(out: Path, index: int) -> Path:
    return out / STATE_DIR / STEP_DIR / f"{index:05d}.json"


def run_import(
    config: ImportConfig,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> ImportResult:
    """Write every missing shard, then the manifest. Raises MapoError for bad input."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise MapoError(f"--out {out} exists and is not a folder")
    source = Path(config.source).expanduser()
    if source.is_dir() and out.resolve().is_relative_to(source.resolve()):
        # The output would become part of the source it is identified by.
        raise MapoError(f"--out {out} lies inside the source folder {source}; choose another --out")
    plan = plan_import(config, log)
    ident = identity(config, plan)
    _check_out_folder(out, config, ident)
    if not plan.pairs:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(plan.dropped.items())) or "the source is empty"
        raise MapoError(f"no pairs to import from {config.source} ({reasons})")
    writer = DatasetWriter(out)
    num_shards = -(-len(plan.pairs) // config.shard_size)
    writer.remove_stale_temporaries()
    atomic_write_json(out / STATE_DIR / "config.json", ident)
    if (out / MANIFEST_NAME).is_file():
        log(f"{out} is already complete; nothing to do")
        return _result(out, writer, num_shards, 0, started)
    todo = [i for i in range(num_shards) if writer.completed(i) is None or not _step_path(out, i).is_file()]
    skipped = num_shards - len(todo)
    if skipped:
        log(f"resuming: {skipped} of {num_shards} shards already complete")
    schema = _schema(plan.has_scores, ranked=plan.layout == "ranked")
    bar = tqdm(
        total=sum(len(_shard(plan, i, config)) for i in todo),
        unit="pair",
        desc="importing",
        disable=not progress,
    )
    for index in todo:
        dropped, reencoded, gaps, written = Counter(), 0, [], 0
        # Rows go to the shard file in small batches: a shard of large images is never held whole.
        with writer.open_shard(index, schema) as shard:
            pending: list[dict[str, Any]] = []
            for pair in _shard(plan, index, config):
                row, reason, count = _convert_pair(pair, config.seed, log)
                bar.update(1)
                if row is None:
                    dropped[reason] += 1
                    continue
                pending.append(row)
                reencoded += count
                if plan.has_scores:
                    gaps.append(abs(row["score_0"] - row["score_1"]))
                if len(pending) == WRITE_BATCH:
                    shard.write(pa.Table.from_pylist(pending, schema=schema))
                    written, pending = written + len(pending), []
            shard.write(pa.Table.from_pylist(pending, schema=schema))
            written += len(pending)
        # The shard's counts before its marker: a complete marker always has them beside it.
        atomic_write_json(
            _step_path(out, index), {"dropped": dict(dropped), "reencoded": reencoded, "score_gaps": gaps}
        )
        writer.mark_complete(writer.shard_info(index, written))
    bar.close()
    manifest = _manifest(config, plan, out, writer, num_shards)
    writer.write_manifest(manifest)
    result = _result(out, writer, num_shards, skipped, started)
    result.dropped = manifest["provenance"][0]["counts"]["dropped"]
    return result


def _shard(plan: Plan, index: int, config: ImportConfig) -> list[PlannedPair]:
    return plan.pairs[index * config.shard_size : (index + 1) * config.shard_size]


def _manifest(
    config: ImportConfig, plan: Plan, out: Path, writer: DatasetWriter, num_shards: int
) -> dict[str, Any]:
    infos = [writer.completed(i) for i in range(num_shards)]
    dropped = Counter(plan.dropped)
    reencoded, gaps = 0, []
    for i in range(num_shards):
        step = read_json(_step_path(out, i))
        dropped.update(step["dropped"])
        reencoded += step["reencoded"]
        gaps += step["score_gaps"]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    num_pairs = sum(i.rows for i in infos)
    step: dict[str, Any] = {
        "step": "import",
        "method": "import",
        "created": now,
        "command": " ".join(["mapo-data", *sys.argv[1:]]),
        "source": config.source,
        "layout": plan.layout,
        "column_map": plan.column_map,
        "pairing": plan.pairing,
        "min_margin": config.min_margin,
        "counts": {
            "rows_read": plan.rows_read,
            "pairs_written": num_pairs,
            "dropped": dict(sorted(dropped.items())),
            "reencoded_png": reencoded,
        },
    }
    if plan.has_scores:
        step["score_gaps"] = gaps
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "created": now,
        "num_pairs": num_pairs,
        "shards": shard_entries(infos),
        "config": {**asdict(config), "layout": plan.layout},
        "versions": library_versions(),
        "provenance": [step],
    }


def _result(out: Path, writer: DatasetWriter, num_shards: int, skipped: int, started: float) -> ImportResult:
    infos = [info for i in range(num_shards) if (info := writer.completed(i)) is not None]
    manifest = out / MANIFEST_NAME
    dropped = {}
    if manifest.is_file():
        dropped = read_json(manifest)["provenance"][0]["counts"]["dropped"]
    return ImportResult(
        out=out,
        num_pairs=sum(i.rows for i in infos),
        num_shards=len(infos),
        skipped_shards=skipped,
        dropped=dropped,
        seconds=time.perf_counter() - started,
        manifest=manifest if manifest.is_file() else None,
    )


def preview_import(
    config: ImportConfig, limit: int = 5, log: Callable[[str], None] = lambda msg: None
) -> list[dict[str, Any]]:
    """The first ``limit`` rows as they would be written (images described, not returned); writes nothing."""
    plan = plan_import(config, log)
    shown = []
    for pair in plan.pairs:
        if len(shown) >= limit:
            break
        row, reason, _ = _convert_pair(pair, config.seed, log)
        if row is None:
            continue
        described = {
            "pair_id": row["pair_id"],
            "caption": row["caption"],
            "chosen": "jpg_0" if row["label_0"] == 1 else "jpg_1",
        }
        for k in (0, 1):
            info = image_info(row[f"jpg_{k}"])
            described[f"jpg_{k}"] = f"{info.format} {info.width}x{info.height} from {row[f'source_{k}']}"
            if "score_0" in row:
                described[f"score_{k}"] = row[f"score_{k}"]
        shown.append(described)
    return shown
