"""Synthetic Market-1501-like data: drawn pedestrians with known identities and attributes.

Every identity has a fixed :class:`Appearance` (its 27 attributes plus identity-only cues: skin
tone, shoe colour, shirt pattern, build, hair/hat/bag colours) that persists across cameras.
Cameras change lighting (gain, colour cast), background, blur and noise; every image also jitters
scale, position, view (front/back), mirroring and leg stride. What is drawn matches the
attributes in file encoding (1 = no, 2 = yes, age 1-4):

* ``age``: body height and head-to-body ratio (young = short with a big head); old = grey hair.
* ``gender`` (2 = female): narrower shoulders and waist, wider hips; long hair is more likely.
* ``hair`` (2 = long, as in the real annotations): strands beside the face to below the
  shoulders (front) or a sheet over the upper back (back view).
* ``hat``: crown over the top of the head plus a brim wider than the head.
* ``up`` (2 = short sleeves): sleeves end above the elbow, forearms in skin colour.
* ``down`` (2 = short): shorts end above the knee / a knee-length skirt; long = ankle length.
* ``clothes`` (1 = dress/skirt): a flared skirt instead of two trouser legs.
* ``backpack``: straps on the chest and the pack behind the shoulders (front view), the pack
  over the upper back (back view). ``bag``: a diagonal strap and a bag at the hip.
  ``handbag``: a small bag with a handle hanging from one hand.
* ``up<colour>`` / ``down<colour>``: garment pixels are the exact :data:`PALETTE` colour before
  lighting (a shirt pattern covers under half the shirt in a contrasting shade of that colour).
  Identities with no colour marked wear an off-palette colour (orange, teal, ...), or for shirts
  multicolour bands.

A *domain* (:class:`Domain`, :data:`DOMAINS`) is the camera network: the scenes' colours and the
ranges each camera draws its lighting, noise and blur from. ``"market"`` (the default) is the
world above; ``"night"`` is another network (dim warm light, dark scenes, blurrier and noisier
cameras) for domain adaptation: train on one, adapt to the other with other identities
(another seed).

Layouts written by :func:`write_synthetic` follow the course's and Market-1501's file naming; see
``tfmarket.data.filenames``. NumPy and Pillow only: no TensorFlow import.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tfmarket.attributes import (
    AGE_CLASSES,
    BINARY_ATTRIBUTES,
    COLUMNS,
    LOWER_COLORS,
    NO_COLOR,
    UPPER_COLORS,
)
from tfmarket.data.domains import DEFAULT_DOMAIN, DOMAINS, Domain

RGB = tuple[int, int, int]

# Garment colours, exactly as drawn before lighting (one entry for every palette name).
PALETTE: dict[str, RGB] = {
    "black": (25, 25, 25),
    "white": (235, 235, 235),
    "red": (200, 30, 35),
    "purple": (120, 50, 150),
    "yellow": (235, 205, 40),
    "gray": (128, 128, 128),
    "blue": (35, 70, 185),
    "green": (40, 140, 60),
    "pink": (240, 145, 185),
    "brown": (120, 75, 35),
}
# Colours used for identities with no colour marked ("none"): none of them is a palette colour
# of the garment they are used for (red is an upper colour only).
OFF_PALETTE: dict[str, RGB] = {
    "orange": (240, 125, 20),
    "teal": (0, 150, 150),
    "lime": (160, 220, 30),
    "magenta": (220, 40, 200),
}
UPPER_NONE_CHOICES = ("orange", "teal", "multicolour")
LOWER_NONE_CHOICES = ("orange", "teal", "red")

# Identity-level priors: Market-like, but rare classes are made frequent enough to learn.
AGE_PRIOR = (0.06, 0.60, 0.28, 0.06)
FEMALE_PRIOR = 0.45
UPPER_PRIOR = (0.14, 0.24, 0.10, 0.05, 0.08, 0.12, 0.09, 0.08, 0.10)  # UPPER_COLORS + none
LOWER_PRIOR = (0.30, 0.07, 0.04, 0.03, 0.03, 0.13, 0.20, 0.04, 0.06, 0.10)  # LOWER + none

SKIN_TONES: tuple[RGB, ...] = (
    (250, 215, 185),
    (235, 190, 150),
    (210, 160, 120),
    (175, 125, 90),
    (135, 90, 60),
    (95, 65, 45),
)
HAIR_COLORS: tuple[RGB, ...] = ((20, 15, 10), (55, 35, 20), (95, 60, 30), (185, 150, 90))
GREY_HAIR: tuple[RGB, ...] = ((165, 165, 165), (205, 205, 200))
SHOE_COLORS: tuple[RGB, ...] = (
    (20, 20, 20),
    (240, 240, 240),
    (110, 70, 40),
    (90, 90, 100),
    (30, 40, 110),
    (180, 30, 30),
)
HAT_COLORS: tuple[RGB, ...] = (
    (20, 20, 20),
    (240, 240, 240),
    (30, 40, 110),
    (190, 40, 40),
    (200, 180, 130),
    (60, 100, 60),
)
ITEM_COLORS: tuple[RGB, ...] = (
    (20, 20, 20),
    (70, 45, 25),
    (150, 110, 70),
    (90, 90, 95),
    (30, 40, 90),
    (160, 30, 40),
    (60, 80, 60),
)
PATTERNS = ("plain", "stripes", "checks")

# Label map values returned by render_person (what each pixel shows).
BACKGROUND, SKIN, HAIR, HAT, UPPER, LOWER, SHOE, BACKPACK, BAG, HANDBAG = range(10)
LABEL_NAMES = tuple("background skin hair hat upper lower shoe backpack bag handbag".split())
VIEWS = ("front", "back")
NEUTRAL_BACKGROUND: RGB = (170, 200, 230)
BACKGROUND_PAD = 12  # camera backgrounds are larger than an image so each image crops its own

# Field orders of the real market_attribute.mat (the two structs differ: readers must use names).
MAT_TRAIN_ORDER = tuple(
    "age backpack bag handbag downblack downblue downbrown downgray downgreen downpink downpurple "
    "downwhite downyellow upblack upblue upgreen upgray uppurple upred upwhite upyellow clothes "
    "down up hair hat gender".split()
)
MAT_TEST_ORDER = tuple(
    "age backpack bag handbag clothes down up hair hat gender upblack upwhite upred uppurple "
    "upyellow upgray upblue upgreen downblack downwhite downpink downpurple downyellow downgray "
    "downblue downgreen downbrown".split()
)
assert sorted(MAT_TRAIN_ORDER) == sorted(COLUMNS) == sorted(MAT_TEST_ORDER)
assert set(UPPER_COLORS) | set(LOWER_COLORS) <= set(PALETTE)
assert not set(OFF_PALETTE) & set(PALETTE)

LAYOUTS = ("course", "market1501")
TRUTH_FILE = "synthetic_truth.csv"
SUMMARY_FILE = "synthetic.json"  # also marks a folder as ours, so overwrite=True may replace it
JPEG_QUALITY = 90

# Body proportions per age class (young, teenager, adult, old).
_AGE_HEIGHT = (0.72, 0.95, 1.0, 0.95)
_AGE_HEAD = (0.20, 0.15, 0.135, 0.135)
_AGE_WIDTH = (1.1, 0.92, 1.0, 1.0)


# --- identities --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Appearance:
    """Everything that is fixed for one identity.

    Attribute fields (age is a class index 0-3 into ``AGE_CLASSES``; colours are palette names or
    ``"none"``) map to the annotation row by :func:`attribute_row`; the rest are identity-only
    cues that no annotation column describes.
    """

    pid: int
    age: int
    female: bool
    long_hair: bool
    hat: bool
    dress: bool
    short_lower: bool
    short_sleeves: bool
    backpack: bool
    bag: bool
    handbag: bool
    upper_color: str
    lower_color: str
    upper_rgb: RGB
    lower_rgb: RGB
    upper_bands: tuple[RGB, ...]  # three colours for a multicolour shirt, else empty
    skin_rgb: RGB
    hair_rgb: RGB
    hat_rgb: RGB
    shoe_rgb: RGB
    backpack_rgb: RGB
    bag_rgb: RGB
    handbag_rgb: RGB
    pattern: str
    pattern_period: int
    build: float
    height_factor: float


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _garment_color(
    rng: np.random.Generator, names: tuple[str, ...], prior, none_choices: tuple[str, ...]
) -> tuple[str, RGB, tuple[RGB, ...]]:
    """(name or "none", drawn colour, multicolour bands)."""
    name = (*names, NO_COLOR)[int(rng.choice(len(names) + 1, p=prior))]
    if name != NO_COLOR:
        return name, PALETTE[name], ()
    other = _pick(rng, none_choices)
    if other == "multicolour":
        keys = rng.choice(len(OFF_PALETTE), 3, replace=False)
        bands = tuple(tuple(OFF_PALETTE[list(OFF_PALETTE)[k]]) for k in keys)
        return name, bands[0], bands
    return name, OFF_PALETTE.get(other) or PALETTE[other], ()


def sample_appearance(pid: int, rng: np.random.Generator) -> Appearance:
    """Draws one identity's attributes and cues from the Market-like priors."""
    female = bool(rng.random() < FEMALE_PRIOR)
    age = int(rng.choice(len(AGE_CLASSES), p=AGE_PRIOR))
    dress = female and bool(rng.random() < 0.3)
    upper_color, upper_rgb, bands = _garment_color(
        rng, UPPER_COLORS, UPPER_PRIOR, UPPER_NONE_CHOICES
    )
    lower_color, lower_rgb, _ = _garment_color(rng, LOWER_COLORS, LOWER_PRIOR, LOWER_NONE_CHOICES)
    hair_rgb = (
        _pick(rng, GREY_HAIR)
        if age == 3
        else HAIR_COLORS[int(rng.choice(len(HAIR_COLORS), p=(0.55, 0.25, 0.12, 0.08)))]
    )
    return Appearance(
        pid=int(pid),
        age=age,
        female=female,
        long_hair=bool(rng.random() < (0.85 if female else 0.05)),
        hat=bool(rng.random() < 0.15),
        dress=dress,
        short_lower=bool(rng.random() < (0.8 if dress else 0.45)),
        short_sleeves=bool(rng.random() < 0.7),
        backpack=bool(rng.random() < 0.25),
        bag=bool(rng.random() < 0.22),
        handbag=bool(rng.random() < (0.2 if female else 0.06)),
        upper_color=upper_color,
        lower_color=lower_color,
        upper_rgb=upper_rgb,
        lower_rgb=lower_rgb,
        upper_bands=bands,
        skin_rgb=_pick(rng, SKIN_TONES),
        hair_rgb=hair_rgb,
        hat_rgb=_pick(rng, HAT_COLORS),
        shoe_rgb=_pick(rng, SHOE_COLORS),
        backpack_rgb=_pick(rng, ITEM_COLORS),
        bag_rgb=_pick(rng, ITEM_COLORS),
        handbag_rgb=_pick(rng, ITEM_COLORS),
        pattern=PATTERNS[int(rng.choice(3, p=(0.5, 0.3, 0.2)))],
        pattern_period=int(rng.integers(4, 8)),
        build=float(rng.uniform(0.9, 1.12)),
        height_factor=float(rng.uniform(0.96, 1.04)),
    )


