"""Procedural stimuli for the virtual subject, with a mask per category.

A scene is first *specified* (:class:`SceneSpec`: a background and 0-3
objects with positions and sizes) and then *rendered*; the split lets the
fLoc-style localizer ask for exactly the scenes it needs while the training
set samples them at random. Painters are looked up in registries
(:data:`BACKGROUNDS`, :data:`PAINTERS`), so a new category is one function
and one table entry.

Images span :data:`model.vision.FIELD_OF_VIEW_DEG` degrees of visual angle, as the NSD
images did.
"""
from __future__ import annotations

import colorsys
import string
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..vision import CATEGORIES, OBJECT_CATEGORIES


@dataclass(frozen=True)
class ObjectSpec:
    """One object: its category, centre and height as fractions of the image side."""

    category: str
    cx: float
    cy: float
    size: float
    seed: int


@dataclass(frozen=True)
class SceneSpec:
    """A background kind, the objects painted over it, and optional block scrambling."""

    background: str
    seed: int
    objects: tuple[ObjectSpec, ...] = field(default_factory=tuple)
    scramble: bool = False


@dataclass
class Scene:
    """A rendered scene: RGB pixels, one boolean mask per category, and each object's visible pixels."""

    image: np.ndarray  # (S, S, 3) uint8
    masks: dict[str, np.ndarray]  # category -> (S, S) bool
    spec: SceneSpec
    instances: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (category, visible (S, S) bool) per object

    def mask_bits(self) -> np.ndarray:
        """The masks packed into one uint8 image (bit i = :data:`CATEGORIES`\\[i])."""
        bits = np.zeros(self.image.shape[:2], np.uint8)
        for i, name in enumerate(CATEGORIES):
            bits |= self.masks[name].astype(np.uint8) << i
        return bits


def unpack_mask_bits(bits: np.ndarray) -> np.ndarray:
    """(..., S, S) uint8 mask images -> (..., category, S, S) bool."""
    return np.stack([(bits >> i) & 1 for i in range(len(CATEGORIES))], axis=-3).astype(bool)


# --------------------------------------------------------------------------
# Sampling scene specifications
# --------------------------------------------------------------------------

def sample_scene(rng: np.random.Generator, p_place: float = 0.4) -> SceneSpec:
    """A random training scene: texture or room background with 0-3 objects."""
    background = "place" if rng.random() < p_place else "texture"
    n_objects = int(rng.choice(4, p=(0.1, 0.4, 0.3, 0.2)))
    objects = []
    for _ in range(n_objects):
        category = OBJECT_CATEGORIES[int(rng.integers(len(OBJECT_CATEGORIES)))]
        size = float(rng.uniform(0.18, 0.5))
        cx, cy = rng.uniform(0.1, 0.9, size=2)
        objects.append(ObjectSpec(category, float(cx), float(cy), size, int(rng.integers(2**31))))
    return SceneSpec(background, int(rng.integers(2**31)), tuple(objects))


# --------------------------------------------------------------------------
# Backgrounds
# --------------------------------------------------------------------------

def _smooth_field(rng: np.random.Generator, size: int, cycles: float) -> np.ndarray:
    """Low-pass Gaussian noise with unit variance, features of about 1/cycles the image."""
    fy, fx = np.fft.fftfreq(size) * size, np.fft.rfftfreq(size) * size
    radius = np.hypot(fy[:, None], fx[None, :])
    spectrum = np.fft.rfft2(rng.standard_normal((size, size))) * np.exp(-(radius / cycles) ** 2)
    out = np.fft.irfft2(spectrum, s=(size, size))
    return (out - out.mean()) / (out.std() + 1e-8)


def _band_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Band-pass, optionally oriented noise with unit variance."""
    fy, fx = np.meshgrid(np.fft.fftfreq(size) * size, np.fft.rfftfreq(size) * size, indexing="ij")
    radius = np.hypot(fx, fy) + 1e-6
    f0 = rng.uniform(4, 0.18 * size)
    theta0 = rng.uniform(0, np.pi)
    orient = rng.uniform(0, 3)
    gain = np.exp(-np.log(radius / f0) ** 2 / (2 * 0.45**2))
    gain *= np.exp(orient * (np.cos(2 * (np.arctan2(fy, fx) - theta0)) - 1))
    out = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * gain, s=(size, size))
    return out / (out.std() + 1e-8)


def _texture_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Natural-ish texture whose contrast varies smoothly and strongly across the field."""
    envelope = 1 / (1 + np.exp(-2.5 * _smooth_field(rng, size, rng.uniform(1.5, 4))))
    envelope = 0.03 + 0.97 * envelope**2
    lum = 0.5 + rng.uniform(-0.15, 0.15) + 0.22 * envelope * _band_texture(rng, size)
    tint = rng.uniform(0.6, 1.0, size=3)
    rgb = np.clip(lum[..., None] * tint / tint.mean(), 0, 1)
    return (rgb * 255).astype(np.uint8), np.zeros((size, size), bool)


