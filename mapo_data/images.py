"""Image bytes -> the RGB picture every command sees: the one decode of the pair format.

verify, curate, stats, preview, the trainer, the latent cache, the stream and eval all call
:func:`decode_image` (or :func:`image_info` for header facts), so a pair looks the same to each of
them. The rules, in the order they are applied:

1. **Limits.** An image of more than :data:`MAX_IMAGE_PIXELS` pixels (width x height, as its
   header claims) is not decoded: it is undecodable, like truncated data, never a crash or a
   warning. Only the first frame of an animated image is read.
2. **Orientation.** The EXIF ``Orientation`` tag is applied (``ImageOps.exif_transpose``), so a
   photo is seen upright and its size is the displayed size (a 96x64 JPEG with Orientation 6 is a
   64-wide, 96-tall image everywhere: pixels, micro-conditioning, stats).
3. **Transparency** (RGBA, LA, PA, premultiplied RGBa, a palette with transparent entries, a
   greyscale/RGB/16-bit colour key from PNG's tRNS) is composited onto :data:`BACKGROUND`, white:
   ``out = round((colour * alpha + 255 * (255 - alpha)) / 255)``. Colours hidden under fully
   transparent pixels never reach anyone.
4. **Bit depth.** 16-bit samples (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``) keep their high byte
   (``value >> 8``: 0..65535 maps onto 0..255), which is also how Pillow reduces 16-bit RGB and RGBA
   files, so every 16-bit source is reduced alike. 32-bit integer ``I`` images are read the same way
   when all values lie in 0..65535 (16-bit data in a 32-bit container: Pillow reads 16-bit PGM so);
   otherwise (signed 16-bit or 32-bit TIFFs) their own minimum..maximum is stretched onto 0..255.
   Float ``F`` images whose values all lie in [0, 1] are scaled by 255 and rounded; otherwise their
   minimum..maximum is stretched onto 0..255. Non-finite float values become 0. A constant image
   outside those ranges becomes black.
5. **Colour.** CMYK (Adobe-inverted JPEGs included), YCbCr, palette, 1-bit and greyscale images are
   converted with Pillow's ``convert("RGB")``; greyscale becomes three equal channels. Embedded ICC
   colour profiles are not applied.

Failures of any kind raise :class:`UndecodableImage` (a ``ValueError``) with a one-line reason;
readers skip and count such pairs (training, curate) or list them (verify).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

#: The colour transparent pixels are composited onto (white, as image viewers and browsers show
#: transparent PNGs on a white page).
BACKGROUND = (255, 255, 255)

#: Images with more pixels than this (8192 x 8192, 64 times an SDXL 1024² image) are undecodable:
#: a decompression bomb, or far larger than any pair image a trainer resizes to ~1024².
MAX_IMAGE_PIXELS = 8192 * 8192

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")
_WITH_ALPHA = ("RGBA", "LA", "PA", "RGBa")


class UndecodableImage(ValueError):
    """Image bytes that do not give a picture (bad or empty data, unknown format, over the limit)."""


@dataclass(frozen=True)
class ImageInfo:
    """Header facts of one image, as :func:`decode_image` would see it."""

    format: str  # "PNG", "JPEG", ... ("unknown" when the container does not say)
    mode: str  # the stored mode before conversion ("I;16", "RGBA", "CMYK", ...)
    width: int  # displayed size: after EXIF orientation
    height: int


def image_bytes(data: Any) -> bytes:
    """The encoded bytes of an image cell: bytes, or a `datasets` Image dict ``{"bytes": ...}``."""
    if isinstance(data, dict):
        data = data.get("bytes")
    if data is None:
        raise UndecodableImage("no image bytes (null)")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UndecodableImage(f"image cell holds {type(data).__name__}, not bytes")
    if len(data) == 0:
        raise UndecodableImage("empty image bytes")
    return bytes(data)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _open(data: Any, max_pixels: int) -> Image.Image:
    """Open (header only) and apply the pixel limit before any pixel is decompressed."""
    raw = image_bytes(data)
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning fires above its (higher) limit; ours decides below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(raw))
    except Image.DecompressionBombError as err:
        # Pillow refuses beyond twice its own limit (far above ours) before the size is known.
        raise UndecodableImage(
            f"more than {2 * Image.MAX_IMAGE_PIXELS} pixels, above the decompression-bomb limit of {max_pixels}"
        ) from err
    except Image.UnidentifiedImageError as err:
        raise UndecodableImage("not a recognised image format") from err
    except Exception as err:  # Pillow's plugins raise many types (SyntaxError, struct.error, ...)
        raise UndecodableImage(f"unreadable image header ({_one_line(err)})") from err
    pixels = img.width * img.height
    if pixels > max_pixels:
        raise UndecodableImage(
            f"{img.width}x{img.height} is {pixels} pixels, above the decompression-bomb limit of {max_pixels}"
        )
    if img.width == 0 or img.height == 0:
        raise UndecodableImage(f"image has no pixels ({img.width}x{img.height})")
    return img


def _orientation(img: Image.Image) -> int:
    value = img.getexif().get(0x0112, 1)  # EXIF Orientation
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


# Where Pillow finds a PNG's orientation: an eXIf chunk, a "Raw profile type exif" text chunk or
# XMP in an iTXt chunk. Chunk types and text keywords are never compressed, so bytes without any of
# these markers have no orientation to find.
_PNG_ORIENTATION_MARKERS = (b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp")


def image_info(data: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> ImageInfo:
    """Format, stored mode and displayed size (after EXIF orientation), reading as little as the
    format allows: JPEG, WebP and TIFF keep EXIF in the header; a PNG may keep it after its pixel
    data, so a PNG carrying EXIF or XMP is read through. Raises :class:`UndecodableImage`."""
    img = _open(data, max_pixels)
    if img.format == "PNG" and "exif" not in img.info:
        raw = image_bytes(data)
        if not any(marker in raw for marker in _PNG_ORIENTATION_MARKERS):
            return ImageInfo("PNG", img.mode, img.width, img.height)
    try:
        orientation = _orientation(img)
    except Exception as err:  # reading a PNG through can meet truncated data
        raise UndecodableImage(f"corrupt or truncated image ({_one_line(err)})") from err
    width, height = img.size
    if orientation >= 5:  # 5..8 turn the picture by 90 degrees
        width, height = height, width
    return ImageInfo(img.format or "unknown", img.mode, width, height)


def decode_image(data: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Image bytes (or a `datasets` Image dict) -> the upright 8-bit RGB image every command sees.

    See the module docstring for the rules (limit, orientation, transparency onto white, bit depth,
    colour). Returns a loaded ``PIL.Image`` in mode RGB of the displayed size. Raises
    :class:`UndecodableImage` (a ValueError) with a one-line reason for anything that is not a
    decodable image within ``max_pixels``.
    """
    img = _open(data, max_pixels)
    try:
        img.load()  # open() alone reads the header: truncated data only shows here
        ImageOps.exif_transpose(img, in_place=True)
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ... for bad data
        raise UndecodableImage(f"corrupt or truncated image ({_one_line(err)})") from err
    try:
        return _to_rgb(img)
    except Exception as err:  # a mode Pillow cannot convert (LAB, ...)
        raise UndecodableImage(f"cannot convert mode {img.mode} to RGB ({_one_line(err)})") from err


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    key = img.info.get("transparency")
    if mode == "RGB" and key is None:
        return img
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        grey = np.asarray(img)
        alpha = None if key is None or mode == "F" else np.where(grey == key, 0, 255).astype(np.uint8)
        eight = _to_eight_bits(grey, mode)
        if alpha is not None:
            return _composite(np.repeat(eight[..., None], 3, axis=2), alpha)
        return Image.fromarray(eight).convert("RGB")
    if mode in _WITH_ALPHA or key is not None:
        if mode == "1":
            img = img.convert("L")  # "1" keys its transparency in 0/255, as L does
        rgba = np.asarray(img.convert("RGBA"))
        return _composite(rgba[..., :3], rgba[..., 3])
    return img.convert("RGB")