def identity_appearance(seed: int, pid: int) -> Appearance:
    """The appearance :func:`write_synthetic` gives identity ``pid`` for ``seed``."""
    return sample_appearance(pid, np.random.default_rng([seed, 1, pid]))


def attribute_row(appearance: Appearance) -> np.ndarray:
    """The identity's annotation row: int64 [27] in ``COLUMNS`` order and file encoding."""
    a = appearance
    yes = {
        "backpack": a.backpack,
        "bag": a.bag,
        "handbag": a.handbag,
        "clothes": not a.dress,  # 2 = pants
        "down": a.short_lower,
        "up": a.short_sleeves,
        "hair": a.long_hair,
        "hat": a.hat,
        "gender": a.female,
    }
    assert set(yes) == set(BINARY_ATTRIBUTES)
    values = {"age": a.age + 1, **{k: 2 if v else 1 for k, v in yes.items()}}
    values.update({"up" + c: 2 if c == a.upper_color else 1 for c in UPPER_COLORS})
    values.update({"down" + c: 2 if c == a.lower_color else 1 for c in LOWER_COLORS})
    return np.array([values[c] for c in COLUMNS], dtype=np.int64)


# --- cameras -----------------------------------------------------------------------------------


def get_domain(domain: str | Domain) -> Domain:
    """A :class:`Domain` given as itself or by its name in :data:`DOMAINS` (ValueError if none)."""
    if isinstance(domain, Domain):
        return domain
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; valid domains: {', '.join(DOMAINS)}")
    return DOMAINS[domain]