def _shade(colour: np.ndarray, factor: float) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.clip(colour * factor, 0, 255))


def _place_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A room in perspective: floor with tiles, walls, ceiling, a window or door."""
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    vx, vy = size * (0.5 + rng.uniform(-0.18, 0.18)), size * (0.5 + rng.uniform(-0.15, 0.15))
    bw, bh = size * rng.uniform(0.1, 0.28), size * rng.uniform(0.08, 0.22)
    left, right, top, bottom = vx - bw, vx + bw, vy - bh, vy + bh
    wall = rng.uniform(120, 235, size=3)
    floor = rng.uniform(50, 170, size=3) * np.array([1.0, 0.85, 0.7])
    s = size - 1
    draw.polygon([(0, 0), (s, 0), (right, top), (left, top)], fill=_shade(wall, 1.08))
    draw.polygon([(0, 0), (left, top), (left, bottom), (0, s)], fill=_shade(wall, 0.8))
    draw.polygon([(s, 0), (right, top), (right, bottom), (s, s)], fill=_shade(wall, 0.92))
    draw.polygon([(0, s), (s, s), (right, bottom), (left, bottom)], fill=_shade(floor, 1.0))
    draw.rectangle([left, top, right, bottom], fill=_shade(wall, 1.0))
    line = _shade(floor, 0.6)
    for t in np.linspace(-1.5, 2.5, int(rng.integers(5, 12))):
        draw.line([(vx + (t - 0.5) * 2 * bw, bottom), (vx + (t - 0.5) * 2 * size, size * 2)], fill=line, width=max(1, size // 150))
    for depth in np.geomspace(0.08, 1.0, int(rng.integers(3, 7))):
        y = bottom + (s - bottom) * depth
        draw.line([(0, y), (s, y)], fill=line, width=max(1, size // 150))
    # a window or a door on the back wall or a side wall
    wx = rng.uniform(left, right - 0.3 * bw)
    if rng.random() < 0.5:
        draw.rectangle([wx, top + 0.2 * bh, wx + 0.5 * bw, top + 0.9 * bh], fill=(170, 205, 235), outline=(70, 60, 50), width=max(1, size // 100))
    else:
        draw.rectangle([wx, bottom - 1.4 * bh, wx + 0.45 * bw, bottom], fill=_shade(floor, 0.7))
    rgb = np.asarray(img).astype(np.float32)
    rgb *= 1 + 0.06 * _smooth_field(rng, size, 3)[..., None]
    return np.clip(rgb, 0, 255).astype(np.uint8), np.ones((size, size), bool)


def _grey_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Uniform mid-grey, for localizer stimuli."""
    return np.full((size, size, 3), 128, np.uint8), np.zeros((size, size), bool)


Background = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]
BACKGROUNDS: dict[str, Background] = {
    "texture": _texture_background,
    "place": _place_background,
    "grey": _grey_background,
}


# --------------------------------------------------------------------------
# Objects: each painter draws opaque shapes on a transparent layer
# --------------------------------------------------------------------------

#: What the painted stimuli carry besides their categories, which an encoder (and its maps) can pick up:
#: reports state these next to the results they can bias.
STIMULUS_CONFOUNDS = {
    "hands as faces": "the headless bodies have bare arms and hands painted in the faces' skin colours, so an "
                      "encoder can take skin for faces: face ROIs' attributions may light up on the bodies' hands",
    "contrast of text": "rendered words carry the most luminance contrast of the categories, so attention or a "
                        "localizer contrast driven by low-level contrast favours words in every ROI",
}
SKIN = np.array([[255, 219, 172], [241, 194, 125], [224, 172, 105], [198, 134, 66], [141, 85, 36], [92, 56, 32]], float)
#: a face's skin is one of :data:`SKIN` times a gain drawn from this range
FACE_SKIN_GAIN = (0.9, 1.05)


