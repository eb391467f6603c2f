"""What a new user reads (issue 12, "Help and text"): every command's --help, counts and sizes in
messages, the dataset card's licence, what Ctrl-C says, and no library chatter around our lines."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import typer
from huggingface_hub import DatasetCard

from mapo_data.card import card_context, render_card_text
from mapo_data.cli import interrupted_message
from mapo_data.cli.app import app
from mapo_data.text import human_bytes, plural
from tests.mapo_data.pairs_factory import run_cli, write_mapo_dataset
from tests.mapo_data.test_card import inputs_for

COMMANDS = sorted(typer.main.get_command(app).commands)
# A stray " ." is what is left when Rich markup swallows a hand-written "[default: ...]".
STRAY_DOT = re.compile(r"\s\.(?=\s|$)")
EXAMPLE_HEADING = re.compile(r"^\W*examples?:", re.IGNORECASE | re.MULTILINE)
# typer's own placeholders for arguments ({preset}, {inputs}...): never in our usage lines.
BRACED_NAME = re.compile(r"\{[a-z_]+\}")


def help_of(capsys, monkeypatch, *command: str, flag: str = "--help") -> str:
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that no help text wraps
    code, out, err = run_cli(capsys, *command, flag)
    assert code == 0, err
    return out


def usage_line(text: str) -> str:
    return next(line.strip() for line in text.splitlines() if "Usage:" in line)


def test_every_command_is_covered():
    assert {"build", "prompts", "curate", "verify", "preview", "stats", "card", "push"} <= set(COMMANDS)


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_is_clean(command, capsys, monkeypatch):
    args = (command,) if command else ()
    text = help_of(capsys, monkeypatch, *args)
    stray = [line for line in text.splitlines() if STRAY_DOT.search(line)]
    assert not stray, stray
    assert not BRACED_NAME.search(usage_line(text)), usage_line(text)
    # The examples once, under one heading (not also at the end of the description).
    assert len(EXAMPLE_HEADING.findall(text)) == 1, EXAMPLE_HEADING.findall(text)
    assert "mapo-data " in text.split("Usage:", 1)[1]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_argument_and_option_has_a_description(command):
    cmd = typer.main.get_command(app).commands[command]
    undescribed = [
        p.name for p in cmd.params if not getattr(p, "hidden", False) and not (p.help or "").strip()
    ]
    assert undescribed == []


@pytest.mark.parametrize(
    "command, usage",
    [
        ("build", "Usage: mapo-data build [OPTIONS] PRESET"),
        ("curate", "Usage: mapo-data curate [OPTIONS] INPUTS..."),
        ("verify", "Usage: mapo-data verify [OPTIONS] INPUTS..."),
        ("preview", "Usage: mapo-data preview [OPTIONS] INPUTS..."),
        ("stats", "Usage: mapo-data stats [OPTIONS] INPUTS..."),
        ("card", "Usage: mapo-data card [OPTIONS] DATASET"),
        ("push", "Usage: mapo-data push [OPTIONS] DATASET"),
        ("prompts", "Usage: mapo-data prompts [OPTIONS] [SOURCE]"),
    ],
)
def test_usage_names_arguments_readably(command, usage, capsys, monkeypatch):
    assert usage_line(help_of(capsys, monkeypatch, command)) == usage


def test_bracketed_defaults_and_argument_names_survive_in_the_text(capsys, monkeypatch):
    build = help_of(capsys, monkeypatch, "build")
    assert "Output folder [default: runs/<preset>-<split>]." in build
    assert "Height, multiple of 8 [default: model native, 1024]." in build
    curate = help_of(capsys, monkeypatch, "curate")
    # The description names the argument as the usage line does.
    assert "INPUTS are never modified; a rerun resumes." in curate and " IN " not in curate
    assert "Text describing the preferred side [default: from the input's preset]." in curate
    card = help_of(capsys, monkeypatch, "card")
    assert "Render DATASET/README.md, the Hub dataset card" in card


@pytest.mark.parametrize(
    "args, message",
    [
        (["build"], "Error: Missing argument 'PRESET'."),
        (["curate", "--out", "x"], "Error: Missing argument 'INPUTS...'."),
        (["verify", "ds", "--max-problems", "many"], "Error: Invalid value for '--max-problems'"),
        (["bild"], "Error: No such command 'bild'. Did you mean 'build'?"),
    ],
)
def test_usage_errors_are_a_message_not_a_traceback(args, message, capsys):
    code, out, err = run_cli(capsys, *args)
    assert code == 2 and "Traceback" not in out + err
    assert err.startswith(
        f"Usage: mapo-data {args[0]}" if args[0] != "bild" else "Usage: mapo-data [OPTIONS]"
    )
    assert err.strip().splitlines()[-1].startswith(message), err


# --- mapo-train's three help texts (its wording is another section's; checked by the same rules) ---


def _train_parsers() -> dict[str, argparse.ArgumentParser]:
    from mapo_train.cli import cache, eval, train

    return {"": train.build_parser(), "eval": eval.build_parser(), "cache": cache.build_parser()}


@pytest.mark.parametrize("command", ["", "eval", "cache"])
def test_mapo_train_help_is_clean(command, capsys, monkeypatch):
    from mapo_train.cli import main

    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"] if command else ["--help"])
    assert exit_info.value.code in (0, None)
    text = capsys.readouterr().out
    stray = [line for line in text.splitlines() if STRAY_DOT.search(line)]
    assert not stray, stray
    usage = text.split("\n\n", 1)[0]
    assert usage.startswith("usage: mapo-train") and not BRACED_NAME.search(usage), usage
    assert len(EXAMPLE_HEADING.findall(text)) == 1, EXAMPLE_HEADING.findall(text)
    parser = _train_parsers()[command]
    undescribed = [
        a.dest for a in parser._actions if not (a.help or "").strip() or a.help == argparse.SUPPRESS
    ]
    assert undescribed == []


# --- counts and sizes ---


def test_plural_and_human_bytes():
    assert [plural(n, "pair") for n in (0, 1, 2)] == ["0 pairs", "1 pair", "2 pairs"]
    assert plural(1, "parquet shard") == "1 parquet shard" and plural(3, "entry", "entries") == "3 entries"
    sizes = [0, 999, 1000, 9_949, 12_345, 999_499, 999_500, 73_400_320, 1_500_000_000]
    assert [human_bytes(n) for n in sizes] == [
        "0 B",
        "999 B",
        "1.0 KB",
        "9.9 KB",
        "12 KB",
        "999 KB",
        "1.0 MB",
        "73 MB",
        "1.5 GB",
    ]
    with pytest.raises(ValueError, match="negative"):
        human_bytes(-1)


def test_one_pair_dataset_messages_use_singular_and_readable_sizes(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "one", 1)
    code, out, _ = run_cli(capsys, "verify", str(root), "--no-progress")
    assert code == 0 and out.strip() == "ok: 1 pair in 1 shard, 2 images decoded"

    code, out, _ = run_cli(capsys, "stats", str(root))
    (size_line,) = [line for line in out.splitlines() if line.startswith("size ")]
    on_disk = sum(p.stat().st_size for p in (root / "data").glob("*.parquet"))
    assert 10_000 <= on_disk < 999_500  # a tiny dataset: whole kilobytes, never "0.0 MB"
    assert size_line.split(None, 1)[1].startswith(f"{on_disk / 1000:.0f} KB on disk, ")

    code, out, _ = run_cli(capsys, "curate", str(root), "--out", str(tmp_path / "cur"), "--no-progress")
    assert code == 0
    assert out.splitlines()[0] == "kept 1 of 1 pair in 1 shard; dropped: none; ties seen: 0"
    report = (tmp_path / "cur" / "curation_report.md").read_text()
    assert "(1 pair in 1 shard)" in report and "(1 pair kept, 100.0%)" in report

    code, out, _ = run_cli(capsys, "preview", str(root), "--out", str(tmp_path / "p.png"), "--n", "4")
    assert code == 0 and re.fullmatch(
        rf"wrote {re.escape(str(tmp_path / 'p.png'))} \(1 pair, \d+x\d+ px\)", out.strip()
    )

    code, _, _ = run_cli(capsys, "card", str(root), "--no-preview")
    text = (root / "README.md").read_text()
    assert code == 0 and "1 style preference pair (pick-style/pixel)" in text
    assert f"- 1 pair in 1 parquet shard, {on_disk / 1000:.0f} KB\n" in text


# --- the card's licence ---


def test_card_licence_follows_the_model_that_made_the_images(tmp_path, capsys):
    manifest, stats = inputs_for("pick-style")
    sdxl = DatasetCard(render_card_text(card_context(manifest, stats)))
    assert sdxl.data.license == "openrail++" and "CreativeML Open RAIL++-M" in sdxl.text

    manifest["model"] = {"id": "tiny", "revision": None, "hash": "0123abcd"}
    manifest["config"]["model"] = "tiny"
    tiny = DatasetCard(render_card_text(card_context(manifest, stats)))
    assert tiny.data.license == "apache-2.0"
    assert "mapo's built-in `tiny` model" in tiny.text and "(`apache-2.0`)" in tiny.text
    assert "openrail" not in tiny.text.lower() and "RAIL" not in tiny.text

    # The same through the command, on a folder whose manifest records a tiny build.
    root = write_mapo_dataset(tmp_path / "ds", 2)
    assert json.loads((root / "manifest.json").read_text())["model"]["id"] == "tiny"
    code, out, _ = run_cli(capsys, "card", str(root), "--no-preview")
    assert code == 0 and DatasetCard.load(root / "README.md").data.license == "apache-2.0"


# --- Ctrl-C ---


# Eight shards of about half a second each: Ctrl-C must land while shards are still being made,
# and on a loaded machine four short shards could all finish between two looks at the markers.
def _build_cmd(out: Path) -> list[str]:
    return [
        sys.executable, "-m", "mapo_data", "build", "pick-style", "--split", "cartoon", "--num-pairs", "16",
        "--shard-size", "2", "--batch-size", "1", "--model", "tiny", "--dtype", "fp32", "--steps", "6",
        "--height", "128", "--width", "128", "--no-progress", "--out", str(out),
    ]  # fmt: skip


RESUME_HINT = "interrupted: completed shards are kept; rerun the same command to resume"


def test_interrupted_message_names_the_resume_for_resumable_commands():
    assert interrupted_message(["build", "pick-style", "--out", "x"]) == RESUME_HINT
    assert interrupted_message(["curate", "runs/pixel", "--out", "y"]) == RESUME_HINT
    assert interrupted_message(["verify", "runs/pixel"]) == "interrupted"


@pytest.mark.slow
def test_ctrl_c_during_a_build_says_how_to_resume_and_the_rerun_does(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "stopped"
    # A shell starts the command with Ctrl-C at its default. A child inherits an *ignored* SIGINT,
    # and now and then something earlier in the test session leaves this process ignoring it
    # (seen on a 2-core machine, old and new code alike; the culprit is not found yet), so the
    # build would never see the interrupt. Start it as a shell would.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            _build_cmd(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
    finally:
        if previous is not None:  # None: a handler set outside Python, which signal cannot restore
            signal.signal(signal.SIGINT, previous)
    markers = out / ".mapo" / "completions"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (markers.is_dir() and any(markers.glob("[0-9]*.json"))):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stdout + stderr
    assert stderr.strip().splitlines()[-1] == RESUME_HINT
    assert not (out / "manifest.json").exists()
    done_before = len(list(markers.glob("[0-9]*.json")))
    assert 1 <= done_before < 8

    rerun = subprocess.run(_build_cmd(out), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {done_before} of 8 shards already complete" in rerun.stderr
    on_disk = sum(p.stat().st_size for p in (out / "data").glob("*.parquet"))
    assert re.search(rf"^done: 16 pairs in 8 shards, {re.escape(human_bytes(on_disk))}, ", rerun.stderr, re.M)
    assert on_disk < 999_500 and " KB, " in rerun.stderr  # not "0.2 MiB"


# --- library chatter ---


@pytest.mark.slow
def test_model_loads_print_no_torchvision_warnings(tmp_path):
    """A tiny build and a curate with a CLIP judge print only our lines, even when transformers was
    imported (and its logging set up) before mapo_data's command line: a notebook, a script."""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"} | {"HF_HUB_OFFLINE": "1"}
    out = tmp_path / "pixel"
    build = subprocess.run(
        [
            sys.executable, "-c",
            "import sys, transformers; from mapo_data.cli import main; main(sys.argv[1:])",
            "build", "pick-style", "--split", "pixel", "--model", "tiny", "--num-pairs", "2", "--steps", "2",
            "--no-progress", "--out", str(out),
        ],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    assert "torchvision" not in build.stderr and "[transformers]" not in build.stderr, build.stderr
    assert build.stderr.strip().splitlines()[-1].startswith("done: 2 pairs in 1 shard, ")

    curate = subprocess.run(
        [
            sys.executable, "-m", "mapo_data", "curate", str(out), "--out", str(tmp_path / "judged"),
            "--judge", "clip:tiny", "--min-std", "-1", "--max-phash-distance", "-1", "--dedup", "off",
            "--no-progress",
        ],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert curate.returncode == 0, curate.stderr
    assert "torchvision" not in curate.stderr and "[transformers]" not in curate.stderr, curate.stderr
    assert curate.stdout.startswith("kept ")
    report = json.loads((tmp_path / "judged" / "curation_report.json").read_text())
    assert "judge" in report["filters"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_dash_h_is_help_too(command, capsys, monkeypatch):
    words = [command] if command else []
    assert help_of(capsys, monkeypatch, *words, flag="-h") == help_of(capsys, monkeypatch, *words)


def test_output_piped_into_a_reader_that_stops_ends_quietly(tmp_path):
    """`mapo-data stats DIR --json | head`: the reader closes the pipe early; stats ends without a
    BrokenPipeError traceback, with click's exit status for a closed pipe (1). The pipe is closed
    before anything is written, so the write fails every time."""
    root = write_mapo_dataset(tmp_path / "ds", 2)
    proc = subprocess.Popen(
        [sys.executable, "-m", "mapo_data", "stats", str(root), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 1 and "Traceback" not in err and "BrokenPipe" not in err, err
