"""The model card (README.md) written beside the trained weights."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2

from mapo_data.single_file import is_single_file
from mapo_data.tiny import TINY_MODEL_NAME
from mapo_train.config import RunConfig

# Where `mapo-train eval` writes its report inside a run folder by default.
EVAL_REPORT = Path("eval") / "report.md"
# `mapo-train eval` rewrites what lies between these markers (eval runs after training).
EVAL_START = "<!-- mapo-eval:start -->"
EVAL_END = "<!-- mapo-eval:end -->"

TEMPLATE = """\
---
library_name: diffusers
{%- if not tiny and not single %}
base_model: {{ base_model }}
{%- endif %}
{%- if dataset_id %}
datasets:
- {{ dataset_id }}
{%- endif %}
tags:
- stable-diffusion-xl
- text-to-image
- diffusers
- mapo-train
- {{ loss_name }}
{%- if lora %}
- lora
{%- endif %}
---

# {{ title }}

{{ method_sentence }}

- Base model: `{{ base_model }}`
- Data: `{{ data_path }}` (split `{{ split }}`, {{ num_pairs }} pairs used{% if ties_dropped %}, {{ ties_dropped }} ties dropped{% endif %}{% if invalid_labels %}, {{ invalid_labels }} with invalid labels skipped{% endif %})
- Trained: {{ steps }} optimizer steps, effective batch {{ effective_batch }} pairs, {{ finetune }}

## Use it

```python
import torch
from diffusers import StableDiffusionXLPipeline{% if not lora %}, UNet2DConditionModel{% endif %}
{%- if tiny %}
from mapo_data.tiny import tiny_model_path  # the built-in tiny test model

base = str(tiny_model_path())
{%- elif tiny_file %}
# diffusers' from_single_file cannot tell the tiny model's two text encoders apart (both are 32
# wide) and reads text_encoder_2 wrong; mapo's loader reads every part of the file exactly.
from mapo_data.single_file import load_components

base = "{{ base_model }}"
{%- else %}

base = "{{ base_model }}"
{%- endif %}
{%- if tiny_file %}
parts = load_components(base, "tiny")
{%- if lora %}
pipe = StableDiffusionXLPipeline(**parts)
pipe.load_lora_weights("{{ load_path }}")  # at the trained strength: the file holds rank and alpha
{%- else %}
parts["unet"] = UNet2DConditionModel.from_pretrained("{{ load_path }}", subfolder="unet", dtype={{ dtype }})
pipe = StableDiffusionXLPipeline(**parts)
{%- endif %}
{%- elif lora %}
pipe = StableDiffusionXLPipeline.{{ base_loader }}, dtype={{ dtype }})
pipe.load_lora_weights("{{ load_path }}")  # at the trained strength: the file holds rank and alpha
{%- else %}
unet = UNet2DConditionModel.from_pretrained("{{ load_path }}", subfolder="unet", dtype={{ dtype }})
pipe = StableDiffusionXLPipeline.{{ base_loader }}, unet=unet, dtype={{ dtype }})
{%- endif %}
image = pipe("{{ example_prompt }}").images[0]
```

{{ files }}

## Training

| setting | value |
| --- | --- |
{%- for key, value in settings %}
| {{ key }} | `{{ value }}` |
{%- endfor %}

The full resolved configuration is in [training_config.yaml](training_config.yaml).
{%- if final %}

Last logged step: {% for key, value in final %}{{ key }} {{ value }}{% if not loop.last %}, {% endif %}{% endfor %}.
{%- endif %}
{%- if curves %}

![loss, margin and implicit accuracy]({{ curves }})
{%- endif %}
{%- if grid %}

## Validation

Fixed prompts (rows) and seeds (columns) after training:
{% for prompt in prompts %}
{{ loop.index }}. {{ prompt }}
{%- endfor %}

![validation grid]({{ grid }})
{%- endif %}

## Evaluation

