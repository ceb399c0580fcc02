"""The synthetic cameras: each one's scene (background), lighting, blur and noise.

A *domain* (:class:`Domain`, :data:`DOMAINS`) is the camera network: the scenes' colours and the
ranges each camera draws its lighting, noise and blur from. ``"market"`` (the default) is the
world above; ``"night"`` is another network (dim warm light, dark scenes, blurrier and noisier
cameras) for domain adaptation: train on one, adapt to the other with other identities
(another seed).

NumPy and Pillow only: no TensorFlow import.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np
from PIL import Image, ImageDraw

from tfmarket.data.synthetic.domains import DEFAULT_DOMAIN, DOMAINS, Domain
from tfmarket.data.synthetic.people import RGB, pick

NEUTRAL_BACKGROUND: RGB = (170, 200, 230)
BACKGROUND_PAD = 12  # camera backgrounds are larger than an image so each image crops its own


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
        blur=float(pick(rng, domain.blur)),
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
