"""Does alignment work? MaPO, Diffusion-DPO and SFT on the built-in tiny model, same data and budget.

    python bench/alignment.py                                   # 3 datasets, 64 pairs, the recipe's 80 steps
    python bench/alignment.py --num-pairs 8 --steps 4 --num-prompts 4 --presets pick-style:pixel  # smoke

For each dataset (pick-style pixel, pick-style cartoon, pick-safety) everything runs through the
real CLIs, in subprocesses, as a user would:

1. ``mapo-data build PRESET [--split S] --model tiny --num-pairs N`` (build's default prompts).
2. How often the tiny CLIP judge agrees with the built labels: ``mapo-data curate --judge clip:tiny``
   (its curation report: pairs kept and dropped, per reason; every default filter is on), and
   directly: the share of pairs whose chosen image gets a higher ``clip_pref_prob`` than the rejected
   one (ties count half), with a Wilson interval. Near 50% means the judge cannot tell the sides apart
   on this data, and the eval below then measures nothing.
3. ``mapo-train --recipe recipes/train/quickstart-tiny.yaml`` once per loss (``loss.name=mapo|dpo|sft``,
   each loss's default beta/alpha), on the same built pairs (not the curated ones) with the same
   steps, learning rate, batch and seed; only ``data.path``, ``train.output_dir``, ``loss.name``,
   ``train.max_steps`` and ``train.cpu_threads`` are overridden. Wall time per run (validation
   renders included, as the recipe has them).
4. ``mapo-train eval --base tiny --tuned MAPO --tuned DPO --tuned SFT --judge clip:tiny``: every
   model renders the same held-out prompts (no prefix; prompts in the training pairs are left out)
   and seeds; the figure is the share of images the judge calls chosen-style (preferred description
   more likely than the dispreferred one), with Wilson intervals, plus each tuned model's win rate
   over the base (per prompt, on clip_pref_prob) and its paired change in share.

Writes alignment.json (figures, the exact commands, wall times, the tiny model's weight hashes) and
alignment.png (grouped bars: share judged chosen-style per dataset and model, error bars = the
intervals) into --results. ``--replot`` redraws the PNG from the JSON without running anything.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RECIPE = "recipes/train/quickstart-tiny.yaml"
JUDGE = "clip:tiny"
LOSSES = ("mapo", "dpo", "sft")
DEFAULT_PRESETS = "pick-style:pixel,pick-style:cartoon,pick-safety"
MODEL_LABELS = {"base": "base", "mapo": "MaPO", "dpo": "DPO", "sft": "SFT"}
COLORS = {"base": "#9e9e9e", "mapo": "#1f77b4", "dpo": "#ff7f0e", "sft": "#2ca02c"}


def parse_presets(text: str) -> list[tuple[str, str | None]]:
    """``pick-style:pixel,pick-safety`` -> [("pick-style", "pixel"), ("pick-safety", None)]."""
    out = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        preset, _, split = item.partition(":")
        out.append((preset, split or None))
    return out


def dataset_name(preset: str, split: str | None) -> str:
    return f"{preset}-{split}" if split else preset


def cli(name: str) -> str:
    """The console script of this interpreter's environment (the one a user's activated venv runs)."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.is_file() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found next to {sys.executable} or on PATH: pip install -e . first")
    return found


class Runner:
    """Runs CLI commands from the repository root, timing them and recording them with $WORK in place of --work."""

    def __init__(self, work: Path, threads: int):
        self.work = work
        self.env = dict(os.environ)
        # Every torch/BLAS pool in the child processes gets the same thread budget.
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            self.env[var] = str(threads)

    def show(self, args: list[str]) -> str:
        text = shlex.join(args)
        return text.replace(str(self.work), "$WORK")

    def __call__(self, args: list[str], check: bool = True) -> dict:
        shown = self.show(args)
        print(f"$ {shown}", flush=True)
        start = time.perf_counter()
        proc = subprocess.run(
            [cli(args[0]), *args[1:]], cwd=ROOT, env=self.env, capture_output=True, text=True
        )
        wall = time.perf_counter() - start
        record = {"command": shown, "wall_s": round(wall, 2), "exit_code": proc.returncode}
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
            record["error"] = lines[-1] if lines else ""
            if check:
                raise SystemExit(f"failed ({proc.returncode}): {shown}\n{proc.stderr[-3000:]}")
            print(f"  exit {proc.returncode}: {record['error']}", flush=True)
        return record


