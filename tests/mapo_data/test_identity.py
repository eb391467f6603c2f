"""Identity by content: file and folder digests (memoised, never stale), Hub commits."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time

import pytest

from mapo_data.errors import MapoError
from mapo_data.identity import RACY_SECONDS, file_digest, folder_digest, hub_commit, model_identity


@pytest.fixture
def memo_home(tmp_path, monkeypatch):
    monkeypatch.setenv("MAPO_CACHE", str(tmp_path / "mapo-cache"))
    return tmp_path / "mapo-cache" / "file-digests"


def memo_files(home):
    return sorted(home.glob("*.json")) if home.is_dir() else []


def test_file_digest_is_sha256_and_memoised_only_once_settled(tmp_path, memo_home):
    f = tmp_path / "w.bin"
    f.write_bytes(b"weights" * 1000)
    want = hashlib.sha256(b"weights" * 1000).hexdigest()
    assert file_digest(f) == want
    assert memo_files(memo_home) == []  # just written: its stat could still change unseen
    time.sleep(RACY_SECONDS + 0.2)
    assert file_digest(f) == want
    (memo,) = memo_files(memo_home)
    record = json.loads(memo.read_text())
    assert record["sha256"] == want and record["size"] == 7000 and record["path"] == str(f.resolve())
    # While the stat matches, the memo is what answers (no rehash): a forged digest shows it.
    memo.write_text(json.dumps({**record, "sha256": "forged"}))
    assert file_digest(f) == "forged"


def test_in_place_rewrite_with_same_size_and_mtime_is_seen(tmp_path, memo_home):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 4096)
    time.sleep(RACY_SECONDS + 0.2)
    first = file_digest(f)
    assert len(memo_files(memo_home)) == 1
    st = f.stat()
    with open(f, "r+b") as handle:  # same inode, same size
        handle.write(b"b")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the old mtime put back
    assert (f.stat().st_size, f.stat().st_ino, f.stat().st_mtime_ns) == (
        st.st_size,
        st.st_ino,
        st.st_mtime_ns,
    )
    assert file_digest(f) == hashlib.sha256(b"b" + b"a" * 4095).hexdigest() != first


def test_unreadable_file_names_the_file(tmp_path, memo_home):
    with pytest.raises(MapoError, match=r"cannot read .*missing\.bin"):
        file_digest(tmp_path / "missing.bin")


def test_folder_digest_follows_content_not_place(tmp_path, memo_home):
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "config.json").write_text('{"x": 1}')
    (a / "sub" / "w.bin").write_bytes(b"\x00" * 64)
    base = folder_digest(a)
    b = tmp_path / "elsewhere" / "b"
    shutil.copytree(a, b)
    assert folder_digest(b) == base
    (b / ".cache").mkdir()
    (b / ".cache" / "download.lock").write_text("x")  # hidden: loaders never read it
    (b / ".DS_Store").write_text("x")
    assert folder_digest(b) == base
    (b / "sub" / "w.bin").rename(b / "sub" / "v.bin")
    renamed = folder_digest(b)
    assert renamed != base
    (b / "extra.json").write_text("{}")
    assert folder_digest(b) not in (base, renamed)
    with pytest.raises(MapoError, match=r"is not a folder"):
        folder_digest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MapoError, match=r"holds no files"):
        folder_digest(tmp_path / "empty")


def fake_hub_cache(root, repo, ref_commits: dict[str, str], snapshots: list[str]):
    """The Hugging Face cache layout, written by hand: refs/<name> holds a commit, and
    snapshots/<commit>/ the files of that commit."""
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    for name, commit in ref_commits.items():
        (repo_dir / "refs" / name).parent.mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / name).write_text(commit)
    for commit in snapshots:
        (repo_dir / "snapshots" / commit / "vae").mkdir(parents=True, exist_ok=True)
        (repo_dir / "snapshots" / commit / "vae" / "config.json").write_text("{}")


def test_hub_model_is_its_resolved_commit_offline(tmp_path, monkeypatch):
    from huggingface_hub import constants

    assert constants.is_offline_mode()  # tests never reach the Hub
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    c1, c2 = "1" * 40, "2" * 40
    fake_hub_cache(tmp_path / "hub", "org/sdxl", {"main": c1}, [c1])
    assert hub_commit("org/sdxl", None, "vae/config.json") == c1
    assert model_identity("org/sdxl", ("vae",)) == {
        "hub": "org/sdxl",
        "commit": c1,
        "parts": ["vae"],
        "variant": None,
    }
    # main moves on (a newer download): a new identity.
    fake_hub_cache(tmp_path / "hub", "org/sdxl", {"main": c2}, [c2])
    assert hub_commit("org/sdxl", None, "vae/config.json") == c2
    assert hub_commit("org/sdxl", "main", "vae/config.json") == c2
    # A commit is already an identity.
    assert hub_commit("org/sdxl", "a" * 40, "vae/config.json") == "a" * 40
    with pytest.raises(MapoError, match=r"cannot tell which version of org/other \(revision main\)"):
        hub_commit("org/other", None, "config.json")


def test_model_identity_of_a_missing_path_or_part(tmp_path, memo_home):
    with pytest.raises(MapoError, match=r"^model ./nowhere: no such local file or folder$"):
        model_identity("./nowhere", ("vae",))
    (tmp_path / "m" / "vae").mkdir(parents=True)
    (tmp_path / "m" / "vae" / "config.json").write_text("{}")
    with pytest.raises(MapoError, match=r"has no text_encoder/ folder"):
        model_identity(str(tmp_path / "m"), ("vae", "text_encoder"))
    assert model_identity(str(tmp_path / "m"), ("vae",), variant="fp16") == {
        "content": [folder_digest(tmp_path / "m" / "vae")],
        "variant": "fp16",
    }