@dataclasses.dataclass(frozen=True, eq=False)
class Camera:
    """How one camera sees people.

    Attributes:
        index: camera number (1-9).
        background: uint8 [H + 2 * BACKGROUND_PAD, W + 2 * BACKGROUND_PAD, 3] scene behind people.
        gain: brightness multiplier. cast: per-channel (R, G, B) multiplier.
        noise: std of per-pixel Gaussian noise. blur: Gaussian blur radius (0 = sharp).
        jitter: whether images vary pose, view, scale and position (False draws a canonical pose).
    """

    index: int
    background: np.ndarray
    gain: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    noise: float = 0.0
    blur: float = 0.0
    jitter: bool = False


def _muted(rng: np.random.Generator, domain: Domain = DOMAINS[DEFAULT_DOMAIN]) -> np.ndarray:
    """A scene colour (low-saturation in the default domain): float [3]."""
    grey = rng.uniform(*domain.scene_brightness)
    return np.clip(grey + rng.normal(0, domain.scene_chroma, 3), 0, 255)


def _camera_background(
    rng: np.random.Generator, height: int, width: int, domain: Domain = DOMAINS[DEFAULT_DOMAIN]
) -> np.ndarray:
    """A wall/ground scene with shading, paving lines and clutter: uint8 [height, width, 3]."""
    horizon = int(height * rng.uniform(0.45, 0.7))
    scene = np.empty((height, width, 3), np.float32)
    scene[:horizon] = _muted(rng, domain)
    scene[horizon:] = _muted(rng, domain)
    coarse = rng.normal(0, 16, (height // 16 + 2, width // 16 + 2)).astype(np.float32)
    shade = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))
    scene += shade[..., None]
    rows = np.arange(height - horizon)
    scene[horizon:][rows % int(rng.integers(6, 14)) == 0] *= 0.8
    image = Image.fromarray(np.clip(scene, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):  # windows, doors, parked things
        x0, y0 = rng.uniform(0, width), rng.uniform(0, horizon)
        w, h = rng.uniform(4, width / 3), rng.uniform(4, height / 4)
        draw.rectangle([x0, y0, x0 + w, y0 + h], fill=tuple(_muted(rng, domain).astype(int)))
    for _ in range(int(rng.integers(0, 3))):  # poles
        x0, colour = rng.uniform(0, width), tuple(_muted(rng, domain).astype(int))
        draw.rectangle([x0, 0, x0 + rng.uniform(2, 5), horizon], fill=colour)
    return np.asarray(image)


def make_camera(
    index: int,
    seed: int = 0,
    height: int = 128,
    width: int = 64,
    domain: str | Domain = DEFAULT_DOMAIN,
) -> Camera:
    """Camera ``index`` of the synthetic world ``seed`` in camera network ``domain``
    (deterministic)."""
    domain = get_domain(domain)
    key = [seed, 7919, index]
    if domain.name != DEFAULT_DOMAIN:
        key.append(zlib.crc32(domain.name.encode()))
    rng = np.random.default_rng(key)
    pad = 2 * BACKGROUND_PAD
    background = _camera_background(rng, height + pad, width + pad, domain)
    limit = domain.cast_limit
    cast = np.clip(rng.normal(1.0, domain.cast_std, 3), 1 - limit, 1 + limit)
    cast = cast * np.asarray(domain.tint)
    return Camera(
        index=index,
        background=background,
        gain=float(rng.uniform(*domain.gain)),
        cast=tuple(float(c) for c in cast),
        noise=float(rng.uniform(*domain.noise)),
        blur=float(_pick(rng, domain.blur)),
        jitter=True,
    )


def neutral_camera(
    height: int = 128, width: int = 64, background: RGB = NEUTRAL_BACKGROUND
) -> Camera:
    """Plain background, no lighting change, no noise, canonical pose: pixels are exact colours."""
    pad = 2 * BACKGROUND_PAD
    scene = np.empty((height + pad, width + pad, 3), np.uint8)
    scene[:] = background
    return Camera(index=0, background=scene)


# --- drawing -----------------------------------------------------------------------------------


class Pose(NamedTuple):
    """Per-image placement: scale of the person, shift in pixels, view, mirror, leg stride, and
    the background crop offset."""

    scale: float
    dx: float
    dy: float
    view: str
    mirror: bool
    stride: float
    bg_x: int
    bg_y: int


class Rendering(NamedTuple):
    """image: uint8 [H, W, 3]; labels: uint8 [H, W] part labels (``LABEL_NAMES``)."""

    image: np.ndarray
    labels: np.ndarray


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """Body landmarks in pixels (y grows downwards)."""

    ph: float
    cx: float
    top: float
    foot: float
    ankle: float
    hd: float
    hw: float
    shoulder: float
    torso: float
    waist: float
    sw: float
    waist_half: float
    hip_half: float
    aw: float
    hand_y: float
    stride: float


def _sample_pose(
    rng: np.random.Generator, camera: Camera, view: str | None, mirror: bool | None
) -> Pose:
    # Always draw the same numbers so overriding view/mirror does not shift later draws.
    scale, dx, dy = rng.uniform(0.9, 1.02), rng.uniform(-4, 4), rng.uniform(-3, 1)
    stride, bg = rng.uniform(0, 3), rng.integers(0, 2 * BACKGROUND_PAD + 1, 2)
    random_view, random_mirror = _pick(rng, VIEWS), bool(rng.random() < 0.5)
    if not camera.jitter:
        scale, dx, dy, stride = 1.0, 0.0, 0.0, 1.0
        bg, random_view, random_mirror = (BACKGROUND_PAD, BACKGROUND_PAD), "front", False
    view = random_view if view is None else view
    if view not in VIEWS:
        raise ValueError(f"unknown view {view!r}; valid views: {', '.join(VIEWS)}")
    mirror = random_mirror if mirror is None else mirror
    return Pose(
        float(scale),
        float(dx),
        float(dy),
        view,
        bool(mirror),
        float(stride),
        int(bg[0]),
        int(bg[1]),
    )


def _geometry(app: Appearance, pose: Pose, height: int, width: int) -> _Geometry:
    ph = height * 0.86 * pose.scale * _AGE_HEIGHT[app.age] * app.height_factor
    foot = height * 0.985 - 1 + pose.dy
    top = foot - ph
    hd = ph * _AGE_HEAD[app.age]
    body = ph - hd
    shoulder = top + hd + 0.035 * body
    torso = 0.37 * body
    waist = shoulder + torso
    ankle = foot - max(2.0, 0.035 * ph)
    sw = 0.13 * ph * app.build * _AGE_WIDTH[app.age] * (0.86 if app.female else 1.0)
    return _Geometry(
        ph=ph,
        cx=width / 2 + pose.dx,
        top=top,
        foot=foot,
        ankle=ankle,
        hd=hd,
        hw=0.78 * hd,
        shoulder=shoulder,
        torso=torso,
        waist=waist,
        sw=sw,
        waist_half=sw * (0.72 if app.female else 0.88),
        hip_half=sw * (0.92 if app.female else 0.85),
        aw=max(2.5, 0.045 * ph),
        hand_y=waist + 0.14 * (ankle - waist),
        stride=pose.stride,
    )


def _leg_polygon(g: _Geometry, side: int, y0: float, y1: float, thickness: float):
    """Quadrilateral of one leg (side -1 = image left) between heights y0 and y1."""

    def edges(y: float) -> tuple[float, float]:
        t = (y - g.waist) / max(g.ankle - g.waist, 1.0)
        top_c, top_h = g.cx + side * g.hip_half / 2, g.hip_half / 2 * thickness
        bot_c = g.cx + side * (0.45 * g.hip_half + g.stride / 2)
        bot_h = 0.27 * g.hip_half * thickness
        c, h = top_c + t * (bot_c - top_c), top_h + t * (bot_h - top_h)
        return c - h, c + h

    (a0, b0), (a1, b1) = edges(y0), edges(y1)
    return [(a0, y0), (b0, y0), (b1, y1), (a1, y1)]


def _draw_lower(d: ImageDraw.ImageDraw, app: Appearance, g: _Geometry) -> None:
    leg = g.ankle - g.waist
    for side in (-1, 1):
        skin_leg = _leg_polygon(g, side, g.waist, g.ankle, 0.75)
        d.polygon(skin_leg, fill=SKIN)
        (x0, _), (x1, _) = skin_leg[3], skin_leg[2]
        d.rectangle([x0 - 1, g.ankle, x1 + 1, g.foot], fill=SHOE)
    if app.dress:
        hem = g.waist + (0.42 if app.short_lower else 0.85) * leg
        flare = 1.35 * g.hip_half
        d.polygon(
            [
                (g.cx - g.hip_half, g.waist - 1),
                (g.cx + g.hip_half, g.waist - 1),
                (g.cx + flare, hem),
                (g.cx - flare, hem),
            ],
            fill=LOWER,
        )
        return
    end = g.waist + (0.4 if app.short_lower else 1.0) * leg
    for side in (-1, 1):
        d.polygon(_leg_polygon(g, side, g.waist, end, 1.0), fill=LOWER)
    # The seat joins both legs, so trousers read as one garment.
    d.rectangle(
        [g.cx - g.hip_half, g.waist - 1, g.cx + g.hip_half, g.waist + 0.12 * leg], fill=LOWER
    )


def _draw_upper(d: ImageDraw.ImageDraw, app: Appearance, g: _Geometry) -> None:
    d.polygon(
        [
            (g.cx - g.sw, g.shoulder),
            (g.cx + g.sw, g.shoulder),
            (g.cx + g.waist_half, g.waist + 1),
            (g.cx - g.waist_half, g.waist + 1),
        ],
        fill=UPPER,
    )
    arm = g.hand_y - g.shoulder
    sleeve_end = g.shoulder + (0.35 if app.short_sleeves else 0.97) * arm
    for side in (-1, 1):
        inner, outer = g.cx + side * (g.sw - 1), g.cx + side * (g.sw + g.aw)
        x0, x1 = min(inner, outer), max(inner, outer)
        d.rectangle([x0, g.shoulder + 1, x1, g.hand_y], fill=SKIN)
        d.rectangle([x0, g.shoulder, x1, sleeve_end], fill=UPPER)
        d.ellipse([x0 - 1, g.shoulder - 0.4 * g.aw, x1, g.shoulder + g.aw], fill=UPPER)
        r = 0.6 * g.aw
        xm = (x0 + x1) / 2
        d.ellipse([xm - r, g.hand_y - r, xm + r, g.hand_y + 1.2 * r], fill=SKIN)


def _draw_head(d: ImageDraw.ImageDraw, app: Appearance, g: _Geometry, front: bool) -> None:
    x0, x1, y0, y1 = g.cx - g.hw / 2, g.cx + g.hw / 2, g.top, g.top + g.hd
    d.rectangle([g.cx - 0.22 * g.hw, y1 - 2, g.cx + 0.22 * g.hw, g.shoulder + 1], fill=SKIN)
    d.ellipse([x0, y0, x1, y1], fill=HAIR)
    if app.long_hair:
        bottom = g.shoulder + (0.35 if front else 0.45) * g.torso
        if front:  # strands beside the face, over the shoulders
            strand = 0.28 * g.hw
            d.rectangle([x0 - 1, y0 + 0.3 * g.hd, x0 + strand, bottom], fill=HAIR)
            d.rectangle([x1 - strand, y0 + 0.3 * g.hd, x1 + 1, bottom], fill=HAIR)
        else:
            d.rectangle([x0 - 1, y0 + 0.3 * g.hd, x1 + 1, bottom], fill=HAIR)
    if front:
        d.ellipse([x0 + 0.5, y0 + 0.28 * g.hd, x1 - 0.5, y1], fill=SKIN)
    if app.hat:
        d.chord([x0 - 1, y0 - 0.22 * g.hd, x1 + 1, y0 + 0.75 * g.hd], 180, 360, fill=HAT)
        brim_y = y0 + 0.22 * g.hd
        d.rectangle(
            [x0 - 0.25 * g.hw, brim_y, x1 + 0.25 * g.hw, brim_y + max(1.5, 0.09 * g.hd)], fill=HAT
        )


def _draw_carried(d: ImageDraw.ImageDraw, app: Appearance, g: _Geometry, front: bool) -> None:
    if app.backpack:
        if front:  # straps; the pack itself was drawn behind the body
            for side in (-1, 1):
                x = g.cx + side * 0.55 * g.sw
                d.rectangle([x - 1, g.shoulder, x + 1, g.shoulder + 0.65 * g.torso], fill=BACKPACK)
        else:
            d.rounded_rectangle(
                [
                    g.cx - 0.72 * g.sw,
                    g.shoulder + 0.05 * g.torso,
                    g.cx + 0.72 * g.sw,
                    g.shoulder + 0.85 * g.torso,
                ],
                radius=2,
                fill=BACKPACK,
            )
    if app.bag:
        d.line(
            [(g.cx - 0.7 * g.sw, g.shoulder), (g.cx + 0.9 * g.hip_half, g.waist)], fill=BAG, width=2
        )
        d.rectangle(
            [
                g.cx + 0.55 * g.hip_half,
                g.waist - 0.1 * g.torso,
                g.cx + g.hip_half + 0.55 * g.sw,
                g.waist + 0.45 * g.torso,
            ],
            fill=BAG,
        )
    if app.handbag:
        hx = g.cx - g.sw - g.aw / 2
        top, half = g.hand_y + 0.12 * g.torso, 0.42 * g.sw
        d.line([(hx - 0.5 * half, top), (hx, g.hand_y), (hx + 0.5 * half, top)], fill=HANDBAG)
        d.polygon(
            [
                (hx - 0.8 * half, top),
                (hx + 0.8 * half, top),
                (hx + half, top + 0.4 * g.torso),
                (hx - half, top + 0.4 * g.torso),
            ],
            fill=HANDBAG,
        )


def _draw_labels(app: Appearance, g: _Geometry, view: str, height: int, width: int) -> np.ndarray:
    """Part labels of one person: uint8 [height, width]; later parts occlude earlier ones."""
    canvas = Image.new("L", (width, height), BACKGROUND)
    d = ImageDraw.Draw(canvas)
    front = view == "front"
    if app.backpack and front:  # the pack shows above the shoulders, behind the head
        d.rectangle(
            [
                g.cx - 0.85 * g.sw,
                g.shoulder - 0.14 * g.torso,
                g.cx + 0.85 * g.sw,
                g.shoulder + 0.7 * g.torso,
            ],
            fill=BACKPACK,
        )
    _draw_lower(d, app, g)
    _draw_upper(d, app, g)
    _draw_head(d, app, g, front)
    _draw_carried(d, app, g, front)
    return np.asarray(canvas)


def _contrast(rgb: RGB) -> np.ndarray:
    """A shade of ``rgb`` that stands out on it (darker on light colours, lighter on dark)."""
    c = np.asarray(rgb, np.float32)
    if c @ np.array([0.299, 0.587, 0.114], np.float32) > 100:
        return (c * 0.62).astype(np.uint8)
    return (c + (255 - c) * 0.4).astype(np.uint8)


def _colourise(app: Appearance, g: _Geometry, labels: np.ndarray) -> np.ndarray:
    """Part labels [H, W] -> person colours uint8 [H, W, 3] (background left black)."""
    lut = np.zeros((len(LABEL_NAMES), 3), np.uint8)
    for label, rgb in (
        (SKIN, app.skin_rgb),
        (HAIR, app.hair_rgb),
        (HAT, app.hat_rgb),
        (UPPER, app.upper_rgb),
        (LOWER, app.lower_rgb),
        (SHOE, app.shoe_rgb),
        (BACKPACK, app.backpack_rgb),
        (BAG, app.bag_rgb),
        (HANDBAG, app.handbag_rgb),
    ):
        lut[label] = rgb
    image = lut[labels]
    upper = labels == UPPER
    rows = np.arange(labels.shape[0])[:, None] - round(g.shoulder)
    cols = np.arange(labels.shape[1])[None, :] - round(g.cx)
    if app.upper_bands:
        band = np.clip(rows * 3 // max(round(g.torso), 3), 0, 2)
        colours = np.asarray(app.upper_bands, np.uint8)[band[:, 0]]  # [H, 3]
        image[upper] = np.broadcast_to(colours[:, None], image.shape)[upper]
    elif app.pattern != "plain":
        period = max(4, round(app.pattern_period * g.ph / 110))
        if app.pattern == "stripes":
            lines = np.broadcast_to(rows % period < (1 if period < 6 else 2), labels.shape)
        else:  # checks: one-pixel lines, so under half the shirt is covered
            lines = (rows % period == 0) | (cols % period == 0)
        image[upper & lines] = _contrast(app.upper_rgb)
    return image


def _apply_camera(
    image: np.ndarray, camera: Camera, rng: np.random.Generator, gain_jitter: float
) -> np.ndarray:
    """Camera blur, lighting and sensor noise: uint8 [H, W, 3] -> uint8 [H, W, 3]."""
    if camera.blur > 0:
        image = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(camera.blur)))
    if camera.gain == 1 and camera.cast == (1.0, 1.0, 1.0) and camera.noise == 0:
        return image
    out = image.astype(np.float32) * (
        camera.gain * gain_jitter * np.asarray(camera.cast, np.float32)
    )
    if camera.noise > 0:
        out += rng.normal(0, camera.noise, out.shape).astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _render(
    app: Appearance | None,
    camera: Camera,
    pose: Pose,
    rng: np.random.Generator,
    height: int,
    width: int,
) -> Rendering:
    """Person ``app`` (or nobody) over the camera's background, then the camera's effects."""
    pad = 2 * BACKGROUND_PAD
    if camera.background.shape[:2] != (height + pad, width + pad):
        raise ValueError(
            f"camera background is {camera.background.shape[:2]}, expected "
            f"{(height + pad, width + pad)} for {height}x{width} images (make it for that size)"
        )
    if app is None:
        labels = np.zeros((height, width), np.uint8)
        person = np.zeros((height, width, 3), np.uint8)
    else:
        g = _geometry(app, pose, height, width)
        labels = _draw_labels(app, g, pose.view, height, width)
        person = _colourise(app, g, labels)
        if pose.mirror:
            labels, person = labels[:, ::-1].copy(), person[:, ::-1].copy()
    scene = camera.background[pose.bg_y : pose.bg_y + height, pose.bg_x : pose.bg_x + width]
    image = np.where((labels == BACKGROUND)[..., None], scene, person)
    gain_jitter = float(rng.uniform(0.94, 1.06)) if camera.jitter else 1.0
    return Rendering(_apply_camera(image, camera, rng, gain_jitter), labels)