def judge_accuracy(folder: Path, preset: str, split: str | None, confidence: float) -> dict:
    """Share of built pairs where the tiny judge gives the chosen image the higher clip_pref_prob.

    Ties (probabilities within the eval's tie tolerance) count half, as in the eval's win rates; the
    interval is Wilson's over pairs. Tie-labelled and invalid pairs are left out (build writes none).
    """
    import numpy as np
    import pyarrow.parquet as pq

    from mapo_data.images import decode_image
    from mapo_data.judges import describe_preset_sides, load_judge
    from mapo_data.quiet import quiet_libraries
    from mapo_data.schema import classify_labels
    from mapo_train.eval.winrate import paired_outcomes, wilson_interval

    quiet_libraries()
    preferred, dispreferred = describe_preset_sides(preset, split)
    judge = load_judge(JUDGE, preferred=preferred, dispreferred=dispreferred, device="cpu", batch_size=64)
    chosen, rejected, captions = [], [], []
    for shard in sorted((folder / "data").glob("*.parquet")) or sorted(folder.glob("*.parquet")):
        table = pq.read_table(shard, columns=["caption", "jpg_0", "jpg_1", "label_0", "label_1"])
        for row in table.to_pylist():
            side = classify_labels(row["label_0"], row["label_1"]).chosen
            if side is None:
                continue
            chosen.append(decode_image(row[f"jpg_{side}"]))
            rejected.append(decode_image(row[f"jpg_{1 - side}"]))
            captions.append(row["caption"] or "")
    if not chosen:
        raise SystemExit(f"no pairs with a chosen image in {folder}")
    p_chosen = np.asarray(judge.score(chosen, captions)["clip_pref_prob"], dtype=np.float64)
    p_rejected = np.asarray(judge.score(rejected, captions)["clip_pref_prob"], dtype=np.float64)
    outcomes = paired_outcomes(p_chosen, p_rejected)
    points = float(outcomes.sum())
    low, high = wilson_interval(points, outcomes.size, confidence)
    return {
        "n": int(outcomes.size),
        "agree": int((outcomes == 1).sum()),
        "ties": int((outcomes == 0.5).sum()),
        "disagree": int((outcomes == 0).sum()),
        "rate": points / outcomes.size,
        "low": low,
        "high": high,
        "mean_pref_prob_chosen": float(p_chosen.mean()),
        "mean_pref_prob_rejected": float(p_rejected.mean()),
        "preferred_text": preferred,
        "dispreferred_text": dispreferred,
    }


