"""`mapo-data push`: publish a dataset folder on the Hugging Face Hub.

Only a known set of files is published: the shards the manifest lists, README.md (the card),
manifest.json, preview.png and the curation report; never ``.mapo/`` state or temporary files.
They are staged (hard links, so no copy of the data) in ``DIR/.mapo/push/``, and that folder is
what ``upload_folder`` sends, so "what would be uploaded" and "what is uploaded" are one list.
huggingface_hub skips files the repo already has, so a rerun uploads only what changed, and an
interrupted upload resumes when rerun.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from mapo_data.errors import MapoError
from mapo_data.reader import open_dataset
from mapo_data.schema import MANIFEST_NAME
from mapo_data.shards import STATE_DIR, sha256_file
from mapo_data.text import human_bytes, plural

CARD_NAME = "README.md"
# score_gaps.png: the card's histogram; candidates.jsonl: every candidate of a judged build.
OPTIONAL_FILES = (
    "preview.png",
    "curation_report.json",
    "curation_report.md",
    "score_gaps.png",
    "candidates.jsonl",
)
STAGE_DIR = f"{STATE_DIR}/push/stage"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")
HUB = "https://huggingface.co/datasets"


@dataclass
class PushConfig:
    root: Path
    """Dataset folder with a manifest and a card."""
    repo_id: str
    """Hub dataset repository, USER/NAME."""
    private: bool = True
    """Visibility when the repo is created (an existing repo keeps its visibility)."""
    allow_public_unsafe: bool = False
    """pick-safety datasets are private unless this is set as well as private=False."""
    gated: str | None = None
    """auto, manual or off; None: auto for pick-safety, otherwise leave the repo's setting alone."""
    revision: str | None = None
    """Branch to commit to (created when missing); None: main."""
    commit_message: str | None = None
    dry_run: bool = False

    def __post_init__(self):
        self.root = Path(self.root)
        if not REPO_ID.match(self.repo_id or ""):
            raise MapoError(f"--repo-id must look like USER/NAME, not {self.repo_id!r}")
        if self.gated not in (None, "auto", "manual", "off"):
            raise MapoError(f"--gated must be auto, manual or off, not {self.gated!r}")


@dataclass(frozen=True)
class StagedFile:
    rel: str  # path in the repo
    path: Path  # file on disk
    bytes: int


@dataclass
class PushResult:
    files: list[StagedFile]
    url: str
    lines: list[str] = field(default_factory=list)
    commit_url: str | None = None


def staged_files(root: Path) -> tuple[list[StagedFile], dict]:
    """The files to publish, after checking the shards still match the manifest (size and sha256)."""
    root = Path(root)
    if not (root / MANIFEST_NAME).is_file():
        raise MapoError(
            f"{root}: no {MANIFEST_NAME}; push needs a complete dataset folder (build or curate output)"
        )
    if not (root / CARD_NAME).is_file():
        raise MapoError(f"{root}: no {CARD_NAME}; run `mapo-data card {root}` first")
    ds = open_dataset(root)  # sizes, row counts and columns against the manifest
    if ds.num_pairs() == 0:
        # An empty repo would only fail later, in every user's load_dataset ("no data").
        raise MapoError(f"{root}: the dataset has no pairs (all dropped?); nothing to publish")
    files = []
    for shard in ds.shards:
        if shard.sha256 and sha256_file(shard.path) != shard.sha256:
            raise MapoError(f"{shard.rel}: sha256 differs from the manifest; run `mapo-data verify {root}`")
        files.append(StagedFile(shard.rel, shard.path, shard.path.stat().st_size))
    for name in (CARD_NAME, MANIFEST_NAME, *OPTIONAL_FILES):
        path = root / name
        if path.is_file():
            files.append(StagedFile(name, path, path.stat().st_size))
    for f in files:
        if any(part.startswith(".") for part in f.rel.split("/")) or f.rel.startswith("../"):
            raise MapoError(f"refusing to publish {f.rel}: hidden or outside the dataset folder")
    return files, ds.manifest or {}