{{ eval_start }}
{% if eval_report -%}
These weights ({{ steps }} steps) are not evaluated yet. Out of date: the report [{{ eval_report }}]({{ eval_report }}) judged earlier weights of this folder. Run `mapo-train eval --tuned {{ load_path }} ...` to evaluate these weights; this section is then rewritten.
{%- else -%}
Not evaluated yet: run `mapo-train eval --tuned {{ load_path }} ...`; this card links the report once `{{ eval_report_path }}` exists.
{%- endif %}
{{ eval_end }}

Trained with `mapo-train` from the mapo toolkit.
"""

_METHODS = {
    "mapo": "Fine-tuned with MaPO (margin-aware preference optimization, reference-free): "
    "it raises the likelihood of the chosen images and widens the margin to the rejected ones.",
    "dpo": "Fine-tuned with Diffusion-DPO against a frozen copy of the base model.",
    "sft": "Fine-tuned on the chosen images only (supervised baseline).",
}


def _dataset_id(path: str) -> str | None:
    return path if path.count("/") == 1 and not Path(path).exists() else None


def _lora_shape(cfg: RunConfig) -> str:
    """Rank and alpha as trained; the weights file carries both, so loading needs no manual scale."""
    alpha = cfg.lora.alpha if cfg.lora.alpha is not None else cfg.lora.rank
    return f" (rank {cfg.lora.rank}, alpha {_fmt(alpha)})"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def earlier_report(out: Path) -> str | None:
    """The eval report (path relative to ``out``) that the run folder's card or eval/ already has.

    The card is rendered when training has just written new weights, so such a report judged
    other, earlier weights (e.g. before ``--resume latest`` with more steps).
    """
    card = out / "README.md"
    if card.is_file():
        text = card.read_text(errors="replace")
        start, end = text.find(EVAL_START), text.find(EVAL_END)
        if 0 <= start < end:
            links = re.findall(r"\]\(([^)\s]+\.md)\)", text[start:end])
            if links:
                return links[-1]
    return EVAL_REPORT.as_posix() if (out / EVAL_REPORT).is_file() else None


def render_card(
    cfg: RunConfig,
    *,
    out: Path,
    steps: int,
    num_pairs: int,
    ties_dropped: int,
    effective_batch: int,
    invalid_labels: int = 0,
    final_metrics: dict[str, float] | None = None,
    curves: str | None = None,
    grid: str | None = None,
) -> str:
    """The card's Markdown; image and report paths are relative to ``out``. ``ties_dropped`` and
    ``invalid_labels`` (pairs whose labels are not a preference, never trained) are shown apart."""
    t = cfg.train
    lora = cfg.model.finetune == "lora"
    settings = [
        ("loss", cfg.loss.name),
        *([("beta", _fmt(cfg.loss_beta))] if cfg.loss.name != "sft" else []),
        *([("alpha", _fmt(cfg.loss_alpha))] if cfg.loss.name == "mapo" else []),
        ("finetune", cfg.model.finetune + (_lora_shape(cfg) if lora else "")),
        ("resolution", cfg.data.resolution),
        ("learning rate", _fmt(t.learning_rate)),
        ("lr schedule", f"{t.lr_scheduler}, warmup {t.lr_warmup_steps}"),
        ("optimizer", t.optimizer),
        ("batch per process x accumulation", f"{t.batch_size} x {t.gradient_accumulation_steps}"),
        ("mixed precision", t.mixed_precision or "from accelerate"),
        ("EMA", f"decay {t.ema_decay}" if t.ema else "off"),
        ("seed", t.seed),
    ]
    # The card is written with new weights, so a report already there judged earlier ones.
    eval_report = earlier_report(out)
    hub_id = t.hub_model_id if t.push_to_hub else None
    single = is_single_file(cfg.model.pretrained)
    tiny_file = single and cfg.model.config == TINY_MODEL_NAME
    return jinja2.Template(TEMPLATE).render(
        title=f"SDXL {cfg.loss.name.upper()} fine-tune" + (" (LoRA)" if lora else ""),
        method_sentence=_METHODS[cfg.loss.name],
        base_model=cfg.model.pretrained,
        dataset_id=_dataset_id(cfg.data.path),
        data_path=cfg.data.path,
        split=cfg.data.split,
        num_pairs=num_pairs,
        ties_dropped=ties_dropped,
        invalid_labels=invalid_labels,
        steps=steps,
        effective_batch=effective_batch,
        finetune="LoRA" if lora else "full UNet fine-tune",
        lora=lora,
        tiny=cfg.model.pretrained == TINY_MODEL_NAME,
        tiny_file=tiny_file,
        single=single,  # a local file is no Hub base_model id
        # The tiny model is for the CPU, where fp16 is slow or unsupported.
        dtype="torch.float32" if cfg.model.pretrained == TINY_MODEL_NAME or tiny_file else "torch.float16",
        load_path=hub_id or str(out),
        # A single-file base borrows its configs and tokenizers from model.config.
        base_loader=f'from_single_file(base, config="{cfg.model.config}"'
        if single
        else "from_pretrained(base",
        files=files_section(out, lora),
        loss_name=cfg.loss.name,
        example_prompt=(cfg.validation.prompts or ["a cat"])[0].replace('"', "'"),
        settings=settings,
        final=[(k, _fmt(v)) for k, v in (final_metrics or {}).items()],
        curves=curves,
        grid=grid,
        prompts=cfg.validation.prompts,
        eval_report=eval_report,
        eval_report_path=EVAL_REPORT.as_posix(),
        eval_start=EVAL_START,
        eval_end=EVAL_END,
    )


FILES_START = "<!-- mapo-files:start -->"
FILES_END = "<!-- mapo-files:end -->"


def files_section(out: Path, lora: bool) -> str:
    """The card's "Files" section: which file in ``out`` is for which tool (the exports of
    ``train.export`` / ``mapo-train export`` included when they exist), between markers that
    ``refresh_files_section`` rewrites."""
    from mapo_train.export import KOHYA_LORA_NAME, LORA_WEIGHT_NAME, SINGLE_FILE_NAME

    if lora:
        rows = [
            (
                LORA_WEIGHT_NAME,
                "diffusers `load_lora_weights` (the snippet above) and `mapo-train eval`",
                True,
            ),
            (
                KOHYA_LORA_NAME,
                "kohya format with per-module alpha: ComfyUI (`models/loras`), A1111/Forge (`models/Lora`), "
                "kohya's sd-scripts",
                (out / KOHYA_LORA_NAME).is_file(),
            ),
        ]
        missing = f"`mapo-train export {out} --to kohya-lora` writes `{KOHYA_LORA_NAME}` for ComfyUI, A1111/Forge and kohya."
    else:
        rows = [
            (
                "unet/",
                "diffusers `UNet2DConditionModel.from_pretrained` (the snippet above) and `mapo-train eval`",
                True,
            ),
            (
                SINGLE_FILE_NAME,
                "one SDXL checkpoint (trained UNet, the base's VAE and text encoders): ComfyUI "
                "(`models/checkpoints`), A1111/Forge (`models/Stable-diffusion`), diffusers `from_single_file` "
                "(not for the tiny model, whose two equally wide text encoders diffusers confuses: "
                "`mapo_data.single_file.load_components`)",
                (out / SINGLE_FILE_NAME).is_file(),
            ),
        ]
        missing = f"`mapo-train export {out} --to single-file` writes `{SINGLE_FILE_NAME}` for ComfyUI and A1111/Forge."
    lines = [FILES_START, "## Files", "", "| file | for |", "| --- | --- |"]
    lines += [f"| `{name}` | {what} |" for name, what, present in rows if present]
    if not all(present for *_, present in rows):
        lines += ["", missing]
    return "\n".join([*lines, FILES_END])


def refresh_files_section(out: Path, lora: bool) -> None:
    """Rewrite the "Files" section of ``out/README.md`` (after ``mapo-train export``); a card
    without the section is left as it is."""
    card = out / "README.md"
    if not card.is_file():
        return
    text = card.read_text()
    start, end = text.find(FILES_START), text.find(FILES_END)
    if start < 0 or end < start:
        return
    card.write_text(text[:start] + files_section(out, lora) + text[end + len(FILES_END) :])


def write_card(out: Path, **kwargs: Any) -> Path:
    path = out / "README.md"
    path.write_text(render_card(out=out, **kwargs))
    return path
