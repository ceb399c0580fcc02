"""The synthetic people: each identity's fixed appearance and the attributes it is labelled with.

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

NumPy only: no TensorFlow import.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfmarket.attributes import (
    AGE_CLASSES,
    BINARY_ATTRIBUTES,
    COLUMNS,
    LOWER_COLORS,
    NO_COLOR,
    UPPER_COLORS,
)

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
assert set(UPPER_COLORS) | set(LOWER_COLORS) <= set(PALETTE)
assert not set(OFF_PALETTE) & set(PALETTE)


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


def pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _garment_color(
    rng: np.random.Generator, names: tuple[str, ...], prior, none_choices: tuple[str, ...]
) -> tuple[str, RGB, tuple[RGB, ...]]:
    """(name or "none", drawn colour, multicolour bands)."""
    name = (*names, NO_COLOR)[int(rng.choice(len(names) + 1, p=prior))]
    if name != NO_COLOR:
        return name, PALETTE[name], ()
    other = pick(rng, none_choices)
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
        pick(rng, GREY_HAIR)
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
        skin_rgb=pick(rng, SKIN_TONES),
        hair_rgb=hair_rgb,
        hat_rgb=pick(rng, HAT_COLORS),
        shoe_rgb=pick(rng, SHOE_COLORS),
        backpack_rgb=pick(rng, ITEM_COLORS),
        bag_rgb=pick(rng, ITEM_COLORS),
        handbag_rgb=pick(rng, ITEM_COLORS),
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
