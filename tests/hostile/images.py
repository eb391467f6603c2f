"""Hostile images: every mode, transparency, bit depth and orientation a pair file can hold, and
bytes that are not an image at all, each with the RGB pixels every reader must see.

``expected`` is the displayed picture as uint8 [H, W, 3] (None: undecodable), computed here from
the numbers the image was made of, by the documented rules of the pair reader (mapo_data.images):
transparency over white, 16-bit by the high byte, float [0, 1] by 255, EXIF orientation applied.
``atol`` is nonzero only for lossy (JPEG) cases.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SIZE = 32  # square cases are SIZE x SIZE; orientation cases are stored 48 wide, 32 tall
WHITE = 255


@dataclass(frozen=True)
class ImageCase:
    name: str
    data: bytes
    expected: np.ndarray | None  # [H, W, 3] uint8 as displayed; None: undecodable
    atol: int = 0  # allowed per-pixel difference (lossy formats only)
    mode: str | None = None  # the stored mode, as Pillow reports it (stats lists it)
    reason: str | None = None  # fragment of the undecodable reason
    #: Whether the header reads (stats reads only headers; a truncated PNG's header is intact).
    header_readable: bool = True

    @property
    def decodable(self) -> bool:
        return self.expected is not None

    @property
    def size(self) -> tuple[int, int] | None:
        """Displayed (width, height)."""
        return None if self.expected is None else (self.expected.shape[1], self.expected.shape[0])


def save(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def grey3(a: np.ndarray) -> np.ndarray:
    return np.repeat(a.astype(np.uint8)[..., None], 3, axis=2)


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Alpha compositing onto white, rounded to nearest (what the documented rule says)."""
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(rgb.astype(np.float64) * a + WHITE * (1.0 - a)).astype(np.uint8)