def _paint_face(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, s: float) -> None:
    skin = SKIN[rng.integers(len(SKIN))] * rng.uniform(*FACE_SKIN_GAIN)
    w = 0.72 * s
    if rng.random() < 0.75:
        hair = rng.uniform(10, 120, size=3)
        draw.ellipse([cx - 0.56 * w, cy - 0.58 * s, cx + 0.56 * w, cy + 0.2 * s], fill=_shade(hair, 1))
    draw.ellipse([cx - w / 2, cy - s / 2, cx + w / 2, cy + s / 2], fill=_shade(skin, 1))
    iris = _shade(rng.uniform(20, 120, size=3), 1)
    for side in (-1, 1):
        ex, ey = cx + side * 0.2 * s, cy - 0.08 * s
        draw.ellipse([ex - 0.09 * s, ey - 0.045 * s, ex + 0.09 * s, ey + 0.045 * s], fill=(245, 245, 240))
        draw.ellipse([ex - 0.04 * s, ey - 0.04 * s, ex + 0.04 * s, ey + 0.04 * s], fill=iris)
        draw.line([(ex - 0.1 * s, ey - 0.1 * s), (ex + 0.1 * s, ey - 0.11 * s)], fill=_shade(skin, 0.35), width=max(1, int(0.03 * s)))
    draw.line([(cx, cy - 0.02 * s), (cx - 0.04 * s, cy + 0.12 * s), (cx + 0.03 * s, cy + 0.13 * s)], fill=_shade(skin, 0.7), width=max(1, int(0.02 * s)))
    draw.ellipse([cx - 0.13 * s, cy + 0.2 * s, cx + 0.13 * s, cy + 0.28 * s], fill=(150, 40, 50))