def _to_eight_bits(values: np.ndarray, mode: str) -> np.ndarray:
    """One channel of 16-bit, 32-bit integer or float samples -> uint8, by the rules above."""
    if mode in _SIXTEEN_BIT:
        return (values.astype(np.uint32) >> 8).astype(np.uint8)
    if mode == "I":
        low, high = int(values.min()), int(values.max())
        if low >= 0 and high <= 0xFFFF:
            return (values.astype(np.int64) >> 8).astype(np.uint8)
        return _stretch(values.astype(np.float64), low, high)
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    if low >= 0.0 and high <= 1.0:
        return np.rint(values * 255.0).astype(np.uint8)
    return _stretch(values, low, high)


def _stretch(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high == low:
        return np.zeros(values.shape, np.uint8)
    return np.rint((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _composite(rgb: np.ndarray, alpha: np.ndarray) -> Image.Image:
    """``rgb`` [H, W, 3] uint8 with ``alpha`` [H, W] uint8 over BACKGROUND -> an RGB image."""
    a = alpha.astype(np.uint32)[..., None]
    background = np.asarray(BACKGROUND, np.uint32)
    # Integer round-half-up of (c*a + bg*(255-a)) / 255.
    out = (rgb.astype(np.uint32) * a + background * (255 - a) + 127) // 255
    return Image.fromarray(out.astype(np.uint8))
