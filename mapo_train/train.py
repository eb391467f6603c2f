"""The training loop, through accelerate: ``setup`` -> ``fit`` -> ``finish``.

One process (``mapo-train``) or many (``accelerate launch -m mapo_train``) run the same code;
accelerate handles devices, mixed precision, DDP/DeepSpeed and gradient accumulation.

Determinism: every random draw of a micro-step (VAE sample, noise, timesteps) comes from a
generator seeded with (seed, micro-step, rank), and the data order from (seed, epoch). Nothing
depends on the global RNG once training has started, so resuming at step N reproduces an
uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mapo_data.errors import MapoError
from mapo_train import checkpoint as ckpt
from mapo_train.config import RunConfig, dump_config
from mapo_train.data import (
    DataPosition,
    PairBatchSampler,
    PairData,
    index_digest,
    load_pair_data,
    resolve_parquet_files,
)
from mapo_train.encode import EncodedPairs, PairEncoder, SDXLTextEncoder
from mapo_train.losses import get_loss
from mapo_train.model import (
    DTYPES,
    Components,
    adapters_disabled,
    add_lora,
    build_optimizer,
    load_adamw8bit,
    load_components,
    make_reference_unet,
    place,
    save_weights,
    trainable_parameters,
    vae_dtype,
)
from mapo_train.step import denoising_losses, pair_objective

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"
CURVES_FILE = "curves.png"
CONFIG_FILE = "training_config.yaml"


class NonFiniteLossError(MapoError):
    """The loss became NaN or inf; the run stopped without saving anything newer."""


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    weights: Path | None
    history: list[dict[str, Any]]
    validation_grid: Path | None = None
    main_process: bool = True  # only the main process reports (and holds the history)


@dataclass
class Run:
    """Everything ``fit`` needs, built by ``setup``."""

    cfg: RunConfig
    out: Path
    accelerator: Any
    components: Components
    unet: Any  # prepared (wrapped) model
    params: list[torch.nn.Parameter]
    optimizer: Any
    lr_scheduler: Any
    ema: Any
    data: PairData
    encoder: PairEncoder
    reference: Any
    inference_scheduler: Any
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    last_grid: Path | None = None
    # Pairs consumed in the current epoch of an indexed dataset (a stream keeps its own position).
    position: DataPosition = field(default_factory=DataPosition)
    # What the base model's files are (``_model_content``), recorded in every checkpoint.
    model_content: dict[str, Any] | None = None


def step_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """The CPU generator for one micro-step of one process."""
    state = np.random.SeedSequence([seed, micro_step, rank, 0x3A90]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def _trackers(report_to: str) -> list[str] | None:
    if report_to == "none":
        return None
    names = ["tensorboard", "wandb"] if report_to == "all" else [report_to]
    if "wandb" in names:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise MapoError(
                "train.report_to uses wandb, which is not installed: pip install 'mapo[wandb]'"
            ) from None
    return names


def make_accelerator(cfg: RunConfig, out: Path):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    t = cfg.train
    return Accelerator(
        mixed_precision=t.mixed_precision,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        log_with=_trackers(t.report_to),
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def _tracker_config(cfg: RunConfig) -> dict[str, Any]:
    """Flat scalar config for trackers (tensorboard's hparams accept only scalars)."""
    flat = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{section}.{key}"] = value if isinstance(value, int | float | str | bool) else str(value)
    return flat


def _check_output_dir(out: Path) -> None:
    """Refuse an output folder that is a file, or lies under one (mkdir would fail with a traceback)."""
    for path in (out, *out.parents):
        if path.exists():
            if path == out and not path.is_dir():
                raise MapoError(f"train.output_dir {out} exists and is not a folder")
            if not path.is_dir():
                raise MapoError(f"train.output_dir {out} cannot be created: {path} is a file, not a folder")
            return


def setup(cfg: RunConfig, resume: str | None = None) -> Run:
    """Build the accelerator, data, models, optimizer; restore a checkpoint when resuming.

    Every check that needs no model (output folder, resume target, data, batch size) comes first,
    so a mistake is reported in seconds; the output folder is created only once the run starts.
    """
    from accelerate.utils import set_seed

    t = cfg.train
    out = Path(t.output_dir)
    _check_output_dir(out)
    if t.optimizer == "adamw8bit":
        load_adamw8bit()  # fail before any model is loaded
    resume_path = ckpt.resolve_resume(out, resume) if resume else None
    resume_state = ckpt.read_state(resume_path) if resume_path is not None else None
    model_content = _model_content(cfg)
    if resume_state is not None:
        _check_resumable(resume_state, cfg, resume_path, model_content)
    if resume_path is None and ckpt.latest_checkpoint(out) is not None:
        # Starting over here would mix two runs' checkpoints and metrics.
        raise MapoError(
            f"{out} already holds checkpoints of a run: add --resume latest to continue it, "
            "or choose another train.output_dir"
        )
    accelerator = make_accelerator(cfg, out)
    _reconcile_launch_settings(accelerator, cfg)
    mixed_precision = accelerator.mixed_precision
    if t.cpu_threads is not None and accelerator.device.type == "cpu":
        # A tiny model's ops are too small to share among threads, and on a busy machine a
        # thread waiting for a core stalls every op.
        torch.set_num_threads(t.cpu_threads)
    if t.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    set_seed(t.seed)  # LoRA's initial weights are drawn from the global RNG

    on_cache = cfg.data.cache != "off"
    if on_cache:
        from mapo_train.cache import prepare_cached_data

        data = prepare_cached_data(cfg, mixed_precision, progress=accelerator.is_local_main_process)
    elif cfg.data.streaming:
        from mapo_train.stream import load_stream_data

        data = load_stream_data(cfg.data, t.seed, accelerator.process_index, accelerator.num_processes)
    else:
        with accelerator.main_process_first():  # the first process converts parquet to Arrow once
            data = load_pair_data(cfg.data, t.seed)
    if resume_state is not None and not cfg.data.streaming:
        _check_same_pairs(resume_state, data, cfg, resume_path)  # before any model is loaded
    if not cfg.data.streaming:  # fewer usable pairs than one batch: refused before the model loads
        PairBatchSampler(len(data.index), t.batch_size, t.seed, 0, accelerator.num_processes)
    # diffusers takes seconds to import: only once the checks above have passed.
    from diffusers import EulerDiscreteScheduler
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    components = load_components(cfg.model, mixed_precision)
    weight_dtype = DTYPES[mixed_precision]
    device = accelerator.device
    unet = components.unet
    if cfg.model.finetune == "lora":
        add_lora(unet, cfg)
        # The frozen base can live in the low-precision dtype; the adapters train in fp32.
        place(unet, device, weight_dtype)
        for p in trainable_parameters(unet):
            p.data = p.data.float()
    else:
        unet.to(device)
        unet.train()
    if t.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    # On a cache the VAE and text encoders stay on the CPU; validation borrows the device.
    _place_frozen(components, cfg, mixed_precision, "cpu" if on_cache else device)

    reference = None
    loss_spec = get_loss(cfg.loss.name)
    if loss_spec.needs_reference and cfg.model.finetune == "full":
        ref_unet = make_reference_unet(unet, weight_dtype, device)
        reference = _reference_fn(ref_unet, components, accelerator)

    params = trainable_parameters(unet)
    optimizer = build_optimizer(params, cfg)
    lr_scheduler = get_scheduler(
        t.lr_scheduler, optimizer, num_warmup_steps=t.lr_warmup_steps, num_training_steps=t.max_steps
    )
    ema = EMAModel(params, decay=t.ema_decay) if t.ema else None
    unet, optimizer = accelerator.prepare(unet, optimizer)
    # The scheduler is stepped once per optimizer step by the loop (not by accelerate, which
    # would step it once per process). It and the EMA go into checkpoints through ckpt's own
    # save/load (weights_only), not accelerate's registration (which unpickles unrestricted).
    if ema is not None:
        ema.to(device)
    if cfg.model.finetune == "lora":
        ckpt.checkpoint_lora_only(accelerator, unet)
        if loss_spec.needs_reference:
            reference = _lora_reference_fn(unet, components, accelerator)

    run = Run(
        cfg=cfg,
        out=out,
        model_content=model_content,
        accelerator=accelerator,
        components=components,
        unet=unet,
        params=params,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        ema=ema,
        data=data,
        encoder=_cached_encoder(components, cfg, mixed_precision, device)
        if on_cache
        else PairEncoder(
            components.vae,
            SDXLTextEncoder(
                components.tokenizer,
                components.tokenizer_2,
                components.text_encoder,
                components.text_encoder_2,
            ),
            device,
        ),
        reference=reference,
        # Sample with the prediction type the UNet is trained for (model.prediction_type may
        # override the base scheduler's).
        inference_scheduler=EulerDiscreteScheduler.from_pretrained(
            components.base, subfolder="scheduler", prediction_type=components.prediction_type
        ),
    )
    if resume_path is not None:
        state = ckpt.load_checkpoint(accelerator, resume_path, _checkpointed(lr_scheduler, ema))
        run.global_step = int(state["global_step"])
        if cfg.data.streaming:  # continue the stream where the checkpoint left it
            run.data.restore(state)
        else:
            run.position = _resume_position(state, cfg, len(data.index), accelerator.num_processes)
        accelerator.print(f"resumed from {resume_path} at step {run.global_step}")
    run.history = _load_history(out / METRICS_FILE, run.global_step)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)  # only now: a run refused earlier leaves no folder
        _write_history(out / METRICS_FILE, run.history)
        (out / CONFIG_FILE).write_text(dump_config(cfg))
    accelerator.init_trackers("mapo-train", config=_tracker_config(cfg))
    return run