def last_metrics(run: Path) -> dict | None:
    """The trainer's last logged row (metrics.jsonl), for a glance at the final loss/accuracy."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return None
    rows = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(rows[-1]) if rows else None


def one_dataset(run: Runner, preset: str, split: str | None, args) -> dict:
    name = dataset_name(preset, split)
    work = run.work
    data, curated = work / name, work / f"{name}-curated"
    split_args = ["--split", split] if split else []
    # The bench owns these folders: a rerun starts them fresh rather than resuming old output.
    for stale in (data, curated, work / f"{name}-runs", work / f"{name}-eval"):
        shutil.rmtree(stale, ignore_errors=True)
    entry: dict = {"preset": preset, "split": split}

    entry["build"] = run(
        ["mapo-data", "build", preset, *split_args, "--model", "tiny"]
        + ["--num-pairs", str(args.num_pairs), "--out", str(data)]
    )
    entry["pairs"] = json.loads((data / "manifest.json").read_text()).get("num_pairs")

    curate = run(["mapo-data", "curate", str(data), "--judge", JUDGE, "--out", str(curated)], check=False)
    report_path = curated / "curation_report.json"
    if report_path.is_file():
        report = json.loads(report_path.read_text())
        curate.update(
            seen=report["input"]["pairs"],
            kept=report["kept"],
            dropped_total=report["dropped_total"],
            dropped=report["dropped"],
        )
    entry["curate"] = curate
    start = time.perf_counter()
    entry["judge_accuracy"] = judge_accuracy(data, preset, split, args.confidence)
    entry["judge_accuracy"]["wall_s"] = round(time.perf_counter() - start, 2)

    runs = {}
    entry["train"] = {}
    for loss in LOSSES:
        out = work / f"{name}-runs" / loss
        overrides = [
            f"data.path={data}",
            f"train.output_dir={out}",
            f"loss.name={loss}",
            f"train.cpu_threads={args.threads}",
        ]
        if args.steps is not None:
            overrides.append(f"train.max_steps={args.steps}")
        record = run(["mapo-train", "--recipe", RECIPE, *overrides])
        record["final_metrics"] = last_metrics(out)
        entry["train"][loss] = record
        runs[loss] = out

    eval_out = work / f"{name}-eval"
    cmd = ["mapo-train", "eval", "--base", "tiny"]
    for loss in LOSSES:
        cmd += ["--tuned", str(runs[loss])]
    for loss in LOSSES:
        cmd += ["--name", loss]
    cmd += ["--preset", preset, *split_args, "--judge", JUDGE, "--out", str(eval_out)]
    cmd += ["--confidence", str(args.confidence)]
    if args.num_prompts is not None:
        cmd += ["--num-prompts", str(args.num_prompts)]
    entry["eval"] = run(cmd)
    report = json.loads((eval_out / "report.json").read_text())
    result = report["results"][JUDGE]
    entry["eval"].update(
        verdict_label=result.get("verdict_label"),
        share={label: m["verdict"] for label, m in result["per_model"].items()},
        mean_pref_prob={
            label: {"mean": m["mean"], "ci": m["ci"]} for label, m in result["per_model"].items()
        },
        versus_base=result.get("versus_base"),
        verdict_change=result.get("verdict_change"),
        best_of_all=result.get("best_of_all"),
        num_prompts=len(report["seeds"]),
        warnings=report.get("warnings", []),
    )
    return entry


def model_fingerprint() -> dict:
    """sha256 (first 16 hex) of the tiny model's and judge's weight files: which weights made the numbers."""
    from mapo_data import tiny

    resources = Path(tiny.__file__).resolve().parent / "resources"
    out = {}
    for folder in ("tiny-sdxl", "tiny-clip"):
        for f in sorted((resources / folder).rglob("*.safetensors")):
            out[str(f.relative_to(resources))] = hashlib.sha256(f.read_bytes()).hexdigest()[:16]
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    datasets = list(results["datasets"])
    models = ["base", *LOSSES]
    width = 0.2
    x = np.arange(len(datasets))
    fig, ax = plt.subplots(figsize=(max(7.0, 3.2 * len(datasets) + 1.5), 4.8))
    for k, model in enumerate(models):
        shares = [results["datasets"][d]["eval"]["share"][model] for d in datasets]
        rates = np.array([100 * s["rate"] for s in shares])
        err = np.array(
            [[100 * (s["rate"] - s["low"]) for s in shares], [100 * (s["high"] - s["rate"]) for s in shares]]
        )
        pos = x + (k - (len(models) - 1) / 2) * width
        bars = ax.bar(pos, rates, width, yerr=err, capsize=3, color=COLORS[model], label=MODEL_LABELS[model])
        for bar, s in zip(bars, shares, strict=True):
            # The value sits above its error bar, where neither the bar nor the whisker hides it.
            ax.annotate(
                f"{100 * s['rate']:.0f}",
                (bar.get_x() + bar.get_width() / 2, 100 * s["high"] + 1),
                ha="center",
                va="bottom",
                fontsize=8,
            )
    labels = []
    for d in datasets:
        acc = results["datasets"][d]["judge_accuracy"]
        n = results["datasets"][d]["eval"]["share"]["base"]["n"]
        labels.append(
            f"{d}\njudge agrees with labels: {100 * acc['rate']:.0f}% [{100 * acc['low']:.0f}, "
            f"{100 * acc['high']:.0f}]\n{acc['n']} pairs; {n} images/model"
        )
    ax.set_xticks(x, labels, fontsize=9)
    ax.set_xlim(-0.5, len(datasets) - 0.5)
    ax.set_ylim(0, 110)
    ax.set_ylabel(f"images judged chosen-style (%), {JUDGE}")
    s = results["settings"]
    conf = round(100 * s["confidence"])
    ax.set_title(
        f"Alignment on the tiny model: {s['num_pairs']} pairs, {s['steps']} steps each "
        f"(error bars: {conf}% Wilson)",
        fontsize=10,
    )
    ax.legend(ncols=4, loc="upper center", fontsize=9, frameon=False, bbox_to_anchor=(0.5, -0.22))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recipe_steps() -> int:
    import yaml

    return int(yaml.safe_load((ROOT / RECIPE).read_text())["train"]["max_steps"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", default="runs/bench-alignment", help="pairs, runs and eval output")
    parser.add_argument(
        "--results", default=str(ROOT / "bench" / "results"), help="alignment.json/png go here"
    )
    parser.add_argument("--num-pairs", type=int, default=64, help="pairs built per dataset (default 64)")
    parser.add_argument(
        "--steps", type=int, default=None, help="training steps per loss (default: the recipe's)"
    )
    parser.add_argument(
        "--num-prompts", type=int, default=None, help="eval prompts (default: the eval's own, 32 held-out)"
    )
    parser.add_argument(
        "--presets", default=DEFAULT_PRESETS, help=f"comma-separated (default {DEFAULT_PRESETS})"
    )
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per process (default 1)")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--replot", action="store_true", help="redraw alignment.png from alignment.json")
    args = parser.parse_args()

    results_dir = Path(args.results)
    if args.replot:
        plot(json.loads((results_dir / "alignment.json").read_text()), results_dir / "alignment.png")
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    run = Runner(work, args.threads)
    import torch

    results: dict = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(["python", "bench/alignment.py", *sys.argv[1:]]).replace(str(work), "$WORK"),
        "settings": {
            "work": "$WORK",
            "num_pairs": args.num_pairs,
            "steps": args.steps if args.steps is not None else recipe_steps(),
            "recipe": RECIPE,
            "losses": "each loss's defaults (MaPO beta 0.1 alpha 0.5, DPO beta 5000, SFT none)",
            "num_prompts": args.num_prompts,
            "threads": args.threads,
            "judge": JUDGE,
            "confidence": args.confidence,
            "torch": torch.__version__,
            "cpus": os.cpu_count(),
        },
        "tiny_weights_sha256": model_fingerprint(),
        "datasets": {},
    }
    for preset, split in parse_presets(args.presets):
        name = dataset_name(preset, split)
        results["datasets"][name] = one_dataset(run, preset, split, args)
        # Written after each dataset, so a long run that stops later keeps what it finished.
        (results_dir / "alignment.json").write_text(json.dumps(results, indent=2) + "\n")

    print()
    for name, entry in results["datasets"].items():
        acc = entry["judge_accuracy"]
        print(
            f"{name}: judge agrees with labels {100 * acc['rate']:.0f}% [{100 * acc['low']:.0f}, "
            f"{100 * acc['high']:.0f}] of {acc['n']} pairs"
        )
        for label, s in entry["eval"]["share"].items():
            train = entry["train"].get(label)
            timing = f", trained in {train['wall_s']:.0f} s" if train else ""
            print(
                f"  {label:<5} judged chosen-style {100 * s['rate']:5.1f}% "
                f"[{100 * s['low']:.1f}, {100 * s['high']:.1f}] of {s['n']}{timing}"
            )
    plot(results, results_dir / "alignment.png")
    print(f"\nwrote {results_dir / 'alignment.json'} and {results_dir / 'alignment.png'}")


if __name__ == "__main__":
    main()
