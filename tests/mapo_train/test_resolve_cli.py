"""Every mapo-train argument that takes "a local path or a Hub id" (data.path, model.pretrained,
model.vae, eval's --tuned, --base and judges) goes through the one resolver: with HF_HUB_OFFLINE
unset and no network, a path-like mistake fails in one line without a network call, and an
owner/name that exists nowhere fails in one line saying that neither a local folder nor the Hub
(unreachable) nor its cache has it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mapo_train import cli
from tests import hub_guard
from tests.hub_guard import CLOSED_ENDPOINT

from .conftest import write_pairs

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "train" / "quickstart-tiny.yaml"
UNREACHABLE = f"the Hub ({CLOSED_ENDPOINT}) is not reachable ([Errno 111] Connection refused)"
NOWHERE = "no local file or folder of that name, and no copy in the local Hugging Face cache"
PROBE = {("127.0.0.1", 9)}


@pytest.fixture
def hub_not_offline(monkeypatch, tmp_path):
    """As with HF_HUB_OFFLINE unset and no network, in an empty folder with an empty Hub cache;
    the network connections attempted."""
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    return hub_guard.hub_not_offline(monkeypatch)


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code, out, err, expected):
    assert code == 2, err
    assert "Traceback" not in out + err
    # The error is the last line and the only one; datasets' own progress bar may come before it
    # when the pairs were read before the model.
    assert [line for line in err.splitlines() if line.startswith("error:")] == [f"error: {expected}"]
    assert err.endswith(f"error: {expected}\n")


def train_args(tmp_path, *overrides):
    return ["--recipe", str(QUICKSTART), f"train.output_dir={tmp_path / 'run'}", *overrides]


def test_data_path_like_fails_without_the_network(hub_not_offline, tmp_path, capsys):
    code, out, err = run_main(train_args(tmp_path, "data.path=runs/pixle/data"), capsys)
    assert_one_line_error(code, out, err, "data.path runs/pixle/data: no such local file or folder")
    assert hub_not_offline == []
    assert not (tmp_path / "run").exists()


def test_data_owner_name_nowhere_says_so(hub_not_offline, tmp_path, capsys):
    code, out, err = run_main(train_args(tmp_path, "data.path=runs/pixle"), capsys)
    assert_one_line_error(code, out, err, f"data.path runs/pixle: {NOWHERE}; {UNREACHABLE}")
    assert set(hub_not_offline) == PROBE


@pytest.fixture
def pairs(tmp_path):
    return write_pairs(tmp_path / "pairs" / "train-00000.parquet", n=4)


def test_model_pretrained_path_fails_without_the_network(hub_not_offline, pairs, tmp_path, capsys):
    args = train_args(tmp_path, f"data.path={pairs.parent}", "model.pretrained=./models/sdxl")
    code, out, err = run_main(args, capsys)
    assert_one_line_error(code, out, err, "model.pretrained ./models/sdxl: no such local file or folder")
    assert hub_not_offline == []


def test_model_pretrained_owner_name_nowhere_says_so(hub_not_offline, pairs, tmp_path, capsys):
    args = train_args(tmp_path, f"data.path={pairs.parent}", "model.pretrained=tiyn")
    code, out, err = run_main(args, capsys)
    expected = f"model.pretrained tiyn: {NOWHERE}; {UNREACHABLE} (did you mean tiny?); "
    assert_one_line_error(code, out, err, expected + "model.pretrained=tiny uses the built-in tiny model")
    assert set(hub_not_offline) == PROBE


def test_model_vae_path_fails_without_the_network(hub_not_offline, pairs, tmp_path, capsys):
    args = train_args(tmp_path, f"data.path={pairs.parent}", "model.vae=~/no-such-mapo-vae")
    code, out, err = run_main(args, capsys)
    assert_one_line_error(code, out, err, "model.vae ~/no-such-mapo-vae: no such local file or folder")
    assert hub_not_offline == []


def test_cache_checks_its_models_the_same_way(hub_not_offline, pairs, tmp_path, capsys):
    args = ["cache", *train_args(tmp_path, f"data.path={pairs.parent}", "model.pretrained=~/no-such-sdxl")]
    code, out, err = run_main(args, capsys)
    assert_one_line_error(code, out, err, "model.pretrained ~/no-such-sdxl: no such local file or folder")
    assert hub_not_offline == []
    args = ["cache", *train_args(tmp_path, f"data.path={pairs.parent}", "model.vae=someone/vae")]
    code, out, err = run_main(args, capsys)
    assert_one_line_error(code, out, err, f"model.vae someone/vae: {NOWHERE}; {UNREACHABLE}")
    assert set(hub_not_offline) == PROBE


# --- mapo-train eval --------------------------------------------------------------------------------

EVAL = ["eval", "--preset", "pick-style", "--split", "pixel", "--num-prompts", "1", "--steps", "1"]


def eval_args(tmp_path, *args):
    return [*EVAL, "--out", str(tmp_path / "eval"), *args]


@pytest.fixture
def lora_file(tmp_path):
    # resolve_tuned only classifies a file by its name; nothing here is loaded.
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"")
    return path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["--base", "tiny", "--tuned", "runs/nope/unet"],
            "--tuned runs/nope/unet: no such local file or folder",
        ),
        (["--base", "./sdxl", "--tuned", "runs/nope"], "--base ./sdxl: no such local file or folder"),
        (
            ["--base", "tiny", "--tuned", "{lora}", "--judge", "clip:./clip"],
            "the clip judge's model ./clip: no such local file or folder",
        ),
    ],
)
def test_eval_paths_fail_without_the_network(args, expected, hub_not_offline, lora_file, tmp_path, capsys):
    args = [a.format(lora=lora_file) for a in args]
    code, out, err = run_main(eval_args(tmp_path, *args), capsys)
    assert_one_line_error(code, out, err, expected)
    assert hub_not_offline == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--base", "tiny", "--tuned", "runs/nope"], f"--tuned runs/nope: {NOWHERE}; {UNREACHABLE}"),
        (
            ["--base", "someone/sdxl", "--tuned", "runs/nope"],
            f"--base someone/sdxl: {NOWHERE}; {UNREACHABLE}; --base tiny uses the built-in tiny model",
        ),
        (
            ["--base", "tiny", "--tuned", "{lora}", "--judge", "pickscore"],
            f"the pickscore judge's model yuvalkirstain/PickScore_v1: {NOWHERE}; {UNREACHABLE}; "
            "give a local copy (JUDGE:FOLDER), or run once with the Hub reachable so its cache holds it",
        ),
    ],
)
def test_eval_hub_ids_nowhere_say_so(args, expected, hub_not_offline, lora_file, tmp_path, capsys):
    args = [a.format(lora=lora_file) for a in args]
    code, out, err = run_main(eval_args(tmp_path, *args), capsys)
    assert_one_line_error(code, out, err, expected)
    assert set(hub_not_offline) == PROBE


def test_fresh_process_without_offline_mode(tmp_path):
    """The report's case exactly: a new process, HF_HUB_OFFLINE unset, a mistyped run folder."""
    offline = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    env = {k: v for k, v in os.environ.items() if k not in offline}
    env.update(HF_ENDPOINT=CLOSED_ENDPOINT, HF_HUB_CACHE=str(tmp_path / "hub"), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "mapo_train", "--recipe", str(QUICKSTART), "data.path=runs/pixle"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: data.path runs/pixle: {NOWHERE}; {UNREACHABLE}\n"
    assert not (tmp_path / "runs").exists()