def _place_frozen(components: Components, cfg: RunConfig, mixed_precision: str, device) -> None:
    """Put the VAE and text encoders on ``device`` in the dtypes training uses."""
    place(components.vae, device, vae_dtype(cfg.model, mixed_precision))
    place(components.text_encoder, device, DTYPES[mixed_precision])
    place(components.text_encoder_2, device, DTYPES[mixed_precision])


def _cached_encoder(components: Components, cfg: RunConfig, mixed_precision: str, device):
    from mapo_train.cache import cached_encoder

    return cached_encoder(components, cfg, mixed_precision, device)


def _trainer_state(run: Run) -> dict[str, Any]:
    """What a checkpoint records beside accelerate's state: the position, and what must match
    for a resume to make sense."""
    cfg = run.cfg
    state = {
        "global_step": run.global_step,
        "finetune": cfg.model.finetune,
        "pretrained": cfg.model.pretrained,
        "model_content": run.model_content,
        "loss": cfg.loss.name,
        "num_processes": run.accelerator.num_processes,
        "settings": _resume_settings(cfg),
    }
    if cfg.data.streaming:
        # A stream's position is not implied by the step: each worker's stream state is saved.
        state.update(run.data.position(run.accelerator))
        state["stream_files"] = _stream_files(cfg)
    else:
        # Pairs consumed, not steps: a resume with another batch size, accumulation or process
        # count continues the same permutation at the same pair.
        state["position"] = run.position.to_dict()
        state["pairs"] = _pairs_identity(run.data)
    return state