TROUSERS = np.array([[40, 60, 110], [30, 30, 35], [150, 130, 90], [90, 90, 95], [60, 45, 35]], float)


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A desaturated clothing colour (objects get saturated ones: colour helps tell them apart)."""
    grey = rng.uniform(70, 190)
    return 0.45 * rng.uniform(0, 255, size=3) + 0.55 * grey


def _paint_body(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, s: float) -> None:
    """A headless body in a striped T-shirt: bare arms, trousers, shoes, in varied postures.

    The torso is large and its stripes are near black or much lighter than
    the muted shirt: with thinner limbs and low-contrast stripes, a frozen random
    ViT's tokens decoded body coverage at r 0.44 (faces 0.64), too weakly for
    a trained encoder's predictions to carry the body ROIs' preference; these
    proportions raise it to 0.60 (docs/accuracy.md, "The virtual subject's bodies").
    """
    skin = _shade(SKIN[rng.integers(len(SKIN))], 1)
    shirt = _shade(_muted(rng), 1)
    trousers = _shade(TROUSERS[rng.integers(len(TROUSERS))] * rng.uniform(0.85, 1.15), 1)
    top = cy - 0.45 * s
    tw, th = 0.5 * s, 0.5 * s
    limb = max(2, int(0.17 * s))
    draw.rectangle([cx - 0.05 * s, top - 0.05 * s, cx + 0.05 * s, top + 0.02 * s], fill=skin)
    for side in (-1, 1):
        angle = np.deg2rad(rng.uniform(10, 160))
        sx, sy = cx + side * tw / 2, top + 0.05 * s
        ex, ey = sx + side * 0.22 * s * np.sin(angle) * 0.8, sy + 0.22 * s * np.cos(angle)
        angle2 = angle + np.deg2rad(rng.uniform(-60, 60))
        hx, hy = ex + side * 0.2 * s * np.sin(angle2) * 0.8, ey + 0.2 * s * np.cos(angle2)
        draw.line([(sx, sy), (ex, ey), (hx, hy)], fill=skin, width=int(limb * 0.85), joint="curve")
        draw.ellipse([hx - limb * 0.6, hy - limb * 0.6, hx + limb * 0.6, hy + limb * 0.6], fill=skin)
        leg = np.deg2rad(rng.uniform(0, 30))
        lx, ly = cx + side * tw * 0.28, top + th
        kx, ky = lx + side * 0.22 * s * np.sin(leg), ly + 0.25 * s * np.cos(leg)
        fx, fy = kx + side * 0.05 * s * rng.uniform(-1, 2), ky + 0.25 * s
        draw.line([(lx, ly), (kx, ky), (fx, fy)], fill=trousers, width=int(limb * 1.2), joint="curve")
        draw.ellipse([fx - 0.07 * s, fy - 0.03 * s, fx + 0.07 * s, fy + 0.03 * s], fill=(40, 30, 25))
    draw.rounded_rectangle([cx - tw / 2, top, cx + tw / 2, top + th], radius=0.06 * s, fill=shirt)
    stripe = _shade(np.asarray(shirt, float), rng.choice([0.2, 3.0]))
    period = max(2.0, th / rng.integers(4, 8))
    for y in np.arange(top + period / 2, top + th - period / 4, period):  # a striped shirt
        draw.rectangle([cx - tw / 2, y, cx + tw / 2, y + period / 2], fill=stripe)


_FONT_CACHE: dict[int, ImageFont.FreeTypeFont] = {}


def _font(px: int) -> ImageFont.FreeTypeFont:
    if px not in _FONT_CACHE:
        _FONT_CACHE[px] = ImageFont.load_default(size=px)
    return _FONT_CACHE[px]


def _paint_word(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, s: float) -> None:
    """A sign: a light plaque with one or two lines of random letters."""
    font = _font(max(6, int(0.3 * s)))
    n_lines = int(rng.integers(1, 3))
    text = "\n".join("".join(rng.choice(list(string.ascii_lowercase), size=int(rng.integers(4, 9))))
                     for _ in range(n_lines))
    x0, y0, x1, y1 = draw.multiline_textbbox((0, 0), text, font=font)
    margin = 0.08 * s
    left, top = cx - (x1 - x0) / 2 - margin, cy - (y1 - y0) / 2 - margin
    paper = rng.uniform(200, 255, size=3)
    draw.rectangle([left, top, left + (x1 - x0) + 2 * margin, top + (y1 - y0) + 2 * margin], fill=_shade(paper, 1))
    draw.multiline_text((left + margin - x0, top + margin - y0), text, font=font, fill=_shade(rng.uniform(0, 70, size=3), 1))


def _paint_object(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cx: float, cy: float, s: float) -> None:
    """A non-category object: a coloured blob, star or cup."""
    colour = np.array(colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0))) * 255
    kind = int(rng.integers(3))
    if kind == 0:
        n = int(rng.integers(5, 10))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = s / 2 * rng.uniform(0.55, 1.0, n)
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)], fill=_shade(colour, 1))
    elif kind == 1:
        n = int(rng.integers(4, 8))
        angles = np.linspace(0, 2 * np.pi, 2 * n, endpoint=False) + rng.uniform(0, np.pi)
        radii = np.where(np.arange(2 * n) % 2 == 0, s / 2, s / 2 * rng.uniform(0.3, 0.6))
        draw.polygon([(cx + r * np.cos(a), cy + r * np.sin(a)) for a, r in zip(angles, radii)], fill=_shade(colour, 1))
    else:
        w = 0.55 * s
        draw.ellipse([cx + w / 2 - 0.12 * s, cy - 0.2 * s, cx + w / 2 + 0.25 * s, cy + 0.2 * s], outline=_shade(colour, 0.7), width=max(2, int(0.07 * s)))
        draw.rectangle([cx - w / 2, cy - s / 2 + 0.1 * s, cx + w / 2, cy + s / 2 - 0.05 * s], fill=_shade(colour, 1))
        draw.rectangle([cx - w / 2, cy - 0.1 * s, cx + w / 2, cy + 0.02 * s], fill=_shade(colour, 0.6))


Painter = Callable[[ImageDraw.ImageDraw, np.random.Generator, float, float, float], None]
PAINTERS: dict[str, Painter] = {
    "face": _paint_face,
    "body": _paint_body,
    "word": _paint_word,
    "object": _paint_object,
}


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

def render_scene(spec: SceneSpec, size: int) -> Scene:
    """Render ``spec`` at ``size`` x ``size`` pixels, with its category masks."""
    rng = np.random.default_rng(spec.seed)
    pixels, layout = BACKGROUNDS[spec.background](rng, size)
    canvas = Image.fromarray(pixels).convert("RGBA")
    masks = {name: np.zeros((size, size), bool) for name in CATEGORIES}
    instances: list[tuple[str, np.ndarray]] = []
    for obj in spec.objects:
        layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        PAINTERS[obj.category](ImageDraw.Draw(layer), np.random.default_rng(obj.seed),
                               obj.cx * size, obj.cy * size, obj.size * size)
        covered = np.asarray(layer)[..., 3] > 0
        for name in OBJECT_CATEGORIES:  # a later object occludes earlier ones
            masks[name] &= ~covered
        for _, visible in instances:
            visible &= ~covered
        masks[obj.category] |= covered
        instances.append((obj.category, covered.copy()))
        canvas.alpha_composite(layer)
    image = np.asarray(canvas.convert("RGB")).copy()
    masks["place"] = layout & ~np.any([masks[c] for c in OBJECT_CATEGORIES], axis=0)
    if spec.scramble:
        image = _block_scramble(image, rng, blocks=8)
        masks = {name: np.zeros_like(m) for name, m in masks.items()}
        instances = []
    return Scene(image, masks, spec, [(c, m) for c, m in instances if m.any()])


def _block_scramble(image: np.ndarray, rng: np.random.Generator, blocks: int) -> np.ndarray:
    """Shuffle the image's blocks: keeps local statistics, destroys objects."""
    size = image.shape[0]
    edges = np.linspace(0, size, blocks + 1).astype(int)
    cells = [(edges[i], edges[i + 1], edges[j], edges[j + 1]) for i in range(blocks) for j in range(blocks)]
    out = image.copy()
    for (y0, y1, x0, x1), k in zip(cells, rng.permutation(len(cells))):
        sy0, sy1, sx0, sx1 = cells[k]
        h, w = min(y1 - y0, sy1 - sy0), min(x1 - x0, sx1 - sx0)
        out[y0:y0 + h, x0:x0 + w] = image[sy0:sy0 + h, sx0:sx0 + w]
    return out
