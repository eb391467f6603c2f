"""`mapo-data preview`: a contact sheet of the expected size, chosen beside rejected, deterministic."""

from __future__ import annotations

from PIL import Image

from mapo_data.preview import (
    CHOSEN_COLOUR,
    REJECTED_COLOUR,
    Layout,
    _font,
    contact_sheet,
    prompt_note,
    sample_pairs,
    wrap_caption,
)
from mapo_data.reader import open_dataset
from tests.mapo_data.pairs_factory import (
    Pair,
    assert_one_line_error,
    encode,
    flat,
    good_pairs,
    run_cli,
    write_mapo_dataset,
    write_pickapic_parquet,
)


def test_sheet_size_matches_the_layout(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "ds", 6, shard_size=4)
    out = tmp_path / "sheet.png"
    code, stdout, _ = run_cli(capsys, "preview", str(root), "--out", str(out), "--n", "5", "--tile", "64")
    assert code == 0 and "5 pairs, 312x604 px" in stdout
    # 2 pairs a row, 3 rows; a pair block is 2 tiles + pad wide, and label + tile + 2 prompt lines + pad
    # + 3 caption lines high: width 8 + (64*2 + 8) + 24 + (64*2 + 8) + 8 = 312,
    # height 8 + 3 * (18 + 64 + 36 + 8 + 54) + 2 * 24 + 8 = 604.
    assert Image.open(out).size == (312, 604)
    # Defaults: 16 pairs at 256 px; only 6 exist, so 3 rows of 2: 16 + 3 * 372 + 2 * 24 = 1180 high.
    code, _, _ = run_cli(capsys, "preview", str(root), "--out", str(tmp_path / "full.png"))
    assert Image.open(tmp_path / "full.png").size == Layout().sheet_size(6, prompts=True) == (1080, 1180)
    # Data without prompt_0/prompt_1 (Pick-a-Pic) has no prompt lines: 8 + 180 + 8 + 54 + 8 high.
    pap = write_pickapic_parquet(tmp_path / "pap.parquet", good_pairs(1))
    code, stdout, _ = run_cli(capsys, "preview", str(pap), "--out", str(tmp_path / "pap.png"), "--tile", "64")
    assert code == 0 and Image.open(tmp_path / "pap.png").size == (152, 160)


def test_chosen_is_drawn_left_whatever_its_position(tmp_path):
    red, blue = encode(flat((220, 20, 20)), "PNG"), encode(flat((20, 20, 220)), "PNG")
    root = write_mapo_dataset(tmp_path / "ds", [Pair("red is chosen", red, blue, chosen_pos=1)])
    layout = Layout(tile=64)
    sheet = contact_sheet(sample_pairs(open_dataset(root), 1, 0), layout)
    y = layout.pad + layout.line_height + 32
    assert sheet.getpixel((layout.pad + 32, y)) == (220, 20, 20)  # left tile: chosen
    assert sheet.getpixel((layout.pad + 64 + layout.pad + 32, y)) == (20, 20, 220)  # right tile: rejected


def test_each_side_says_which_prompt_made_it(tmp_path):
    red, blue = encode(flat((220, 20, 20)), "PNG"), encode(flat((20, 20, 220)), "PNG")
    root = write_mapo_dataset(tmp_path / "ds", [Pair("a red barn", red, blue, chosen_pos=1)])
    (pair,) = sample_pairs(open_dataset(root), 1, 0)
    # Labels decide: the chosen image sits in jpg_1, and so does the prompt that made it.
    assert pair.chosen_prompt == "Pixel art style image. a red barn"
    assert pair.rejected_prompt == "Realistic 8k image. a red barn"
    assert prompt_note(pair.chosen_prompt, pair.caption) == '"Pixel art style image." + caption'
    assert prompt_note("a red barn", "a red barn") == "caption alone"  # pick-safety's chosen side
    assert prompt_note("something else", "a red barn") == '"something else"'
    # The notes are drawn under each tile, in that side's colour.
    layout = Layout(tile=128)
    sheet = contact_sheet([pair], layout)
    top = layout.line_height + layout.tile + layout.pad
    band = (top, top + layout.prompt_lines * layout.line_height)

    def colours(x0: int) -> set:
        return {sheet.getpixel((x, y)) for x in range(x0, x0 + layout.tile) for y in range(*band)}

    assert CHOSEN_COLOUR in colours(layout.pad) and REJECTED_COLOUR not in colours(layout.pad)
    assert REJECTED_COLOUR in colours(2 * layout.pad + layout.tile)


def test_same_seed_same_sheet_other_seed_other_pairs(tmp_path):
    root = write_mapo_dataset(tmp_path / "ds", 12, shard_size=5)
    ds = open_dataset(root)
    a, b = sample_pairs(ds, 4, seed=0), sample_pairs(ds, 4, seed=0)
    assert [p.caption for p in a] == [p.caption for p in b]
    assert [p.caption for p in a] != [p.caption for p in sample_pairs(ds, 4, seed=1)]
    assert contact_sheet(a, Layout(tile=32)).tobytes() == contact_sheet(b, Layout(tile=32)).tobytes()
    assert len({p.caption for p in sample_pairs(ds, 20, seed=0)}) == 12  # n beyond the size: all, once


def test_caption_wrapping_fits_and_ellipsises():
    font = _font(14)
    text = "a very long caption " * 20 + "withaverylongunbreakablewordthatneverends" * 2
    lines = wrap_caption(text, font, width=120, max_lines=3)
    assert len(lines) == 3 and lines[-1].endswith("…")
    assert all(font.getlength(line) <= 120 for line in lines)
    assert wrap_caption("short one", font, 120, 3) == ["short one"]
    assert wrap_caption("", font, 120, 3) == []


def test_bad_arguments(tmp_path, capsys):
    root = write_mapo_dataset(tmp_path / "ds", good_pairs(2))
    assert_one_line_error(*run_cli(capsys, "preview", str(root), "--out", str(tmp_path / "x.jpg")), ".png")
    assert_one_line_error(
        *run_cli(capsys, "preview", str(root), "--out", str(tmp_path / "x.png"), "--n", "0"), "--n"
    )
