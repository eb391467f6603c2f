"""Latent and text caching: encode every pair once, then train without the VAE or text encoders.

Encoding a 1024² image with SDXL's VAE costs about a quarter of a training step, and the text
encoders' output never changes for a caption, so both are computed once per pair and stored.

What is stored, per pair (positions follow the trainer's PairIndex, so a cached run visits pairs
in the same order as an on-the-fly run):

- the VAE latent *distribution* (mean and std, unscaled) of the chosen and the rejected image, for
  both horizontal flips when ``data.random_flip`` is on. The trainer samples ``mean + std * eps``
  with the micro-step's generator exactly as the on-the-fly path does, so a step on the cache
  equals a step on the fly within floating-point tolerance (exactly, with ``cache_dtype`` equal
  to the VAE's dtype).
- both encoders' penultimate hidden states side by side and the second encoder's pooled
  projection of the caption; the empty prompt's encoding is stored once, for
  ``data.proportion_empty_prompts``.
- SDXL's ``add_time_ids`` of each flip (one row for the pair, stored for each side), and whether
  the pair decoded at all.

The crop is fixed by the cache: the centre crop, or with ``data.random_crop`` one crop per pair
drawn once from (seed, row). The flip and the empty prompt are still drawn per (epoch, position)
at training time, from the same generator the on-the-fly path uses.

Layout (one folder per key; a changed key is a new folder, so a cache is never stale)::

    ROOT/<key>/
      identity.json                  what the key was computed from
      shards/00000.safetensors ...   tensors of shard_size pairs each, written atomically
      completions/00000.json         one marker per finished shard (resume skips these)
      meta.safetensors               the PairIndex and the empty prompt's encoding
      complete.json                  written last: the cache is ready
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mapo_data.errors import MapoError
from mapo_data.schema import LABEL_RULE_VERSION
from mapo_data.shards import atomic_write_json, give_umask_mode, read_json
from mapo_train.config import RunConfig
from mapo_train.data import (
    IndexedLoaderMixin,
    PairIndex,
    crop_and_flip,
    decode_image,
    index_table,
    load_pair_table,
    pair_rng,
    to_tensor,
)
from mapo_train.encode import EncodedPairs

log = logging.getLogger(__name__)

# Bump when what is stored, or how, changes: it is part of the key.
# 2: a pair shares the chosen image's frame and one micro-conditioning row (data.crop_and_flip).
CACHE_VERSION = 2
COMPLETE_FILE = "complete.json"
IDENTITY_FILE = "identity.json"
META_FILE = "meta.safetensors"
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Pairs tried in a row after an undecodable one, as in the on-the-fly dataset.
_MAX_CONSECUTIVE_BAD = 50


def default_cache_root() -> Path:
    """``$MAPO_CACHE/train-cache``, else ``~/.cache/mapo/train-cache`` (XDG_CACHE_HOME honoured)."""
    if os.environ.get("MAPO_CACHE"):
        return Path(os.environ["MAPO_CACHE"]) / "train-cache"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mapo" / "train-cache"


def cache_root(cfg: RunConfig) -> Path:
    """The folder under which keyed caches live: ``data.cache`` when it is a path, else the default."""
    if cfg.data.cache in ("auto", "off"):
        return default_cache_root()
    return Path(cfg.data.cache).expanduser()


def cache_identity(cfg: RunConfig, dataset_fingerprint: str, mixed_precision: str) -> dict[str, Any]:
    """Everything the cached tensors depend on; its hash is the cache key.

    The encoders are identified by content (``mapo_data.identity``): the latents by the VAE's
    files (the base model's ``vae/`` or the separate ``model.vae``), the text encodings by both
    text encoders' and both tokenizers' files; a Hub model by the commit its revision resolves to.
    Where the model lies is not part of it; any change to its bytes makes a new key.
    """
    from mapo_data.identity import model_identity
    from mapo_data.resolve import resolve
    from mapo_train.model import vae_dtype, vae_source

    m, d = cfg.model, cfg.data
    vae_id = vae_source(m, mixed_precision)
    if vae_id is None:
        vae = model_identity(
            m.pretrained, ("vae",), m.revision, m.variant, what="model.pretrained", config=m.config
        )
    else:  # loaded on its own: no revision, no variant (see model.load_components)
        vae = model_identity(resolve(vae_id, "model.vae"), what="model.vae")
    text_parts = ("text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2")
    return {
        "version": CACHE_VERSION,
        "dataset": dataset_fingerprint,
        "split": d.split,
        "ties": d.ties,
        # Which rows are trained, and which side is chosen, is the label rule's to say.
        "label_rule": LABEL_RULE_VERSION,
        "max_pairs": d.max_pairs,
        # The seed picks tie winners (ties=keep) and fixed random crops; otherwise it is not used.
        "seed": cfg.train.seed if (d.ties == "keep" or d.random_crop) else None,
        "vae": vae,
        "text_encoders": model_identity(
            m.pretrained, text_parts, m.revision, m.variant, what="model.pretrained", config=m.config
        ),
        # The precision the latents were encoded in (model.vae_dtype).
        "vae_dtype": str(vae_dtype(m, mixed_precision)).removeprefix("torch."),
        "text_dtype": mixed_precision,
        "resolution": d.resolution,
        "random_crop": d.random_crop,
        "flips": 2 if d.random_flip else 1,
        "cache_dtype": d.cache_dtype,
    }


def cache_key(identity: dict[str, Any]) -> str:
    payload = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def _mixed_precision(cfg: RunConfig) -> str:
    """The precision encoders run in: the recipe's, else accelerate's launch setting, else fp32."""
    if cfg.train.mixed_precision is not None:
        return cfg.train.mixed_precision
    from accelerate.state import PartialState

    mp = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if mp is None and PartialState._shared_state:
        mp = getattr(PartialState(), "mixed_precision", None)
    return mp or "no"


@dataclass
class CacheLocation:
    root: Path
    key: str
    identity: dict[str, Any]
    table: Any
    index: PairIndex

    @property
    def complete(self) -> bool:
        return (self.root / COMPLETE_FILE).is_file()


def locate_cache(cfg: RunConfig, mixed_precision: str | None = None) -> CacheLocation:
    """Load the pair table and index, and compute where their cache lives (it may not exist yet)."""
    table = load_pair_table(cfg.data)
    index = index_table(table, cfg.data, cfg.train.seed)
    identity = cache_identity(cfg, table._fingerprint, mixed_precision or _mixed_precision(cfg))
    key = cache_key(identity)
    return CacheLocation(cache_root(cfg) / key, key, identity, table, index)


# ---------------------------------------------------------------------------------------------
# Building


class _FixedChoice:
    """Stands in for a pair's generator in ``crop_and_flip`` to force one crop and one flip, so
    the cache runs the very preprocessing code the on-the-fly path runs. The crop offsets are
    folded into each pair's valid range, which only ``crop_and_flip`` knows."""

    def __init__(self, top: int, left: int, flip: bool):
        self.offsets = [top, left]
        self.flip = flip

    def integers(self, low: int, high: int) -> int:
        return low + self.offsets.pop(0) % (high - low)

    def random(self) -> float:
        return 0.0 if self.flip else 1.0


class _EncodeInputs(torch.utils.data.Dataset):
    """Decoded, cropped pixels of every flip of one pair (run in the data loader's workers)."""

    def __init__(self, table, index: PairIndex, cfg: RunConfig):
        self.table, self.index, self.cfg = table, index, cfg

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, position: int) -> dict[str, Any]:
        from mapo_data.schema import CAPTION, IMAGE_COLUMNS

        d = self.cfg.data
        flips = (False, True) if d.random_flip else (False,)
        res = d.resolution
        row_number = int(self.index.rows[position])
        try:
            row = self.table[row_number]
            chosen = int(self.index.chosen[position])
            images = (decode_image(row[IMAGE_COLUMNS[chosen]]), decode_image(row[IMAGE_COLUMNS[1 - chosen]]))
        except Exception as err:  # noqa: BLE001 - any undecodable pair is recorded, not fatal
            log.debug("pair at row %s is undecodable: %s", row_number, err)
            return {"ok": False, "caption": "", "position": position}
        top = left = 0
        if d.random_crop:
            # One crop per pair, fixed for the cache's lifetime (folded into range by _FixedChoice).
            rng = np.random.default_rng([self.cfg.train.seed, row_number, 0xC409])
            top, left = int(rng.integers(0, 1 << 30)), int(rng.integers(0, 1 << 30))
        pixels, time_ids = [], []
        for flip in flips:
            imgs, ids = crop_and_flip(
                images, res, _FixedChoice(top, left, flip), d.random_crop, d.random_flip
            )
            pixels += [to_tensor(imgs[0]), to_tensor(imgs[1])]
            time_ids += [ids, ids]  # one row for both sides, stored per side as the reader expects
        return {
            "ok": True,
            "caption": row[CAPTION] or "",
            "position": position,
            "pixels": torch.stack(pixels),  # [F*2, 3, R, R]: (flip0 w, flip0 l, flip1 w, flip1 l)
            "time_ids": torch.tensor(time_ids, dtype=torch.float32).view(len(flips), 2, 6),
        }