def _data_source(path: str) -> str:
    """``data.path`` as compared on resume: a local path resolved, a Hub id as given."""
    local = Path(path).expanduser()
    return str(local.resolve()) if local.exists() else path


_OBJECTIVE_SETTINGS = {
    "loss.name",
    "data.resolution",
    "data.random_crop",
    "data.random_flip",
    "data.proportion_empty_prompts",
}


def _resume_settings(cfg: RunConfig) -> dict[str, Any]:
    """Settings that decide which pairs come next (or, for LoRA, the adapter's shapes and
    strength): a resume with any of them changed could not continue the run, and is refused
    naming it. Batch size, gradient accumulation and process count are not here: indexed data
    resumes at the same pair whatever they are."""
    d = cfg.data
    settings: dict[str, Any] = {
        "data.streaming": d.streaming,
        "data.path": _data_source(d.path),
        "data.split": d.split,
        "data.ties": d.ties,
        "data.max_pairs": d.max_pairs,
        "train.seed": cfg.train.seed,  # the epoch permutations, crops and flips
        # What each pair becomes and what it is trained for: the rest of the run would train
        # another preprocessing or objective than the steps already taken.
        "loss.name": cfg.loss.name,
        "data.resolution": d.resolution,
        "data.random_crop": d.random_crop,
        "data.random_flip": d.random_flip,
        "data.proportion_empty_prompts": d.proportion_empty_prompts,
    }
    if d.streaming:
        # Each loader worker reads its own share of the files, and its buffer has this size.
        settings["data.shuffle_buffer"] = d.shuffle_buffer
        settings["data.num_workers"] = max(d.num_workers, 1)
    if cfg.model.finetune == "lora":
        lora = cfg.lora
        settings["lora.rank"] = lora.rank
        settings["lora.alpha"] = lora.alpha if lora.alpha is not None else lora.rank
        settings["lora.target_modules"] = sorted(lora.target_modules)
    return settings


