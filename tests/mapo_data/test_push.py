"""`mapo-data push`: what is staged loads back identically; the Hub calls are checked at
huggingface_hub's boundary (HfApi methods recorded, never sent); the token never shows."""

from __future__ import annotations

import inspect

import httpx2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from datasets import Features, load_dataset
from huggingface_hub import HfApi, constants
from huggingface_hub.errors import HfHubHTTPError

from mapo_data.card import write_card
from mapo_data.push import STAGE_DIR, stage, staged_files
from tests.mapo_data.pairs_factory import (
    Pair,
    assert_one_line_error,
    black,
    encode,
    good_pairs,
    noise,
    run_cli,
    write_mapo_dataset,
    write_pickapic_parquet,
)

TOKEN = "hf_" + "s3cr3tT0kenValue" * 2


@pytest.fixture
def published(tmp_path, capsys):
    """A curated dataset with a card: the folder a user pushes (one output shard has no rows)."""
    same = encode(noise(701))
    pairs = good_pairs(3) + [
        Pair("black", encode(black()), encode(noise(700))),
        Pair("unchanged", same, same),
        Pair("black again", encode(noise(702)), encode(black())),
    ]
    pairs[1].chosen_pos = 1
    src = write_mapo_dataset(tmp_path / "raw", pairs, shard_size=3)
    out = tmp_path / "curated"
    assert run_cli(capsys, "curate", str(src), "--out", str(out), "--no-progress")[0] == 0
    write_card(out, repo_id="me/pairs", preview_n=2)
    (out / "data" / ".train-00009.parquet.123.tmp").write_bytes(b"partial")  # a leftover temp file
    return out


