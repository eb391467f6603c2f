"""The hostile-input corpus through every mapo-data reader: verify, curate, stats, preview.

Image cases (tests/hostile/images.py): each reader sees the pixels the pair reader's one decode
gives (transparency over white, 16-bit by range, EXIF orientation applied), or counts the image
as undecodable. Schema cases (tests/hostile/schema.py): each command ends with one line naming
the file and the problem, a non-zero exit, no traceback, and nothing written that looks complete.
"""

from __future__ import annotations

import io
import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageOps

from mapo_data.curate import CurateConfig, curate
from mapo_data.preview import Layout, make_preview
from mapo_data.stats import dataset_stats
from mapo_data.verify import verify_dataset
from tests.hostile.images import exif_jpeg, image_cases, noise_rgb, save, write_image_corpus
from tests.hostile.schema import SCHEMA_CASES, write_good
from tests.mapo_data.pairs_factory import assert_one_line_error, run_cli

CASES = image_cases()
DECODABLE = [c.name for c in CASES if c.decodable]
UNDECODABLE = [i for i, c in enumerate(CASES) if not c.decodable]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_image_corpus(tmp_path_factory.mktemp("hostile") / "corpus.parquet", CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_one_decode_gives_the_displayed_rgb_picture(case):
    from mapo_data.images import UndecodableImage, decode_image, image_info

    if not case.decodable:
        with pytest.raises(UndecodableImage, match=case.reason):
            decode_image(case.data)
        return
    image = decode_image(case.data)
    assert image.mode == "RGB" and image.size == case.size
    diff = np.abs(np.asarray(image).astype(int) - case.expected.astype(int)).max()
    assert diff <= case.atol, diff
    info = image_info(case.data)
    assert ((info.width, info.height), info.mode) == (case.size, case.mode)


def test_the_pixel_limit_is_one_parameter():
    from mapo_data.images import MAX_IMAGE_PIXELS, UndecodableImage, decode_image

    data = save(Image.fromarray(noise_rgb(1)))  # 32x32 = 1024 pixels
    assert decode_image(data, max_pixels=1024).size == (32, 32)
    with pytest.raises(
        UndecodableImage, match="32x32 is 1024 pixels, above the decompression-bomb limit of 1023"
    ):
        decode_image(data, max_pixels=1023)
    assert MAX_IMAGE_PIXELS == 8192 * 8192


def test_verify_lists_exactly_the_undecodable_images(corpus, capsys):
    code, out, err = run_cli(capsys, "verify", str(corpus), "--no-progress")
    assert code == 1 and "Traceback" not in out + err
    lines = out.splitlines()
    assert len(lines) == len(UNDECODABLE)
    for line, i in zip(lines, UNDECODABLE, strict=True):
        assert line.startswith(f"{corpus} row {i}: jpg_0 does not decode ("), line
        assert CASES[i].reason in line, line
    assert len(UNDECODABLE) > 1 and err.strip().splitlines()[-1] == f"{len(UNDECODABLE)} problems in 1 shard"
    report = verify_dataset(corpus)
    assert (report.pairs, report.images) == (len(CASES), 2 * len(CASES))


def test_curate_keeps_what_decodes_and_counts_the_rest(corpus, tmp_path):
    out = tmp_path / "curated"
    result = curate(
        CurateConfig(
            inputs=[corpus],
            out=out,
            min_std=None,
            max_phash_distance=None,
            dedup="pixels",  # hashes the decoded pixels: every case decodes to a distinct picture
            max_per_caption=0,
            progress=False,
        )
    )
    assert result.report["kept"] == len(DECODABLE)
    assert result.report["dropped"]["undecodable"] == len(UNDECODABLE)
    assert result.report["dropped_total"] == len(UNDECODABLE)
    import pyarrow.parquet as pq

    manifest = json.loads((out / "manifest.json").read_text())
    captions = [c for s in manifest["shards"] for c in pq.read_table(out / s["path"])["caption"].to_pylist()]
    assert captions == DECODABLE
    assert verify_dataset(out).ok


def _header_size(case) -> str:
    if case.decodable:
        return f"{case.size[0]}x{case.size[1]}"
    return "{}x{}".format(*Image.open(io.BytesIO(case.data)).size)  # intact header, broken data


def test_stats_reports_displayed_sizes_modes_and_unreadable(corpus):
    stats = dataset_stats(corpus)["images"]
    readable = [c for c in CASES if c.header_readable]
    rejected_sizes = Counter(f"{w}x{h}" for w, h in (c.size or (32, 32) for c in CASES))
    assert stats["sizes"] == dict(Counter(_header_size(c) for c in readable) + rejected_sizes)
    assert stats["modes"] == dict(Counter(c.mode for c in readable) + Counter({"RGB": len(CASES)}))
    assert stats["unreadable"] == sum(not c.header_readable for c in CASES)
    # The orientation cases are stored 48x32 and shown 32x48; stats says what is shown.
    assert stats["sizes"]["32x48"] == 6  # exif6 and exif8 JPEG, exif6 PNG, and their rejected images
    assert stats["sizes"]["48x32"] == 2  # exif3 (turned 180 degrees) and its rejected image


def test_stats_reports_an_exif_rotated_jpeg_at_its_displayed_size(tmp_path, capsys):
    """A 96x64 JPEG with EXIF Orientation 6 is shown 64 wide and 96 tall."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, shown = exif_jpeg(6, 96, 64)
    assert shown.shape == (96, 64, 3)
    path = tmp_path / "rotated.parquet"
    rejected = save(Image.fromarray(noise_rgb(3, 64, 96)))
    pq.write_table(
        pa.table({"caption": ["a"], "jpg_0": [data], "jpg_1": [rejected], "label_0": [1], "label_1": [0]}),
        path,
    )
    code, out, _ = run_cli(capsys, "stats", str(path), "--json")
    assert code == 0
    assert json.loads(out)["images"]["sizes"] == {"64x96": 2}


def test_datasets_image_struct_columns_are_read_as_image_bytes(tmp_path, capsys):
    """`datasets` Image columns (struct of bytes and path) are accepted and decoded like binary."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    data, _ = exif_jpeg(6, 48, 32)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    rejected = save(Image.fromarray(noise_rgb(4, 32, 48)))
    path = tmp_path / "images.parquet"
    table = pa.table(
        {
            "caption": ["x"],
            "jpg_0": pa.array([{"bytes": data, "path": None}], struct),
            "jpg_1": pa.array([{"bytes": rejected, "path": "r.png"}], struct),
            "label_0": [1],
            "label_1": [0],
        }
    )
    pq.write_table(table, path)
    code, out, _ = run_cli(capsys, "verify", str(path), "--no-progress")
    assert code == 0 and out.startswith("ok: 1 pair in 1 shard, 2 images decoded")
    images = dataset_stats(path)["images"]
    assert images["sizes"] == {"32x48": 2} and images["mean_bytes"] == (len(data) + len(rejected)) / 2


def test_preview_tiles_show_the_decoded_pixels(corpus, tmp_path):
    tile = 48  # the largest displayed side: portrait cases fit without resampling
    layout = Layout(tile=tile, columns=1)
    result = make_preview(corpus, tmp_path / "sheet.png", n=len(CASES), seed=0, layout=layout)
    assert result.pairs == len(CASES)
    sheet = np.asarray(Image.open(result.path).convert("RGB")).astype(int)
    gap = 3 * layout.pad
    for k, case in enumerate(CASES):
        x = layout.pad
        y = layout.pad + k * (layout.block_height() + gap) + layout.line_height
        got = sheet[y : y + tile, x : x + tile]
        if not case.decodable:
            assert (got[-1, -1] == 200).all() and got.mean() < 200, case.name  # the "undecodable" tile
            continue
        expected = Image.new("RGB", (tile, tile), (240, 240, 240))
        fitted = ImageOps.contain(Image.fromarray(case.expected), (tile, tile))
        expected.paste(fitted, ((tile - fitted.width) // 2, (tile - fitted.height) // 2))
        diff = np.abs(got - np.asarray(expected).astype(int)).max()
        assert diff <= (case.atol + 1 if case.atol else 0), (case.name, diff)


# --- schema faults --------------------------------------------------------------------------------

COMMANDS = ("verify", "stats", "preview", "curate")


@pytest.mark.parametrize("beside_good", [False, True], ids=["alone", "beside-a-good-shard"])
@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", SCHEMA_CASES, ids=[c.name for c in SCHEMA_CASES])
def test_schema_faults_end_in_one_line_naming_the_file(case, command, beside_good, tmp_path, capsys):
    folder = tmp_path / "pairs"
    bad = folder / f"{case.name}.parquet"
    case.write(bad)
    target = folder if beside_good else bad
    if beside_good:
        write_good(folder / "a-good.parquet")
    out_dir = tmp_path / "out"
    args = {
        "verify": ["verify", str(target), "--no-progress"],
        "stats": ["stats", str(target)],
        "preview": ["preview", str(target), "--out", str(tmp_path / "sheet.png")],
        "curate": ["curate", str(target), "--out", str(out_dir)],
    }[command]
    code, out, err = run_cli(capsys, *args)
    if command == "verify":
        # verify lists each problem (file: what) on stdout, one line each, and counts them on stderr.
        assert code == 1 and "Traceback" not in out + err
        prefix = f"{bad.name if beside_good else bad}: "
        lines = out.splitlines()
        assert all(line.startswith(prefix) for line in lines), lines
        assert case.fragment in "; ".join(line[len(prefix) :] for line in lines), lines
        noun = "problem" if len(lines) == 1 else "problems"
        assert err.strip().splitlines()[-1].startswith(f"{len(lines)} {noun} in ")
        return
    assert_one_line_error(code, out, err, case.fragment)
    assert bad.name in err
    assert not (tmp_path / "sheet.png").exists()
    assert not (out_dir / "manifest.json").exists()
