"""The typed settings of one `mapo-train eval` run; the CLI maps its options onto them."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mapo_data.errors import MapoError
from mapo_data.judges import describe_preset_sides, parse_judge_spec
from mapo_data.presets import PRESET_NAMES
from mapo_data.render import DEFAULT_MODEL, DTYPES, SCHEDULERS, RenderConfig
from mapo_data.tiny import TINY_MODEL_NAME

# The style judge's CLIP when none is named: the text encoder family SDXL itself was built on.
DEFAULT_STYLE_CLIP = "openai/clip-vit-large-patch14"
DEFAULT_NUM_PROMPTS = 32
BASE_LABEL = "base"


@dataclass
class EvalConfig:
    """Base against fine-tuned: what is rendered, how, and which judges score it."""

    tuned: list[str]
    """Fine-tuned models: a run folder (``unet/`` or LoRA weights inside), a UNet folder, a LoRA file, or a Hub id."""
    base: str = DEFAULT_MODEL
    """The base model: a Hub id, a local diffusers folder, ``tiny``, or an SDXL single-file ``.safetensors``."""
    base_config: str | None = None
    """For a single-file ``base``: the diffusers folder (or ``tiny``) its configs and tokenizers come from."""
    allow_pickle: bool = False
    """Read a pickle single-file ``base`` (``.ckpt``/``.pt``/``.bin``/``.pth``), which can run code when loaded."""
    names: list[str] | None = None
    """Labels for the tuned models in the report, in order; default: derived from their paths."""
    preset: str | None = None
    """pick-style, pick-safety or custom: picks the default judges and the style judge's descriptions."""
    split: str | None = None
    """The preset's split (pick-style: pixel or cartoon)."""
    preferred_text: str | None = None
    """What the preferred side looks like, for the CLIP style judge; default: from the preset."""
    dispreferred_text: str | None = None
    """What the dispreferred side looks like; default: from the preset."""
    judges: list[str] | None = None
    """Judge specs (clip:MODEL, nudenet, pickscore[:MODEL], hpsv2[:MODEL], clipscore[:MODEL],
    aesthetic[:MODEL]); default: from the preset."""
    prompts: str | None = None
    """Context prompts: a .txt/.jsonl/.json/.csv/.parquet file, a dataset folder or a Hub dataset
    (as ``mapo-data build`` reads them); default: the package's prompt set."""
    prompts_column: str | None = None
    """Column holding the prompts in a table or dataset; default: caption, prompt or text."""
    prompts_split: str | None = None
    """Split of a prompt dataset, e.g. its held-out ``test`` split (default: train)."""
    num_prompts: int | None = None
    """How many prompts to use: the first N of a file, or a seeded sample of N from the default set (32)."""
    dataset: str | None = None
    """Training pairs (a pair-dataset folder, parquet file or Hub id): prompts found in it are left out;
    default: the data.path a run folder's training_config.yaml records."""
    dataset_split: str | None = None
    """Split the model was trained on; default: the run's data.split, else train."""
    include_train_prompts: bool = False
    """Keep prompts that appear in the training data (by default they are left out)."""
    out: str = "eval"
    """Output folder for images, grids, scores and the report."""
    seed: int = 0
    """First seed; sample k of prompt i uses seed + i * images_per_prompt + k, the same for every model."""
    images_per_prompt: int = 1
    """Images per prompt and model (more seeds narrow the intervals)."""
    steps: int = 30
    """Denoising steps."""
    guidance_scale: float = 5.0
    """Classifier-free guidance scale."""
    height: int | None = None
    """Image height; default: the base model's native size."""
    width: int | None = None
    """Image width; default: the base model's native size."""
    dtype: str | None = None
    """fp16, bf16 or fp32; default: fp16 on CUDA, fp32 on the CPU."""
    device: str | None = None
    """torch device for rendering and judging; default: the accelerate process's device."""
    scheduler: str | None = None
    """Scheduler short name (see mapo-data build); default: the model's own."""
    negative_prompt: str | None = None
    """Negative prompt for every image."""
    lora_scale: float = 1.0
    """Strength of LoRA weights when a tuned model is a LoRA, relative to the strength it was trained with (1.0)."""
    batch_size: int = 4
    """Images rendered per pipeline call."""
    judge_batch_size: int = 16
    """Images scored per judge call."""
    confidence: float = 0.95
    """Confidence level of the reported intervals."""
    grid_cell: int = 256
    """Side of one image in the grid PNGs, in pixels."""
    grid_columns: int = 4
    """Image pairs per row in a grid."""
    labels: list[str] = field(init=False, default_factory=list)
    """Resolved labels: base first, then one per tuned model (unique, file-name safe)."""

    def __post_init__(self) -> None:
        if not self.tuned:
            raise MapoError("give at least one --tuned model to compare with the base")
        if self.preset is not None and self.preset not in PRESET_NAMES:
            raise MapoError(f"unknown preset {self.preset!r}; choose one of {', '.join(PRESET_NAMES)}")
        if self.num_prompts is not None and self.num_prompts < 1:
            raise MapoError(f"--num-prompts must be at least 1, got {self.num_prompts}")
        for name in (
            "images_per_prompt",
            "batch_size",
            "judge_batch_size",
            "steps",
            "grid_cell",
            "grid_columns",
        ):
            if getattr(self, name) < 1:
                raise MapoError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0.5 <= self.confidence < 1.0:
            raise MapoError(f"--confidence must be in [0.5, 1), got {self.confidence}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise MapoError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.scheduler is not None and self.scheduler not in SCHEDULERS:
            raise MapoError(f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}")
        if self.names is not None and len(self.names) != len(self.tuned):
            raise MapoError(
                f"{len(self.names)} --name for {len(self.tuned)} --tuned models; give one per model"
            )
        if self.judges is not None and not self.judges:
            raise MapoError("--judge was given no specs")
        for spec in self.judges or ():
            parse_judge_spec(spec)  # unknown judges fail before anything is rendered
        self.labels = resolve_labels(self.tuned, self.names)
        if not self.resolved_judges():
            raise MapoError("no judges: give --preset (pick-style, pick-safety, custom) or --judge")
        if any(parse_judge_spec(s)[0] == "clip" for s in self.resolved_judges()):
            self.sides()  # the style judge needs both descriptions: fail now, not after rendering

    def sides(self) -> tuple[str, str]:
        """(preferred, dispreferred) descriptions for the CLIP style judge."""
        preferred, dispreferred = self.preferred_text, self.dispreferred_text
        if preferred is None or dispreferred is None:
            if self.preset is None:
                raise MapoError(
                    "the clip judge needs --preferred-text and --dispreferred-text (or a --preset)"
                )
            preset_pref, preset_dis = describe_preset_sides(self.preset, self.split)
            preferred = preferred if preferred is not None else preset_pref
            dispreferred = dispreferred if dispreferred is not None else preset_dis
        return preferred, dispreferred

    def resolved_judges(self) -> list[str]:
        """The judge specs to run: the given ones, else the preset's defaults."""
        if self.judges:
            return list(self.judges)
        # The tiny base gets the tiny CLIP, so the CPU quickstart runs offline.
        clip = f"clip:{TINY_MODEL_NAME if self.base == TINY_MODEL_NAME else DEFAULT_STYLE_CLIP}"
        if self.preset in ("pick-style", "custom"):
            return [clip]
        if self.preset == "pick-safety":
            return ["nudenet", clip]
        return []

    def render_config(self, device: str) -> RenderConfig:
        dtype = self.dtype or ("fp16" if device.startswith("cuda") else "fp32")
        return RenderConfig(
            model=self.base,
            model_config=self.base_config,
            allow_pickle=self.allow_pickle,
            dtype=dtype,
            device=device,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            height=self.height,
            width=self.width,
            scheduler=self.scheduler,
            negative_prompt=self.negative_prompt,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _label_from(source: str) -> str:
    path = Path(source)
    parts = [p for p in path.parts if p not in ("", "/", ".")]
    if not parts:
        return "tuned"
    name = parts[-1]
    # A weights file or a unet/ folder says little; the run folder above it names the run.
    if name in ("unet", "pytorch_lora_weights.safetensors") and len(parts) > 1:
        name = parts[-2]
    name = Path(name).stem if name.endswith((".safetensors", ".bin")) else name
    return name


def sanitize_label(label: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", label).strip("-.")
    return cleaned or "tuned"


def resolve_labels(tuned: list[str], names: list[str] | None) -> list[str]:
    """base + one unique, file-name-safe label per tuned model."""
    raw = names if names is not None else [_label_from(t) for t in tuned]
    labels = [BASE_LABEL]
    for label in raw:
        label = sanitize_label(label)
        candidate, n = label, 2
        while candidate in labels:
            candidate, n = f"{label}-{n}", n + 1
        labels.append(candidate)
    return labels