class HubRecorder:
    """Stands in for the Hub at huggingface_hub's boundary: records HfApi calls and their arguments."""

    def __init__(self, monkeypatch, fail_upload: Exception | None = None):
        self.calls: list[tuple[str, dict]] = []
        self.uploaded: dict[str, bytes] = {}
        recorder = self

        def create_repo(api, repo_id, **kw):
            recorder.calls.append(("create_repo", {"repo_id": repo_id, "token": api.token, **kw}))

        def create_branch(api, repo_id, **kw):
            recorder.calls.append(("create_branch", {"repo_id": repo_id, **kw}))

        def update_repo_settings(api, repo_id, **kw):
            recorder.calls.append(("update_repo_settings", {"repo_id": repo_id, **kw}))

        def upload_folder(api, **kw):
            recorder.calls.append(("upload_folder", kw))
            if fail_upload is not None:
                raise fail_upload
            from pathlib import Path

            folder = Path(kw["folder_path"])
            recorder.uploaded = {
                p.relative_to(folder).as_posix(): p.read_bytes()
                for p in sorted(folder.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
            }

            class Commit:
                commit_url = "https://huggingface.co/datasets/me/pairs/commit/abc123"

            return Commit()

        for name, fn in [
            ("create_repo", create_repo),
            ("create_branch", create_branch),
            ("update_repo_settings", update_repo_settings),
            ("upload_folder", upload_folder),
        ]:
            monkeypatch.setattr(HfApi, name, self._checked(getattr(HfApi, name), fn))

    @staticmethod
    def _checked(real, fake):
        """Calls must fit the real method's signature, so a misspelt argument fails here too."""
        signature = inspect.signature(real)

        def call(api, *args, **kwargs):
            signature.bind(api, *args, **kwargs)
            return fake(api, *args, **kwargs)

        return call

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def args(self, name: str) -> dict:
        return next(kw for n, kw in self.calls if n == name)


EXPECTED = [
    "data/train-00000.parquet",
    "data/train-00001.parquet",
    "README.md",
    "manifest.json",
    "preview.png",
    "curation_report.json",
    "curation_report.md",
]


def test_staged_folder_loads_back_with_the_same_rows_and_features(published, tmp_path):
    files, _ = staged_files(published)
    assert [f.rel for f in files] == EXPECTED  # never .mapo/ or temp files
    staged = stage(files, tmp_path / "staged")
    loaded = load_dataset(str(staged), split="train")
    source = pa.concat_tables([pq.read_table(published / f) for f in EXPECTED[:2]])
    assert loaded.num_rows == source.num_rows == 3
    assert pq.read_metadata(published / EXPECTED[1]).num_rows == 0  # an empty shard loads too
    assert loaded.features == Features.from_arrow_schema(source.schema)
    assert loaded.to_list() == source.to_pylist()


def test_staged_pickapic_curation_with_judge_scores_loads_back(tmp_path, capsys):
    """Foreign input (pandas metadata, float labels, extra columns) plus added score columns: the
    card's dataset_info features must match what datasets reads, or the Hub load would fail."""
    pairs = good_pairs(4)
    pairs[1].chosen_pos = 1
    src = write_pickapic_parquet(tmp_path / "pap" / "train-0.parquet", pairs)
    out = tmp_path / "curated"
    judge = ["--judge", "clip:tiny", "--judge-preferred", "a cat", "--judge-dispreferred", "a dog"]
    code, _, err = run_cli(capsys, "curate", str(src), "--out", str(out), *judge, "--judge-margin", "1")
    assert code == 0, err
    write_card(out, make_preview=False)
    files, _ = staged_files(out)
    loaded = load_dataset(str(stage(files, tmp_path / "staged")), split="train")
    source = pq.read_table(out / "data" / "train-00000.parquet")
    assert loaded.features == Features.from_arrow_schema(source.schema)
    assert loaded.to_list() == source.to_pylist() and loaded.num_rows == 4
    assert {"ranking_id", "judge_chosen_pref_prob"} <= set(loaded.column_names)


def test_dry_run_lists_files_and_destination_without_a_token(published, capsys, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    hub = HubRecorder(monkeypatch)
    code, out, _ = run_cli(capsys, "push", str(published), "--repo-id", "me/pairs", "--dry-run")
    assert code == 0 and hub.calls == []
    assert (
        "would upload 7 files" in out
        and "https://huggingface.co/datasets/me/pairs (revision main, private)" in out
    )
    listed = [line.split()[0] for line in out.splitlines()[1:8]]
    assert listed == EXPECTED and ".mapo" not in out and ".tmp" not in out


def test_push_calls_the_hub_with_the_staged_set(published, capsys, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = HubRecorder(monkeypatch)
    code, out, err = run_cli(
        capsys,
        "push",
        str(published),
        "--repo-id",
        "me/pairs",
        "--revision",
        "v1",
        "--commit-message",
        "first cut",
    )
    assert code == 0, err
    assert hub.names() == ["create_repo", "create_branch", "upload_folder"]
    assert hub.args("create_repo") == {
        "repo_id": "me/pairs",
        "token": TOKEN,
        "repo_type": "dataset",
        "private": True,
        "exist_ok": True,
    }
    assert hub.args("create_branch") == {
        "repo_id": "me/pairs",
        "repo_type": "dataset",
        "branch": "v1",
        "exist_ok": True,
    }
    upload = hub.args("upload_folder")
    assert (
        upload["repo_type"] == "dataset"
        and upload["revision"] == "v1"
        and upload["commit_message"] == "first cut"
    )
    assert upload["delete_patterns"] == ["data/*.parquet"]
    assert sorted(hub.uploaded) == sorted(EXPECTED)
    assert hub.uploaded["manifest.json"] == (published / "manifest.json").read_bytes()
    assert "uploaded 7 files" in out and "commit/abc123" in out
    assert TOKEN not in out + err

    # A rerun after the data changed: the stage follows (a shard gone from the manifest disappears).
    hub.calls.clear()
    assert run_cli(capsys, "push", str(published), "--repo-id", "me/pairs", "--public")[0] == 0
    assert hub.args("create_repo")["private"] is False
    assert (published / STAGE_DIR / "data" / "train-00000.parquet").samefile(
        published / "data" / "train-00000.parquet"
    )


def test_pick_safety_is_private_and_gated_unless_explicitly_public(tmp_path, capsys, monkeypatch):
    preset = {
        "name": "pick-safety",
        "split": None,
        "chosen_prefix": "",
        "rejected_prefix": "Sexual, nudity, +19 image.",
    }
    root = write_mapo_dataset(tmp_path / "safety", 2, preset=preset)
    write_card(root, make_preview=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    hub = HubRecorder(monkeypatch)
    assert_one_line_error(
        *run_cli(capsys, "push", str(root), "--repo-id", "me/safety", "--public"), "--allow-public-unsafe"
    )
    assert hub.calls == []
    code, out, _ = run_cli(capsys, "push", str(root), "--repo-id", "me/safety")
    assert code == 0 and "gated auto" in out
    assert hub.args("update_repo_settings") == {
        "repo_id": "me/safety",
        "repo_type": "dataset",
        "gated": "auto",
    }
    hub.calls.clear()
    code, _, _ = run_cli(
        capsys, "push", str(root), "--repo-id", "me/safety", "--public", "--allow-public-unsafe"
    )
    assert code == 0 and hub.args("create_repo")["private"] is False


def test_missing_token_and_refused_upload_are_one_line_errors(published, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    hub = HubRecorder(monkeypatch)
    assert_one_line_error(*run_cli(capsys, "push", str(published), "--repo-id", "me/pairs"), "HF_TOKEN")
    assert hub.calls == []

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    response = httpx2.Response(
        403, request=httpx2.Request("POST", "https://huggingface.co/api/datasets/me/pairs/commit/main")
    )
    refused = HfHubHTTPError(
        f"403 Forbidden: token {TOKEN} may not write to me/pairs\nmore detail", response=response
    )
    HubRecorder(monkeypatch, fail_upload=refused)
    code, out, err = run_cli(capsys, "push", str(published), "--repo-id", "me/pairs")
    assert_one_line_error(code, out, err, "push to me/pairs failed (upload): 403 Forbidden")
    assert TOKEN not in out + err


def test_push_needs_a_card_and_a_valid_repo_id(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "ds", 2)
    assert_one_line_error(
        *run_cli(capsys, "push", str(root), "--repo-id", "me/x", "--dry-run"), "mapo-data card"
    )
    write_card(root, make_preview=False)
    assert_one_line_error(
        *run_cli(capsys, "push", str(root), "--repo-id", "not a repo", "--dry-run"), "USER/NAME"
    )


def test_push_refuses_a_dataset_with_no_pairs(tmp_path, capsys):
    src = write_mapo_dataset(tmp_path / "ds", 2)
    out = tmp_path / "none-left"
    # curate writes the empty dataset (and fails, saying no pair survived); push must refuse it.
    assert run_cli(capsys, "curate", str(src), "--out", str(out), "--min-std", "200", "--no-progress")[0] == 1
    write_card(out, make_preview=False)
    assert_one_line_error(
        *run_cli(capsys, "push", str(out), "--repo-id", "me/x", "--dry-run"), "has no pairs"
    )
