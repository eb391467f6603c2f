"""The hostile-input corpus through every trainer reader: the indexed PairDataset, the streamed
StreamingPairs, the latent-cache builder, and mapo-train's command line.

Image cases (tests/hostile/images.py): the pixels that reach training are the displayed picture
(transparency over white, 16-bit by range, EXIF orientation applied), centre-cropped to the
resolution; an undecodable pair is skipped, counted, and the next pair stands in. Schema cases
(tests/hostile/schema.py): a one-line error naming the file before `datasets` sees it.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mapo_data.errors import MapoError
from mapo_train import cli
from mapo_train.config import DataConfig, config_from_dict
from mapo_train.data import load_pair_data
from mapo_train.stream import load_stream_data, open_stream
from tests.hostile.images import exif_jpeg, image_cases, noise_rgb, save, write_image_corpus
from tests.hostile.schema import SCHEMA_CASES, write_good

from ..tolerances import torch_kwargs

RES = 32
QUICKSTART = Path(__file__).resolve().parents[2] / "recipes" / "train" / "quickstart-tiny.yaml"
CASES = image_cases()
DECODABLE = [i for i, c in enumerate(CASES) if c.decodable]
UNDECODABLE = [i for i, c in enumerate(CASES) if not c.decodable]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_image_corpus(tmp_path_factory.mktemp("hostile") / "corpus.parquet", CASES)


def data_cfg(path, **kw) -> DataConfig:
    kw = {"resolution": RES, "random_flip": False, "random_crop": False, "num_workers": 0, **kw}
    return DataConfig(path=str(path), **kw)


def centre_crop(pixels: np.ndarray, res: int = RES) -> tuple[np.ndarray, tuple[int, ...]]:
    """The crop training takes of a picture whose shorter side is already ``res``, and its
    micro-conditioning (original height, width, crop top, left, target height, width)."""
    height, width = pixels.shape[:2]
    top, left = (height - res) // 2, (width - res) // 2
    return pixels[top : top + res, left : left + res], (height, width, top, left, res, res)


def as_training_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> [3, H, W] in [-1, 1], the VAE's input range."""
    return torch.from_numpy(pixels.astype(np.float32)).permute(2, 0, 1).div(127.5).sub(1.0)


def assert_training_pixels(item_pixels: torch.Tensor, item_ids: torch.Tensor, case) -> None:
    crop, ids = centre_crop(case.expected)
    # Lossless cases must match exactly; JPEG cases within their lossy tolerance (in [-1, 1] units).
    tol = {"rel": 0.0, "abs": case.atol / 127.5 + 1e-6} if case.atol else {"rel": 0.0, "abs": 0.0}
    torch.testing.assert_close(item_pixels, as_training_tensor(crop), **torch_kwargs(tol), msg=case.name)
    assert tuple(int(v) for v in item_ids) == ids, case.name


def next_decodable(position: int) -> tuple[int, int]:
    """Which position stands in for ``position`` in an indexed dataset, and how many were skipped."""
    skipped = 0
    while not CASES[position].decodable:
        position, skipped = (position + 1) % len(CASES), skipped + 1
    return position, skipped


def test_indexed_trainer_receives_the_decoded_pixels(corpus):
    data = load_pair_data(data_cfg(corpus), seed=0)
    assert len(data.index) == len(CASES)
    for position in range(len(CASES)):
        item = data.dataset[(0, position)]
        shown, skipped = next_decodable(position)
        assert item["bad"] == skipped, CASES[position].name
        assert item["caption"] == CASES[shown].name
        assert_training_pixels(item["pixels_w"], item["time_ids_w"], CASES[shown])


def test_streamed_trainer_receives_the_decoded_pixels(corpus):
    stream = load_stream_data(data_cfg(corpus, streaming=True, shuffle_buffer=0), seed=0, rank=0, world=1)
    batches = iter(stream.loader(batch_size=1, seed=0, rank=0, world=1, start_step=0, num_workers=0))
    for i in DECODABLE:
        batch = next(batches)
        assert batch["captions"] == [CASES[i].name] and batch["bad"] == 0
        assert_training_pixels(batch["pixels_w"][0], batch["time_ids_w"][0], CASES[i])
    # The undecodable pairs close the pass; they are counted with the next pass's first pair.
    batch = next(batches)
    assert batch["captions"] == [CASES[0].name] and batch["bad"] == len(UNDECODABLE)


