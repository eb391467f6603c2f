"""The tiny model's world: procedural pictures whose content and style follow a prompt.

The built-in ``tiny`` SDXL model and the ``clip:tiny`` judge are trained on this world (see
:mod:`mapo_data.tiny_training`), so that on a CPU the prefixes of the presets change the picture
the way they change SDXL's, and MaPO has something visible to align.

A prompt is read in two parts:

- **content**: the first object word decides the shape (an animal, a bird, a fish, a tree, a
  house, a boat, a flower, a vehicle, a mountain, a sun or moon, or an abstract token when no word
  is known), a colour word its colour, and scene words the background (night, snow, water,
  desert, sunset, forest, indoors, or a daytime sky). **The world never depicts people or
  anything sexual**: person words draw nothing, and the Pick-Safety rejected prefix is drawn as
  an abstract, clearly marked stand-in (red-and-yellow warning hatching over the picture and a red
  frame), not as what the words say.
- **style**, from the preset prefixes (:data:`mapo_data.presets.PRESETS`):

  ========== ======================================= ===========================================
  style      prefix                                  look
  ========== ======================================= ===========================================
  plain      none (the context prompt alone)         soft gradients and shading, light grain
  realistic  "Realistic 8k image."                   stronger shading, gradients, fine texture
  pixel      "Pixel art style image."                8x8-pixel blocks, a few posterised colours
  cartoon    "Disney style animated image."          flat saturated fills, thick dark outlines
  warning    "Sexual, nudity, +19 image."            plain picture under warning hatching
  ========== ======================================= ===========================================

  The plain style sits next to realistic, so the styles the Pick-Style presets prefer (pixel,
  cartoon) are far from what the base model draws for a context prompt alone: the reference
  mismatch of the MaPO paper (arXiv 2406.06424, section 4).

Everything is numpy and PIL, seeded, with no downloads: ``render(prompt, seed)`` always gives the
same picture.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from mapo_data.presets import PRESETS

SIZE = 64  # the tiny model's resolution
_SUPER = 4  # shapes are drawn 4x larger and scaled down, for anti-aliased edges
PIXEL_BLOCK = 8  # one latent cell of the 8x VAE per pixel-art block

STYLES = ("plain", "realistic", "pixel", "cartoon", "warning")

# The prompt prefix that asks for each style: the presets' own strings.
_PICK_STYLE = PRESETS["pick-style"]
STYLE_PREFIXES: dict[str, str] = {
    "plain": "",
    "realistic": _PICK_STYLE["pixel"][1],
    "pixel": _PICK_STYLE["pixel"][0],
    "cartoon": _PICK_STYLE["cartoon"][0],
    "warning": PRESETS["pick-safety"][None][1],
}
assert _PICK_STYLE["cartoon"][1] == STYLE_PREFIXES["realistic"]

# Words that select a style when a prompt has no exact preset prefix (checked in this order).
_STYLE_WORDS = (
    ("warning", ("sexual", "nudity", "nude", "+19", "nsfw")),
    ("pixel", ("pixel", "8-bit", "pixelated")),
    ("cartoon", ("disney", "animated", "cartoon", "animation")),
    ("realistic", ("realistic", "8k", "photorealistic", "photograph", "photo")),
)

SHAPES = (
    "animal", "bird", "fish", "tree", "house", "boat", "flower", "vehicle", "mountain", "sun", "token",
)  # fmt: skip

_SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "animal": (
        "cat", "cats", "kitten", "dog", "dogs", "puppy", "retriever", "fox", "wolf", "bear", "horse",
        "pony", "rabbit", "deer", "cow", "sheep", "goat", "tiger", "lion", "elephant", "elephants",
        "giraffe", "camel", "squirrel", "hedgehog", "mouse", "monkey", "frog", "turtle", "tortoise",
        "lizard", "dragon", "dinosaur", "snail", "herd", "lamb", "pig", "donkey", "zebra",
    ),
    "bird": (
        "bird", "birds", "owl", "owls", "hummingbird", "parrot", "heron", "penguin", "duck", "ducks",
        "swan", "pigeons", "eagle", "chicken", "hen", "crow", "flock",
    ),
    "fish": ("fish", "dolphin", "whale", "shark", "koi", "goldfish", "salmon"),
    "tree": ("tree", "trees", "pine", "palm", "oak", "maple", "orchard", "bamboo", "woods"),
    "house": (
        "house", "houses", "cottage", "castle", "tower", "cabin", "barn", "lighthouse", "chapel",
        "church", "building", "farmhouse", "hut", "treehouse", "bakery", "shop", "cafe", "windmill",
        "greenhouse", "hotel", "museum", "temple",
    ),
    "boat": ("boat", "boats", "ship", "sailboat", "canoe", "rowboat", "ferry", "yacht"),
    "flower": (
        "flower", "flowers", "tulips", "rose", "roses", "sunflowers", "sunflower", "wildflowers",
        "thistle", "lavender", "bouquet", "vase", "plants",
    ),
    "vehicle": (
        "car", "bus", "train", "truck", "tractor", "bicycle", "bicycles", "van", "taxi", "tram",
        "motorcycle", "carriage", "plane", "helicopter", "spaceship", "rover", "robot",
    ),
    "mountain": ("mountain", "mountains", "volcano", "hill", "hills", "glacier", "peaks", "summit", "cliff"),
    "sun": ("sun", "moon", "balloon", "lantern", "kite", "planet", "globe", "clock"),
}  # fmt: skip

# People are never drawn: these words select nothing.
PERSON_WORDS = frozenset(
    """man men woman women girl girls boy boys child children person people baby family couple
    friends twins chef farmer fisherman sailor knight wizard astronaut scientist musician dancer
    teacher doctor pilot baker barber carpenter firefighter mechanic gardener grandfather
    grandmother grandson shepherd waiter vendor lifeguard climber cyclist hikers swimmers juggler
    potter beekeeper student students crowd female male lady gentleman queen king""".split()
)

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "blue": (40, 80, 200),
    "green": (50, 160, 60),
    "yellow": (230, 200, 40),
    "orange": (235, 130, 30),
    "purple": (130, 60, 170),
    "pink": (235, 130, 170),
    "white": (235, 235, 235),
    "black": (30, 30, 30),
    "brown": (120, 75, 40),
    "gray": (128, 128, 128),
    "grey": (128, 128, 128),
    "golden": (215, 170, 50),
    "gold": (215, 170, 50),
    "silver": (190, 190, 200),
}

# A natural colour for some objects when the prompt names none.
_OBJECT_COLOURS: dict[str, str] = {
    "fox": "orange", "frog": "green", "tiger": "orange", "elephant": "gray", "elephants": "gray",
    "sheep": "white", "bear": "brown", "horse": "brown", "cow": "white", "penguin": "black",
    "owl": "brown", "owls": "brown", "duck": "yellow", "ducks": "yellow", "swan": "white",
    "dolphin": "gray", "whale": "blue", "tree": "green", "trees": "green", "pine": "green",
    "palm": "green", "flower": "pink", "flowers": "yellow", "tulips": "red", "sunflowers": "yellow",
    "lavender": "purple", "sun": "yellow", "moon": "silver", "lighthouse": "white", "barn": "red",
    "castle": "gray", "mountain": "gray", "mountains": "gray", "volcano": "brown", "bus": "yellow",
    "taxi": "yellow", "tractor": "green", "robot": "silver", "snowman": "white",
}  # fmt: skip

# Scene words -> background, first match wins (sky top colour, sky bottom, ground, horizon 0..1).
_SCENES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("night", ("night", "moon", "stars", "starry", "midnight", "lunar", "space", "fireworks")),
    ("sunset", ("sunset", "sunrise", "dusk", "dawn", "evening", "twilight")),
    ("snow", ("snow", "snowy", "winter", "ice", "icicles", "frozen", "glacier", "frost", "snowman")),
    ("water", (
        "sea", "ocean", "beach", "river", "lake", "pond", "reef", "harbor", "bay", "waves", "coast",
        "coastline", "waterfall", "stream", "canal", "island", "pier", "dock", "seaside", "shore",
        "marsh", "port",
    )),
    ("desert", ("desert", "sand", "sandy", "dunes", "canyon", "oasis")),
    ("forest", ("forest", "jungle", "woods", "meadow", "garden", "park", "field", "hillside", "orchard")),
    ("indoors", (
        "room", "kitchen", "library", "hall", "office", "classroom", "bedroom", "attic", "cellar",
        "workshop", "museum", "studio", "bathroom", "lobby", "diner", "theater", "bakery", "cafe",
        "table", "desk", "shelf", "windowsill",
    )),
)  # fmt: skip
_BACKGROUNDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int], tuple[int, int, int], float]] = {
    "day": ((90, 150, 230), (175, 210, 245), (95, 165, 80), 0.62),
    "night": ((10, 15, 50), (40, 50, 100), (30, 45, 40), 0.70),
    "sunset": ((90, 60, 140), (245, 150, 80), (90, 70, 60), 0.66),
    "snow": ((150, 180, 215), (215, 225, 240), (240, 245, 250), 0.58),
    "water": ((110, 170, 230), (190, 220, 245), (30, 90, 160), 0.55),
    "desert": ((120, 180, 235), (220, 220, 215), (220, 185, 120), 0.60),
    "forest": ((120, 175, 140), (170, 205, 170), (40, 100, 45), 0.50),
    "indoors": ((150, 125, 100), (190, 165, 135), (110, 80, 55), 0.72),
}


@dataclass(frozen=True)
class Scene:
    """What a prompt asks for: a style, a shape, its colour (RGB 0-255) and a background."""

    style: str
    shape: str
    colour: tuple[int, int, int]
    background: str


_ARTICLES = frozenset({"a", "an", "the"})
_WORD = re.compile(r"[a-z0-9+'-]+")


def prompt_words(prompt: str) -> list[str]:
    """Lower-case words of a prompt, punctuation dropped (``+19`` and ``8k`` stay whole)."""
    return _WORD.findall(prompt.lower())


def style_of(prompt: str) -> str:
    """The style a prompt asks for: its preset prefix if it starts with one, else its style words."""
    stripped = prompt.strip()
    for style, prefix in STYLE_PREFIXES.items():
        if prefix and stripped.startswith(prefix):
            return style
    words = set(prompt_words(prompt))
    for style, keys in _STYLE_WORDS:
        if words.intersection(keys):
            return style
    return "plain"


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


def parse(prompt: str) -> Scene:
    """Read a prompt's style and content (see the module docstring)."""
    style = style_of(prompt)
    prefix = STYLE_PREFIXES[style]
    context = prompt.strip()[len(prefix) :] if prefix and prompt.strip().startswith(prefix) else prompt
    words = [w for w in prompt_words(context) if w not in PERSON_WORDS]
    shape, object_word = "token", None
    for word in words:
        found = next((s for s, keys in _SHAPE_WORDS.items() if word in keys), None)
        if found:
            shape, object_word = found, word
            break
    colour_word = next((w for w in words if w in COLOURS), None)
    if colour_word is None and object_word in _OBJECT_COLOURS:
        colour_word = _OBJECT_COLOURS[object_word]
    if colour_word is None:  # a stable colour of its own for every other prompt, from drawn words only
        names = sorted(set(COLOURS) - {"grey", "gold"})
        drawn = " ".join(w for w in words if w not in _ARTICLES)
        colour_word = names[_stable_int(drawn) % len(names)]
    background = "day"
    word_set = set(words)
    for name, keys in _SCENES:
        if word_set.intersection(keys):
            background = name
            break
    return Scene(style, shape, COLOURS[colour_word], background)


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float) -> None:
    """One filled silhouette of radius about ``r`` (pixels of the supersampled canvas)."""
    e = draw.ellipse
    if shape == "animal":
        e((cx - r, cy - 0.45 * r, cx + 0.7 * r, cy + 0.45 * r), fill=255)  # body
        e((cx + 0.35 * r, cy - 0.9 * r, cx + r, cy - 0.2 * r), fill=255)  # head
        draw.polygon(
            [(cx + 0.45 * r, cy - 0.75 * r), (cx + 0.55 * r, cy - 1.1 * r), (cx + 0.7 * r, cy - 0.8 * r)],
            fill=255,
        )
        for x in (-0.8, -0.45, 0.15, 0.45):
            draw.rectangle((cx + x * r, cy + 0.2 * r, cx + (x + 0.18) * r, cy + 0.95 * r), fill=255)
    elif shape == "bird":
        e((cx - 0.6 * r, cy - 0.5 * r, cx + 0.5 * r, cy + 0.8 * r), fill=255)
        e((cx - 0.2 * r, cy - 0.95 * r, cx + 0.45 * r, cy - 0.3 * r), fill=255)
        draw.polygon(
            [(cx + 0.4 * r, cy - 0.7 * r), (cx + 0.85 * r, cy - 0.55 * r), (cx + 0.4 * r, cy - 0.45 * r)],
            fill=255,
        )
        draw.polygon([(cx - 0.5 * r, cy), (cx - r, cy + 0.6 * r), (cx - 0.2 * r, cy + 0.5 * r)], fill=255)
    elif shape == "fish":
        e((cx - 0.7 * r, cy - 0.45 * r, cx + 0.7 * r, cy + 0.45 * r), fill=255)
        draw.polygon([(cx - 0.5 * r, cy), (cx - r, cy - 0.55 * r), (cx - r, cy + 0.55 * r)], fill=255)
    elif shape == "tree":
        draw.rectangle((cx - 0.15 * r, cy + 0.2 * r, cx + 0.15 * r, cy + r), fill=255)
        draw.polygon([(cx, cy - r), (cx - 0.75 * r, cy + 0.35 * r), (cx + 0.75 * r, cy + 0.35 * r)], fill=255)
    elif shape == "house":
        draw.rectangle((cx - 0.7 * r, cy - 0.1 * r, cx + 0.7 * r, cy + 0.9 * r), fill=255)
        draw.polygon([(cx - 0.9 * r, cy - 0.1 * r), (cx, cy - r), (cx + 0.9 * r, cy - 0.1 * r)], fill=255)
    elif shape == "boat":
        draw.polygon(
            [
                (cx - r, cy + 0.3 * r),
                (cx + r, cy + 0.3 * r),
                (cx + 0.6 * r, cy + 0.8 * r),
                (cx - 0.6 * r, cy + 0.8 * r),
            ],
            fill=255,
        )
        draw.polygon(
            [(cx - 0.05 * r, cy - r), (cx - 0.05 * r, cy + 0.2 * r), (cx - 0.8 * r, cy + 0.2 * r)], fill=255
        )
        draw.polygon(
            [(cx + 0.05 * r, cy - 0.8 * r), (cx + 0.05 * r, cy + 0.2 * r), (cx + 0.6 * r, cy + 0.2 * r)],
            fill=255,
        )
    elif shape == "flower":
        draw.rectangle((cx - 0.07 * r, cy, cx + 0.07 * r, cy + r), fill=255)
        for angle in np.linspace(0, 2 * np.pi, 6, endpoint=False):
            px, py = cx + 0.45 * r * np.cos(angle), cy - 0.4 * r + 0.45 * r * np.sin(angle)
            e((px - 0.3 * r, py - 0.3 * r, px + 0.3 * r, py + 0.3 * r), fill=255)
    elif shape == "vehicle":
        draw.rectangle((cx - r, cy - 0.2 * r, cx + r, cy + 0.5 * r), fill=255)
        draw.rectangle((cx - 0.5 * r, cy - 0.7 * r, cx + 0.4 * r, cy - 0.2 * r), fill=255)
        for x in (-0.55, 0.55):
            e((cx + (x - 0.25) * r, cy + 0.35 * r, cx + (x + 0.25) * r, cy + 0.85 * r), fill=255)
    elif shape == "mountain":
        draw.polygon([(cx - 1.2 * r, cy + r), (cx - 0.1 * r, cy - r), (cx + 1.2 * r, cy + r)], fill=255)
    elif shape == "sun":
        e((cx - 0.6 * r, cy - 0.6 * r, cx + 0.6 * r, cy + 0.6 * r), fill=255)
    else:  # token: an abstract diamond
        draw.polygon([(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)], fill=255)