def render_person(
    appearance: Appearance,
    camera: Camera,
    rng: np.random.Generator,
    height: int = 128,
    width: int = 64,
    *,
    view: str | None = None,
    mirror: bool | None = None,
) -> Rendering:
    """Draws one image of an identity as ``camera`` sees it.

    Args:
        appearance: the identity (:func:`sample_appearance`).
        camera: :func:`make_camera` for a dataset camera, :func:`neutral_camera` for exact
            palette colours in a canonical front pose.
        rng: draws pose, view, background crop and noise.
        view / mirror: force ``"front"``/``"back"`` and left-right mirroring (None = random for
            a jittering camera, front and unmirrored for the neutral one).

    Returns:
        Rendering(image uint8 [height, width, 3], labels uint8 [height, width]).
    """
    pose = _sample_pose(rng, camera, view, mirror)
    return _render(appearance, camera, pose, rng, height, width)


def draw_person(
    appearance: Appearance,
    camera: Camera,
    rng: np.random.Generator,
    height: int = 128,
    width: int = 64,
    **kwargs,
) -> np.ndarray:
    """:func:`render_person` without the labels: uint8 [height, width, 3]."""
    return render_person(appearance, camera, rng, height, width, **kwargs).image


def _draw_distractor(
    camera: Camera, rng: np.random.Generator, height: int, width: int
) -> np.ndarray:
    """A detector false positive: a person mostly outside the box, or clutter only."""
    pose = _sample_pose(rng, camera, None, None)
    if rng.random() < 0.6:
        side = 1 if rng.random() < 0.5 else -1
        pose = pose._replace(
            dx=side * rng.uniform(0.3, 0.6) * width, dy=rng.uniform(0.0, 0.35) * height
        )
        return _render(sample_appearance(0, rng), camera, pose, rng, height, width).image
    image = _render(None, camera, pose, rng, height, width).image
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 5))):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        draw.rectangle(
            [x0, y0, x0 + rng.uniform(6, width), y0 + rng.uniform(6, height / 2)],
            fill=tuple(int(v) for v in rng.integers(30, 220, 3)),
        )
    return np.asarray(canvas)