def test_cache_builder_encodes_the_decoded_pixels(corpus, tmp_path, tiny_model_path):
    from mapo_train.cache import _EncodeInputs, build_cache, load_cached_pair_data, locate_cache

    cfg = config_from_dict(
        {
            "model": {"pretrained": "tiny"},
            "data": {
                "path": str(corpus),
                "resolution": RES,
                "num_workers": 0,
                "random_flip": False,
                "cache": str(tmp_path / "cache"),
            },
            "train": {"output_dir": str(tmp_path / "run"), "mixed_precision": "no", "report_to": "none"},
            "validation": {"enabled": False},
        },
        [],
    )
    # What the builder hands the VAE: the decoded, cropped pixels of each pair, or "not ok".
    where = locate_cache(cfg, "no")
    inputs = _EncodeInputs(where.table, where.index, cfg)
    for position, case in enumerate(CASES):
        item = inputs[position]
        assert item["ok"] == case.decodable, case.name
        if case.decodable:
            assert_training_pixels(item["pixels"][0], item["time_ids"][0, 0], case)
    result = build_cache(cfg, progress=False, mixed_precision="no", say=lambda _: None)
    assert (result.num_pairs, result.bad_pairs) == (len(CASES), len(UNDECODABLE))
    cached = load_cached_pair_data(result.root, cfg)
    for position in range(len(CASES)):
        shown, skipped = next_decodable(position)
        item = cached.dataset[(0, position)]
        assert item["bad"] == skipped, CASES[position].name


# --- the headline cases of issue 9, one by one ----------------------------------------------------


