"""Curation filters: each looks at a pair and says keep, or drop with a reason.

Reasons are counted and reported (``dropped_<reason>``), so a curated dataset says exactly what
was removed and why. Filters run in a fixed order inside a :class:`FilterPipeline`:

1. per-pair filters without memory (the row rule verify applies, ties, blank, near-identical);
2. batched filters (judges), which score many images per model call;
3. filters with memory across pairs (duplicate images, caption cap), one pair at a time, which only
   remember pairs that were finally kept.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pyarrow as pa

from mapo_data.errors import MapoError
from mapo_data.reader import ROW_PROBLEM_REASONS, PairRow, decode_image, row_problems, rows_of
from mapo_data.schema import CAPTION, IMAGE_COLUMNS, LABEL_COLUMNS, PROMPT_COLUMNS, PROMPT_ID

if TYPE_CHECKING:
    from PIL import Image

SIDES = ("chosen", "rejected")


class Undecodable(Exception):
    """An image of the pair could not be decoded."""


@dataclass
class Candidate:
    """A pair going through the filters; decoded images and hashes are computed once and shared."""

    position: int  # row index in its record batch
    row: PairRow
    scores: dict[str, Any] = field(default_factory=dict)  # extra output columns set by filters
    #: The row's caption, labels and prompts exactly as read (nulls kept), for the row rule.
    fields: dict[str, Any] = field(default_factory=dict)
    #: Pairs that share images on purpose (``build judged`` pairs N candidates of one prompt and
    #: writes the prompt's ``prompt_id``); None when the data has no such column.
    group: Any = None
    _images: dict[str, Any] = field(default_factory=dict, repr=False)
    _phash: dict[str, Any] = field(default_factory=dict, repr=False)

    def data(self, side: str) -> bytes | None:
        return self.row.chosen if side == "chosen" else self.row.rejected

    def image(self, side: str) -> Image.Image:
        """The decoded RGB image; raises :class:`Undecodable`."""
        if side not in self._images:
            try:
                self._images[side] = decode_image(self.data(side))
            except Exception as err:  # PIL raises many types for bad bytes
                self._images[side] = Undecodable(f"{side}: {err}")
        found = self._images[side]
        if isinstance(found, Undecodable):
            raise found
        return found

    def phash(self, side: str):
        import imagehash

        if side not in self._phash:
            self._phash[side] = imagehash.phash(self.image(side))
        return self._phash[side]

    def as_read(self) -> dict[str, Any]:
        """The row's pair-format columns as read: ``fields`` plus both images in their own columns."""
        pos = self.row.chosen_pos
        return {**self.fields, IMAGE_COLUMNS[pos]: self.row.chosen, IMAGE_COLUMNS[1 - pos]: self.row.rejected}

    def side_of(self, column: str) -> str:
        """``chosen`` or ``rejected``: the side of image column ``jpg_0``/``jpg_1``."""
        return "chosen" if column == IMAGE_COLUMNS[self.row.chosen_pos] else "rejected"

    def pixel_key(self, side: str) -> str:
        """Hash of the decoded pixels: the same picture re-encoded with other metadata still matches."""
        img = self.image(side)
        digest = hashlib.blake2b(f"{img.size}".encode(), digest_size=16)
        digest.update(img.tobytes())
        return digest.hexdigest()


@dataclass(frozen=True)
class Verdict:
    keep: bool
    reason: str | None = None


KEEP = Verdict(True)


def drop(reason: str) -> Verdict:
    return Verdict(False, reason)


class PairFilter:
    """Base class. Override :meth:`check` (one pair) or, for batched filters, :meth:`check_batch`."""

    name: ClassVar[str]
    #: The reasons this filter drops with (for the report, even when a count is 0).
    reasons: ClassVar[tuple[str, ...]]
    #: Remembers kept pairs (runs after the batched filters, one pair at a time).
    stateful: ClassVar[bool] = False
    #: Scores many pairs per call (judges); the pipeline hands it all surviving pairs of a batch.
    batched: ClassVar[bool] = False

    def settings(self) -> dict[str, Any]:
        """Thresholds and options, recorded in the report and compared when resuming."""
        return {}

    def columns(self) -> dict[str, pa.DataType]:
        """Extra output columns this filter fills in ``Candidate.scores``."""
        return {}

    def check(self, pair: Candidate) -> Verdict:
        raise NotImplementedError

    def check_batch(self, pairs: Sequence[Candidate]) -> list[Verdict]:
        return [self.check(p) for p in pairs]

    # Stateful filters: remember a kept pair; export/import what was remembered, for resuming.
    def on_keep(self, pair: Candidate) -> None:
        pass

    def export_state(self) -> Any:
        """What was remembered since the last export (JSON-serialisable)."""
        return None

    def import_state(self, state: Any) -> None:
        pass


