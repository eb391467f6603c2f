"""End-to-end `mapo-data build` on the tiny model: format, determinism, resume, scale-out, bad input."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mapo_data.build import BuildConfig, chosen_column, pair_seed, run_build
from mapo_data.cli import main
from mapo_data.render import RenderConfig, load_pipeline, render_images

FAST = ["--model", "tiny", "--dtype", "fp32", "--steps", "3", "--no-progress"]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """Run `mapo-data` in-process through its real entry point; return (exit code, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "data").glob("*.parquet"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("build") / "pixel"
    config = BuildConfig(
        preset="pick-style",
        split="pixel",
        out=str(out),
        num_pairs=6,
        shard_size=4,
        batch_size=2,
        render=RenderConfig(model="tiny", dtype="fp32", steps=3),
    )
    result = run_build(config, progress=False)
    assert result.num_pairs == 6 and result.num_shards == 2 and result.manifest is not None
    return out


def test_build_writes_pick_a_pic_shards_and_manifest(built):
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["num_pairs"] == 6
    assert [s["path"] for s in manifest["shards"]] == ["data/train-00000.parquet", "data/train-00001.parquet"]
    assert [s["rows"] for s in manifest["shards"]] == [4, 2]
    assert manifest["preset"]["chosen_prefix"] == "Pixel art style image."
    assert manifest["config"]["render.steps"] == 3 and manifest["model"]["hash"]
    assert {"torch", "diffusers", "mapo"} <= set(manifest["versions"])
    from mapo_data.shards import sha256_file

    for shard in manifest["shards"]:
        assert sha256_file(built / shard["path"]) == shard["sha256"]

    table = pq.read_table(built / "data" / "train-00000.parquet")
    assert table.schema.field("jpg_0").type == "binary"
    assert table.schema.field("label_0").type == "int64"
    rows = table.to_pylist()
    for row in rows:
        chosen = chosen_column(0, row["pair_id"])  # the default layout: a coin per pair
        assert (row[f"label_{chosen}"], row[f"label_{1 - chosen}"]) == (1, 0)
        assert row[f"prompt_{chosen}"] == f"Pixel art style image. {row['caption']}"
        assert row[f"prompt_{1 - chosen}"] == f"Realistic 8k image. {row['caption']}"
        assert row["seed_0"] == row["seed_1"] == pair_seed(0, row["pair_id"])
    assert [r["pair_id"] for r in rows] == [0, 1, 2, 3]
    assert manifest["config"]["chosen_position"] == "random"


def test_build_output_loads_with_datasets_pandas_and_pil(built):
    from datasets import load_dataset

    ds = load_dataset(str(built), split="train")
    assert ds.num_rows == 6
    assert {"caption", "jpg_0", "jpg_1", "label_0", "label_1"} <= set(ds.column_names)
    ds2 = load_dataset("parquet", data_files=str(built / "data" / "*.parquet"), split="train")
    assert ds2["caption"] == ds["caption"]
    frame = pd.concat(pd.read_parquet(p) for p in sorted((built / "data").glob("*.parquet")))
    assert list(frame["caption"]) == ds["caption"]
    image = Image.open(io.BytesIO(ds[0]["jpg_1"]))
    assert image.format == "JPEG" and image.size == (64, 64)


def test_build_is_deterministic_and_any_pair_rerenders_alone(built, tmp_path, capsys):
    again = tmp_path / "again"
    config = BuildConfig(
        preset="pick-style",
        split="pixel",
        out=str(again),
        num_pairs=6,
        shard_size=4,
        batch_size=2,
        render=RenderConfig(model="tiny", dtype="fp32", steps=3),
    )
    run_build(config, progress=False)
    assert shard_bytes(again) == shard_bytes(built)
    # Another batch size rounds differently in fp32, so a rerun with one is refused by name
    # rather than mixing shards that differ in the last bits.
    code, _, err = run_cli(
        ["build", "pick-style", "--split", "pixel", "--num-pairs", "6", "--shard-size", "4",
         "--batch-size", "3", "--out", str(built), *FAST],
        capsys,
    )  # fmt: skip
    assert code == 2 and "differs in: batch_size" in err

    row = pq.read_table(built / "data" / "train-00001.parquet").to_pylist()[1]
    c = 0 if row["label_0"] == 1 else 1
    render = RenderConfig(model="tiny", dtype="fp32", steps=3)
    pipe = load_pipeline(render)
    stored = np.asarray(Image.open(io.BytesIO(row[f"jpg_{c}"])).convert("RGB"), dtype=np.float64)

    def rendered_alone(seed: int) -> np.ndarray:
        image = render_images(pipe, [row[f"prompt_{c}"]], [seed], render)[0]
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=95)
        return np.asarray(Image.open(buffer).convert("RGB"), dtype=np.float64)

    # Same noise and prompt give the same picture. Rendered alone (batch 1) rather than beside
    # its pair, the fp32 rounding differs by a pixel value here and there on some CPUs, so the
    # picture is compared, not the bytes; another seed is a different picture altogether.
    same, other = rendered_alone(row[f"seed_{c}"]), rendered_alone(row[f"seed_{c}"] + 1)
    assert np.abs(same - stored).mean() < 0.5 and np.abs(same - stored).max() <= 16
    assert np.abs(other - stored).mean() > 10 * max(np.abs(same - stored).mean(), 0.5)


