"""Each curation filter on constructed cases: keep, or drop with the right reason."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageFilter

from mapo_data.filters import (
    BlankFilter,
    Candidate,
    CaptionCapFilter,
    DuplicateImageFilter,
    FilterCounts,
    FilterPipeline,
    HashIndex,
    JudgeFilter,
    NearIdenticalFilter,
    SafetyFilter,
    TieFilter,
    ValidRowFilter,
    candidates_of,
    image_std,
)
from mapo_data.reader import PairRow
from tests.mapo_data.pairs_factory import black, encode, flat, gradient, noise


def cand(chosen: bytes, rejected: bytes, caption: str = "a cat", tie: bool = False, i: int = 0) -> Candidate:
    return Candidate(i, PairRow(caption=caption, chosen=chosen, rejected=rejected, chosen_pos=0, tie=tie))


def reason(f, c: Candidate):
    v = f.check(c)
    return None if v.keep else v.reason


A, B = encode(noise(1)), encode(noise(2))


def test_undecodable_bytes():
    f = ValidRowFilter()
    assert reason(f, cand(A, B)) is None
    assert reason(f, cand(b"\xff\xd8 not really a jpeg", B)) == "undecodable"
    assert reason(f, cand(A, b"")) == "undecodable"
    assert reason(f, cand(A, encode(noise(3))[:200])) == "undecodable"  # truncated JPEG


def test_blank_catches_black_and_flat_images():
    f = BlankFilter(min_std=4.0)
    assert image_std(black()) == 0.0
    assert reason(f, cand(encode(black()), B)) == "blank"  # fp16 VAE overflow
    assert reason(f, cand(A, encode(flat((200, 200, 190))))) == "blank"  # washed out
    assert reason(f, cand(encode(gradient(1)), A)) is None


def test_near_identical_pair():
    f = NearIdenticalFilter(max_distance=4)
    img = noise(7)
    assert reason(f, cand(encode(img), encode(img))) == "near_identical"
    # Same picture at another JPEG quality: still the same picture.
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=60)
    assert reason(f, cand(encode(img), buf.getvalue())) == "near_identical"
    assert reason(f, cand(A, B)) is None
    assert reason(NearIdenticalFilter(max_distance=64), cand(A, B)) == "near_identical"


def test_rows_verify_rejects_are_dropped_under_their_first_problem():
    # Written with pyarrow directly: nulls as read, images in the column the labels say.
    preset = {"chosen_prefix": "Pixel art.", "rejected_prefix": "Photo."}
    batch = pa.RecordBatch.from_pydict(
        {
            "caption": [
                "good",
                None,
                "null label",
                "1/1",
                "2/-1",
                "empty image",
                "swapped",
                "tie",
                "junk, no label",
            ],
            "jpg_0": [A, A, A, A, A, A, A, A, b"junk"],
            "jpg_1": [B, B, B, B, B, b"", B, B, B],
            "label_0": pa.array([0, 1, None, 1, 2, 1, 1, 0.5, None], pa.float64()),
            "label_1": pa.array([1, 0, 0, 1, -1, 0, 0, 0.5, 0], pa.float64()),
            "prompt_0": ["Photo. good", "Pixel art.", "x", "x", "x", "x", "Photo. swapped", "x", "x"],
            "prompt_1": ["Pixel art. good", "Photo.", "x", "x", "x", "x", "Pixel art. swapped", "x", "x"],
        }
    )
    f = ValidRowFilter(preset)
    assert [reason(f, c) for c in candidates_of(batch)] == [
        None,
        "null_caption",
        "invalid_labels",
        "invalid_labels",
        "invalid_labels",
        "undecodable",
        "labels_contradict_prompts",  # label 1 on jpg_0, whose prompt has the rejected prefix
        None,  # a tie has no chosen side to check against the prompts
        "undecodable",  # the first of its two problems, in the order verify lists them
    ]
    without_preset = [reason(ValidRowFilter(), c) for c in candidates_of(batch)]
    assert without_preset[6] is None  # no preset: nothing to check the prompts against


def test_ties_keep_or_drop():
    assert reason(TieFilter("drop"), cand(A, B, tie=True)) == "tie"
    assert reason(TieFilter("keep"), cand(A, B, tie=True)) is None
    assert reason(TieFilter("drop"), cand(A, B)) is None


def test_duplicate_image_across_pairs_same_pixels_other_bytes():
    pipe = FilterPipeline([ValidRowFilter(), DuplicateImageFilter("pixels")])
    counts = FilterCounts()
    decoded_a = Image.open(io.BytesIO(A)).convert("RGB")
    same_picture_as_png = encode(decoded_a, "PNG")
    assert same_picture_as_png != A
    kept = pipe.run(
        [
            cand(A, B, i=0),
            cand(same_picture_as_png, encode(noise(9)), "other", i=1),
            cand(encode(noise(10)), encode(noise(11)), i=2),
        ],
        counts,
    )
    assert [c.position for c in kept] == [0, 2]
    assert counts.dropped["duplicate_image"] == 1 and counts.kept == 2 and counts.seen == 3


def test_phash_dedup_catches_reencoded_copies():
    f = DuplicateImageFilter("phash")
    # phash describes low frequencies, so a smooth picture is the realistic case.
    picture = noise(20, size=64).filter(ImageFilter.GaussianBlur(3))
    first = cand(encode(picture), B)
    assert reason(f, first) is None
    f.on_keep(first)
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=70)
    assert reason(f, cand(buf.getvalue(), encode(noise(21)))) == "duplicate_image"
    assert reason(f, cand(encode(picture.resize((48, 48))), encode(noise(21)))) == "duplicate_image"
    other = noise(22, size=64).filter(ImageFilter.GaussianBlur(3))
    assert reason(f, cand(encode(other), encode(noise(21)))) is None
    assert reason(DuplicateImageFilter("pixels"), cand(buf.getvalue(), encode(noise(21)))) is None


def test_caption_cap_normalises_and_remembers_only_kept_pairs():
    pipe = FilterPipeline([DuplicateImageFilter("pixels"), CaptionCapFilter(max_per_caption=1)])
    counts = FilterCounts()
    c1 = cand(A, B, "A  cat ", i=0)
    c2 = cand(encode(noise(30)), encode(noise(31)), "a cat", i=1)  # same caption, normalised
    c3 = cand(encode(noise(30)), encode(noise(32)), "a dog", i=2)  # c2 was dropped: its image is not "seen"
    kept = pipe.run([c1, c2, c3], counts)
    assert [c.position for c in kept] == [0, 2]
    assert dict(counts.dropped) == {"caption_cap": 1}


def test_stateful_filters_export_and_import_state_for_resume():
    first = FilterPipeline([DuplicateImageFilter("pixels"), CaptionCapFilter(1)])
    first.run([cand(A, B, "a cat")], FilterCounts())
    state = first.export_state()
    assert first.export_state() == {"duplicate_image": [], "caption_cap": {}}  # exports are deltas
    resumed = FilterPipeline([DuplicateImageFilter("pixels"), CaptionCapFilter(1)])
    resumed.import_state(state)
    counts = FilterCounts()
    resumed.run(
        [cand(encode(noise(40)), encode(noise(41)), "A CAT"), cand(A, encode(noise(42)), "x")], counts
    )
    assert dict(counts.dropped) == {"caption_cap": 1, "duplicate_image": 1}


def test_hash_index_finds_every_hash_within_the_distance():
    rng = np.random.default_rng(0)
    stored = [int(x) for x in rng.integers(0, 2**63, 200, dtype=np.int64)]
    index = HashIndex(max_distance=4)
    for h in stored:
        index.add(h)
    for h in stored[:50]:
        flipped = h
        for bit in rng.choice(64, 4, replace=False):
            flipped ^= 1 << int(bit)
        assert index.near(flipped)
        far = h ^ ((1 << 9) - 1) ^ (((1 << 9) - 1) << 40)  # 18 bits away from h
        assert (far ^ h).bit_count() == 18
        assert not index.near(far) or any((s ^ far).bit_count() <= 4 for s in stored)


def test_pipeline_refuses_stateless_filter_after_stateful():
    with pytest.raises(ValueError):
        FilterPipeline([CaptionCapFilter(2), BlankFilter()])


@pytest.fixture(scope="module")
def tiny_clip_judge():
    from mapo_data.judges import load_judge

    return load_judge("clip:tiny", preferred="pixel art style image", dispreferred="realistic photograph")


def test_judge_drops_pairs_it_disagrees_with(tiny_clip_judge):
    # Score what the filter will see: the images after a JPEG round trip.
    data = [encode(noise(50)), encode(gradient(3))]
    images = [Image.open(io.BytesIO(d)).convert("RGB") for d in data]
    probs = tiny_clip_judge.score(images, ["x", "x"])["clip_pref_prob"]
    assert probs[0] != probs[1]
    high, low = (data[0], data[1]) if probs[0] > probs[1] else (data[1], data[0])
    agree = cand(high, low, i=0)
    disagree = cand(low, high, i=1)
    tie = cand(low, high, tie=True, i=2)
    f = JudgeFilter(tiny_clip_judge, "clip:tiny", margin=0.0)
    verdicts = f.check_batch([agree, disagree, tie])
    assert [v.reason for v in verdicts] == [None, "judge_disagrees", None]
    # Scores are kept for re-thresholding, computed on the decoded (JPEG) images.
    assert 0 <= disagree.scores["judge_chosen_pref_prob"] < disagree.scores["judge_rejected_pref_prob"] <= 1
    # A margin wider than the disagreement keeps the pair.
    gap = disagree.scores["judge_rejected_pref_prob"] - disagree.scores["judge_chosen_pref_prob"]
    wide = JudgeFilter(tiny_clip_judge, "clip:tiny", margin=gap + 1e-6)
    assert wide.check_batch([cand(low, high)])[0].keep
    assert f.settings()["preferred"] == "pixel art style image"


def test_safety_filter_drops_pairs_whose_chosen_image_is_flagged():
    """The drop path, with a stand-in detector (no test image should be explicit)."""

    class Flags:
        def score(self, images, prompts):
            # Flags the first image only; only chosen images are scored.
            return {"nudenet_unsafe": np.array([1.0, 0.0]), "nudenet_score": np.array([0.9, 0.1])}

    f = SafetyFilter(Flags(), "nudenet")
    unsafe, safe = cand(A, B, i=0), cand(B, A, i=1)
    assert [v.reason for v in f.check_batch([unsafe, safe])] == ["unsafe_chosen", None]
    assert unsafe.scores == {"safety_chosen_unsafe": 1, "safety_chosen_score": 0.9}
    assert safe.scores["safety_chosen_unsafe"] == 0


def test_safety_filter_with_nudenet_keeps_safe_chosen_images():
    pytest.importorskip("nudenet")
    from mapo_data.judges import load_judge

    f = SafetyFilter(load_judge("nudenet"), "nudenet")
    c = cand(encode(gradient(1, size=64)), encode(noise(60, size=64)))
    assert f.check_batch([c])[0].keep
    assert c.scores["safety_chosen_unsafe"] == 0 and np.isfinite(c.scores["safety_chosen_score"])