def _stream_files(cfg: RunConfig) -> list[list[Any]] | None:
    """Name, size and modification time of each local file a stream reads (None for a Hub id):
    a stream's saved position is a place in these files."""
    files = resolve_parquet_files(cfg.data.path, cfg.data.split)
    if files is None:
        return None
    return [[Path(f).name, (st := Path(f).stat()).st_size, st.st_mtime_ns] for f in files]


def _pairs_identity(data) -> dict[str, Any]:
    """What the indexed pairs are: their number, which rows with which winner, and the table's
    `datasets` fingerprint (its files' identity) when known."""
    return {"count": len(data.index), "index": index_digest(data.index), "fingerprint": data.fingerprint}


def _save_checkpoint(run: Run) -> None:
    ckpt.save_checkpoint(
        run.accelerator,
        run.out,
        run.global_step,
        _trainer_state(run),
        run.cfg.train.checkpoints_keep,
        _checkpointed(run.lr_scheduler, run.ema),
    )


def _checkpointed(lr_scheduler, ema) -> list[Any]:
    """The objects a checkpoint holds beside accelerate's state, in a fixed order (the lr
    scheduler, then the EMA when there is one), as accelerate numbered them when registered."""
    return [lr_scheduler] + ([ema] if ema is not None else [])


def _model_content(cfg: RunConfig) -> dict[str, Any]:
    """What the base model's parts are, by content (``mapo_data.identity``: file digests, memoised;
    a Hub model's commit): a resume onto a base whose weights changed under the same path is
    refused, and a moved or copied base still resumes."""
    from mapo_data.identity import model_identity

    m = cfg.model
    return model_identity(
        m.pretrained,
        ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"),
        m.revision,
        m.variant,
        m.config,
        what="model.pretrained",
    )


