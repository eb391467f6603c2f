"""The end-of-run curve: loss, margin and implicit accuracy against the optimizer step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PANELS = (
    ("loss", "loss"),
    ("margin", "margin  mean(L_l - L_w)"),
    ("accuracy", "implicit accuracy  P(L_w < L_l)"),
)


def curves_title(loss: str, finetune: str, lora_rank: int, model: str, data: str) -> str:
    """The curves' title: what was trained how, e.g. ``mapo, LoRA rank 4, of tiny on runs/pixel``."""
    how = f"LoRA rank {lora_rank}" if finetune == "lora" else "full fine-tune"
    return f"{loss}, {how}, of {model} on {data}"


def _smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(history: list[dict[str, Any]], path: Path, title: str = "") -> Path | None:
    """Write the three-panel PNG; raw values faint, a moving average on top. None if no history."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    steps = [h["step"] for h in history]
    window = max(1, len(history) // 20)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
    for ax, (key, label) in zip(axes, PANELS, strict=True):
        values = [float(h.get(key, float("nan"))) for h in history]
        ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=1)
        ax.plot(steps, _smooth(values, window), color="tab:blue", linewidth=2)
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if key == "accuracy":
            ax.axhline(0.5, color="gray", linestyle="--", linewidth=1)
            ax.set_ylim(-0.05, 1.05)
        if key == "margin":
            ax.axhline(0.0, color="gray", linestyle="--", linewidth=1)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    # The title also goes into the PNG's text chunk, where tools (and tests) can read it.
    fig.savefig(path, dpi=100, metadata={"Title": title} if title else None)
    plt.close(fig)
    return path