def _collate_inputs(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _load_encoders(cfg: RunConfig, mixed_precision: str, device):
    """The VAE and both text encoders on ``device``, in the precision training would use."""
    from mapo_train.encode import SDXLTextEncoder
    from mapo_train.model import DTYPES, load_components, place, vae_dtype

    components = load_components(cfg.model, mixed_precision)
    components.unet = None  # not needed here; free it early
    place(components.vae, device, vae_dtype(cfg.model, mixed_precision))
    place(components.text_encoder, device, DTYPES[mixed_precision])
    place(components.text_encoder_2, device, DTYPES[mixed_precision])
    text = SDXLTextEncoder(
        components.tokenizer, components.tokenizer_2, components.text_encoder, components.text_encoder_2
    )
    return components.vae, text


@torch.no_grad()
def _encode_shard(items: list[dict[str, Any]], vae, text, flips: int, resolution: int, dtype) -> dict:
    n = len(items)
    ok = [i for i, item in enumerate(items) if item["ok"]]
    latent = resolution // 8
    channels = vae.config.latent_channels
    out = {
        "ok": torch.tensor([item["ok"] for item in items], dtype=torch.bool),
        "position": torch.tensor([item["position"] for item in items], dtype=torch.int64),
        "latent_mean": torch.zeros(n, flips, 2, channels, latent, latent, dtype=dtype),
        "latent_std": torch.zeros(n, flips, 2, channels, latent, latent, dtype=dtype),
        "time_ids": torch.zeros(n, flips, 2, 6, dtype=torch.float32),
    }
    captions = [item["caption"] for item in items]
    embeds, pooled = text(captions)
    out["prompt_embeds"] = embeds.to("cpu", dtype)
    out["pooled_prompt_embeds"] = pooled.to("cpu", dtype)
    if ok:
        pixels = torch.cat([items[i]["pixels"] for i in ok])
        dist = vae.encode(pixels.to(device=vae.device, dtype=vae.dtype)).latent_dist
        shape = (len(ok), flips, 2, channels, latent, latent)
        out["latent_mean"][ok] = dist.mean.to("cpu", dtype).reshape(shape)
        out["latent_std"][ok] = dist.std.to("cpu", dtype).reshape(shape)
        out["time_ids"][ok] = torch.stack([items[i]["time_ids"] for i in ok])
    return out


def _save_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
        give_umask_mode(tmp)  # mkstemp and safetensors both create owner-only (0600) files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def shard_path(root: Path, index: int) -> Path:
    return root / "shards" / f"{index:05d}.safetensors"


def marker_path(root: Path, index: int) -> Path:
    return root / "completions" / f"{index:05d}.json"


def shard_complete(root: Path, index: int) -> bool:
    """A shard counts as done when its marker exists and the file still has the recorded size."""
    marker, shard = marker_path(root, index), shard_path(root, index)
    if not marker.is_file() or not shard.is_file():
        return False
    return read_json(marker).get("bytes") == shard.stat().st_size


@dataclass
class CacheResult:
    root: Path
    key: str
    num_pairs: int
    shards_written: int
    shards_skipped: int
    bad_pairs: int


def build_cache(
    cfg: RunConfig,
    progress: bool = True,
    mixed_precision: str | None = None,
    say: Callable[[str], None] = lambda msg: print(msg, file=sys.stderr),
) -> CacheResult:
    """Encode every missing shard assigned to this process; the main process finishes the cache.

    Shard i belongs to process i mod N (under ``accelerate launch``); a rerun skips shards whose
    completion marker matches the file on disk.
    """
    from accelerate import PartialState
    from tqdm.auto import tqdm

    d = cfg.data
    # A CPU-only launch still needs a process group (gloo) to wait for the others; accelerate
    # only makes one for the CPU when told so (see mapo_data/build.py).
    state = PartialState(cpu=not torch.cuda.is_available())
    mixed_precision = mixed_precision or _mixed_precision(cfg)
    with state.main_process_first():  # the first process converts parquet to Arrow once
        where = locate_cache(cfg, mixed_precision)
    root, index = where.root, where.index
    num_shards = -(-len(index) // d.cache_shard_size)
    if where.complete:
        if state.is_main_process:
            say(f"cache {root} is complete ({len(index)} pairs); nothing to do")
        return CacheResult(root, where.key, len(index), 0, num_shards, int(_read_complete(root)["bad_pairs"]))
    if state.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_json(root / IDENTITY_FILE, where.identity)
    state.wait_for_everyone()

    mine = [i for i in range(num_shards) if i % state.num_processes == state.process_index]
    todo = [i for i in mine if not shard_complete(root, i)]
    if len(todo) < len(mine) and state.is_main_process:
        say(f"resuming: {len(mine) - len(todo)} of {len(mine)} shards already complete")
    flips = 2 if d.random_flip else 1
    dtype = CACHE_DTYPES[d.cache_dtype]
    if todo:
        vae, text = _load_encoders(cfg, mixed_precision, state.device)
        inputs = _EncodeInputs(where.table, index, cfg)
        bar = tqdm(
            total=sum(min(d.cache_shard_size, len(index) - i * d.cache_shard_size) for i in todo),
            desc=f"caching [{state.process_index}]" if state.num_processes > 1 else "caching",
            unit="pair",
            disable=not progress,
        )
        for shard in todo:
            start = shard * d.cache_shard_size
            positions = list(range(start, min(start + d.cache_shard_size, len(index))))
            loader = torch.utils.data.DataLoader(
                torch.utils.data.Subset(inputs, positions),
                batch_size=d.cache_batch_size,
                num_workers=d.num_workers,
                collate_fn=_collate_inputs,
            )
            parts = []
            for items in loader:
                parts.append(_encode_shard(items, vae, text, flips, d.resolution, dtype))
                bar.update(len(items))
            tensors = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            path = shard_path(root, shard)
            _save_atomic(tensors, path)
            atomic_write_json(
                marker_path(root, shard),
                {"pairs": len(positions), "bad": int((~tensors["ok"]).sum()), "bytes": path.stat().st_size},
            )
        bar.close()
    state.wait_for_everyone()
    bad = 0
    if state.is_main_process:
        missing = [i for i in range(num_shards) if not shard_complete(root, i)]
        if missing:
            raise MapoError(f"cache {root}: shards {missing[:5]} did not finish; run the command again")
        bad = sum(read_json(marker_path(root, i))["bad"] for i in range(num_shards))
        if bad >= len(index):
            raise MapoError(f"no pair in {d.path} could be decoded; is it image data?")
        if bad > max(10, d.max_bad_fraction * len(index)):
            raise MapoError(
                f"{bad} of {len(index)} pairs could not be decoded, more than data.max_bad_fraction="
                f"{d.max_bad_fraction}; check the dataset"
            )
        if todo:
            empty_embeds, empty_pooled = text([""])
        else:  # every shard was already there: only the empty prompt is missing
            _, text = _load_encoders(cfg, mixed_precision, state.device)
            empty_embeds, empty_pooled = text([""])
        _save_atomic(
            {
                "rows": torch.from_numpy(index.rows),
                "chosen": torch.from_numpy(index.chosen.astype(np.int64)),
                "empty_prompt_embeds": empty_embeds[0].to("cpu", dtype),
                "empty_pooled_prompt_embeds": empty_pooled[0].to("cpu", dtype),
            },
            root / META_FILE,
        )
        atomic_write_json(
            root / COMPLETE_FILE,
            {
                "pairs": len(index),
                "shards": num_shards,
                "shard_size": d.cache_shard_size,
                "bad_pairs": bad,
                "index": {
                    "total": index.total,
                    "ties": index.ties,
                    "ties_dropped": index.ties_dropped,
                    "invalid_labels": index.invalid_labels,
                },
            },
        )
        say(f"cache ready: {root} ({len(index)} pairs, {bad} undecodable)")
    state.wait_for_everyone()
    return CacheResult(root, where.key, len(index), len(todo), len(mine) - len(todo), bad)


def _read_complete(root: Path) -> dict[str, Any]:
    return read_json(root / COMPLETE_FILE)


# ---------------------------------------------------------------------------------------------
# Reading


class CachedPairDataset(torch.utils.data.Dataset):
    """Map-style dataset over a complete cache, addressed by (epoch, position) keys like
    ``PairDataset``: the flip and the empty prompt come from the same per-pair generator, and an
    undecodable pair is replaced by the next position, so both paths see the same pairs."""

    def __init__(self, root: Path, cfg: RunConfig, seed: int):
        from safetensors.torch import load_file

        self.root = Path(root)
        self.complete = _read_complete(self.root)
        self.shard_size = int(self.complete["shard_size"])
        self.num_pairs = int(self.complete["pairs"])
        meta = load_file(str(self.root / META_FILE))
        self.empty_embeds = meta["empty_prompt_embeds"]
        self.empty_pooled = meta["empty_pooled_prompt_embeds"]
        self.cfg = cfg.data
        self.seed = seed
        self._handles: dict[int, Any] = {}  # opened lazily, per worker process

    def __len__(self) -> int:
        return self.num_pairs

    def _shard(self, index: int):
        from safetensors import safe_open

        if index not in self._handles:
            self._handles[index] = safe_open(str(shard_path(self.root, index)), framework="pt")
        return self._handles[index]

    def __getstate__(self):  # handles do not pickle; workers reopen what they read
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _get(self, name: str, position: int) -> torch.Tensor:
        shard, within = divmod(position, self.shard_size)
        return self._shard(shard).get_slice(name)[within : within + 1][0]

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        epoch, position = key
        bad = 0
        while not bool(self._get("ok", position)):
            bad += 1
            if bad >= min(_MAX_CONSECUTIVE_BAD, self.num_pairs):
                raise MapoError(f"{bad} pairs in a row could not be decoded in {self.cfg.path}")
            position = (position + 1) % self.num_pairs
        rng = pair_rng(self.seed, epoch, position)
        # The same draws, in the same order, as crop_and_flip and PairDataset._load make.
        flip = bool(self.cfg.random_flip and rng.random() < 0.5)
        empty = bool(self.cfg.proportion_empty_prompts and rng.random() < self.cfg.proportion_empty_prompts)
        f = 1 if flip else 0
        mean = self._get("latent_mean", position)[f]
        std = self._get("latent_std", position)[f]
        ids = self._get("time_ids", position)[f]
        if empty:
            embeds, pooled = self.empty_embeds, self.empty_pooled
        else:
            embeds = self._get("prompt_embeds", position)
            pooled = self._get("pooled_prompt_embeds", position)
        return {
            "mean_w": mean[0],
            "mean_l": mean[1],
            "std_w": std[0],
            "std_l": std[1],
            "prompt_embeds": embeds,
            "pooled_prompt_embeds": pooled,
            "time_ids_w": ids[0],
            "time_ids_l": ids[1],
            "bad": bad,
        }


def collate_cached(items: list[dict[str, Any]]) -> dict[str, Any]:
    batch = {k: torch.stack([i[k] for i in items]) for k in items[0] if k != "bad"}
    batch["bad"] = sum(i["bad"] for i in items)
    batch["captions"] = [""] * len(items)  # the loop counts pairs by captions
    return batch


class CachedEncoder:
    """Stands in for ``PairEncoder`` on a cache: samples the stored latent distributions with the
    micro-step's generator, in the dtype the VAE would have used, then shifts and scales as
    ``encode_latents`` does. No VAE or text encoder is involved."""

    def __init__(self, device, sample_dtype: torch.dtype, scaling_factor: float, shift_factor: float | None):
        self.device = device
        self.sample_dtype = sample_dtype
        self.scaling_factor = scaling_factor
        self.shift_factor = shift_factor

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> EncodedPairs:
        from diffusers.utils.torch_utils import randn_tensor

        mean = torch.cat([batch["mean_w"], batch["mean_l"]]).to(self.device, self.sample_dtype)
        std = torch.cat([batch["std_w"], batch["std_l"]]).to(self.device, self.sample_dtype)
        eps = randn_tensor(mean.shape, generator=generator, device=self.device, dtype=self.sample_dtype)
        latents = mean + std * eps
        if self.shift_factor is not None:
            latents = latents - self.shift_factor
        latents_w, latents_l = (latents * self.scaling_factor).float().chunk(2)
        return EncodedPairs(
            latents_w=latents_w,
            latents_l=latents_l,
            prompt_embeds=batch["prompt_embeds"].to(self.device, torch.float32),
            pooled_prompt_embeds=batch["pooled_prompt_embeds"].to(self.device, torch.float32),
            time_ids_w=batch["time_ids_w"].to(self.device),
            time_ids_l=batch["time_ids_l"].to(self.device),
        )


@dataclass
class CachedPairData(IndexedLoaderMixin):
    """The cache's counterpart of ``data.PairData``: an index, a dataset, and a loader."""

    root: Path
    index: PairIndex
    dataset: CachedPairDataset
    collate = staticmethod(collate_cached)
    # The source table's `datasets` fingerprint, when known: resume checks compare it.
    fingerprint: str | None = None


def load_cached_pair_data(root: Path, cfg: RunConfig) -> CachedPairData:
    """Open a complete cache for training."""
    from safetensors.torch import load_file

    root = Path(root)
    if not (root / COMPLETE_FILE).is_file():
        raise MapoError(f"cache {root} is not complete; build it with `mapo-train cache --recipe ...`")
    done = _read_complete(root)
    meta = load_file(str(root / META_FILE))
    info = done["index"]
    index = PairIndex(
        rows=meta["rows"].numpy(),
        chosen=meta["chosen"].numpy().astype(np.int8),
        total=info["total"],
        ties=info["ties"],
        ties_dropped=info["ties_dropped"],
        invalid_labels=info["invalid_labels"],
    )
    return CachedPairData(root=root, index=index, dataset=CachedPairDataset(root, cfg, cfg.train.seed))


def prepare_cached_data(cfg: RunConfig, mixed_precision: str, progress: bool = True) -> CachedPairData:
    """The trainer's entry point for ``data.cache`` other than off: find the keyed cache, build
    what is missing (resumably, split across processes), and open it."""
    from accelerate import PartialState

    with PartialState().main_process_first():  # the first process converts parquet to Arrow once
        where = locate_cache(cfg, mixed_precision)
    if not where.complete:
        from mapo_train.data import PairBatchSampler

        # Fewer usable pairs than one batch: refused before the encoders load to build the cache.
        PairBatchSampler(
            len(where.index), cfg.train.batch_size, cfg.train.seed, 0, PartialState().num_processes
        )
        build_cache(cfg, progress=progress, mixed_precision=mixed_precision)
    data = load_cached_pair_data(where.root, cfg)
    data.fingerprint = getattr(where.table, "_fingerprint", None)
    return data


def cached_encoder(components, cfg: RunConfig, mixed_precision: str, device) -> CachedEncoder:
    """The encoder stand-in for a cache made with ``components``' VAE."""
    from mapo_train.model import vae_dtype

    vae_config = components.vae.config
    return CachedEncoder(
        device,
        vae_dtype(cfg.model, mixed_precision),
        float(vae_config.scaling_factor),
        getattr(vae_config, "shift_factor", None),
    )