def candidates_of(batch: pa.RecordBatch) -> list[Candidate]:
    """The pairs of a record batch as filter candidates, with the fields the row rule reads."""
    names = [c for c in (CAPTION, *LABEL_COLUMNS, *PROMPT_COLUMNS) if c in batch.schema.names]
    columns = {name: batch.column(name).to_pylist() for name in names}
    groups = batch.column(PROMPT_ID).to_pylist() if PROMPT_ID in batch.schema.names else None
    return [
        Candidate(
            i,
            row,
            fields={name: values[i] for name, values in columns.items()},
            group=groups[i] if groups is not None else None,
        )
        for i, row in enumerate(rows_of(batch))
    ]


class ValidRowFilter(PairFilter):
    """Rows that are not a usable pair: a null caption, an image that does not decode, labels that
    are not a preference (null, NaN, 1/1, out of range), labels that contradict the full prompts.

    The rule is ``verify``'s own (:func:`mapo_data.reader.row_problems`), so whatever verify would
    reject never reaches the output; the row is dropped under its first problem. Without this a 1/1
    pair would pass as a tie, and a null caption would stop a trainer mid-epoch.
    Images decode through the candidate, once, for every later filter too.
    """

    name = "valid_row"
    reasons = ROW_PROBLEM_REASONS

    def __init__(self, preset: dict[str, Any] | None = None):
        #: The input manifest's preset: with it, labels are checked against the full prompts.
        self.preset = preset

    def check(self, pair):
        def decode(column: str, _data: Any) -> Any:
            return pair.image(pair.side_of(column))

        problems = row_problems(pair.as_read(), self.preset, decode=decode)
        return drop(problems[0].reason) if problems else KEEP


class TieFilter(PairFilter):
    """Ties (labels 0.5/0.5) say nothing about which image is better; keep or drop by policy."""

    name = "ties"
    reasons = ("tie",)

    def __init__(self, policy: str = "drop"):
        if policy not in ("keep", "drop"):
            raise MapoError(f"--ties must be keep or drop, not {policy!r}")
        self.policy = policy

    def settings(self):
        return {"policy": self.policy}

    def check(self, pair):
        return drop("tie") if pair.row.tie and self.policy == "drop" else KEEP


def image_std(img: Image.Image, thumb: int = 64) -> float:
    """Standard deviation of the grey levels of a thumbnail (0-255); cheap and size-independent."""
    small = img.convert("L")
    small.thumbnail((thumb, thumb))
    return float(np.asarray(small, dtype=np.float32).std())


class BlankFilter(PairFilter):
    """Blank or near-constant images: the black frames of an fp16 VAE overflow, washed-out failures."""

    name = "blank"
    reasons = ("blank",)

    def __init__(self, min_std: float = 4.0):
        self.min_std = float(min_std)

    def settings(self):
        return {"min_std": self.min_std}

    def check(self, pair):
        if any(image_std(pair.image(side)) < self.min_std for side in SIDES):
            return drop("blank")
        return KEEP


class NearIdenticalFilter(PairFilter):
    """Chosen and rejected look the same: the prefix had no effect, so the pair teaches nothing."""

    name = "near_identical"
    reasons = ("near_identical",)

    def __init__(self, max_distance: int = 4):
        self.max_distance = int(max_distance)

    def settings(self):
        return {"max_phash_distance": self.max_distance}

    def check(self, pair):
        distance = pair.phash("chosen") - pair.phash("rejected")
        return drop("near_identical") if distance <= self.max_distance else KEEP