def test_independent_noise_gives_each_side_its_own_seed(tmp_path):
    config = BuildConfig(
        preset="pick-safety",
        out=str(tmp_path / "safety"),
        num_pairs=2,
        independent_noise=True,
        image_format="png",
        render=RenderConfig(model="tiny", dtype="fp32", steps=2),
    )
    run_build(config, progress=False)
    rows = pq.read_table(tmp_path / "safety" / "data" / "train-00000.parquet").to_pylist()
    assert all(r["seed_0"] != r["seed_1"] for r in rows)
    chosen = 0 if rows[0]["label_0"] == 1 else 1
    assert rows[0][f"prompt_{chosen}"] == rows[0]["caption"]  # pick-safety: chosen has no prefix
    assert Image.open(io.BytesIO(rows[0]["jpg_0"])).format == "PNG"


POSITION_ARGS = ["build", "pick-style", "--split", "pixel", "--num-pairs", "16", "--shard-size", "8",
                 "--batch-size", "4", "--independent-noise", *FAST]  # fmt: skip


def _position_config(out: Path, position: str, batch_size: int = 4) -> BuildConfig:
    """POSITION_ARGS as a config."""
    return BuildConfig(
        preset="pick-style",
        split="pixel",
        out=str(out),
        num_pairs=16,
        shard_size=8,
        batch_size=batch_size,
        independent_noise=True,
        chosen_position=position,
        render=RenderConfig(model="tiny", dtype="fp32", steps=3),
    )