def stage(files: list[StagedFile], dest: Path) -> Path:
    """Make ``dest`` hold exactly ``files`` (hard links where possible); keeps hidden upload caches."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    wanted = {f.rel: f for f in files}
    for existing in sorted(dest.rglob("*"), reverse=True):
        rel = existing.relative_to(dest).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if existing.is_file() and rel not in wanted:
            existing.unlink()
        elif existing.is_dir() and not any(existing.iterdir()):
            existing.rmdir()
    for f in files:
        target = dest / f.rel
        if target.exists():
            if os.path.samefile(target, f.path):
                continue
            target.unlink()
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f.path, target)
        except OSError:  # another filesystem, or links not allowed: copy instead
            shutil.copy2(f.path, target)
    return dest


def _scrub(text: str, token: str | None) -> str:
    """One line, and never the token (an error message may echo a header or URL)."""
    first = (text.strip().splitlines() or [""])[0]
    if token:
        first = first.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{20,}", "***", first)


def push_dataset(config: PushConfig) -> PushResult:
    files, manifest = staged_files(config.root)
    preset = (manifest.get("preset") or {}).get("name")
    unsafe = preset == "pick-safety"
    if unsafe and not config.private and not config.allow_public_unsafe:
        raise MapoError(
            "this is a pick-safety dataset (sexual images by construction); publishing it publicly needs "
            "--allow-public-unsafe as well as --public"
        )
    gated = config.gated if config.gated is not None else ("auto" if unsafe else None)
    url = f"{HUB}/{config.repo_id}"
    total = sum(f.bytes for f in files)
    where = f"{url} (revision {config.revision or 'main'}, {'private' if config.private else 'public'}"
    where += f", gated {gated})" if gated else ")"
    result = PushResult(files=files, url=url)
    listing = [f"  {f.rel}  {human_bytes(f.bytes)}" for f in files]
    if config.dry_run:
        result.lines = [
            f"dry run: would upload {plural(len(files), 'file')} ({human_bytes(total)}) to {where}",
            *listing,
            "  remote data/*.parquet files not in this list would be deleted",
        ]
        return result

    from huggingface_hub import HfApi, get_token

    token = get_token()
    if not token:
        raise MapoError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi(token=token)
    stage_dir = stage(files, config.root / STAGE_DIR)
    message = config.commit_message or f"Upload {manifest.get('num_pairs', '?')} pairs with mapo-data push"
    step = "create the repo"
    try:
        api.create_repo(config.repo_id, repo_type="dataset", private=config.private, exist_ok=True)
        if config.revision:
            step = f"create branch {config.revision}"
            api.create_branch(config.repo_id, repo_type="dataset", branch=config.revision, exist_ok=True)
        if gated:
            step = "set gated access"
            api.update_repo_settings(
                config.repo_id, repo_type="dataset", gated=False if gated == "off" else gated
            )
        step = "upload"
        commit = api.upload_folder(
            repo_id=config.repo_id,
            repo_type="dataset",
            folder_path=str(stage_dir),
            revision=config.revision,
            commit_message=message,
            ignore_patterns=[".*", "**/.*"],
            # Shards from an earlier, bigger push would otherwise stay and be loaded with the new ones.
            delete_patterns=["data/*.parquet"],
        )
    except MapoError:
        raise
    except Exception as err:  # the Hub boundary: HTTP, auth, network, validation errors alike
        raise MapoError(
            f"push to {config.repo_id} failed ({step}): {_scrub(str(err), token)}"
        ) from None  # no chained traceback that could carry request headers
    result.commit_url = getattr(commit, "commit_url", None)
    result.lines = [
        f"uploaded {plural(len(files), 'file')} ({human_bytes(total)}) to {where}",
        *([f"commit: {result.commit_url}"] if result.commit_url else []),
    ]
    if unsafe and gated in (None, "off"):
        result.lines.append("note: gate access to this repo (--gated auto) given its content")
    return result