def _check_resumable(
    state: dict[str, Any], cfg: RunConfig, path: Path, model_content: dict[str, Any] | None = None
) -> None:
    """Refuse, in one line naming the setting, a resume that could not continue the saved run.
    Reads only the checkpoint's trainer state, so it runs before any data or model is loaded."""
    then = state.get("finetune")
    if then is not None and then != cfg.model.finetune:
        raise MapoError(
            f"checkpoint {path} was saved with model.finetune={then}, but this run has "
            f"model.finetune={cfg.model.finetune}"
        )
    saved_content = state.get("model_content")
    if saved_content is not None and model_content is not None:
        if saved_content != model_content:
            raise MapoError(
                f"checkpoint {path} was trained from other base weights than model.pretrained="
                f"{cfg.model.pretrained} holds now (its files differ by content): resume on the same base "
                "model or start a new run"
            )
    elif state.get("pretrained") not in (None, cfg.model.pretrained):
        # A checkpoint from before the base was recorded by content: compare the name.
        raise MapoError(
            f"checkpoint {path} was saved with model.pretrained={state['pretrained']}, but this run has "
            f"model.pretrained={cfg.model.pretrained}"
        )
    saved, now = state.get("settings") or {}, _resume_settings(cfg)
    for name, then in saved.items():
        if name in now and now[name] != then:
            if name.startswith("lora."):
                why = "the adapters would not fit or would act with another strength"
            elif name in _OBJECTIVE_SETTINGS:
                why = (
                    "the rest of the run would train another objective or preprocessing than its first steps"
                )
            else:
                why = "the resumed run would not see the pairs the saved run would have seen next"
            raise MapoError(
                f"checkpoint {path} was saved with {name}={_show(then)}, but this run has "
                f"{name}={_show(now[name])}: {why}; resume with the saved value or start a new run"
            )
    stream = state.get("stream")
    if cfg.data.streaming and stream and state.get("stream_files") not in (None, _stream_files(cfg)):
        raise MapoError(
            f"checkpoint {path} streamed other files than data.path={cfg.data.path} holds now "
            "(files added, removed or rewritten): the saved stream position would point at other pairs; "
            "resume on the same data or start a new run"
        )
    if cfg.data.streaming and stream:
        world = _launched_world_size()
        if stream["world"] != world:
            raise MapoError(
                f"checkpoint {path} was saved by {stream['world']} process(es), this run has {world}: "
                "a stream's position belongs to its process count; resume with the same number of processes"
            )
        workers = stream["ranks"][0].get("num_workers")
        if (
            workers is not None
            and "data.num_workers" not in saved
            and workers != max(cfg.data.num_workers, 1)
        ):
            raise MapoError(
                f"checkpoint {path} was saved with data.num_workers={workers}, but this run has "
                f"data.num_workers={cfg.data.num_workers}: a stream's position belongs to its workers"
            )