def noise_rgb(seed: int, width: int = SIZE, height: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR (valid CRC) claims width x height RGB pixels, with no pixel data: a
    decompression bomb's header costs nothing to build."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


def _ramp16() -> np.ndarray:
    """Left-to-right ramp over the full 16-bit range: 0 ... 65535."""
    row = np.rint(np.linspace(0, 65535, SIZE)).astype(np.uint16)
    return np.tile(row, (SIZE, 1))


def _blocks(width: int = 48, height: int = 32, block: int = 16) -> np.ndarray:
    """Flat colour blocks aligned to JPEG's 16-pixel MCUs, each a different colour, so a rotation
    or flip shows and JPEG's loss stays within a few levels."""
    rng = np.random.default_rng(7)
    colours = rng.integers(30, 226, ((height // block), (width // block), 3), dtype=np.uint8)
    return np.kron(colours, np.ones((block, block, 1), dtype=np.uint8)).astype(np.uint8)


def _exif_jpeg(orientation: int, stored: np.ndarray) -> tuple[bytes, np.ndarray]:
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = save(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    # What the stored pixels decode to (a plain decode ignores EXIF), turned as the tag says:
    # 3 = rotate 180; 6 = the picture is shown turned 90 degrees clockwise; 8 = counter-clockwise.
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    turned = {3: np.rot90(pixels, 2), 6: np.rot90(pixels, -1), 8: np.rot90(pixels, 1)}[orientation]
    return data, np.ascontiguousarray(turned)


def exif_jpeg(orientation: int, width: int, height: int) -> tuple[bytes, np.ndarray]:
    """A JPEG stored width x height with EXIF ``orientation``, and its displayed pixels."""
    return _exif_jpeg(orientation, _blocks(width, height))


def image_cases() -> list[ImageCase]:
    cases: list[ImageCase] = []

    ramp = _ramp16()
    cases.append(ImageCase("i16_ramp_png", save(Image.fromarray(ramp)), grey3(ramp >> 8), mode="I;16"))

    be = np.tile(np.rint(np.linspace(65535, 0, SIZE)).astype(np.uint16), (SIZE, 1)).T.copy()  # top-down
    img = Image.frombytes("I;16B", (SIZE, SIZE), be.astype(">u2").tobytes())
    cases.append(ImageCase("i16b_tiff", save(img, "TIFF"), grey3(be >> 8), mode="I;16B"))

    # 16-bit greyscale PGM: Pillow reads it as 32-bit "I" holding 0..65535.
    diag = ((np.add.outer(np.arange(SIZE), np.arange(SIZE)) * 1000) % 65536).astype(np.uint16)
    pgm = f"P5 {SIZE} {SIZE} 65535\n".encode() + diag.astype(">u2").tobytes()
    cases.append(ImageCase("i_pgm16", pgm, grey3(diag >> 8), mode="I"))

    # Signed 32-bit TIFF outside 0..65535: its own minimum..maximum is stretched onto 0..255.
    signed = (np.arange(SIZE * SIZE, dtype=np.int32).reshape(SIZE, SIZE) * 7 - 3000).astype(np.int32)
    stretched = np.rint((signed - signed.min()) * (255.0 / (signed.max() - signed.min()))).astype(np.uint8)
    cases.append(
        ImageCase("i32_signed_tiff", save(Image.fromarray(signed, "I"), "TIFF"), grey3(stretched), mode="I")
    )

    unit = (np.linspace(0.0, 1.0, SIZE * SIZE, dtype=np.float32) ** 2).reshape(
        SIZE, SIZE
    )  # a curve, not a ramp
    cases.append(
        ImageCase(
            "f_unit_tiff",
            save(Image.fromarray(unit), "TIFF"),
            grey3(np.rint(unit.astype(np.float64) * 255)),
            mode="F",
        )
    )

    wide = (np.linspace(-2.0, 6.0, SIZE * SIZE, dtype=np.float32).reshape(SIZE, SIZE)).T.copy()
    w64 = wide.astype(np.float64)
    cases.append(
        ImageCase(
            "f_wide_tiff",
            save(Image.fromarray(wide), "TIFF"),
            grey3(np.rint((w64 - w64.min()) * (255.0 / (w64.max() - w64.min())))),
            mode="F",
        )
    )

    # RGBA: random colours under fully transparent pixels, an opaque red square in the middle.
    rgba = np.concatenate([noise_rgb(11), np.zeros((SIZE, SIZE, 1), np.uint8)], axis=2)
    rgba[8:24, 8:24] = (255, 0, 0, 255)
    rgba[0, 0] = (0, 0, 200, 128)  # one half-transparent pixel: blue over white
    expected = np.full((SIZE, SIZE, 3), WHITE, np.uint8)
    expected[8:24, 8:24] = (255, 0, 0)
    expected[0, 0] = over_white(np.array([[[0, 0, 200]]]), np.array([[128]]))[0, 0]
    cases.append(ImageCase("rgba_hidden_noise", save(Image.fromarray(rgba, "RGBA")), expected, mode="RGBA"))

    grey = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (SIZE, 1))
    alpha = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (SIZE, 1)).T.copy()
    alpha[:4] = 0
    alpha[-4:] = 255
    la = Image.fromarray(np.stack([grey, alpha], axis=2), "LA")
    cases.append(ImageCase("la_png", save(la), over_white(grey3(grey), alpha), mode="LA"))

    palette = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (250, 200, 10)]
    index = (np.add.outer(np.arange(SIZE), np.arange(SIZE)) // 5 % 4).astype(np.uint8)
    p = Image.fromarray(index, "P")
    p.putpalette([c for rgb in palette for c in rgb])
    lut = np.array(palette, np.uint8)
    transparent = lut[index].copy()
    transparent[index == 1] = WHITE
    cases.append(ImageCase("p_transparent_index", save(p, transparency=1), transparent, mode="P"))
    cases.append(ImageCase("p_opaque", save(p), lut[index], mode="P"))
    cases.append(
        ImageCase(
            "gif_transparent_index", save(p, "GIF", transparency=2), _where(lut[index], index == 2), mode="P"
        )
    )

    # RGB with a tRNS colour key: the keyed colour is transparent.
    keyed = noise_rgb(12)
    keyed[10:20, 4:28] = (1, 2, 3)
    cases.append(
        ImageCase(
            "rgb_trns_key",
            save(Image.fromarray(keyed), transparency=(1, 2, 3)),
            _where(keyed, np.all(keyed == (1, 2, 3), axis=2)),
            mode="RGB",
        )
    )

    # 16-bit greyscale with a tRNS key.
    key16 = _ramp16().T.copy()
    key16[5:9] = 4242
    cases.append(
        ImageCase(
            "i16_trns_key",
            save(Image.fromarray(key16), transparency=4242),
            _where(grey3(key16 >> 8), key16 == 4242),
            mode="I;16",
        )
    )

    checker = (np.add.outer(np.arange(SIZE) // 4, np.arange(SIZE) // 4) % 2).astype(bool)
    cases.append(ImageCase("one_bit", save(Image.fromarray(checker)), grey3(checker * 255), mode="1"))

    lgrey = ((np.add.outer(np.arange(SIZE), 3 * np.arange(SIZE)) * 2) % 256).astype(np.uint8)
    cases.append(ImageCase("l_png", save(Image.fromarray(lgrey, "L")), grey3(lgrey), mode="L"))

    cmyk = Image.new("CMYK", (SIZE, SIZE), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    cases.append(
        ImageCase(
            "cmyk_jpeg",
            save(cmyk, "JPEG", quality=95),
            np.full((SIZE, SIZE, 3), (255, 0, 0), np.uint8),
            atol=2,
            mode="CMYK",
        )
    )

    for orientation in (3, 6, 8):
        data, shown = exif_jpeg(orientation, 48, 32)
        cases.append(ImageCase(f"exif{orientation}_jpeg", data, shown, mode="RGB"))

    # A PNG can carry EXIF too (eXIf chunk); lossless, so exact.
    stored = noise_rgb(13, 48, 32)
    exif = Image.Exif()
    exif[0x0112] = 6
    cases.append(
        ImageCase(
            "exif6_png",
            save(Image.fromarray(stored), exif=exif.tobytes()),
            np.ascontiguousarray(np.rot90(stored, -1)),
            mode="RGB",
        )
    )

    # 16-bit RGB PNG (Pillow has no writer for it): Pillow reads it as RGB from the high bytes.
    rgb16 = (np.random.default_rng(16).integers(0, 65536, (SIZE, SIZE, 3))).astype(">u2")
    rows = b"".join(b"\x00" + rgb16[y].tobytes() for y in range(SIZE))  # filter byte 0 per row
    ihdr = struct.pack(">IIBBBBB", SIZE, SIZE, 16, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(rows))
    data += png_chunk(b"IEND", b"")
    cases.append(ImageCase("rgb16_png", data, (rgb16.astype(np.uint32) >> 8).astype(np.uint8), mode="RGB"))

    plain = noise_rgb(14)
    cases.append(ImageCase("rgb_png", save(Image.fromarray(plain)), plain, mode="RGB"))

    whole = save(Image.fromarray(noise_rgb(15)))
    cases.append(
        ImageCase("truncated_png", whole[: len(whole) // 2], None, mode="RGB", reason="corrupt or truncated")
    )
    cases.append(
        ImageCase(
            "garbage",
            b"this is not an image at all, just text" * 4,
            None,
            reason="not a recognised image format",
            header_readable=False,
        )
    )
    cases.append(ImageCase("empty", b"", None, reason="empty image bytes", header_readable=False))
    cases.append(
        ImageCase(
            "bomb_png_huge",
            png_header_only(100_000, 100_000),
            None,
            reason="decompression-bomb limit",
            header_readable=False,
        )
    )
    # Above mapo's limit (8192 x 8192) but below Pillow's own: mapo's constant decides.
    cases.append(
        ImageCase(
            "bomb_png_9000",
            png_header_only(9000, 9000),
            None,
            reason="decompression-bomb limit",
            header_readable=False,
        )
    )
    return cases


def _where(rgb: np.ndarray, transparent: np.ndarray) -> np.ndarray:
    out = rgb.astype(np.uint8).copy()
    out[transparent] = WHITE
    return out


def write_image_corpus(path: Path, cases: list[ImageCase]) -> Path:
    """One Pick-a-Pic-style parquet (pyarrow only): row i holds ``cases[i]`` as the chosen image in
    jpg_0 (labels 1/0, caption the case name), beside a noise PNG of the same displayed size as the
    rejected image in jpg_1 (32x32 for undecodable cases)."""
    rejected = []
    for i, case in enumerate(cases):
        width, height = case.size or (SIZE, SIZE)
        rejected.append(save(Image.fromarray(noise_rgb(500 + i, width, height))))
    table = pa.table(
        {
            "caption": pa.array([case.name for case in cases], pa.string()),
            "jpg_0": pa.array([case.data for case in cases], pa.binary()),
            "jpg_1": pa.array(rejected, pa.binary()),
            "label_0": pa.array([1] * len(cases), pa.int64()),
            "label_1": pa.array([0] * len(cases), pa.int64()),
        }
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
