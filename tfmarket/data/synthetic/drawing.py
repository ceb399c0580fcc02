"""Drawing a synthetic person: pose, body geometry from the appearance, the label map of what
each pixel shows, colours, then the camera's lighting, blur and noise; plus the distractor and
junk images of a gallery. NumPy and Pillow only: no TensorFlow import.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from tfmarket.data.synthetic.people import RGB, Appearance, pick, sample_appearance
from tfmarket.data.synthetic.scenes import BACKGROUND_PAD, Camera

# Label map values returned by render_person (what each pixel shows).
BACKGROUND, SKIN, HAIR, HAT, UPPER, LOWER, SHOE, BACKPACK, BAG, HANDBAG = range(10)
LABEL_NAMES = tuple("background skin hair hat upper lower shoe backpack bag handbag".split())
VIEWS = ("front", "back")

# Body proportions per age class (young, teenager, adult, old).
_AGE_HEIGHT = (0.72, 0.95, 1.0, 0.95)
_AGE_HEAD = (0.20, 0.15, 0.135, 0.135)
_AGE_WIDTH = (1.1, 0.92, 1.0, 1.0)


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
    random_view, random_mirror = pick(rng, VIEWS), bool(rng.random() < 0.5)
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


def draw_distractor(
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


def draw_junk(camera: Camera, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
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