def _one_pair(path, chosen: bytes, rejected_size: tuple[int, int]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rejected = save(Image.fromarray(noise_rgb(9, *rejected_size)))
    table = pa.table(
        {"caption": ["x"], "jpg_0": [chosen], "jpg_1": [rejected], "label_0": [1], "label_1": [0]}
    )
    pq.write_table(table, path)
    return path


def test_exif_rotated_jpeg_trains_upright_with_its_displayed_size(tmp_path):
    """A 96x64 JPEG with EXIF Orientation 6 is shown 64 wide, 96 tall: training sees it upright and
    its micro-conditioning says original size (height 96, width 64)."""
    data, shown = exif_jpeg(6, 96, 64)
    assert Image.open(io.BytesIO(data)).size == (96, 64) and shown.shape == (96, 64, 3)
    path = _one_pair(tmp_path / "p.parquet", data, (64, 96))
    item = load_pair_data(data_cfg(path, resolution=64), seed=0).dataset[(0, 0)]
    assert item["time_ids_w"].tolist() == [96, 64, 16, 0, 64, 64]
    torch.testing.assert_close(item["pixels_w"], as_training_tensor(shown[16:80]), rtol=0, atol=0)


def test_sixteen_bit_ramp_trains_as_a_ramp(tmp_path):
    """A 16-bit greyscale ramp 0...65535 reaches training as a ramp, not 98% white."""
    ramp = np.tile(np.rint(np.linspace(0, 65535, RES)).astype(np.uint16), (RES, 1))
    path = _one_pair(tmp_path / "p.parquet", save(Image.fromarray(ramp)), (RES, RES))
    pixels = load_pair_data(data_cfg(path), seed=0).dataset[(0, 0)]["pixels_w"]
    expected = torch.from_numpy((ramp >> 8).astype(np.float32)).div(127.5).sub(1.0)
    for channel in pixels:
        torch.testing.assert_close(channel, expected, rtol=0, atol=0)
    assert float((pixels == 1.0).float().mean()) == 1 / RES  # only the last column is white


def test_transparent_png_trains_on_white(tmp_path):
    """Random colours under fully transparent pixels and an opaque red square: training sees a red
    square on white."""
    rgba = np.concatenate([noise_rgb(5), np.zeros((RES, RES, 1), np.uint8)], axis=2)
    rgba[8:24, 8:24] = (255, 0, 0, 255)
    path = _one_pair(tmp_path / "p.parquet", save(Image.fromarray(rgba, "RGBA")), (RES, RES))
    pixels = load_pair_data(data_cfg(path), seed=0).dataset[(0, 0)]["pixels_w"]
    expected = torch.ones(3, RES, RES)
    expected[1:, 8:24, 8:24] = -1.0  # red: green and blue at 0
    torch.testing.assert_close(pixels, expected, rtol=0, atol=0)


@pytest.mark.parametrize("streaming", [False, True], ids=["indexed", "streamed"])
def test_datasets_image_columns_reach_training_through_the_one_decode(tmp_path, streaming):
    """A parquet written by `datasets` with Image features (struct of bytes and path, with the
    features in its metadata): `datasets` would hand over PIL images decoded by its own rules;
    training must get the bytes and decode them like every other reader (here: EXIF applied)."""
    import json

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, shown = exif_jpeg(6, 48, 32)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rejected = save(Image.fromarray(noise_rgb(4, 32, 48)))
    features = datasets.Features(
        {
            "caption": datasets.Value("string"),
            "jpg_0": datasets.Image(),
            "jpg_1": datasets.Image(),
            "label_0": datasets.Value("int64"),
            "label_1": datasets.Value("int64"),
        }
    )
    table = pa.table(
        {
            "caption": ["x"],
            "jpg_0": pa.array([{"bytes": data, "path": None}], struct),
            "jpg_1": pa.array([{"bytes": rejected, "path": "r.png"}], struct),
            "label_0": [1],
            "label_1": [0],
        }
    ).replace_schema_metadata(
        {b"huggingface": json.dumps({"info": {"features": features.to_dict()}}).encode()}
    )
    path = tmp_path / "images.parquet"
    pq.write_table(table, path)
    cfg = data_cfg(path, streaming=streaming, shuffle_buffer=0, cache_dir=str(tmp_path / "hf"))
    if streaming:
        stream = load_stream_data(cfg, seed=0, rank=0, world=1)
        item = next(iter(stream.loader(batch_size=1, seed=0, rank=0, world=1, start_step=0, num_workers=0)))
        pixels, ids = item["pixels_w"][0], item["time_ids_w"][0]
    else:
        item = load_pair_data(cfg, seed=0).dataset[(0, 0)]
        pixels, ids = item["pixels_w"], item["time_ids_w"]
    assert item["bad"] == 0
    assert ids.tolist() == [48, 32, 8, 0, 32, 32]
    torch.testing.assert_close(pixels, as_training_tensor(shown[8:40]), rtol=0, atol=0)


# --- schema faults --------------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["indexed", "streamed"])
def test_files_whose_pair_columns_differ_in_type_read_as_one(tmp_path, streaming):
    """Our int64-label shard beside a Pick-a-Pic-style float64 shard with a 0.5/0.5 tie: `datasets`
    alone reads the second as int64 and fails ("An error occurred while generating the dataset")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.hostile.schema import good_columns

    folder = tmp_path / "pairs"
    write_good(folder / "a.parquet")  # labels int64 1/0, captions string
    cols = good_columns(seed=1)
    cols["caption"] = pa.array([f"pick {i}" for i in range(4)], pa.large_string())
    cols["label_0"] = pa.array([0.5, 0.0, 0.7, 1.0], pa.float64())
    cols["label_1"] = pa.array([0.5, 1.0, 0.3, 0.0], pa.float64())
    pq.write_table(pa.table(cols), folder / "b.parquet")
    cfg = data_cfg(folder, streaming=streaming, shuffle_buffer=0, cache_dir=str(tmp_path / "hf"))
    expected = [(1.0, 0.0)] * 4 + [(0.5, 0.5), (0.0, 1.0), (0.7, 0.3), (1.0, 0.0)]
    if streaming:
        rows = list(open_stream(cfg, seed=0))
    else:
        table = load_pair_data(cfg, seed=0).table
        rows = [table[i] for i in range(len(table))]
    assert [(r["label_0"], r["label_1"]) for r in rows] == expected
    assert [r["caption"] for r in rows][4:] == [f"pick {i}" for i in range(4)]

    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cols["jpg_0"] = pa.array([{"bytes": b, "path": None} for b in cols["jpg_0"].to_pylist()], struct)
    pq.write_table(pa.table(cols), folder / "b.parquet")
    with pytest.raises(MapoError, match=r"b\.parquet stores jpg_0 as struct<.*> but .*a\.parquet as binary"):
        open_stream(cfg, seed=0) if streaming else load_pair_data(cfg, seed=0)


@pytest.mark.parametrize("streaming", [False, True], ids=["indexed", "streamed"])
@pytest.mark.parametrize("beside_good", [False, True], ids=["alone", "beside-a-good-shard"])
@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[c.name for c in SCHEMA_CASES])
def test_schema_faults_name_the_file_before_datasets_reads_it(case, beside_good, streaming, tmp_path):
    folder = tmp_path / "pairs"
    bad = folder / f"{case.name}.parquet"
    case.write(bad)
    if beside_good:
        write_good(folder / "a-good.parquet")
    cfg = data_cfg(folder if beside_good else bad, streaming=streaming, cache_dir=str(tmp_path / "hf"))
    with pytest.raises(MapoError) as err:
        if streaming:
            open_stream(cfg, seed=0)
        else:
            load_pair_data(cfg, seed=0)
    message = str(err.value)
    assert "\n" not in message and str(bad) in message and case.fragment in message, message
    assert not (tmp_path / "hf").exists() or not any((tmp_path / "hf").rglob("*.arrow"))


@pytest.mark.parametrize("case", ["duplicate_caption", "empty_file"])
def test_mapo_train_says_which_file_and_why_in_one_line(case, tmp_path, capsys):
    """The two inputs of issue 9: a parquet with two caption columns, and a 0-byte .parquet
    beside a good shard; mapo-train used to say only "An error occurred while generating the
    dataset", naming neither file nor cause."""
    schema_case = next(c for c in SCHEMA_CASES if c.name == case)
    folder = tmp_path / "pairs"
    bad = folder / f"{case}.parquet"
    schema_case.write(bad)
    write_good(folder / "a-good.parquet")
    out = tmp_path / "run"
    argv = [
        "--recipe",
        str(QUICKSTART),
        f"data.path={folder}",
        f"train.output_dir={out}",
        "train.report_to=none",
        "validation.enabled=false",
    ]
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    _, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert exc.value.code == 2 and "Traceback" not in err
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert str(bad) in lines[0] and schema_case.fragment in lines[0], lines
    # Nothing that looks like a finished (or started) run.
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))
