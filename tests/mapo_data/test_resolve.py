"""The one resolver of "local path or Hub id": path-like values are decided without the network,
an owner/name nobody has fails in one line naming both places, an unreachable Hub is found out once
and the process goes offline; and every mapo-data argument of that kind goes through it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mapo_data.errors import MapoError
from mapo_data.resolve import looks_like_path, resolve, resolve_model
from mapo_data.tiny import tiny_model_path
from tests import hub_guard
from tests.hub_guard import CLOSED_ENDPOINT
from tests.mapo_data.test_build import run_cli

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = f"the Hub ({CLOSED_ENDPOINT}) is not reachable ([Errno 111] Connection refused)"
FAST = [
    "pick-style",
    "--split",
    "pixel",
    "--num-pairs",
    "2",
    "--dtype",
    "fp32",
    "--steps",
    "1",
    "--no-progress",
]


@pytest.fixture
def hub_not_offline(monkeypatch):
    """As with HF_HUB_OFFLINE unset and no network; the network connections attempted."""
    return hub_guard.hub_not_offline(monkeypatch)


def assert_one_line_error(code: int, stdout: str, stderr: str, expected: str) -> None:
    assert code == 2, stderr
    assert "Traceback" not in stdout + stderr
    assert stderr == f"error: {expected}\n"


@pytest.mark.parametrize(
    ("value", "path_like"),
    [
        ("./runs", True),
        ("/abs/folder", True),
        ("~/models/sdxl", True),
        ("runs/pixel/data", True),
        ("prompts.txt", True),
        ("pairs.PARQUET", True),
        ("someone/model.safetensors", True),
        ("C:\\models\\sdxl", True),
        ("runs/pixle", False),  # one slash: could be a Hub id owner/name
        ("stabilityai/stable-diffusion-xl-base-1.0", False),  # a dot, but no file extension
        ("tiyn", False),
    ],
)
def test_looks_like_path(value, path_like):
    assert looks_like_path(value) is path_like


@pytest.mark.parametrize(
    "value",
    ["./nope", "/no/such/folder", "~/no-such-mapo-folder", "runs/pixle/data", "prompts.txt", "w.safetensors"],
)
def test_a_missing_path_fails_at_once_without_the_network(value, hub_not_offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(MapoError) as info:
        resolve(value, "--model")
    assert str(info.value) == f"--model {value}: no such local file or folder"
    assert hub_not_offline == []


def test_local_wins_over_hub_and_tiny_is_built_in(hub_not_offline, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert resolve("owner/name", "data.path", repo_type="dataset") == "owner/name"
    (tmp_path / "tiny").mkdir()  # a folder named tiny does not shadow the built-in model
    assert resolve_model("tiny", "--model") == str(tiny_model_path())
    home = Path("~").expanduser()
    assert resolve("~", "--prompts") == str(home)
    assert hub_not_offline == []


def test_unreachable_hub_fails_fast_in_one_line_and_goes_offline(
    hub_not_offline, tmp_path, monkeypatch, capsys
):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    started = time.monotonic()
    with pytest.raises(MapoError) as info:
        resolve_model("runs/pixle", "model.pretrained")
    assert str(info.value) == (
        "model.pretrained runs/pixle: no local file or folder of that name, and no copy in the local Hugging "
        f"Face cache; {UNREACHABLE}; model.pretrained=tiny uses the built-in tiny model"
    )
    # One probe of the endpoint, then offline mode for every library, also those imported already.
    assert set(hub_not_offline) == {("127.0.0.1", 9)}
    assert constants.is_offline_mode() and os.environ["HF_HUB_OFFLINE"] == "1"
    import datasets.config

    assert datasets.config.HF_HUB_OFFLINE is True
    # Later look-ups of this process do not ask again; a near miss of a built-in name says so.
    hub_not_offline.clear()
    with pytest.raises(MapoError) as info:
        resolve_model("tiyn", "--model")
    assert str(info.value) == (
        "--model tiyn: no local file or folder of that name, and no copy in the local Hugging Face cache; "
        f"{UNREACHABLE} (did you mean tiny?); --model tiny uses the built-in tiny model"
    )
    assert hub_not_offline == []
    assert time.monotonic() - started < 10  # a sanity bound; the message is what counts
    # A failed resolution's error already says the Hub is unreachable: no separate note.
    assert capsys.readouterr().err == ""

    # What the cache holds still resolves, and the switch to offline mode is then announced once.
    (tmp_path / "hub" / "models--owner--cached").mkdir(parents=True)
    assert resolve("owner/cached", "--model") == "owner/cached"
    assert resolve("owner/cached", "--model") == "owner/cached"
    err = capsys.readouterr().err
    assert err == (
        f"note: {UNREACHABLE}; working offline (Hub ids load from the local Hugging Face cache only; "
        "set HF_HUB_OFFLINE=1 to skip this check)\n"
    )


def test_offline_mode_set_by_the_user_asks_nothing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    assert constants.is_offline_mode()  # tests/conftest.py sets HF_HUB_OFFLINE
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(MapoError) as info:
        resolve("someone/prompts", "--prompts", repo_type="dataset", cache_dir=str(tmp_path / "ds"))
    assert str(info.value) == (
        "--prompts someone/prompts: no local file or folder of that name, and no copy in the local Hugging "
        "Face cache; the Hub is not reachable in offline mode (HF_HUB_OFFLINE is set)"
    )
    # A dataset prepared by datasets earlier (its own cache layout) counts as cached.
    (tmp_path / "ds" / "someone___my_prompts" / "default" / "0.0.0" / "abc").mkdir(parents=True)
    assert resolve("someone/MyPrompts", "--prompts", repo_type="dataset", cache_dir=str(tmp_path / "ds")) == (
        "someone/MyPrompts"
    )


def test_invalid_hub_id_and_empty_value(hub_not_offline):
    with pytest.raises(MapoError) as info:
        resolve("my model", "--vae")
    assert (
        str(info.value) == "--vae my model: no such local file or folder, and not a valid Hub id (owner/name)"
    )
    with pytest.raises(MapoError) as info:
        resolve("  ", "--vae")
    assert str(info.value) == "--vae is empty: give a local path or a Hub id"
    assert hub_not_offline == []


# --- every mapo-data argument of the kind, through the real command line ---------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "./nope"], "--model ./nope: no such local file or folder"),
        (["--model", "tiny", "--vae", "vaes/fp16/fix"], "--vae vaes/fp16/fix: no such local file or folder"),
        (
            ["--model", "tiny", "--prompts", "my-prompts.txt"],
            "--prompts my-prompts.txt: no such local file or folder",
        ),
    ],
)
def test_build_path_like_arguments_fail_without_the_network(
    args, expected, hub_not_offline, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["build", *FAST, *args, "--out", "out"], capsys)
    assert_one_line_error(code, out, err, expected)
    assert hub_not_offline == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--model", "tiyn"],
            f"--model tiyn: no local file or folder of that name, and no copy in the local Hugging Face cache; "
            f"{UNREACHABLE} (did you mean tiny?); --model tiny uses the built-in tiny model",
        ),
        (
            ["--model", "tiny", "--vae", "someone/vae"],
            f"--vae someone/vae: no local file or folder of that name, and no copy in the local Hugging Face "
            f"cache; {UNREACHABLE}",
        ),
        (
            ["--model", "tiny", "--prompts", "someone/prompts"],
            f"--prompts someone/prompts: no local file or folder of that name, and no copy in the local Hugging "
            f"Face cache; {UNREACHABLE}",
        ),
    ],
)
def test_build_unknown_hub_ids_with_the_hub_unreachable(
    args, expected, hub_not_offline, tmp_path, monkeypatch, capsys
):
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    code, out, err = run_cli(["build", *FAST, *args, "--out", "out"], capsys)
    assert_one_line_error(code, out, err, expected)
    assert set(hub_not_offline) == {("127.0.0.1", 9)}


def test_judge_model_path_fails_without_the_network(hub_not_offline, tmp_path, monkeypatch):
    from mapo_data.judges import load_judge

    monkeypatch.chdir(tmp_path)
    with pytest.raises(MapoError) as info:
        load_judge("pickscore:models/pickscore/v1", device="cpu")
    assert str(info.value) == "the pickscore judge's model models/pickscore/v1: no such local file or folder"
    assert hub_not_offline == []


def test_subprocess_without_offline_mode_names_both_places(tmp_path):
    """The user's situation exactly: a fresh process, HF_HUB_OFFLINE unset, no network."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    }
    env.update(HF_ENDPOINT=CLOSED_ENDPOINT, HF_HUB_CACHE=str(tmp_path / "hub"), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "mapo_data", "prompts", "runs/prompts", "--tokenizer", "tiny"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "error: prompt source runs/prompts: no local file or folder of that name, and no copy in the local "
        f"Hugging Face cache; {UNREACHABLE}\n"
    )


@pytest.mark.parametrize(
    "url", ["https://example.com/pairs.parquet", "s3://bucket/pairs", "hf://datasets/a/b"]
)
def test_a_url_is_refused_at_once_by_name(url, hub_not_offline):
    with pytest.raises(MapoError) as info:
        resolve(url, "SOURCE", repo_type="dataset")
    assert (
        str(info.value)
        == f"SOURCE {url}: a URL; mapo reads local files and Hub ids only, so download it first"
    )
    assert hub_not_offline == []
