"""`mapo-data prompts`: files written with a report, prompts printed, and one-line errors with exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from mapo_data.cli import main
from mapo_data.prompts import load_prompts


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `mapo-data prompts ...` in-process, through the same `main` as the console script."""
    try:
        main(["prompts", *args])
        code = 0
    except SystemExit as exit_:
        code = exit_.code or 0
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(
        "a cat on a mat\nA  cat on a mat\na woman reading a map\na castle, 8k\n\nan anime girl waving\na dog\n",
        encoding="utf-8",
    )
    return path


def test_writes_parquet_and_report(tmp_path, capsys, tiny_model_path):
    out = tmp_path / "out" / "prompts.parquet"
    mask = os.umask(0o022)  # the files get the usual mode, not mkstemp's owner-only 0600
    try:
        code, stdout, stderr = run_cli(
            capsys, "--tokenizer", "tiny", "--preset", "pick-style", "--style-split", "pixel", "--num", "12",
            "--seed", "3", "--out", str(out),
        )  # fmt: skip
    finally:
        os.umask(mask)
    assert code == 0, stderr
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in out.parent.iterdir()} == {
        "prompts.parquet": "0o644",
        "prompts.parquet.report.json": "0o644",
    }
    table = pq.read_table(out)
    assert table.column_names == ["caption"]
    captions = table.column("caption").to_pylist()
    assert len(captions) == 12
    assert set(captions) <= set(load_prompts(None))

    report = json.loads((tmp_path / "out" / "prompts.parquet.report.json").read_text())
    assert report["num_prompts"] == 12
    assert report["prefixes"] == ["Pixel art style image.", "Realistic 8k image."]
    assert report["config"]["style_words"] == "drop"
    assert report["config"]["seed"] == 3
    assert [s["step"] for s in report["steps"]][-1] == "sample"
    assert report["steps"][-1]["after"] == 12
    assert "| sample |" in stderr and "wrote 12 prompts" in stderr
    assert stdout == ""
    # No staging files are left beside the outputs.
    assert sorted(p.name for p in out.parent.iterdir()) == ["prompts.parquet", "prompts.parquet.report.json"]

    # Same seed, same prompts.
    again = tmp_path / "again.parquet"
    assert run_cli(capsys, "--tokenizer", "tiny", "--num", "12", "--seed", "3", "--out", str(again))[0] == 0
    assert pq.read_table(again).column("caption").to_pylist() == captions


def test_prints_prompts_without_out_and_curates(prompt_file, capsys, tiny_model_path):
    code, stdout, stderr = run_cli(capsys, str(prompt_file), "--tokenizer", "tiny", "--preset", "pick-style",
                                   "--style-split", "cartoon")  # fmt: skip
    assert code == 0, stderr
    assert stdout.splitlines() == ["a cat on a mat", "a woman reading a map", "a dog"]
    assert "| drop_duplicates | 6 | 5 | 1 |" in stderr
    assert "| style_words | 5 | 3 | 2 |" in stderr


def test_pick_safety_keeps_style_words_by_default_and_requires_words(prompt_file, capsys, tiny_model_path):
    code, stdout, _ = run_cli(capsys, str(prompt_file), "--tokenizer", "tiny", "--preset", "pick-safety",
                              "--require-words", "woman, girl")  # fmt: skip
    assert code == 0
    assert stdout.splitlines() == ["a woman reading a map", "an anime girl waving"]


def test_strip_and_txt_jsonl_outputs(prompt_file, tmp_path, capsys, tiny_model_path):
    for name in ("strip.txt", "strip.jsonl"):
        out = tmp_path / name
        code, _, stderr = run_cli(capsys, str(prompt_file), "--tokenizer", "tiny", "--prefix", "Watercolor.",
                                  "--style-words", "strip", "--out", str(out))  # fmt: skip
        assert code == 0, stderr
        expected = ["a cat on a mat", "a woman reading a map", "a castle", "a girl waving", "a dog"]
        assert load_prompts(str(out)) == expected
    first = json.loads((tmp_path / "strip.jsonl").read_text().splitlines()[0])
    assert first == {"caption": "a cat on a mat"}


def test_help_has_an_example(capsys):
    code, stdout, _ = run_cli(capsys, "--help")
    assert code == 0
    assert "Examples:" in stdout
    assert "mapo-data prompts --tokenizer tiny --preset pick-style" in stdout


def _assert_one_line_error(code: int, stdout: str, stderr: str, expected: str) -> None:
    assert code == 2
    assert "Traceback" not in stdout + stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert expected in lines[0]


def test_bad_inputs_are_one_line_errors(tmp_path, capsys, tiny_model_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    table = tmp_path / "t.jsonl"
    table.write_text('{"caption": "a cat", "url": "u"}\n', encoding="utf-8")
    cases = [
        ([str(tmp_path / "missing.txt")], "missing.txt: no such local file or folder"),
        ([str(empty)], "no prompts in"),
        ([str(latin)], "is not UTF-8 text"),
        ([str(table), "--column", "prompt"], "available columns: caption, url"),
        (["--style-words", "remove"], "style_words must be one of drop, strip, off"),
        (["--preset", "pick-style"], "needs --split"),
        (["--preset", "pick-style", "--style-split", "watercolor"], "unknown split 'watercolor'"),
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--preset", "custom"], "give each with --prefix"),
        (["--out", str(tmp_path / "p.csv")], "use a name ending in .parquet, .txt, .jsonl"),
        (["--require-words", "zebra"], "no prompts left after curation step 'require_words'"),
    ]
    for args, expected in cases:
        _assert_one_line_error(*run_cli(capsys, *args, "--tokenizer", "tiny"), expected)
    assert not (tmp_path / "p.csv").exists()


def test_default_tokenizer_offline_suggests_tiny(capsys):
    code, stdout, stderr = run_cli(capsys, "--num", "3")
    _assert_one_line_error(code, stdout, stderr, "stabilityai/stable-diffusion-xl-base-1.0")
    assert "--tokenizer tiny" in stderr


def test_console_entry_point_in_a_subprocess(tmp_path, tiny_model_path):
    missing = tmp_path / "nope.txt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mapo_data", "prompts", str(missing), "--tokenizer", "tiny"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"error: prompt source {missing}: no such local file or folder\n"
    assert "Traceback" not in proc.stdout + proc.stderr