def _draw_junk(camera: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A useless crop: a small, badly placed person, heavily blurred by upscaling."""
    pose = _sample_pose(rng, camera, None, None)
    pose = pose._replace(
        scale=rng.uniform(0.35, 0.6),
        dx=rng.uniform(-0.3, 0.3) * width,
        dy=-rng.uniform(0, 0.4) * height,
    )
    image = _render(sample_appearance(-1, rng), camera, pose, rng, height, width).image
    small = Image.fromarray(image).resize((max(width // 6, 1), max(height // 6, 1)), Image.BOX)
    return np.asarray(small.resize((width, height), Image.NEAREST))


# --- datasets ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Shot:
    """One image to write: identity (0 distractor, -1 junk), camera, role and its file name."""

    pid: int
    camera: int
    role: str  # train | gallery | query | distractor | junk
    index: int  # per-identity image number: seeds the image's own random stream
    name: str = ""


def _validate(
    layout,
    num_train_ids,
    num_test_ids,
    images_per_id,
    num_cameras,
    num_distractors,
    num_junk,
    height,
    width,
    seed,
    domain,
) -> None:
    get_domain(domain)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; valid layouts: {', '.join(LAYOUTS)}")
    if num_train_ids < 1 or num_test_ids < 1:
        raise ValueError("num_train_ids and num_test_ids must be at least 1")
    if 2 * (num_train_ids + num_test_ids) > 9999:
        raise ValueError("at most 4999 identities in all (identity numbers have 4 digits)")
    if not 2 <= num_cameras <= 9:
        raise ValueError(f"num_cameras must be 2-9 (one digit, re-ID needs two), got {num_cameras}")
    if images_per_id < 2:
        raise ValueError(f"images_per_id must be at least 2 (two cameras), got {images_per_id}")
    if num_distractors < 0 or num_junk < 0:
        raise ValueError("num_distractors and num_junk must be >= 0")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if height < 32 or width < 16:
        raise ValueError(f"images must be at least 16x32 (w x h), got {width}x{height}")


def _plan_identity(pid: int, test: bool, images_per_id: int, num_cameras: int, seed: int):
    """Training/gallery shots in >= 2 cameras, plus one query in some of those cameras."""
    rng = np.random.default_rng([seed, 5, pid])
    n_cams = int(rng.integers(2, min(num_cameras, images_per_id) + 1))
    cams = np.sort(rng.choice(np.arange(1, num_cameras + 1), n_cams, replace=False))
    extra = rng.choice(cams, images_per_id - n_cams)
    shot_cams = np.concatenate([cams, extra])
    role = "gallery" if test else "train"
    shots = [_Shot(pid, int(c), role, i) for i, c in enumerate(shot_cams)]
    if test:
        q_cams = rng.choice(cams, int(rng.integers(1, n_cams + 1)), replace=False)
        shots += [_Shot(pid, int(c), "query", images_per_id + i) for i, c in enumerate(q_cams)]
    return shots


def _course_train_name(shot: _Shot, rng: np.random.Generator) -> str:
    return f"{shot.pid:04d}_c{shot.camera}_{int(rng.integers(10**9)):09d}.jpg"


def _original_name(shot: _Shot, rng: np.random.Generator) -> str:
    pid = "-1" if shot.pid == -1 else f"{shot.pid:04d}"
    sequence, frame = int(rng.integers(1, 7)), int(rng.integers(10**6))
    box = 0 if shot.role == "query" else int(rng.integers(1, 6))  # Market's queries are box 00
    return f"{pid}_c{shot.camera}s{sequence}_{frame:06d}_{box:02d}.jpg"


def _name_shots(shots: list[_Shot], layout: str, rng: np.random.Generator) -> None:
    """Fills in file names; course test/queries get shuffled six-digit numbers."""
    used: set[str] = set()
    for shot in shots:
        if layout == "market1501":
            make = _original_name
        elif shot.role == "train":
            make = _course_train_name
        else:
            continue
        name = make(shot, rng)
        while name in used:  # a repeated random frame number
            name = make(shot, rng)
        used.add(name)
        shot.name = name
    if layout == "course":
        for roles in (("gallery", "distractor", "junk"), ("query",)):
            group = [s for s in shots if s.role in roles]
            for number, k in enumerate(rng.permutation(len(group))):
                group[k].name = f"{number:06d}.jpg"


def _folder(layout: str, role: str) -> str:
    if layout == "course":
        return {"train": "train", "query": "queries"}.get(role, "test")
    return {"train": "bounding_box_train", "query": "query"}.get(role, "bounding_box_test")


def _attribute_struct(rows: np.ndarray, pids: list[int], order: tuple[str, ...]) -> np.ndarray:
    """One market_attribute.{train,test} struct: fields in ``order`` plus image_index."""
    struct = np.empty((1, 1), dtype=[(name, object) for name in (*order, "image_index")])
    for name in order:
        struct[0, 0][name] = rows[:, COLUMNS.index(name)].astype(np.uint8).reshape(1, -1)
    index = np.empty((1, len(pids)), dtype=object)
    for i, pid in enumerate(pids):
        index[0, i] = f"{pid:04d}"
    struct[0, 0]["image_index"] = index
    return struct


MAT_HEADER = "MATLAB 5.0 MAT-file, written by tfmarket.data.synthetic"
MAT_HEADER_BYTES = 116  # descriptive text at the start of a MAT-5 file (then version and endian)


def _write_mat(path: Path, tables: dict[str, dict[int, np.ndarray]]) -> None:
    import scipy.io

    root = np.empty((1, 1), dtype=[("test", object), ("train", object)])
    for split, order in (("train", MAT_TRAIN_ORDER), ("test", MAT_TEST_ORDER)):
        pids = sorted(tables[split])
        rows = np.stack([tables[split][p] for p in pids])
        root[0, 0][split] = _attribute_struct(rows, pids, order)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"market_attribute": root})
    data = bytearray(buffer.getvalue())
    # savemat stamps the wall-clock time and OS into the 116-byte MAT-5 header text; a fixed text
    # keeps "same seed, same bytes" true for the .mat as for every image.
    data[:MAT_HEADER_BYTES] = MAT_HEADER.ljust(MAT_HEADER_BYTES).encode("ascii")
    path.write_bytes(bytes(data))


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")


def _write_dataset(
    root: Path,
    layout: str,
    shots: list[_Shot],
    apps: dict[int, Appearance],
    train_ids: list[int],
    test_ids: list[int],
    height: int,
    width: int,
    seed: int,
    rng: np.random.Generator,
    domain: Domain,
) -> None:
    cameras = {
        c: make_camera(c, seed, height, width, domain) for c in sorted({s.camera for s in shots})
    }
    for role in ("train", "query", "gallery"):
        (root / _folder(layout, role)).mkdir(parents=True, exist_ok=True)
    for shot in shots:
        image_rng = np.random.default_rng([seed, 2, shot.pid + 1, shot.index])
        camera = cameras[shot.camera]
        if shot.role == "distractor":
            image = _draw_distractor(camera, image_rng, height, width)
        elif shot.role == "junk":
            image = _draw_junk(camera, image_rng, height, width)
        else:
            image = render_person(apps[shot.pid], camera, image_rng, height, width).image
        path = root / _folder(layout, shot.role) / shot.name
        Image.fromarray(image).save(path, "JPEG", quality=JPEG_QUALITY)
    rows = {pid: attribute_row(apps[pid]).tolist() for pid in apps}
    if layout == "course":
        order = [train_ids[k] for k in rng.permutation(len(train_ids))]  # the real file is unsorted
        _write_csv(
            root / "annotations_train.csv", ["id", *COLUMNS], [[pid, *rows[pid]] for pid in order]
        )
        unknown = [0] * len(COLUMNS)
        truth = [
            [_folder(layout, s.role), s.name, s.pid, s.camera, *rows.get(s.pid, unknown)]
            for s in shots
            if s.role != "train"
        ]
        truth.sort(key=lambda r: (r[0], r[1]))
        _write_csv(root / TRUTH_FILE, ["split", "file", "id", "camera", *COLUMNS], truth)
    else:
        tables = {
            "train": {p: np.asarray(rows[p]) for p in train_ids},
            "test": {p: np.asarray(rows[p]) for p in test_ids},
        }
        _write_mat(root / "market_attribute.mat", tables)


def _check_target(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir}: exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"{out_dir}: folder exists and is not empty; choose another folder or pass "
                f"overwrite=True to replace a synthetic dataset"
            )
        if not (out_dir / SUMMARY_FILE).is_file():
            raise FileExistsError(
                f"{out_dir}: not written by write_synthetic (no {SUMMARY_FILE}); refusing to "
                f"delete it even with overwrite=True"
            )


def _move_into_place(tmp: Path, out_dir: Path) -> None:
    """Replaces ``out_dir`` by the finished ``tmp`` folder with renames only."""
    old = None
    if out_dir.is_dir():
        if any(out_dir.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / out_dir.name)
        else:
            out_dir.rmdir()
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_synthetic(
    out_dir: str | Path,
    layout: str = "course",
    num_train_ids: int = 40,
    num_test_ids: int = 40,
    images_per_id: int = 8,
    num_cameras: int = 6,
    num_distractors: int = 10,
    num_junk: int = 5,
    height: int = 128,
    width: int = 64,
    seed: int = 0,
    *,
    domain: str | Domain = DEFAULT_DOMAIN,
    overwrite: bool = False,
) -> dict:
    """Writes a synthetic dataset in the course or the original Market-1501 layout.

    Each identity gets ``images_per_id`` training (or gallery) images spread over 2 or more of
    ``num_cameras`` cameras; each test identity also gets one query in some of its cameras.
    Distractors (identity 0) and junk (identity -1) join the gallery (``test/`` in the course
    layout, where ``synthetic_truth.csv`` gives them id 0/-1 and attribute values 0 = unknown).
    The same arguments give byte-identical files.

    ``domain``: the camera network (:data:`DOMAINS` name or a :class:`Domain`): its scenes and
    lighting, not its people. For a target domain of other people, pass another ``seed`` too.

    The dataset is built in a sibling ``<out_dir>.tmp-*`` folder and renamed into place, so an
    interrupted run never leaves a complete-looking ``out_dir``.

    Raises:
        FileExistsError: ``out_dir`` is not empty (and not a synthetic dataset to overwrite).
        ValueError: an argument out of range.

    Returns:
        Counts: layout, train_ids, test_ids, train_images, gallery_images (of test identities),
        query_images, distractors, junk, cameras, seed, domain (only when not the default, as in
        ``synthetic.json``, which stays as it was for the default), root.
    """
    _validate(
        layout,
        num_train_ids,
        num_test_ids,
        images_per_id,
        num_cameras,
        num_distractors,
        num_junk,
        height,
        width,
        seed,
        domain,
    )
    domain = get_domain(domain)
    out_dir = Path(out_dir).expanduser().absolute()
    _check_target(out_dir, overwrite)
    rng = np.random.default_rng([seed, 0])
    total = num_train_ids + num_test_ids
    pids = np.sort(rng.choice(np.arange(1, 2 * total + 1), total, replace=False))
    test_ids = sorted(int(p) for p in rng.choice(pids, num_test_ids, replace=False))
    train_ids = sorted(set(pids.tolist()) - set(test_ids))
    apps = {pid: identity_appearance(seed, pid) for pid in pids.tolist()}
    shots = []
    for pid in pids.tolist():
        shots += _plan_identity(pid, pid in test_ids, images_per_id, num_cameras, seed)
    cams = rng.integers(1, num_cameras + 1, num_distractors + num_junk)
    shots += [_Shot(0, int(c), "distractor", k) for k, c in enumerate(cams[:num_distractors])]
    shots += [_Shot(-1, int(c), "junk", k) for k, c in enumerate(cams[num_distractors:])]
    _name_shots(shots, layout, rng)
    counts = {
        role: sum(s.role == role for s in shots)
        for role in ("train", "gallery", "query", "distractor", "junk")
    }
    summary = {
        "layout": layout,
        "train_ids": num_train_ids,
        "test_ids": num_test_ids,
        "train_images": counts["train"],
        "gallery_images": counts["gallery"],
        "query_images": counts["query"],
        "distractors": counts["distractor"],
        "junk": counts["junk"],
        "cameras": num_cameras,
        "seed": seed,
    }
    if domain != DOMAINS[DEFAULT_DOMAIN]:
        named = DOMAINS.get(domain.name) == domain
        summary["domain"] = domain.name if named else dataclasses.asdict(domain)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{out_dir.name}.tmp-", dir=out_dir.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the dataset should read like any other folder
    try:
        _write_dataset(
            tmp, layout, shots, apps, train_ids, test_ids, height, width, seed, rng, domain
        )
        arguments = {"images_per_id": images_per_id, "height": height, "width": width}
        (tmp / SUMMARY_FILE).write_text(json.dumps({**summary, **arguments}, indent=1) + "\n")
        _move_into_place(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {**summary, "root": str(out_dir)}