class HashIndex:
    """64-bit hashes searchable by Hamming distance <= d without comparing against every hash.

    Multi-index hashing: split each hash into d + 1 chunks; by pigeonhole, two hashes within
    distance d agree exactly on at least one chunk, so only hashes sharing a chunk are compared.
    """

    def __init__(self, max_distance: int):
        self.max_distance = max_distance
        chunks = max_distance + 1
        widths = [64 // chunks + (1 if i < 64 % chunks else 0) for i in range(chunks)]
        self._chunks = []
        shift = 0
        for width in widths:
            self._chunks.append((shift, (1 << width) - 1))
            shift += width
        self._buckets: dict[tuple[int, int], list[int]] = {}

    def _keys(self, h: int):
        return [(i, (h >> shift) & mask) for i, (shift, mask) in enumerate(self._chunks)]

    def add(self, h: int) -> None:
        for key in self._keys(h):
            self._buckets.setdefault(key, []).append(h)

    def near(self, h: int) -> bool:
        for key in self._keys(h):
            for other in self._buckets.get(key, ()):
                if (other ^ h).bit_count() <= self.max_distance:
                    return True
        return False


class DuplicateImageFilter(PairFilter):
    """An image already seen in a kept pair: duplicates over-weight one example.

    ``pixels`` matches identical decoded pixels (safe: never a false positive); ``phash`` matches
    perceptual hashes within ``max_distance`` bits, which also catches re-encoded or resized copies.
    Pairs of one group (the same ``prompt_id`` of a judged build, whose ``adjacent`` and ``all``
    pairings reuse each candidate on purpose) may share their own images; an image seen in another
    group is still a duplicate.
    """

    name = "duplicate_image"
    reasons = ("duplicate_image",)
    stateful = True

    def __init__(self, mode: str = "pixels", max_distance: int = 4):
        if mode not in ("pixels", "phash"):
            raise MapoError(f"--dedup must be pixels, phash or off, not {mode!r}")
        self.mode = mode
        self.max_distance = int(max_distance)
        self.seen: set[str] = set()
        self.group_of: dict[str, Any] = {}  # key -> the group of the kept pair that brought it
        self.index = HashIndex(self.max_distance)
        self._new: list[list[Any]] = []

    def settings(self):
        return {
            "mode": self.mode,
            **({"max_phash_distance": self.max_distance} if self.mode == "phash" else {}),
        }

    def _keys(self, pair: Candidate) -> list[str]:
        if self.mode == "pixels":
            return [pair.pixel_key(side) for side in SIDES]
        return [str(pair.phash(side)) for side in SIDES]

    def _seen(self, key: str) -> bool:
        return self.index.near(int(key, 16)) if self.mode == "phash" else key in self.seen

    def _remember(self, key: str, group: Any = None) -> None:
        if key in self.seen:
            return
        self.seen.add(key)
        self.group_of[key] = group
        if self.mode == "phash":
            self.index.add(int(key, 16))

    def _duplicate(self, key: str, group: Any) -> bool:
        if group is not None and key in self.seen and self.group_of.get(key) == group:
            return False  # this very image, reused by another pair of its own group
        return self._seen(key)

    def check(self, pair):
        duplicate = any(self._duplicate(k, pair.group) for k in self._keys(pair))
        return drop("duplicate_image") if duplicate else KEEP

    def on_keep(self, pair):
        for key in self._keys(pair):
            if key not in self.seen:
                self._new.append([key, pair.group])
            self._remember(key, pair.group)

    def export_state(self):
        new, self._new = self._new, []
        return new

    def import_state(self, state):
        for entry in state or []:
            # Older state lists keys alone (no groups).
            key, group = (entry, None) if isinstance(entry, str) else entry
            self._remember(key, group)


def normalise_caption(caption: str) -> str:
    """Case- and whitespace-insensitive form, so "A cat " and "a  cat" count as one caption."""
    return re.sub(r"\s+", " ", caption).strip().casefold()


class CaptionCapFilter(PairFilter):
    """At most N kept pairs per caption (Pick-a-Pic repeats prompts many times)."""

    name = "caption_cap"
    reasons = ("caption_cap",)
    stateful = True

    def __init__(self, max_per_caption: int = 4):
        if max_per_caption < 1:
            raise MapoError("--max-per-caption must be at least 1 (use 0 on the command line to turn it off)")
        self.max_per_caption = int(max_per_caption)
        self.counts: Counter[str] = Counter()
        self._new: Counter[str] = Counter()

    def settings(self):
        return {"max_per_caption": self.max_per_caption}

    def check(self, pair):
        key = normalise_caption(pair.row.caption)
        return drop("caption_cap") if self.counts[key] >= self.max_per_caption else KEEP

    def on_keep(self, pair):
        key = normalise_caption(pair.row.caption)
        self.counts[key] += 1
        self._new[key] += 1

    def export_state(self):
        new, self._new = dict(self._new), Counter()
        return new

    def import_state(self, state):
        self.counts.update(state or {})


class JudgeFilter(PairFilter):
    """A CLIP style judge scores both images against the preferred and dispreferred descriptions.

    The chosen image should look more like the preferred side than the rejected one does; a pair
    where ``P(preferred | rejected) - P(preferred | chosen)`` exceeds the margin is dropped. Both
    probabilities go into the output, so users can re-threshold without re-scoring. Ties are scored
    but never dropped by the judge (there is no label to disagree with).
    """

    name = "judge"
    reasons = ("judge_disagrees",)
    batched = True

    def __init__(self, judge: Any, spec: str, margin: float = 0.0):
        self.judge = judge
        self.spec = spec
        self.margin = float(margin)

    def settings(self):
        return {"spec": self.spec, "margin": self.margin, **_judge_settings(self.judge)}

    def columns(self):
        return {"judge_chosen_pref_prob": pa.float64(), "judge_rejected_pref_prob": pa.float64()}

    def check_batch(self, pairs):
        if not pairs:
            return []
        images = [p.image(side) for p in pairs for side in SIDES]
        prompts = [p.row.caption for p in pairs for _ in SIDES]
        probs = np.asarray(self.judge.score(images, prompts)["clip_pref_prob"], dtype=np.float64)
        verdicts = []
        for k, pair in enumerate(pairs):
            chosen, rejected = float(probs[2 * k]), float(probs[2 * k + 1])
            pair.scores["judge_chosen_pref_prob"] = chosen
            pair.scores["judge_rejected_pref_prob"] = rejected
            disagrees = not pair.row.tie and rejected - chosen > self.margin
            verdicts.append(drop("judge_disagrees") if disagrees else KEEP)
        return verdicts


class SafetyFilter(PairFilter):
    """pick-safety: the chosen image must itself be safe, or the pair teaches the wrong lesson."""

    name = "safety"
    reasons = ("unsafe_chosen",)
    batched = True

    def __init__(self, judge: Any, spec: str):
        self.judge = judge
        self.spec = spec

    def settings(self):
        return {"spec": self.spec, **_judge_settings(self.judge)}

    def columns(self):
        return {"safety_chosen_unsafe": pa.int64(), "safety_chosen_score": pa.float64()}

    def check_batch(self, pairs):
        if not pairs:
            return []
        scores = self.judge.score([p.image("chosen") for p in pairs], [p.row.caption for p in pairs])
        unsafe = np.asarray(scores["nudenet_unsafe"])
        score = np.asarray(scores["nudenet_score"], dtype=np.float64)
        verdicts = []
        for k, pair in enumerate(pairs):
            flagged = bool(unsafe[k] >= 0.5)
            pair.scores["safety_chosen_unsafe"] = int(flagged)
            pair.scores["safety_chosen_score"] = float(score[k])
            verdicts.append(drop("unsafe_chosen") if flagged else KEEP)
        return verdicts


def _judge_settings(judge: Any) -> dict[str, Any]:
    settings = getattr(judge, "settings", None)
    return dict(settings()) if callable(settings) else {}


@dataclass
class FilterCounts:
    """What the pipeline saw: pairs in, pairs kept, drops per reason, ties seen."""

    seen: int = 0
    kept: int = 0
    ties: int = 0
    dropped: Counter[str] = field(default_factory=Counter)

    def add(self, other: dict[str, Any]) -> None:
        self.seen += other["seen"]
        self.kept += other["kept"]
        self.ties += other["ties"]
        self.dropped.update(other["dropped"])

    def to_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "kept": self.kept, "ties": self.ties, "dropped": dict(self.dropped)}


