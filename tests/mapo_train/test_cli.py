"""The command line: usage, one-line errors with exit 2 and no traceback, subcommand dispatch,
and a real run of the quickstart recipe through `python -m mapo_train`."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from mapo_train import cli

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "train" / "quickstart-tiny.yaml"


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def assert_one_line_error(code, err, fragment):
    assert code == 2
    assert err.startswith("error: ") and fragment in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_help_shows_usage_and_examples(capsys):
    code, out, _ = run_main(["--help"], capsys)
    assert code == 0
    assert "usage: mapo-train" in out and "--recipe" in out and "--resume" in out
    assert "recipes/train/quickstart-tiny.yaml" in out and "accelerate launch" in out


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "give a recipe"),
        (["--recipe", "nope.yaml"], "recipe nope.yaml does not exist"),
        (["--recipe", str(QUICKSTART), "train.lerning_rate=1"], "unknown key train.lerning_rate"),
        (["--recipe", str(QUICKSTART), "model.finetune=full", "lora.rank=4"], "lora.rank is set"),
        (["--recipe", str(QUICKSTART), "train.max_steps=many"], "train.max_steps: expected int"),
    ],
)
def test_user_errors_are_one_line(argv, fragment, capsys):
    code, _, err = run_main(argv, capsys)
    assert_one_line_error(code, err, fragment)


def test_print_config_and_keys(capsys):
    code, out, _ = run_main(["--recipe", str(QUICKSTART), "train.max_steps=7", "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(out)["train"]["max_steps"] == 7
    code, out, _ = run_main(["--keys"], capsys)
    assert code == 0 and "train.learning_rate (float, default 1e-05)" in out and "Peak learning rate." in out


def test_missing_data_and_resume_errors(tmp_path, capsys):
    base = ["--recipe", str(QUICKSTART), f"train.output_dir={tmp_path / 'out'}", "train.report_to=none"]
    code, _, err = run_main([*base, f"data.path={tmp_path / 'missing'}"], capsys)
    assert_one_line_error(code, err, f"data.path {tmp_path / 'missing'}: no such local file or folder")
    code, _, err = run_main([*base, "--resume", "latest"], capsys)
    assert_one_line_error(code, err, "no checkpoint in")


def test_bad_data_errors_are_one_line(tmp_path, capsys):
    """A dataset empty after filtering, and one whose images all fail to decode in a loader
    worker (torch folds the worker's traceback into the message; the user sees one line)."""
    from .conftest import write_pairs

    base = ["--recipe", str(QUICKSTART), "train.report_to=none", "validation.enabled=false"]

    def error_line(err):
        # Progress bars (datasets, tqdm) may precede the error on stderr, drawn with \r.
        assert "Traceback" not in err and err.endswith("\n")
        return err.rstrip("\n").split("\n")[-1].split("\r")[-1]

    ties = write_pairs(tmp_path / "ties.parquet", n=4, ties=4)
    code, _, err = run_main([*base, f"data.path={ties}", f"train.output_dir={tmp_path / 'a'}"], capsys)
    line = error_line(err)
    assert code == 2 and line.startswith("error: no usable pairs") and "4 ties dropped" in line
    broken = write_pairs(tmp_path / "broken.parquet", n=4, bad=4)
    argv = [*base, f"data.path={broken}", f"train.output_dir={tmp_path / 'b'}", "data.num_workers=1"]
    code, _, err = run_main(argv, capsys)
    line = error_line(err)
    assert code == 2 and line.startswith("error: 4 pairs in a row could not be decoded")
    assert "Caught" not in err and "worker" not in err


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is not None, reason="bitsandbytes is installed")
def test_8bit_adam_without_bitsandbytes_is_a_clear_error(tmp_path, capsys):
    argv = ["--recipe", str(QUICKSTART), "train.optimizer=adamw8bit", f"train.output_dir={tmp_path}"]
    code, _, err = run_main(argv, capsys)
    assert_one_line_error(code, err, "pip install 'mapo[bnb]'")


def test_subcommands_dispatch_lazily(monkeypatch, capsys):
    seen = []
    monkeypatch.setitem(
        sys.modules, "fake_eval_cli", types.SimpleNamespace(main=lambda argv: seen.append(argv))
    )
    monkeypatch.setitem(cli.SUBCOMMANDS, "eval", "fake_eval_cli")
    code, _, _ = run_main(["eval", "--base", "tiny"], capsys)
    assert code == 0 and seen == [["--base", "tiny"]]
    monkeypatch.setitem(cli.SUBCOMMANDS, "cache", "mapo_train.no_such_module")
    code, _, err = run_main(["cache", "--recipe", "x.yaml"], capsys)
    assert_one_line_error(code, err, "`mapo-train cache` is not available")


def _env():
    # One thread, as in the other tests (see conftest).
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"
    )
    return env


def test_python_dash_m_error_has_no_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "mapo_train", "--recipe", str(QUICKSTART), "data.bogus=1"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: unknown key data.bogus"


def test_quickstart_recipe_runs_through_python_dash_m(tmp_path, pairs_parquet):
    out = tmp_path / "quick"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mapo_train",
            "--recipe",
            str(QUICKSTART),
            f"data.path={pairs_parquet}",
            f"train.output_dir={out}",
            "train.max_steps=3",
            "train.checkpoint_every=2",
            "validation.every_n_steps=2",
            "validation.num_inference_steps=1",
        ],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done: 3 steps" in proc.stdout and str(out / "unet") in proc.stdout
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (out / "curves.png").is_file() and (out / "README.md").is_file()
    assert sorted(p.name for p in (out / "validation").glob("*.png")) == [
        "step-0000000.png",
        "step-0000002.png",
        "step-0000003.png",
    ]
    assert list((out / "logs").rglob("events.out.tfevents.*")), "tensorboard logs"
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-0000003"]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path, pairs_parquet):
    """The multi-process path (sharded data order, reduced metrics, every rank saving
    checkpoints) with two CPU processes under torchrun, as `accelerate launch` would start them."""
    out = tmp_path / "ddp"
    env = dict(_env(), ACCELERATE_USE_CPU="true")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "mapo_train",
            "--recipe",
            str(QUICKSTART),
            f"data.path={pairs_parquet}",
            f"train.output_dir={out}",
            "train.max_steps=2",
            "train.batch_size=2",
            "train.checkpoint_every=1",
            "model.finetune=lora",
            "data.num_workers=0",
            "validation.num_inference_steps=1",
            "train.report_to=none",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("done: 2 steps") == 1  # only the main process reports
    assert "effective batch 4 pairs" in (out / "README.md").read_text()  # 2 pairs x 2 processes
    checkpoint = out / "checkpoint-0000002"
    assert (checkpoint / "random_states_0.pkl").is_file() and (checkpoint / "random_states_1.pkl").is_file()
    assert (out / "pytorch_lora_weights.safetensors").is_file()


def test_switch_words_reach_str_settings_through_the_command_line(capsys):
    """`data.cache=off` on the command line: YAML reads off as False, the setting is the word."""
    argv = ["--recipe", str(QUICKSTART), "data.cache=off", "train.mixed_precision=no", "--print-config"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["data"]["cache"] == "off" and printed["train"]["mixed_precision"] == "no"
    code, _, err = run_main(["--recipe", str(QUICKSTART), "data.cache=yes"], capsys)
    assert_one_line_error(code, err, "data.cache: 'yes' does not say where the cache goes")