def _show(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return "empty" if value is None else str(value)


def _check_same_pairs(state: dict[str, Any], data, cfg: RunConfig, path: Path) -> None:
    """Refuse to resume on other pairs than the checkpoint's (the files changed, or another
    label rule), naming data.path: the saved pair position would point at other pairs."""
    saved = state.get("pairs")
    if not saved:
        return  # a checkpoint from before pair positions were recorded
    now = _pairs_identity(data)
    changed = saved["count"] != now["count"] or saved["index"] != now["index"]
    if not changed and saved.get("fingerprint") and now["fingerprint"]:
        changed = saved["fingerprint"] != now["fingerprint"]
    if changed:
        raise MapoError(
            f"checkpoint {path} was trained on other pairs than data.path={cfg.data.path} holds now "
            f"({saved['count']} usable pairs then, {now['count']} now, or their files changed): "
            "resume on the same data or start a new run"
        )


def _resume_position(state: dict[str, Any], cfg: RunConfig, num_pairs: int, world: int) -> DataPosition:
    """The pair position to continue from: recorded by the checkpoint, or (for checkpoints from
    before positions were recorded) counted from the step with this run's batch and world."""
    saved = state.get("position")
    if saved is not None:
        return DataPosition(int(saved["epoch"]), int(saved["pairs"]))
    t = cfg.train
    micro_steps = int(state["global_step"]) * t.gradient_accumulation_steps
    return PairBatchSampler(num_pairs, t.batch_size, t.seed, 0, world, start_step=micro_steps).start


def _launched_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _reconcile_launch_settings(accelerator, cfg: RunConfig) -> None:
    """Make the recipe and the accelerate launch configuration agree, or say where they differ."""
    t = cfg.train
    if accelerator.gradient_accumulation_steps != t.gradient_accumulation_steps:
        raise MapoError(
            f"the accelerate configuration sets gradient accumulation to {accelerator.gradient_accumulation_steps} "
            f"but train.gradient_accumulation_steps is {t.gradient_accumulation_steps}; set it in one place"
        )
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        ds = plugin.deepspeed_config
        # No data loader goes through prepare(), so DeepSpeed cannot infer these; and DeepSpeed
        # does the clipping itself, so it must use the recipe's norm.
        ds["train_micro_batch_size_per_gpu"] = t.batch_size
        ds["gradient_accumulation_steps"] = t.gradient_accumulation_steps
        ds["gradient_clipping"] = t.max_grad_norm
        if t.optimizer == "adamw8bit":
            # ZeRO shards any torch optimizer; it only asks to be told that this one is fine.
            ds["zero_allow_untested_optimizer"] = True


def _reference_fn(ref_unet, components: Components, accelerator):
    def reference(pairs: EncodedPairs, noise, timesteps):
        with accelerator.autocast():
            return denoising_losses(
                ref_unet, components.noise_scheduler, pairs, noise, timesteps, components.prediction_type
            )

    return reference


def _lora_reference_fn(unet, components: Components, accelerator):
    base = accelerator.unwrap_model(unet)

    def reference(pairs: EncodedPairs, noise, timesteps):
        # The unwrapped module under no_grad: no DDP hooks fire, no gradient is recorded.
        with adapters_disabled(base), accelerator.autocast():
            return denoising_losses(
                base, components.noise_scheduler, pairs, noise, timesteps, components.prediction_type
            )

    return reference


def _load_history(path: Path, upto_step: int) -> list[dict[str, Any]]:
    """Metrics logged so far; on resume, entries after the checkpoint are dropped (they will be
    logged again)."""
    if upto_step == 0 or not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["step"] <= upto_step]


