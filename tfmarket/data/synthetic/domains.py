"""The synthetic data's camera networks (:class:`Domain`), in a module of their own so that
``python -m tfmarket.data --help`` lists them without loading NumPy and Pillow.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Domain:
    """A camera network: how its scenes look and the ranges its cameras' settings come from.

    The same people look different under another network's lighting and in front of its
    scenes, which is what domain adaptation has to bridge (garment colours stay the palette's
    before lighting, so attributes still hold).

    Attributes:
        name: the key in :data:`DOMAINS`; other than ``"market"``, it also reseeds the cameras,
            so the same ``seed`` gives other scenes.
        scene_brightness: range of a scene colour's grey level (walls, ground, clutter).
        scene_chroma: std of a scene colour's per-channel deviation from that grey.
        gain: range of a camera's brightness multiplier.
        tint: per-channel (R, G, B) multiplier shared by every camera (the lighting's colour).
        cast_std / cast_limit: a camera's own colour cast: normal(1, cast_std) per channel,
            within 1 +- cast_limit.
        noise: range of the sensor noise std. blur: a camera's blur radius is one of these.
    """

    name: str
    scene_brightness: tuple[float, float] = (60.0, 190.0)
    scene_chroma: float = 18.0
    gain: tuple[float, float] = (0.75, 1.2)
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)
    cast_std: float = 0.06
    cast_limit: float = 0.15
    noise: tuple[float, float] = (2.0, 5.0)
    blur: tuple[float, ...] = (0.0, 0.0, 0.5, 0.8)


DOMAINS: dict[str, Domain] = {
    # Daylight, muted scenes: every dataset written before domains existed.
    "market": Domain("market"),
    # Street lamps at night: dim warm light over dark, muted scenes; soft, grainy cameras. Its
    # cameras differ from each other about as much as the default's (a source model still
    # matches people across them), but every colour is darker and shifted towards orange.
    "night": Domain(
        "night",
        scene_brightness=(35.0, 90.0),
        scene_chroma=12.0,
        gain=(0.5, 0.8),
        tint=(1.25, 0.95, 0.7),
        cast_std=0.05,
        cast_limit=0.12,
        noise=(4.0, 8.0),
        blur=(0.8, 1.0),
    ),
}
DEFAULT_DOMAIN = "market"
