"""The README's two fresh-machine commands must stay true: the quickstart runs as written (its
mapo-data and mapo-train parts, in a scratch folder), and CI installs and tests exactly as the
README's test command says."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bash_block_after(heading: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading) :]
    return re.search(r"```bash\n(.*?)\n```", section, re.S).group(1).strip()


def _steps(command: str) -> list[list[str]]:
    return [shlex.split(part) for part in command.split("&&")]


def test_readme_test_command_is_what_ci_runs():
    steps = _steps(_bash_block_after("## Run the tests"))
    ci = (ROOT / ".ci" / "run").read_text()
    installs = [" ".join(s) for s in steps if s[:2] == ["pip", "install"]]
    assert installs == ["pip install torch==2.13.0", "pip install -e .[dev]"]
    assert 'pip install torch==2.13.0\npip install -e ".[dev]"' in ci
    assert steps[-1] == ["HF_HUB_OFFLINE=1", "pytest", "-q"] and "HF_HUB_OFFLINE=1 pytest -q" in ci


@pytest.mark.slow
def test_readme_quickstart_runs_and_shows_mapo_aligning_the_tiny_model(tmp_path):
    """The quickstart as written: build, curate with the tiny judge, MaPO, eval. Through the real
    CLIs, it must show what MaPO is for: from the context prompt alone, the share of the tuned
    model's pictures judged pixel art rises far above the base's."""
    steps = _steps(_bash_block_after("## Quickstart"))
    assert [" ".join(s[:2]) for s in steps[2:4]] == ["pip install", "pip install"]
    jobs = [s for s in steps if s[0] in ("mapo-data", "mapo-train")]
    assert [j[:2] for j in jobs] == [
        ["mapo-data", "build"],
        ["mapo-data", "curate"],
        ["mapo-train", "--recipe"],
        ["mapo-train", "eval"],
    ]
    (tmp_path / "recipes").symlink_to(ROOT / "recipes")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    outputs = []
    for job in jobs:
        module = job[0].replace("-", "_")
        done = subprocess.run(
            [sys.executable, "-m", module, *job[1:]], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout + done.stderr)
    build, curate, train, evaluate = outputs
    runs = tmp_path / "runs"
    assert (runs / "pixel" / "manifest.json").is_file()
    # The judge agrees with nearly every pair, so curation keeps them (>= 80% of 32).
    kept = int(re.search(r"kept (\d+) of 32 pairs", curate).group(1))
    assert kept >= 26, curate
    run = runs / "quickstart"
    assert (run / "unet" / "config.json").is_file() and list((run / "unet").glob("*.safetensors"))
    assert list((run / "validation").glob("step-*.png")) and (run / "curves.png").is_file()
    assert (run / "README.md").is_file() and (run / "training_config.yaml").is_file()
    assert "runs/quickstart/unet" in train
    report = json.loads((run / "eval" / "report.json").read_text())
    result = report["results"]["clip:tiny"]
    base = result["per_model"]["base"]["verdict"]["rate"]
    change = result["verdict_change"]["quickstart"]
    assert base <= 0.5, result["per_model"]["base"]
    # The bar is +30 points; the lower end of the paired interval must clear +15.
    assert change["points"] >= 30 and change["low"] >= 15, change
    # The headline the quickstart ends with.
    assert re.search(r"clip:tiny: judged preferred: base \d+% -> quickstart \d+% \(\+\d+ points", evaluate)
