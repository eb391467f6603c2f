"""Write a curated prompt list and its report, atomically: a file either holds the whole list or is
not there, so an interrupted run never leaves a prompt file that looks complete."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mapo_data.errors import MapoError
from mapo_data.shards import give_umask_mode

OUTPUT_SUFFIXES = (".parquet", ".txt", ".jsonl")
# The Pick-a-Pic name of the context prompt column, so the file reads back with --column left out.
PROMPT_COLUMN = "caption"


def report_path(out: str | Path) -> Path:
    """Where the JSON report of `out` goes: next to it, `<out>.report.json`."""
    out = Path(out)
    return out.with_name(out.name + ".report.json")


def write_prompts(prompts: list[str], out: str | Path) -> Path:
    """Write `prompts` to `out`, in the format its suffix names (.parquet with a caption column,
    .txt one a line, .jsonl {"caption": ...} a line)."""
    out = Path(out).expanduser()
    suffix = out.suffix.lower()
    if suffix not in OUTPUT_SUFFIXES:
        raise MapoError(f"cannot write prompts to {out}: use a name ending in {', '.join(OUTPUT_SUFFIXES)}")
    if suffix == ".txt":
        multiline = [i for i, p in enumerate(prompts) if "\n" in p or "\r" in p]
        if multiline:
            raise MapoError(
                f"prompt {multiline[0]} spans several lines and cannot go in a .txt file; use .jsonl"
            )
        _atomic_write(out, lambda f: f.write("".join(p + "\n" for p in prompts).encode("utf-8")))
    elif suffix == ".jsonl":
        lines = "".join(json.dumps({PROMPT_COLUMN: p}, ensure_ascii=False) + "\n" for p in prompts)
        _atomic_write(out, lambda f: f.write(lines.encode("utf-8")))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({PROMPT_COLUMN: pa.array(prompts, type=pa.string())})
        _atomic_write(out, lambda f: pq.write_table(table, f))
    return out


def write_report(report: dict, out: str | Path) -> Path:
    """Write the JSON report of the prompt file `out` next to it."""
    path = report_path(Path(out).expanduser())
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def _atomic_write(path: Path, write: Callable) -> None:
    if path.is_dir():
        raise MapoError(f"cannot write {path}: it is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MapoError(f"cannot create the folder {path.parent}: a file is in the way") from None
    # Written beside the target (same file system) and renamed over it only when complete.
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        give_umask_mode(staging)  # mkstemp creates it owner-only (0600)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