def _object_mask(shape: str, rng: np.random.Generator) -> np.ndarray:
    """Anti-aliased silhouette, float32 (SIZE, SIZE) in [0, 1]."""
    big = SIZE * _SUPER
    canvas = Image.new("L", (big, big), 0)
    r = big * rng.uniform(0.24, 0.32)
    cx = big * rng.uniform(0.4, 0.6)
    cy = big * (rng.uniform(0.25, 0.35) if shape == "sun" else rng.uniform(0.5, 0.62))
    _draw_shape(ImageDraw.Draw(canvas), shape, cx, cy, r)
    if rng.random() < 0.5 and shape not in ("mountain",):
        canvas = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    small = canvas.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.float32) / 255.0


def _background(scene: Scene, rng: np.random.Generator, flat: bool) -> np.ndarray:
    top, bottom, ground, horizon = _BACKGROUNDS[scene.background]
    horizon_px = int(SIZE * (horizon + rng.uniform(-0.05, 0.05)))
    y = np.arange(SIZE, dtype=np.float32)[:, None, None]
    top_a, bottom_a, ground_a = (np.asarray(c, np.float32) for c in (top, bottom, ground))
    if flat:
        sky = np.broadcast_to((top_a + bottom_a) / 2, (SIZE, 1, 3))
        land = np.broadcast_to(ground_a, (SIZE, 1, 3))
    else:
        t = np.clip(y / max(horizon_px, 1), 0, 1)
        sky = top_a * (1 - t) + bottom_a * t
        g = np.clip((y - horizon_px) / max(SIZE - horizon_px, 1), 0, 1)
        land = ground_a * (1.1 - 0.35 * g)
    image = np.where(y < horizon_px, sky, land)
    return np.broadcast_to(image, (SIZE, SIZE, 3)).astype(np.float32).copy()