class FilterPipeline:
    """Runs filters in order over batches of candidates and counts the reasons."""

    def __init__(self, filters: Sequence[PairFilter]):
        self.filters = list(filters)
        seen_stateful = False
        for f in self.filters:
            if f.stateful:
                seen_stateful = True
            elif seen_stateful:
                # Stateful filters must only remember pairs that every other filter kept.
                raise ValueError(f"filter {f.name} must come before the stateful filters")

    def columns(self) -> dict[str, pa.DataType]:
        cols: dict[str, pa.DataType] = {}
        for f in self.filters:
            cols.update(f.columns())
        return cols

    def reasons(self) -> list[str]:
        return [r for f in self.filters for r in f.reasons]

    def settings(self) -> dict[str, Any]:
        return {f.name: f.settings() for f in self.filters}

    def run(self, candidates: list[Candidate], counts: FilterCounts) -> list[Candidate]:
        counts.seen += len(candidates)
        counts.ties += sum(c.row.tie for c in candidates)
        alive = list(candidates)
        for f in (f for f in self.filters if not f.stateful):
            verdicts = f.check_batch(alive)
            survivors = []
            for cand, verdict in zip(alive, verdicts, strict=True):
                if verdict.keep:
                    survivors.append(cand)
                else:
                    counts.dropped[verdict.reason or f.name] += 1
            alive = survivors
        stateful = [f for f in self.filters if f.stateful]
        kept = []
        for cand in alive:
            verdict = KEEP
            for f in stateful:
                verdict = f.check(cand)
                if not verdict.keep:
                    break
            if verdict.keep:
                for f in stateful:
                    f.on_keep(cand)
                kept.append(cand)
            else:
                counts.dropped[verdict.reason or "dropped"] += 1
        counts.kept += len(kept)
        return kept

    def export_state(self) -> dict[str, Any]:
        return {f.name: f.export_state() for f in self.filters if f.stateful}

    def import_state(self, state: dict[str, Any]) -> None:
        for f in self.filters:
            if f.stateful and f.name in state:
                f.import_state(state[f.name])
