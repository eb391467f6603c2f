"""The first hour of mapo-train (issue 12): mistakes answered in one line before any model is
loaded and without leaving folders behind, overrides anywhere on the line, a card that does not
present an old evaluation as current, clean help and messages, no torchvision warnings."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mapo_train import model as model_module
from mapo_train import train as train_module
from mapo_train.checkpoint import STATE_FILE
from mapo_train.cli import eval as eval_cli
from mapo_train.cli import main, run
from mapo_train.plots import curves_title, plot_curves

from .conftest import write_pairs

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "recipes" / "train" / "quickstart-tiny.yaml"


def _main(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _last_line(err: str) -> str:
    """The last line on stderr (progress bars end in carriage returns, not newlines)."""
    return err.rstrip("\n").split("\n")[-1].split("\r")[-1]


@pytest.fixture
def forbid_model_loading(monkeypatch):
    def tripwire(*args, **kwargs):
        raise AssertionError("the model was loaded before the mistake was reported")

    monkeypatch.setattr(train_module, "load_components", tripwire)
    monkeypatch.setattr(model_module, "load_components", tripwire)  # the cache builder's encoders


@pytest.fixture
def pairs(tmp_path) -> Path:
    write_pairs(tmp_path / "pairs" / "train-00000.parquet", n=6, size=32)
    return tmp_path / "pairs"


def _argv(pairs: Path, out: Path, *more: str) -> list[str]:
    return [
        "--recipe",
        str(QUICKSTART),
        f"data.path={pairs}",
        f"train.output_dir={out}",
        "data.resolution=32",
        "data.num_workers=0",
        "train.report_to=none",
        *more,
    ]


# ---------------------------------------------------------------------------------------------
# Mistakes that need no model: one line, exit 2, no model loaded, no folder left behind


def test_output_dir_that_is_a_file_is_one_line(tmp_path, pairs, forbid_model_loading, capsys):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    code, _, err = _main(_argv(pairs, afile), capsys)
    assert code == 2
    assert err == f"error: train.output_dir {afile} exists and is not a folder\n"
    code, _, err = _main(_argv(pairs, afile / "run"), capsys)
    assert code == 2
    assert (
        err == f"error: train.output_dir {afile / 'run'} cannot be created: {afile} is a file, not a folder\n"
    )
    assert afile.read_text() == "mine"


def _fake_checkpoint(out: Path) -> None:
    (out / "checkpoint-0000040").mkdir(parents=True)
    (out / "checkpoint-0000040" / STATE_FILE).write_text(json.dumps({"global_step": 40}))


@pytest.mark.parametrize(
    ("case", "more", "message"),
    [
        ("no checkpoint", ["--resume", "latest"], "error: --resume latest: no checkpoint in {out}"),
        (
            "checkpoints there",
            [],
            "error: {out} already holds checkpoints of a run: add --resume latest to continue it, "
            "or choose another train.output_dir",
        ),
        (
            "fewer pairs than a batch",
            ["train.batch_size=8"],
            "error: 6 usable pairs are fewer than one batch across processes (8 x 1); "
            "lower train.batch_size or add data",
        ),
        (
            "fewer pairs than a batch, cached",
            ["train.batch_size=8", "data.cache={tmp}/cache"],
            "error: 6 usable pairs are fewer than one batch across processes (8 x 1); "
            "lower train.batch_size or add data",
        ),
    ],
)
def test_checks_without_a_model_come_first_and_leave_no_folder(
    tmp_path, pairs, forbid_model_loading, capsys, case, more, message
):
    out = tmp_path / "runs" / "quick"
    if case == "checkpoints there":
        _fake_checkpoint(out)
    code, _, err = _main(_argv(pairs, out, *(m.format(tmp=tmp_path) for m in more)), capsys)
    assert code == 2 and "Traceback" not in err
    assert _last_line(err) == message.format(out=out)
    if case == "checkpoints there":
        assert sorted(p.name for p in out.iterdir()) == ["checkpoint-0000040"]  # untouched
    else:
        assert not (tmp_path / "runs").exists() and not (tmp_path / "cache").exists()


# ---------------------------------------------------------------------------------------------
# Overrides anywhere on the line


def test_overrides_around_print_config(capsys):
    argv = ["--recipe", str(QUICKSTART), "train.max_steps=3", "--print-config", "train.seed=5"]
    code, out, err = _main(argv, capsys)
    assert code == 0 and err == ""
    resolved = yaml.safe_load(out)
    assert resolved["train"]["max_steps"] == 3 and resolved["train"]["seed"] == 5


def test_overrides_around_resume(tmp_path, pairs, forbid_model_loading, capsys):
    out = tmp_path / "quick"
    # train.output_dir comes after --resume: the refusal names it, so the override was read.
    argv = [
        "--recipe",
        str(QUICKSTART),
        f"data.path={pairs}",
        "--resume",
        "latest",
        f"train.output_dir={out}",
    ]
    code, _, err = _main(argv, capsys)
    assert code == 2 and _last_line(err) == f"error: --resume latest: no checkpoint in {out}"


def test_cache_overrides_around_options(capsys):
    argv = ["cache", "--recipe", str(QUICKSTART), "data.streaming=true", "--no-progress", "train.seed=5"]
    code, _, err = _main(argv, capsys)
    assert code == 2
    assert (
        err == "error: a streamed dataset cannot be cached (data.streaming=true); set data.streaming=false\n"
    )


# ---------------------------------------------------------------------------------------------
# Messages


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.max_step=3", "error: unknown key train.max_step (did you mean train.max_steps?)"),
        ("max_steps=3", "error: unknown key max_steps (did you mean train.max_steps?)"),
        ("rank=4", "error: unknown key rank (did you mean lora.rank?)"),
        (
            "validation.seeds=7",
            "error: validation.seeds: expected list of int, got 7; write [7] for one item",
        ),
    ],
)
def test_config_mistakes_name_the_fix(override, message, capsys):
    code, _, err = _main(["--recipe", str(QUICKSTART), override, "--print-config"], capsys)
    assert code == 2 and err == message + "\n"


def test_one_item_list_in_brackets_is_accepted(capsys):
    code, out, _ = _main(["--recipe", str(QUICKSTART), "validation.seeds=[7]", "--print-config"], capsys)
    assert code == 0 and yaml.safe_load(out)["validation"]["seeds"] == [7]


def test_curves_title_says_lora_or_full(tmp_path):
    assert (
        curves_title("mapo", "full", 8, "tiny", "runs/pixel") == "mapo, full fine-tune, of tiny on runs/pixel"
    )
    assert curves_title("dpo", "lora", 4, "tiny", "runs/pixel") == "dpo, LoRA rank 4, of tiny on runs/pixel"
    history = [{"step": 1, "loss": 0.7, "margin": 0.1, "accuracy": 0.5}]
    path = plot_curves(history, tmp_path / "curves.png", title="dpo, LoRA rank 4, of tiny on runs/pixel")
    with Image.open(path) as image:
        assert image.text["Title"] == "dpo, LoRA rank 4, of tiny on runs/pixel"


def _help(argv, capsys) -> str:
    code, out, _ = _main([*argv, "--help"], capsys)
    assert code == 0
    return out


@pytest.mark.parametrize("command", [[], ["eval"], ["cache"]])
def test_help_has_one_examples_section_and_no_stray_dots(command, capsys):
    text = _help(command, capsys)
    assert text.count("examples:") == 1
    assert re.search(r" \.(\s|$)", text) is None  # "Output folder ." with a stray space
    examples = text.split("examples:")[1]
    assert (f"mapo-train {command[0]} --" if command else "mapo-train --recipe ") in examples
    # No example line appears twice (once in the description, once under examples).
    lines = [line.strip() for line in text.splitlines() if line.strip().startswith("mapo-train ")]
    assert len(lines) == len(set(lines)) and lines


def test_eval_render_options_have_descriptions_and_defaults():
    texts = {
        action.option_strings[0]: action.help
        for action in eval_cli.build_parser()._actions
        if action.option_strings
    }
    assert texts["--steps"] == "denoising steps per image (default 30)"
    assert texts["--guidance-scale"] == "classifier-free guidance scale (default 5.0)"
    assert texts["--height"] == "image height in pixels (default: the base model's native size)"
    assert texts["--width"] == "image width in pixels (default: the base model's native size)"
    assert texts["--negative-prompt"] == "negative prompt for every image (default: none)"
    assert texts["--judge-batch-size"] == "images scored per judge call (default 16)"


# ---------------------------------------------------------------------------------------------
# A real short run: no torchvision warnings; after eval and a resume with more steps, the card
# no longer presents the old report as the evaluation of the new weights


def _eval_span(card: str) -> str:
    return card.split("<!-- mapo-eval:start -->\n")[1].split("\n<!-- mapo-eval:end -->")[0]


def test_run_eval_resume_marks_the_report_out_of_date(tmp_path, pairs, capsys):
    out = tmp_path / "quick"
    settings = _argv(
        pairs,
        out,
        "train.max_steps=2",
        "train.batch_size=2",
        "train.checkpoint_every=2",
        "validation.enabled=false",
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env["TRANSFORMERS_VERBOSITY"] = "warning"  # the filter, not the verbosity, must drop them
    proc = subprocess.run(
        [sys.executable, "-m", "mapo_train", *settings], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "done: 2 steps" in proc.stdout
    assert "torchvision" not in proc.stderr
    with Image.open(out / "curves.png") as image:
        assert image.text["Title"] == f"mapo, full fine-tune, of tiny on {pairs}"

    assert (
        run(
            ["eval", "--base", "tiny", "--tuned", str(out), "--preset", "pick-style", "--split", "pixel"]
            + ["--num-prompts", "2", "--steps", "1", "--seed", "3"]
        )
        == 0
    )
    capsys.readouterr()
    evaluated = _eval_span((out / "README.md").read_text())
    assert evaluated.endswith("settings: [eval/report.md](eval/report.md).")

    assert run([*settings, "train.max_steps=3", "--resume", "latest"]) == 0
    capsys.readouterr()
    assert _eval_span((out / "README.md").read_text()) == (
        "These weights (3 steps) are not evaluated yet. Out of date: the report "
        "[eval/report.md](eval/report.md) judged earlier weights of this folder. "
        f"Run `mapo-train eval --tuned {out} ...` to evaluate these weights; this section is then rewritten."
    )
    # The report itself is left as it was.
    assert json.loads((out / "eval" / "report.json").read_text())["models"][1]["source"] == str(out)


@pytest.mark.parametrize(
    ("resume", "expected"),
    [
        ("lates", "error: --resume lates: no such checkpoint folder (did you mean latest?); "
         "give latest or a checkpoint-* folder"),
        ("runs/nope", "error: --resume runs/nope: no such checkpoint folder; give latest or a checkpoint-* folder"),
    ],
)  # fmt: skip
def test_a_mistyped_resume_says_it_does_not_exist(
    tmp_path, pairs, forbid_model_loading, capsys, resume, expected
):
    out = tmp_path / "run"
    code, _, err = _main([*_argv(pairs, out), "--resume", resume], capsys)
    assert (code, _last_line(err)) == (2, expected)
    assert not out.exists()


def test_help_lists_every_subcommand(capsys):
    from mapo_train.cli import SUBCOMMANDS

    code, out, _ = _main(["--help"], capsys)
    assert code == 0
    for name in SUBCOMMANDS:
        assert f"mapo-train {name} ..." in out and f"(mapo-train {name} --help)" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--recipe", "r.yaml"], "interrupted: checkpoints already written are kept; add --resume latest to the "
         "same command to continue"),
        (["cache", "--recipe", "r.yaml"], "interrupted: completed cache shards are kept; rerun the same command to "
         "resume"),
        (["eval", "--tuned", "x"], "interrupted"),
    ],
)  # fmt: skip
def test_ctrl_c_says_how_to_go_on(monkeypatch, capsys, argv, expected):
    import mapo_train.cli as cli_package

    def interrupted(argv):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_package, "run", interrupted)
    code, _, err = _main(argv, capsys)
    assert (code, err) == (130, expected + "\n")


def test_keys_piped_into_head_ends_quietly():
    """`mapo-train --keys | head`: the reader closes the pipe early; the writer stops without a
    BrokenPipeError traceback. The pipe is closed before anything is written, so the write fails
    every time (a short output would otherwise fit in the pipe's buffer)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "mapo_train", "--keys"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait() == 0 and "Traceback" not in err and "BrokenPipe" not in err, err
