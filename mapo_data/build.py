"""`mapo-data build`: render preference pairs into sharded parquet.

Prompts map to shards deterministically (pair i lives in shard i // shard_size), so shards are the
unit of resume and of scale-out: under `accelerate launch`, process r renders shards r, r+n, ...;
each shard is written under a temporary name, renamed when complete and recorded by a completion
marker; the main process writes the manifest once every shard is complete. Image encoding and
parquet writing run on a background thread so they hide behind rendering.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mapo_data import __version__
from mapo_data.errors import MapoError
from mapo_data.judged import JudgedConfig
from mapo_data.presets import Preset, get_preset
from mapo_data.render import RenderConfig
from mapo_data.schema import BUILD_SCHEMA, FORMAT_NAME, FORMAT_VERSION, MANIFEST_NAME
from mapo_data.shards import STATE_DIR, DatasetWriter, ShardInfo, atomic_write_json, read_json, shard_entries

IMAGE_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}
CHOSEN_POSITIONS = ("random", "first")
#: The preset name of a judged build: N candidates per prompt ranked by a judge (mapo_data.judged).
JUDGED = "judged"
# Settings that change how the work is done but not what is written; a rerun may change them.
# batch_size is not one of them: fp32 kernels round differently for another batch shape, so a
# resumed shard rendered with another batch size would differ from the uninterrupted run by a
# few pixel values (seen: +-1 in 2 of 16 JPEGs), and resume is byte-exact or refused.
NON_IDENTITY_KEYS = {
    "render.device",
    "render.compile",
    "render.cpu_threads",
    "overwrite",
    "out",
    # Where the model and VAE come from: what they are is compared instead (CONTENT_KEYS).
    "render.model",
    "render.revision",
    "render.vae",
    # Where a judged build's candidates go: whether they are kept is compared instead (identity),
    # and a shard whose candidates are missing from the folder is redone (run_build).
    "judged.keep_candidates",
}
# What the pipeline is, by content (render.pipeline_identity): a fine-tune with same-sized weights,
# or weights changed in place, must not resume into shards rendered by other weights.
CONTENT_KEYS = {
    "render.model_content": "model",
    "render.vae_content": "vae",
    "render.resolved_dtype": "dtype",
}


@dataclass
class BuildConfig:
    """Everything `mapo-data build` needs; the CLI maps its options one to one onto these fields."""

    preset: str
    """pick-style, pick-safety or custom."""
    out: str
    """Output folder (created; refused if it is a file or another run's folder)."""
    split: str | None = None
    """Preset split: cartoon or pixel for pick-style."""
    chosen_prefix: str | None = None
    """custom only: prefix of the chosen prompt."""
    rejected_prefix: str | None = None
    """custom only: prefix of the rejected prompt."""
    prompts: str | None = None
    """Prompt source: text/jsonl/csv/parquet file or Hub dataset id; None = the shipped default set."""
    prompt_column: str | None = None
    """Column holding the prompts (jsonl/csv/parquet/Hub)."""
    prompt_split: str | None = None
    """Split of a Hub prompt dataset (default train)."""
    num_pairs: int | None = None
    """How many pairs (prompts sampled with the seed); None = every curated prompt."""
    style_words: str | None = None
    """drop | strip | off: prompts that already carry style words; default drop for pick-style/custom, off for pick-safety."""
    require_words: tuple[str, ...] = ()
    """Keep only prompts mentioning one of these words."""
    max_tokens: int = 77
    """CLIP token budget of the full prompt (longest prefix included)."""
    seed: int = 0
    """Global seed: prompt sampling and every pair's noise seed derive from it."""
    independent_noise: bool = False
    """Give chosen and rejected different initial noise (default: the same, so only the prefix differs)."""
    chosen_position: str = "random"
    """Where the chosen image goes: random (jpg_0 or jpg_1 by a coin seeded from the seed and the pair
    id, as Pick-a-Pic mixes them, so that a reader ignoring the labels learns nothing from the
    position) or first (always jpg_0, the layout of builds made before this option)."""
    shard_size: int = 500
    """Pairs per parquet shard."""
    batch_size: int = 4
    """Pairs per pipeline call (each call renders 2 x batch_size images)."""
    image_format: str = "jpeg"
    """jpeg, png or webp."""
    quality: int = 95
    """JPEG/WebP quality."""
    overwrite: bool = False
    """Delete a previous run's output in `out` and start over."""
    render: RenderConfig = field(default_factory=RenderConfig)
    judged: JudgedConfig | None = None
    """preset ``judged`` only: candidates, judge, pairing rule and margin (``mapo_data.judged``);
    ``num_pairs`` then counts prompts and ``batch_size`` images per pipeline call."""

    def __post_init__(self) -> None:
        if (self.preset == JUDGED) != (self.judged is not None):
            raise MapoError(
                "build judged needs --judge (and takes --candidates, --pairs, --min-margin)"
                if self.preset == JUDGED
                else f"--judge, --candidates, --pairs and --min-margin only apply to build judged, not {self.preset}"
            )
        if self.judged is not None and self.independent_noise:
            raise MapoError(
                "--independent-noise does not apply to build judged: every candidate has its own seed"
            )
        if self.image_format not in IMAGE_FORMATS:
            raise MapoError(f"unknown --image-format {self.image_format!r}; choose jpeg, png or webp")
        if self.shard_size < 1 or self.batch_size < 1:
            raise MapoError("--shard-size and --batch-size must be at least 1")
        if self.num_pairs is not None and self.num_pairs < 1:
            raise MapoError(f"--num-pairs must be at least 1, got {self.num_pairs}")
        if not 1 <= self.quality <= 100:
            raise MapoError(f"--quality must be in 1..100, got {self.quality}")
        if self.chosen_position not in CHOSEN_POSITIONS:
            raise MapoError(f"--chosen-position must be random or first, not {self.chosen_position!r}")

    def resolved_preset(self) -> Preset:
        if self.preset == JUDGED:
            # Both sides share the prompt: the judge, not a prefix, decides which image is chosen.
            if self.split or self.chosen_prefix is not None or self.rejected_prefix is not None:
                raise MapoError("build judged takes --prefix, not --split/--chosen-prefix/--rejected-prefix")
            prefix = ((self.judged.prefix if self.judged else None) or "").strip()
            return Preset(JUDGED, None, prefix, prefix)
        return get_preset(self.preset, self.split, self.chosen_prefix, self.rejected_prefix)

    def resolved_style_words(self) -> str:
        if self.style_words is not None:
            return self.style_words
        return "off" if self.preset in ("pick-safety", JUDGED) else "drop"


@dataclass(frozen=True)
class PairSpec:
    pair_id: int
    caption: str
    prompt_chosen: str
    prompt_rejected: str
    seed_chosen: int
    seed_rejected: int
    chosen_pos: int = 0
    """Column of the chosen image: 0 (jpg_0) or 1 (jpg_1)."""


@dataclass
class BuildResult:
    out: Path
    num_pairs: int
    num_shards: int
    bytes: int
    seconds: float
    rendered_pairs: int
    skipped_shards: int
    manifest: Path | None


def pair_seed(global_seed: int, pair_id: int, side: str = "pair") -> int:
    """A 63-bit seed from (global seed, pair id[, side]): any pair can be re-rendered on its own."""
    digest = hashlib.sha256(f"mapo:{global_seed}:{pair_id}:{side}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def chosen_column(global_seed: int, pair_id: int, mode: str = "random") -> int:
    """0 or 1: the column (jpg_0 / jpg_1) of pair ``pair_id``'s chosen image.

    ``random``: a fair coin that depends only on (global seed, pair id), so a pair's layout is the
    same whatever the batch, shard, process count or resume; ``first``: always 0."""
    if mode == "first":
        return 0
    return pair_seed(global_seed, pair_id, "chosen-position") & 1


def plan_pairs(
    captions: list[str], preset: Preset, seed: int, independent_noise: bool, chosen_position: str = "random"
) -> list[PairSpec]:
    pairs = []
    for pair_id, caption in enumerate(captions):
        if independent_noise:
            seeds = pair_seed(seed, pair_id, "chosen"), pair_seed(seed, pair_id, "rejected")
        else:
            seeds = (pair_seed(seed, pair_id),) * 2
        pairs.append(
            PairSpec(
                pair_id,
                caption,
                preset.chosen_prompt(caption),
                preset.rejected_prompt(caption),
                *seeds,
                chosen_pos=chosen_column(seed, pair_id, chosen_position),
            )
        )
    return pairs


def flat_config(config: BuildConfig) -> dict[str, Any]:
    """The config as a flat dict with dotted keys for the render part, JSON-friendly."""
    data = asdict(config)
    render = data.pop("render")
    # Present only for judged builds, so a prefix build's recorded identity is unchanged.
    judged = data.pop("judged")
    if judged is not None:
        data.update({f"judged.{k}": list(v) if isinstance(v, tuple) else v for k, v in judged.items()})
    data["require_words"] = list(config.require_words)
    data["style_words"] = config.resolved_style_words()
    data.update({f"render.{k}": v for k, v in render.items()})
    return data


def identity(config: BuildConfig, pipeline: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides the bytes a build writes: the settings, and (``pipeline``, from
    ``render.pipeline_identity``) what the model, VAE and dtype are."""
    found = {k: v for k, v in flat_config(config).items() if k not in NON_IDENTITY_KEYS}
    if pipeline is not None:
        found.update({key: pipeline[part] for key, part in CONTENT_KEYS.items()})
    if config.judged is not None:
        from mapo_data.judged import judge_identity

        found["judged.judge_content"] = judge_identity(config.judged)
        found["judged.keeps_candidates"] = bool(config.judged.keep_candidates)
    return found


def _changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    # Keys only the old record has are settings this version no longer compares (NON_IDENTITY_KEYS).
    return sorted(k for k in new if old.get(k) != new.get(k))


def _describe_change(key: str, old: dict[str, Any], config: BuildConfig) -> str:
    if key in CONTENT_KEYS and key not in old:
        return f"{key} (not recorded by the mapo version that started this build)"
    if key == "render.model_content":
        return f"{key} (the files of the model {config.render.model} are not those this build used)"
    if key == "render.vae_content":
        return f"{key} (the files of the VAE {config.render.resolved_vae()} are not those this build used)"
    return key


def prepare_prompts(config: BuildConfig) -> tuple[list[Any], dict[str, Any]]:
    """Load and curate prompts and plan the work (no model weights are loaded): a PairSpec per pair,
    or for a judged build a ``judged.PromptSpec`` (a prompt and its candidates' seeds) per prompt."""
    from mapo_data.prompts import PromptCurationConfig, curate_prompts, load_prompts, load_tokenizers

    preset = config.resolved_preset()
    raw = load_prompts(
        config.prompts, column=config.prompt_column, split=config.prompt_split, what="--prompts"
    )
    curation = PromptCurationConfig(
        max_tokens=config.max_tokens,
        style_words=config.resolved_style_words(),
        require_words=tuple(config.require_words),
        num_prompts=config.num_pairs,
        seed=config.seed,
    )
    curated = curate_prompts(
        raw,
        curation,
        tokenizers=load_tokenizers(config.render.tokenizer_source()),
        prefixes=(preset.chosen_prefix, preset.rejected_prefix),
    )
    if config.num_pairs is not None and len(curated.prompts) < config.num_pairs:
        raise MapoError(
            f"--num-pairs {config.num_pairs} asks for more pairs than the {len(curated.prompts)} prompts "
            "left after curation; give more prompts or a smaller --num-pairs"
        )
    if config.judged is not None:
        from mapo_data.judged import plan_candidates

        units = plan_candidates(curated.prompts, config.judged.prefix, config.seed, config.judged.candidates)
        return units, {"source": config.prompts or "mapo default prompts", "curation": curated.steps}
    pairs = plan_pairs(curated.prompts, preset, config.seed, config.independent_noise, config.chosen_position)
    info = {"source": config.prompts or "mapo default prompts", "curation": curated.steps}
    return pairs, info


def encode_image(image, image_format: str, quality: int) -> bytes:
    buffer = io.BytesIO()
    pil_format = IMAGE_FORMATS[image_format]
    if pil_format == "PNG":
        image.save(buffer, format="PNG")
    else:
        image.save(buffer, format=pil_format, quality=quality)
    return buffer.getvalue()


def _pair_rows(pairs: list[PairSpec], images: list, config: BuildConfig) -> list[dict[str, Any]]:
    rows = []
    for pair, chosen, rejected in zip(pairs, images[0::2], images[1::2], strict=True):
        # Rendered chosen then rejected; each image's label, prompt and seed go with it to its column.
        encoded = [encode_image(image, config.image_format, config.quality) for image in (chosen, rejected)]
        sides = (
            (encoded[0], 1, pair.prompt_chosen, pair.seed_chosen),
            (encoded[1], 0, pair.prompt_rejected, pair.seed_rejected),
        )
        columns = sides if pair.chosen_pos == 0 else sides[::-1]
        row: dict[str, Any] = {"caption": pair.caption, "pair_id": pair.pair_id}
        for k, (image, label, prompt, seed) in enumerate(columns):
            row.update({f"jpg_{k}": image, f"label_{k}": label, f"prompt_{k}": prompt, f"seed_{k}": seed})
        rows.append(row)
    return rows


def _write_shard(writer: DatasetWriter, index: int, batches: list[Future]) -> ShardInfo:
    import pyarrow as pa

    rows = [row for batch in batches for row in batch.result()]
    # Row groups are sized by the writer from the bytes of each row (shards.ROW_GROUP_BYTES).
    return writer.write_shard(index, pa.Table.from_pylist(rows, schema=BUILD_SCHEMA))


def _check_out_folder(out: Path, config: BuildConfig, is_main: bool, pipeline: dict[str, Any]) -> None:
    """Refuse an output that is a file or belongs to a different run (other settings, or a model
    whose content differs: ``pipeline``); clear it with --overwrite."""
    if out.exists() and not out.is_dir():
        raise MapoError(f"--out {out} exists and is not a folder")
    config_path = out / STATE_DIR / "config.json"
    if config.overwrite:
        if is_main and out.exists():
            DatasetWriter(out).clear()
        return
    if config_path.is_file():
        old = read_json(config_path)
        changed = [_describe_change(k, old, config) for k in _changed_keys(old, identity(config, pipeline))]
        if changed:
            raise MapoError(
                f"{out} was built with a different config (differs in: {', '.join(changed)}); "
                "use --overwrite to start over or choose another --out"
            )
    elif out.is_dir() and any(out.iterdir()):
        raise MapoError(
            f"--out {out} is not empty and was not made by mapo-data build; use another --out or --overwrite"
        )


def run_build(
    config: BuildConfig,
    progress: bool = True,
    log: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> BuildResult:
    """Render every missing shard assigned to this process; the main process writes the manifest."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    from mapo_data.render import load_pipeline, model_fingerprint, pipeline_identity, render_images

    started = time.perf_counter()
    state = PartialState(cpu=_wants_cpu(config.render.device))
    out = Path(config.out)
    pipeline = pipeline_identity(config.render)  # hashes are memoised: cheap after the first run
    _check_out_folder(out, config, state.is_main_process, pipeline)
    pairs, prompt_info = prepare_prompts(config)
    writer = DatasetWriter(out)
    num_shards = -(-len(pairs) // config.shard_size)
    ranked_writer = None
    if config.judged is not None and config.judged.keep_candidates:
        from mapo_data.judged import prepare_ranked_folder

        ranked_writer = prepare_ranked_folder(config, state.is_main_process)
    if state.is_main_process:
        writer.remove_stale_temporaries()
    state.wait_for_everyone()  # cleanup (stale temporaries, --overwrite) must finish before anyone writes
    if state.is_main_process:
        atomic_write_json(out / STATE_DIR / "config.json", identity(config, pipeline))
    if (out / MANIFEST_NAME).is_file():
        if state.is_main_process:
            log(f"{out} is already complete ({len(pairs)} pairs); nothing to do")
        return _result(out, writer, num_shards, started, 0, num_shards)

    mine = [i for i in range(num_shards) if i % state.num_processes == state.process_index]
    todo = [
        i
        for i in mine
        if writer.completed(i) is None or (ranked_writer is not None and ranked_writer.completed(i) is None)
    ]
    skipped = len(mine) - len(todo)
    if skipped and state.is_main_process:
        log(f"resuming: {skipped} of {len(mine)} shards already complete")
    rendered = 0
    model_info: dict[str, Any] = {
        "id": config.render.model,
        "revision": config.render.revision,
        "identity": pipeline,
    }
    if todo:
        pipe = load_pipeline(config.render, device=config.render.device or str(state.device))
        model_info = model_fingerprint(pipe, config.render, pipeline)
        total = sum(len(_shard_pairs(pairs, i, config.shard_size)) for i in todo)
        tag = f" [{state.process_index}]" if state.num_processes > 1 else ""
        if config.judged is not None:
            from mapo_data.judged import CombinedJudge, render_judged_shard, write_judged_shard

            judge = CombinedJudge(config.judged, device=config.render.device or str(state.device))
            total *= config.judged.candidates
            judge_bar = tqdm(
                total=total,
                unit="image",
                desc=f"judging{tag}",
                disable=not progress,
                position=2 * state.process_index + 1,
            )
        bar = tqdm(
            total=total,
            unit="image" if config.judged is not None else "pair",
            desc=f"rendering{tag}",
            disable=not progress,
            position=2 * state.process_index if config.judged is not None else state.process_index,
        )
        # One background worker keeps jobs in submission order: a shard's encode jobs finish
        # before its write job runs, and at most a shard or two of images is held in memory.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mapo-encode") as pool:
            pending: list[Future] = []
            for index in todo:
                shard_pairs = _shard_pairs(pairs, index, config.shard_size)
                if config.judged is not None:
                    jobs = render_judged_shard(pipe, pool, judge, shard_pairs, config, (bar, judge_bar))
                    rendered += len(shard_pairs)
                    pending.append(pool.submit(write_judged_shard, writer, ranked_writer, index, jobs))
                    while len(pending) > 2:
                        pending.pop(0).result()
                    continue
                batches = []
                for start in range(0, len(shard_pairs), config.batch_size):
                    batch = shard_pairs[start : start + config.batch_size]
                    prompts = [p for pair in batch for p in (pair.prompt_chosen, pair.prompt_rejected)]
                    seeds = [s for pair in batch for s in (pair.seed_chosen, pair.seed_rejected)]
                    images = render_images(pipe, prompts, seeds, config.render)
                    batches.append(pool.submit(_pair_rows, batch, images, config))
                    rendered += len(batch)
                    bar.update(len(batch))
                pending.append(pool.submit(_write_shard, writer, index, batches))
                # Surface a failed write early and bound how much is queued.
                while len(pending) > 2:
                    pending.pop(0).result()
            for job in pending:
                job.result()
        bar.close()
        if config.judged is not None:
            judge_bar.close()
    if state.is_main_process:
        infos = _wait_for_shards(writer, num_shards)
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "num_pairs": sum(i.rows for i in infos),
            "shards": shard_entries(infos),
            "preset": dataclasses.asdict(config.resolved_preset()),
            "config": flat_config(config),
            "model": model_info,
            "prompts": prompt_info,
            "versions": library_versions(),
            "provenance": [
                {
                    "step": "build",
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "command": " ".join(["mapo-data", *sys.argv[1:]]),
                    "processes": state.num_processes,
                }
            ],
        }
        if config.judged is not None:
            from mapo_data import judged

            records = judged.collect(out, num_shards)
            manifest["provenance"][0].update(judged.provenance(config, records, prompt_info["source"]))
            judged.write_candidates_file(out, records)
            if ranked_writer is not None:
                judged.finish_ranked(ranked_writer, num_shards, config)
        writer.write_manifest(manifest)
        if config.judged is not None:
            log(judged.summary_line(records))
    return _result(out, writer, num_shards, started, rendered, skipped)


def _wants_cpu(device: str | None) -> bool:
    """Processes launched without an accelerator must join a gloo group rather than run alone."""
    import torch

    return (device or "").startswith("cpu") or not torch.cuda.is_available()


def _shard_pairs(pairs: list[PairSpec], index: int, shard_size: int) -> list[PairSpec]:
    return pairs[index * shard_size : (index + 1) * shard_size]


def _wait_for_shards(writer: DatasetWriter, num_shards: int, poll_seconds: float = 2.0) -> list[ShardInfo]:
    """Wait (main process) until every shard, including other processes', is complete.

    Polling the completion markers instead of a collective barrier means a long render on another
    GPU cannot trip a communication timeout; if a process dies, accelerate stops the job.
    """
    while True:
        infos = [writer.completed(i) for i in range(num_shards)]
        if all(infos):
            return infos  # type: ignore[return-value]
        time.sleep(poll_seconds)


def _result(out: Path, writer: DatasetWriter, num_shards: int, started: float, rendered: int, skipped: int):
    infos = [info for i in range(num_shards) if (info := writer.completed(i)) is not None]
    manifest = out / MANIFEST_NAME
    return BuildResult(
        out=out,
        num_pairs=sum(i.rows for i in infos),
        num_shards=len(infos),
        bytes=sum(i.bytes for i in infos),
        seconds=time.perf_counter() - started,
        rendered_pairs=rendered,
        skipped_shards=skipped,
        manifest=manifest if manifest.is_file() else None,
    )


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"mapo": __version__, "python": sys.version.split()[0]}
    for package in ("torch", "diffusers", "transformers", "accelerate", "datasets", "pyarrow", "pillow"):
        with contextlib.suppress(PackageNotFoundError):
            versions[package] = version(package)
    return versions