def _write_history(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _validate(run: Run) -> None:
    """Render the validation grid on the main process (with EMA weights when EMA is on)."""
    from mapo_train.validation import grid_path, render_grid

    cfg, accelerator = run.cfg, run.accelerator
    if not cfg.validation.enabled:
        return
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(run.unet)
        if run.ema is not None:
            run.ema.store(run.params)
            run.ema.copy_to(run.params)
        on_cache = cfg.data.cache != "off"
        mixed_precision = accelerator.mixed_precision
        try:
            if on_cache:  # the frozen parts visit the device only while rendering
                _place_frozen(run.components, cfg, mixed_precision, accelerator.device)
            with accelerator.autocast():
                grid = render_grid(
                    run.components,
                    unet,
                    cfg.validation,
                    cfg.validation.resolution or cfg.data.resolution,
                    run.inference_scheduler,
                    step=run.global_step,
                )
        finally:
            if on_cache:
                _place_frozen(run.components, cfg, mixed_precision, "cpu")
            if run.ema is not None:
                run.ema.restore(run.params)
        path = grid_path(run.out, run.global_step)
        path.parent.mkdir(parents=True, exist_ok=True)
        grid.save(path)
        run.last_grid = path
        _log_image(accelerator, grid, run.global_step)
    accelerator.wait_for_everyone()


def _log_image(accelerator, grid, step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": wandb.Image(grid)}, step=step)


def _stop_on_nonfinite(run: Run, loss: torch.Tensor, metrics: dict[str, torch.Tensor]) -> None:
    """Raise NonFiniteLossError if the loss is NaN/inf on any process (all stop together)."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    if run.accelerator.num_processes > 1:
        finite = run.accelerator.gather(finite).min().reshape(1)
    if finite.item() == 1.0:
        return
    value = loss.detach().float().item()
    last = ckpt.latest_checkpoint(run.out)
    where = (
        f"the last good checkpoint is {last} (resume with --resume latest, e.g. with a lower train.learning_rate)"
        if last is not None
        else "no checkpoint had been saved yet"
    )
    raise NonFiniteLossError(
        f"loss became {value} at step {run.global_step + 1} "
        f"(L_w={metrics['loss_w'].item():.4g}, L_l={metrics['loss_l'].item():.4g}); stopped, nothing newer was saved; {where}"
    )


def fit(run: Run) -> None:
    """Train until train.max_steps, checkpointing, validating and logging along the way."""
    from tqdm.auto import tqdm

    cfg, accelerator = run.cfg, run.accelerator
    t = cfg.train
    accum = t.gradient_accumulation_steps
    loss_spec = get_loss(cfg.loss.name)
    rank, world = accelerator.process_index, accelerator.num_processes
    micro_step = run.global_step * accum
    loader = run.data.loader(
        t.batch_size, t.seed, rank, world, micro_step, cfg.data.num_workers, start=run.position
    )
    max_norm = t.max_grad_norm if t.max_grad_norm > 0 else math.inf
    pairs_per_step = t.batch_size * world * accum
    pairs_read = bad_read = 0
    if run.global_step == 0:
        _validate(run)

    progress = tqdm(
        total=t.max_steps,
        initial=run.global_step,
        desc="mapo-train",
        disable=not accelerator.is_local_main_process,
    )
    sums: dict[str, float] = {}
    started = time.perf_counter()
    run.unet.train()
    batches = iter(loader)
    try:
        while run.global_step < t.max_steps:
            batch = _next_batch(batches)
            if cfg.data.streaming:
                run.data.consumed(batch)
            else:  # every process took its batch of this round
                run.position = run.position.advance(t.batch_size * world, len(run.data.index))
            pairs_read += len(batch["captions"])
            bad_read += batch["bad"]
            if bad_read > max(10, cfg.data.max_bad_fraction * pairs_read):
                raise MapoError(
                    f"{bad_read} undecodable pairs out of {pairs_read} read, more than data.max_bad_fraction="
                    f"{cfg.data.max_bad_fraction}; check the dataset"
                )
            generator = step_generator(t.seed, micro_step, rank)
            micro_step += 1
            pairs = run.encoder(batch, generator)
            with accelerator.accumulate(run.unet):
                loss, metrics = pair_objective(
                    run.unet,
                    run.components.noise_scheduler,
                    pairs,
                    loss_spec,
                    generator,
                    beta=cfg.loss_beta,
                    alpha=cfg.loss_alpha,
                    prediction_type=run.components.prediction_type,
                    reference=run.reference,
                )
                _stop_on_nonfinite(run, loss, metrics)
                accelerator.backward(loss)
                grad_norm = None
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(run.params, max_norm)
                run.optimizer.step()
                run.optimizer.zero_grad(set_to_none=True)
            for key, value in {"loss": loss.detach(), **metrics}.items():
                sums[key] = sums.get(key, 0.0) + float(value) / accum
            if not accelerator.sync_gradients:
                continue

            lr = run.lr_scheduler.get_last_lr()[0]  # the rate this step used, before it moves on
            run.lr_scheduler.step()
            if run.ema is not None:
                run.ema.step(run.params)
            run.global_step += 1
            elapsed = time.perf_counter() - started
            row = _reduce(accelerator, sums)
            sums = {}
            row.update(
                step=run.global_step,
                lr=lr,
                grad_norm=float(grad_norm) if grad_norm is not None else float("nan"),
                pairs_per_s=pairs_per_step / max(elapsed, 1e-9),
                bad_pairs=bad_read,
            )
            accelerator.log({k: v for k, v in row.items() if k != "step"}, step=run.global_step)
            if accelerator.is_main_process:
                run.history.append(row)
                with open(run.out / METRICS_FILE, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
            progress.update(1)
            progress.set_postfix(
                loss=f"{row['loss']:.4f}", acc=f"{row['accuracy']:.2f}", margin=f"{row['margin']:.2e}"
            )

            if (
                t.checkpoint_every
                and run.global_step % t.checkpoint_every == 0
                and run.global_step < t.max_steps
            ):
                _save_checkpoint(run)
            every = cfg.validation.every_n_steps
            if every and run.global_step % every == 0 and run.global_step < t.max_steps:
                _validate(run)
            # Timed from here, so that checkpoints and validation do not count against pairs/s.
            started = time.perf_counter()
    finally:
        progress.close()
    # The final state is resumable too (e.g. to train further with a higher max_steps).
    if t.checkpoint_every:
        _save_checkpoint(run)
    _validate(run)


def _next_batch(batches):
    """The next batch; a MapoError raised in a loader worker comes back as its own one line.

    torch re-raises a worker's exception with the worker's whole traceback folded into the
    message, which would turn a user-facing error (e.g. undecodable data) into a traceback.
    """
    try:
        return next(batches)
    except MapoError as err:
        text = str(err)
        if not text.startswith("Caught ") or "Traceback" not in text:
            raise
        last = text.rstrip().splitlines()[-1]
        raise type(err)(last.split(": ", 1)[1] if ": " in last else last) from None


def _reduce(accelerator, sums: dict[str, float]) -> dict[str, float]:
    """Average step metrics over processes."""
    keys = sorted(sums)
    values = torch.tensor([sums[k] for k in keys], device=accelerator.device, dtype=torch.float64)
    if accelerator.num_processes > 1:
        values = accelerator.reduce(values, reduction="mean")
    return dict(zip(keys, values.tolist(), strict=True))


def finish(run: Run) -> TrainResult:
    """Save the weights (EMA if on), curves, card and config; push to the Hub if asked."""
    from mapo_train.card import write_card
    from mapo_train.plots import curves_title, plot_curves

    cfg, accelerator, out = run.cfg, run.accelerator, run.out
    accelerator.wait_for_everyone()
    weights = None
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(run.unet)
        if run.ema is not None:
            run.ema.copy_to(run.params)
        weights = save_weights(unet, out, cfg.model.finetune)
        (out / CONFIG_FILE).write_text(dump_config(cfg))
        if set(cfg.train.export) - {"diffusers"}:
            from mapo_train.export import export_run

            for path in export_run(out, cfg.train.export, cfg):
                accelerator.print(f"exported {path}")
        title = curves_title(
            cfg.loss.name, cfg.model.finetune, cfg.lora.rank, cfg.model.pretrained, cfg.data.path
        )
        curves = plot_curves(run.history, out / CURVES_FILE, title=title)
        t = cfg.train
        write_card(
            out,
            cfg=cfg,
            steps=run.global_step,
            num_pairs=len(run.data.index),
            ties_dropped=run.data.index.ties_dropped,
            invalid_labels=run.data.index.invalid_labels,
            effective_batch=t.batch_size * accelerator.num_processes * t.gradient_accumulation_steps,
            final_metrics={k: run.history[-1][k] for k in ("loss", "margin", "accuracy")}
            if run.history
            else None,
            curves=CURVES_FILE if curves else None,
            grid=run.last_grid.relative_to(out).as_posix() if run.last_grid else None,
        )
        if t.push_to_hub:
            from mapo_train.hub import push_run

            url = push_run(out, t.hub_model_id, private=t.hub_private)
            accelerator.print(f"pushed to {url}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(
        output_dir=out,
        global_step=run.global_step,
        weights=weights,
        history=run.history,
        validation_grid=run.last_grid,
        main_process=accelerator.is_main_process,
    )


def train(cfg: RunConfig, resume: str | None = None) -> TrainResult:
    """Train as configured; ``resume`` is ``latest`` or a checkpoint folder."""
    run = setup(cfg, resume)
    try:
        fit(run)
    except BaseException:
        with contextlib.suppress(Exception):
            run.accelerator.end_training()
        raise
    return finish(run)