def _rows(folder: Path) -> list[dict]:
    return [r for p in sorted((folder / "data").glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


@pytest.fixture(scope="module")
def positions(tmp_path_factory) -> tuple[Path, Path]:
    """16 pairs built twice: the default layout (random) and --chosen-position first (the CLI)."""
    root = tmp_path_factory.mktemp("positions")
    run_build(_position_config(root / "random", "random"), progress=False)
    main([*POSITION_ARGS, "--chosen-position", "first", "--out", str(root / "first")])
    return root / "random", root / "first"


def test_chosen_image_is_in_either_column_with_its_label_prompt_and_seed(positions, capsys):
    mixed, first = positions
    rows, reference = _rows(mixed), _rows(first)
    assert [r["pair_id"] for r in rows] == [r["pair_id"] for r in reference] == list(range(16))
    columns = [chosen_column(0, r["pair_id"]) for r in rows]
    assert 0 < sum(columns) < 16  # both positions occur
    for row, ref, c in zip(rows, reference, columns, strict=True):
        pair_id = row["pair_id"]
        assert (row[f"label_{c}"], row[f"label_{1 - c}"]) == (1, 0)
        assert row[f"prompt_{c}"] == f"Pixel art style image. {row['caption']}"
        assert row[f"prompt_{1 - c}"] == f"Realistic 8k image. {row['caption']}"
        assert (row[f"seed_{c}"], row[f"seed_{1 - c}"]) == (
            pair_seed(0, pair_id, "chosen"),
            pair_seed(0, pair_id, "rejected"),
        )
        # --chosen-position first: today's layout, every chosen image in jpg_0.
        assert (ref["label_0"], ref["label_1"]) == (1, 0)
        assert ref["prompt_0"] == row[f"prompt_{c}"] and ref["seed_0"] == row[f"seed_{c}"]
        # The very same images, each moved with its label, prompt and seed.
        assert (row[f"jpg_{c}"], row[f"jpg_{1 - c}"]) == (ref["jpg_0"], ref["jpg_1"])
    in_1 = sum(columns)
    code, out, _ = run_cli(["stats", str(mixed)], capsys)
    assert code == 0 and f"chosen in jpg_0: {16 - in_1}, in jpg_1: {in_1}," in out
    code, out, _ = run_cli(["stats", str(first)], capsys)
    assert code == 0 and "chosen in jpg_0: 16, in jpg_1: 0," in out
    code, out, _ = run_cli(["verify", str(mixed), "--no-progress"], capsys)  # labels agree with the prompts
    assert code == 0 and out.startswith("ok: 16 pairs in 2 shards")
    manifest = json.loads((first / "manifest.json").read_text())
    assert manifest["config"]["chosen_position"] == "first"


def test_position_coin_depends_on_seed_and_pair_id_only():
    assert all(chosen_column(s, k, "first") == 0 for s in range(3) for k in range(50))
    coins = [chosen_column(0, k) for k in range(2000)]
    assert coins == [chosen_column(0, k) for k in range(2000)]  # no hidden state
    assert 0.45 < sum(coins) / len(coins) < 0.55  # a fair coin: 4 standard deviations
    assert coins[:64] != [chosen_column(1, k) for k in range(64)]  # another --seed, another layout


def test_resume_gives_the_uninterrupted_bytes(positions, tmp_path):
    mixed, _ = positions
    out = tmp_path / "resumed"
    shutil.copytree(mixed, out)
    # As if the run had died after shard 0: shard 1, its marker and the manifest gone.
    for path in (
        out / "manifest.json",
        out / "data" / "train-00001.parquet",
        out / ".mapo/completions/00001.json",
    ):
        path.unlink()
    logs: list[str] = []
    run_build(_position_config(out, "random"), progress=False, log=logs.append)
    assert logs == ["resuming: 1 of 2 shards already complete"]
    assert shard_bytes(out) == shard_bytes(mixed)


def test_a_shard_changed_in_place_is_redone_not_taken_as_complete(positions, tmp_path):
    """A finished shard whose bytes changed in place, same size (a bad disk, a stray write), with
    the run unfinished: the rerun sees it by content and renders it again."""
    mixed, _ = positions
    out = tmp_path / "damaged"
    shutil.copytree(mixed, out)
    (out / "manifest.json").unlink()
    shard = out / "data" / "train-00000.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    logs: list[str] = []
    run_build(_position_config(out, "random"), progress=False, log=logs.append)
    assert logs == ["resuming: 1 of 2 shards already complete"]
    assert shard_bytes(out) == shard_bytes(mixed)


def test_a_rerun_with_another_chosen_position_is_refused(positions, capsys):
    _, first = positions
    code, _, err = run_cli([*POSITION_ARGS, "--out", str(first)], capsys)  # default: random
    assert code == 2 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "different config (differs in: chosen_position)" in lines[-1]


def test_rerun_is_a_no_op_and_a_changed_config_is_refused(built, capsys):
    code, _, err = run_cli(
        [
            "build",
            "pick-style",
            "--split",
            "pixel",
            "--num-pairs",
            "6",
            "--shard-size",
            "4",
            "--batch-size",
            "2",
            "--out",
            str(built),
            *FAST,
        ],
        capsys,
    )
    assert code == 0 and "already complete" in err
    code, _, err = run_cli(
        ["build", "pick-style", "--split", "pixel", "--num-pairs", "6", "--shard-size", "4", "--batch-size", "2",
         "--out", str(built), *FAST[:-3], "--steps", "5", "--no-progress"],
        capsys,
    )  # fmt: skip
    assert code == 2
    assert "different config" in err and "render.steps" in err and "--overwrite" in err
    assert "Traceback" not in err


def _build_cmd(out: Path, steps: int, size: int = 64) -> list[str]:
    return [
        sys.executable, "-m", "mapo_data", "build", "pick-style", "--split", "cartoon", "--num-pairs", "8",
        "--shard-size", "2", "--batch-size", "1", "--model", "tiny", "--dtype", "fp32", "--steps", str(steps),
        "--height", str(size), "--width", str(size), "--no-progress", "--out", str(out),
    ]  # fmt: skip


def _reference_build(out: Path, steps: int, size: int = 64, threads: int | None = None) -> None:
    """The uninterrupted single-process run, in-process (saves an interpreter start)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        config = BuildConfig(
            preset="pick-style",
            split="cartoon",
            out=str(out),
            num_pairs=8,
            shard_size=2,
            batch_size=1,
            render=RenderConfig(model="tiny", dtype="fp32", steps=steps, height=size, width=size),
        )
        run_build(config, progress=False)
    finally:
        torch.set_num_threads(before)


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_bytes(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    reference = tmp_path / "reference"
    _reference_build(reference, steps=6, size=128)

    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _build_cmd(out, 6, 128), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    markers = out / ".mapo" / "completions"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (markers.is_dir() and any(markers.glob("[0-9]*.json"))):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "the killed run must not look complete"
    # Finished shards wait out of sight, so load_dataset(out) cannot pick up a partial dataset.
    assert not list((out / "data").glob("*.parquet")) if (out / "data").exists() else True
    assert list((out / ".mapo" / "staged" / "data").glob("*.parquet"))
    done_before = len(list(markers.glob("[0-9]*.json")))
    assert 1 <= done_before < 4

    rerun = subprocess.run(_build_cmd(out, 6, 128), env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{done_before} of 4 shards already complete" in rerun.stderr
    assert shard_bytes(out) == shard_bytes(reference)
    assert not list((out / "data").glob(".*")) and not list(markers.glob(".*")), "no temporary files left"
    assert oct((out / "data" / "train-00000.parquet").stat().st_mode & 0o777) != oct(0o600)
    manifest = json.loads((out / "manifest.json").read_text())
    pair_ids = [
        r for p in sorted((out / "data").glob("*.parquet")) for r in pq.read_table(p)["pair_id"].to_pylist()
    ]
    assert pair_ids == list(range(8)) and manifest["num_pairs"] == 8


@pytest.mark.slow
def test_two_process_build_under_accelerate_matches_one_process(tmp_path):
    # accelerate gives each CPU process one thread; the reference uses one too, so kernels
    # sum in the same order and the bytes can be compared exactly.
    single = tmp_path / "single"
    _reference_build(single, steps=2, threads=1)
    out = tmp_path / "two"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", *_build_cmd(out, 2)[2:],
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["provenance"][0]["processes"] == 2
    assert manifest["num_pairs"] == 8 and len(manifest["shards"]) == 4
    assert shard_bytes(out) == shard_bytes(single)


def test_dry_run_shows_prompts_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "dry"
    code, stdout, _ = run_cli(
        [
            "build",
            "pick-style",
            "--split",
            "pixel",
            "--num-pairs",
            "3",
            "--out",
            str(out),
            "--dry-run",
            *FAST,
        ],
        capsys,
    )
    assert code == 0
    assert stdout.count("chosen:   Pixel art style image. ") == 3
    assert stdout.count("rejected: Realistic 8k image. ") == 3
    assert "3 pairs" in stdout and "steps" in stdout
    assert not out.exists()


def test_help_has_an_example(capsys):
    code, stdout, _ = run_cli(["build", "--help"], capsys)
    assert code == 0 and "mapo-data build pick-style --split pixel" in stdout


def _bad_input_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81 not text")
    table = tmp_path / "prompts.csv"
    table.write_text("text\na cat\n")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    base = ["build", "pick-style", "--split", "pixel", "--num-pairs", "2"]
    return [
        ([*base, "--prompts", str(tmp_path / "missing.txt")], "missing.txt"),
        ([*base, "--prompts", str(empty)], "prompt"),
        ([*base, "--prompts", str(binary)], "UTF-8"),
        ([*base, "--prompts", str(table), "--prompt-column", "caption"], "caption"),
        (["build", "pick-colour"], "unknown preset"),
        (["build", "pick-style", "--split", "watercolor"], "unknown split"),
        ([*base, "--height", "100"], "multiple of 8"),
        ([*base, "--model", "no-such-org/no-such-model", "--dtype", "fp32", "--steps", "1"], "--model tiny"),
        ([*base, "--out", str(a_file)], "not a folder"),
        ([*base, "--chosen-position", "second"], "--chosen-position must be random or first"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_bad_input_is_one_line_error_and_writes_nothing(case, tmp_path, capsys):
    args, expected = _bad_input_cases(tmp_path)[case]
    out = tmp_path / "out"
    if "--out" not in args:
        args = [*args, "--out", str(out)]
    if "--model" not in args:
        args = [*args, *FAST]
    code, stdout, err = run_cli(args, capsys)
    assert code == 2, (stdout, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and expected in lines[-1]
    assert "Traceback" not in err + stdout
    assert not (out / "manifest.json").exists() and not (out / "data").exists()


def _perturb_weights_in_place(weights: Path) -> None:
    """Change the lowest byte of one fp32 value in a safetensors file, keeping its size, as a
    fine-tune of the same architecture would (written with plain file I/O, not mapo's writers)."""
    data = bytearray(weights.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")  # u64 header length, then the JSON header
    middle = start + (len(data) - start) // 2 // 4 * 4
    data[middle] ^= 0x01
    weights.write_bytes(bytes(data))


IDENTITY_ARGS = ["build", "pick-style", "--split", "pixel", "--num-pairs", "2", "--shard-size", "1",
                 "--dtype", "fp32", "--steps", "1", "--no-progress"]  # fmt: skip


def test_a_resume_with_other_weights_of_the_same_size_is_refused(tmp_path, tiny_model_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    out = tmp_path / "out"
    code, _, err = run_cli([*IDENTITY_ARGS, "--model", str(model), "--out", str(out)], capsys)
    assert code == 0, err
    # The same model by content, named differently: the build is complete, nothing to do.
    code, _, err = run_cli([*IDENTITY_ARGS, "--model", "tiny", "--out", str(out)], capsys)
    assert code == 0 and "already complete (2 pairs)" in err
    # As if the run had died after shard 0, then the model's UNet was replaced by same-sized weights.
    for path in (
        out / "manifest.json",
        out / "data" / "train-00001.parquet",
        out / ".mapo/completions/00001.json",
    ):
        path.unlink()
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    size = weights.stat().st_size
    _perturb_weights_in_place(weights)
    assert weights.stat().st_size == size
    before = shard_bytes(out)
    code, stdout, err = run_cli([*IDENTITY_ARGS, "--model", str(model), "--out", str(out)], capsys)
    assert code == 2 and "Traceback" not in err + stdout
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == (
        f"error: {out} was built with a different config (differs in: render.model_content (the files of "
        f"the model {model} are not those this build used)); use --overwrite to start over or choose another --out"
    )
    assert shard_bytes(out) == before and not (out / "manifest.json").exists()


def test_a_resume_with_a_changed_separate_vae_is_refused(tmp_path, tiny_model_path, capsys):
    vae = tmp_path / "vae"
    shutil.copytree(Path(tiny_model_path) / "vae", vae)
    out = tmp_path / "out"
    args = [*IDENTITY_ARGS, "--model", "tiny", "--vae", str(vae), "--out", str(out)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["identity"]["vae"] is not None
    assert "vae" not in manifest["model"]["identity"]["model"]["parts"]  # the model's own VAE is not loaded
    (out / "manifest.json").unlink()
    _perturb_weights_in_place(vae / "diffusion_pytorch_model.safetensors")
    code, _, err = run_cli(args, capsys)
    assert code == 2 and "Traceback" not in err
    assert (
        f"differs in: render.vae_content (the files of the VAE {vae} are not those this build used)"
        in err.splitlines()[-1]
    )