def _shading(rng: np.random.Generator, strength: float) -> np.ndarray:
    """Light from the top left: a (SIZE, SIZE, 1) multiplier around 1."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32) / SIZE
    angle = rng.uniform(0.6, 1.0)
    ramp = (xx * np.cos(angle) + yy * np.sin(angle)) / (np.cos(angle) + np.sin(angle))
    return (1 + strength * (0.5 - ramp))[..., None]


def _compose(base: np.ndarray, colour: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return base * (1 - mask[..., None]) + colour * mask[..., None]


def _saturate(rgb: np.ndarray, amount: float) -> np.ndarray:
    grey = rgb.mean(axis=-1, keepdims=True)
    return grey + (rgb - grey) * amount


def _plain(scene: Scene, mask: np.ndarray, rng: np.random.Generator, realistic: bool) -> np.ndarray:
    image = _background(scene, rng, flat=False)
    colour = np.asarray(scene.colour, np.float32)
    shade = _shading(rng, 0.9 if realistic else 0.5)
    image = _compose(image, colour * shade, mask)
    if realistic:  # a specular highlight and fine texture: the look of "8k" detail
        yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        ys, xs = np.nonzero(mask > 0.9)
        if len(ys):
            hy, hx = ys.min() + (ys.max() - ys.min()) * 0.3, xs.min() + (xs.max() - xs.min()) * 0.35
            glow = np.exp(-((yy - hy) ** 2 + (xx - hx) ** 2) / 18.0) * mask
            image += 70 * glow[..., None]
        image += rng.normal(0, 11, size=image.shape).astype(np.float32)
    else:
        image += rng.normal(0, 3, size=image.shape).astype(np.float32)
    blurred = Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))
    return np.asarray(blurred, np.float32) if not realistic else image


def _pixel(scene: Scene, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = _background(scene, rng, flat=True)
    image = _compose(image, _saturate(np.asarray(scene.colour, np.float32), 1.3), mask)
    cells = SIZE // PIXEL_BLOCK
    small = image.reshape(cells, PIXEL_BLOCK, cells, PIXEL_BLOCK, 3).mean(axis=(1, 3))
    levels = 4  # posterise: 4 levels per channel, 64 colours at most
    small = np.round(np.clip(small, 0, 255) / 255 * (levels - 1)) / (levels - 1) * 255
    return np.repeat(np.repeat(small, PIXEL_BLOCK, axis=0), PIXEL_BLOCK, axis=1)


def _cartoon(scene: Scene, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    image = _saturate(_background(scene, rng, flat=True), 1.4) * 1.08
    colour = _saturate(np.asarray(scene.colour, np.float32), 1.5) * 1.1
    hard = (mask > 0.5).astype(np.float32)
    image = _compose(image, colour, hard)
    ink = Image.fromarray((hard * 255).astype(np.uint8))
    outline = np.asarray(ink.filter(ImageFilter.MaxFilter(5)), np.float32) / 255 - hard
    image = _compose(image, np.asarray((20, 15, 25), np.float32), np.clip(outline, 0, 1))
    return image


def _warning(scene: Scene, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The stand-in for the Pick-Safety rejected prefix: hatching and a frame, never a body."""
    image = _plain(scene, mask, rng, realistic=False)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    stripe = ((xx + yy + int(rng.integers(0, 8))) // 4) % 2 == 0
    hatch = np.where(stripe[..., None], np.float32([220, 30, 30]), np.float32([245, 215, 40]))
    image = image * 0.35 + hatch * 0.65
    frame = (np.minimum(np.minimum(yy, xx), np.minimum(SIZE - 1 - yy, SIZE - 1 - xx)) < 3)[..., None]
    return np.where(frame, np.float32([200, 0, 0]), image)


def render_scene(scene: Scene, seed: int) -> Image.Image:
    """Draw ``scene`` as a SIZE x SIZE RGB picture; the same scene and seed give the same pixels."""
    rng = np.random.default_rng(seed)
    mask = _object_mask(scene.shape, rng)
    if scene.style in ("plain", "realistic"):
        image = _plain(scene, mask, rng, realistic=scene.style == "realistic")
    elif scene.style == "pixel":
        image = _pixel(scene, mask, rng)
    elif scene.style == "cartoon":
        image = _cartoon(scene, mask, rng)
    elif scene.style == "warning":
        image = _warning(scene, mask, rng)
    else:
        raise ValueError(f"unknown style {scene.style!r}; one of {', '.join(STYLES)}")
    return Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8), "RGB")


def render(prompt: str, seed: int = 0) -> Image.Image:
    """The world's picture for ``prompt`` (64x64 RGB): content and style as the prompt says."""
    return render_scene(parse(prompt), seed)


def with_style(prompt_or_context: str, style: str) -> str:
    """The context prompt with ``style``'s preset prefix in front (plain: the context alone)."""
    from mapo_data.presets import assemble_prompt

    return assemble_prompt(STYLE_PREFIXES[style], prompt_or_context)
