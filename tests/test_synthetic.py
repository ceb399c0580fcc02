"""Synthetic Market-1501 data: determinism, layouts, and that drawings match the attributes."""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tfmarket.attributes import COLUMNS, LOWER_COLORS, NO_COLOR, UPPER_COLORS, columns_to_targets
from tfmarket.data import synthetic as S
from tfmarket.data.synthetic import drawing, people, scenes, writer

SMALL = dict(num_train_ids=8, num_test_ids=10, images_per_id=5, num_distractors=4, num_junk=3)
COURSE_TRAIN = re.compile(r"^(\d{4})_c(\d)_(\d{9})\.jpg$")
SIX_DIGITS = re.compile(r"^\d{6}\.jpg$")
ORIGINAL = re.compile(r"^(-1|\d{4})_c(\d)s([1-6])_(\d{6})_(\d{2})\.jpg$")


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "course"
    return root, S.write_synthetic(root, layout="course", seed=3, **SMALL)


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "market"
    return root, S.write_synthetic(root, layout="market1501", seed=3, **SMALL)


def _files(root: Path) -> dict[str, bytes]:
    paths = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in paths}


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split(","), [line.split(",") for line in lines[1:]]


def _original_ids(folder: Path) -> list[tuple[int, int, str]]:
    """(identity, camera, box) of every file, checking the name format."""
    out = []
    for p in sorted(folder.iterdir()):
        m = ORIGINAL.match(p.name)
        assert m, p.name
        out.append((int(m.group(1)), int(m.group(2)), m.group(5)))
    return out


# --- determinism and writing ---------------------------------------------------------------------


def test_same_seed_gives_identical_files_and_other_seed_differs(tmp_path):
    args = dict(num_train_ids=3, num_test_ids=3, images_per_id=3, num_distractors=2, num_junk=1)
    for layout in S.LAYOUTS:
        a = _files(Path(S.write_synthetic(tmp_path / f"{layout}a", layout, seed=5, **args)["root"]))
        b = _files(Path(S.write_synthetic(tmp_path / f"{layout}b", layout, seed=5, **args)["root"]))
        c = _files(Path(S.write_synthetic(tmp_path / f"{layout}c", layout, seed=6, **args)["root"]))
        assert a == b
        assert a != c
    # Same bytes whenever the file is written: no time or OS in the MAT-5 header text.
    mat = next((tmp_path / "market1501a").rglob("market_attribute.mat")).read_bytes()[:116]
    assert b"Created on" not in mat and mat.startswith(b"MATLAB 5.0 MAT-file")


def test_refuses_non_empty_folder_and_overwrites_only_synthetic_data(tmp_path):
    args = dict(num_train_ids=2, num_test_ids=2, images_per_id=2, num_distractors=0, num_junk=0)
    out = tmp_path / "data"
    out.mkdir()  # an existing empty folder is fine
    S.write_synthetic(out, **args)
    with pytest.raises(FileExistsError, match="not empty"):
        S.write_synthetic(out, **args)
    before = _files(out)
    S.write_synthetic(out, seed=1, overwrite=True, **args)
    assert _files(out) != before
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("keep me")
    with pytest.raises(FileExistsError, match="refusing"):
        S.write_synthetic(precious, overwrite=True, **args)
    assert (precious / "thesis.tex").read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "precious"]  # no temp folders


def test_crash_leaves_no_dataset_behind(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = S.render_person

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(writer, "render_person", failing)  # where write_synthetic finds it
    with pytest.raises(RuntimeError, match="disk full"):
        S.write_synthetic(tmp_path / "data", num_train_ids=3, num_test_ids=3)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(layout="voc"),
        dict(num_cameras=1),
        dict(num_cameras=10),
        dict(images_per_id=1),
        dict(num_train_ids=0),
        dict(seed=-1),
    ],
)
def test_rejects_bad_arguments(tmp_path, kwargs):
    with pytest.raises(ValueError):
        S.write_synthetic(tmp_path / "data", **kwargs)
    assert not (tmp_path / "data").exists()


# --- course layout -----------------------------------------------------------------------------


def test_course_layout(course):
    root, summary = course
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["train", "test", "queries", "annotations_train.csv", S.TRUTH_FILE, S.SUMMARY_FILE]
    )
    train_names = [p.name for p in (root / "train").iterdir()]
    assert len(train_names) == summary["train_images"] == 8 * 5
    assert all(COURSE_TRAIN.match(n) for n in train_names)
    for folder, count in (
        ("test", summary["gallery_images"] + summary["distractors"] + summary["junk"]),
        ("queries", summary["query_images"]),
    ):
        names = sorted(p.name for p in (root / folder).iterdir())
        assert names == [f"{i:06d}.jpg" for i in range(count)]
    with Image.open(root / "test" / "000000.jpg") as image:
        assert image.format == "JPEG" and image.size == (64, 128)

    header, rows = _read_csv(root / "annotations_train.csv")
    assert header == ["id", *COLUMNS]
    assert all(re.fullmatch(r"[1-9]\d*", r[0]) for r in rows)  # plain integers like "474"
    values = np.array([[int(v) for v in r[1:]] for r in rows])
    columns_to_targets(values)  # raises on a bad encoding
    ids = [int(r[0]) for r in rows]
    assert sorted(ids) == sorted({int(n[:4]) for n in train_names})
    for pid, row in zip(ids, values, strict=True):
        np.testing.assert_array_equal(row, S.attribute_row(S.identity_appearance(3, pid)))


def test_course_truth_covers_every_unlabelled_image(course):
    root, summary = course
    header, rows = _read_csv(root / S.TRUTH_FILE)
    assert header == ["split", "file", "id", "camera", *COLUMNS]
    listed = {(r[0], r[1]) for r in rows}
    on_disk = {(f, p.name) for f in ("test", "queries") for p in (root / f).iterdir()}
    assert listed == on_disk and len(rows) == len(on_disk)
    ids = np.array([int(r[2]) for r in rows])
    assert (ids == 0).sum() == summary["distractors"] and (ids == -1).sum() == summary["junk"]
    people = [r for r in rows if int(r[2]) > 0]
    values = np.array([[int(v) for v in r[4:]] for r in people])
    columns_to_targets(values)
    for r, row in zip(people, values, strict=True):
        np.testing.assert_array_equal(row, S.attribute_row(S.identity_appearance(3, int(r[2]))))
    _, train_rows = _read_csv(root / "annotations_train.csv")
    assert not {int(r[0]) for r in train_rows} & {int(r[2]) for r in people}


def test_course_identities_span_cameras(course):
    root, _ = course
    train_cams = defaultdict(set)
    for p in (root / "train").iterdir():
        pid, cam, _ = COURSE_TRAIN.match(p.name).groups()
        train_cams[int(pid)].add(int(cam))
    assert all(len(c) >= 2 for c in train_cams.values())
    _, rows = _read_csv(root / S.TRUTH_FILE)
    gallery_cams = defaultdict(set)
    for split, _, pid, cam, *_ in rows:
        if split == "test" and int(pid) > 0:
            gallery_cams[int(pid)].add(int(cam))
    assert len(gallery_cams) == 10 and all(len(c) >= 2 for c in gallery_cams.values())
    for split, _, pid, cam, *_ in rows:  # each query has a match in another camera
        if split == "queries":
            assert gallery_cams[int(pid)] - {int(cam)}


# --- original layout ---------------------------------------------------------------------------


def test_market_layout(market):
    root, summary = market
    assert sorted(p.name for p in root.iterdir()) == sorted(
        ["bounding_box_train", "bounding_box_test", "query", "market_attribute.mat", S.SUMMARY_FILE]
    )
    train = _original_ids(root / "bounding_box_train")
    gallery = _original_ids(root / "bounding_box_test")
    query = _original_ids(root / "query")
    assert len(train) == summary["train_images"] and len(query) == summary["query_images"]
    assert all(box == "00" for *_, box in query)
    assert all(box != "00" for *_, box in train + gallery)
    assert sum(pid == 0 for pid, *_ in gallery) == summary["distractors"] == 4
    assert sum(pid == -1 for pid, *_ in gallery) == summary["junk"] == 3
    assert any(p.name.startswith("-1_c") for p in (root / "bounding_box_test").iterdir())
    train_ids = {pid for pid, *_ in train}
    test_ids = {pid for pid, *_ in gallery if pid > 0}
    assert not train_ids & test_ids and {pid for pid, *_ in query} == test_ids
    cams = defaultdict(set)
    for pid, cam, _ in train + gallery:
        cams[pid].add(cam)
    assert all(len(cams[pid]) >= 2 for pid in train_ids | test_ids)
    assert all(cams[pid] - {cam} for pid, cam, _ in query)


def test_market_attribute_mat_matches_the_real_structure(market):
    root, _ = market
    mat = scipy.io.loadmat(root / "market_attribute.mat")
    top = mat["market_attribute"][0, 0]
    age = top["train"][0, 0]["age"]
    assert age.shape == (1, 8) and age.dtype == np.uint8
    train, test = top["train"][0, 0], top["test"][0, 0]
    assert train.dtype.names == (*writer.MAT_TRAIN_ORDER, "image_index")
    assert test.dtype.names == (*writer.MAT_TEST_ORDER, "image_index")
    assert train.dtype.names != test.dtype.names
    folders = {"train": "bounding_box_train", "test": "bounding_box_test"}
    for split, struct in (("train", train), ("test", test)):
        index = [str(np.asarray(x).ravel()[0]) for x in struct["image_index"].ravel()]
        assert all(re.fullmatch(r"\d{4}", s) for s in index)
        on_disk = {pid for pid, *_ in _original_ids(root / folders[split]) if pid > 0}
        assert {int(s) for s in index} == on_disk
        values = np.stack([struct[c].ravel().astype(np.int64) for c in COLUMNS], 1)
        columns_to_targets(values)
        for s, row in zip(index, values, strict=True):
            np.testing.assert_array_equal(row, S.attribute_row(S.identity_appearance(3, int(s))))


def test_identities_are_distinguishable_across_cameras(market):
    """Nearest neighbour on tiny colour-normalised thumbnails finds the identity far above
    chance, so the identity cues survive the cameras' changes."""
    root, _ = market
    paths = [p for p in sorted((root / "bounding_box_test").iterdir()) if ORIGINAL.match(p.name)]
    ids = np.array([int(ORIGINAL.match(p.name).group(1)) for p in paths])
    cams = np.array([int(ORIGINAL.match(p.name).group(2)) for p in paths])
    keep = ids > 0
    feats = []
    for p in np.array(paths)[keep]:
        x = np.asarray(Image.open(p).resize((8, 16), Image.BOX), np.float32)
        x = x - x.mean(axis=(0, 1))  # removes the camera's colour cast
        feats.append((x / (x.std() + 1e-6)).ravel())
    feats, ids, cams = np.stack(feats), ids[keep], cams[keep]
    dist = ((feats[:, None] - feats[None]) ** 2).sum(-1)
    dist[cams[:, None] == cams[None]] = np.inf  # only matches from another camera count
    accuracy = (ids[dist.argmin(1)] == ids).mean()
    assert accuracy > 0.35, accuracy  # chance is 1/10


# --- drawing matches the attributes ------------------------------------------------------------


def _neutral(app, **kwargs):
    return S.render_person(app, S.neutral_camera(), np.random.default_rng(0), **kwargs)


APPS = [S.identity_appearance(11, pid) for pid in range(1, 81)]


def test_palette_defines_every_colour():
    assert set(UPPER_COLORS) | set(LOWER_COLORS) <= set(people.PALETTE)
    assert len(set(people.PALETTE.values())) == len(people.PALETTE)
    for app in APPS:
        if app.upper_color == NO_COLOR:
            assert app.upper_rgb not in {people.PALETTE[c] for c in UPPER_COLORS}
        if app.lower_color == NO_COLOR:
            assert app.lower_rgb not in {people.PALETTE[c] for c in LOWER_COLORS}


def test_garments_are_drawn_in_their_palette_colour():
    for app in APPS:
        image, labels = _neutral(app)
        assert (image[labels == drawing.BACKGROUND] == scenes.NEUTRAL_BACKGROUND).all()
        lower = image[labels == drawing.LOWER]
        assert (lower == app.lower_rgb).all()
        if app.lower_color != NO_COLOR:
            assert tuple(lower[0]) == people.PALETTE[app.lower_color]
        upper = image[labels == drawing.UPPER]
        colours, counts = np.unique(upper, axis=0, return_counts=True)
        if app.upper_bands:  # multicolour: only off-palette band colours
            assert {tuple(int(v) for v in c) for c in colours} == set(app.upper_bands)
            assert app.upper_color == NO_COLOR
            continue
        main = tuple(int(v) for v in colours[counts.argmax()])
        assert main == app.upper_rgb
        assert counts.max() > 0.5 * len(upper)  # a pattern never hides the garment colour
        if app.upper_color != NO_COLOR:
            assert main == people.PALETTE[app.upper_color]


def test_garment_colour_survives_camera_lighting():
    cameras = [S.make_camera(c, seed=2) for c in range(1, 7)]
    plain = [a for a in APPS if a.pattern == "plain" and not a.upper_bands][:12]
    for k, app in enumerate(plain):
        camera = cameras[k % len(cameras)]
        image, labels = S.render_person(app, camera, np.random.default_rng(k))
        inner = labels == drawing.UPPER
        inner[1:-1, 1:-1] &= inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
        seen = np.median(image[inner].astype(np.float32), axis=0)
        lit = np.clip(np.asarray(app.upper_rgb) * camera.gain * np.asarray(camera.cast), 0, 255)
        assert np.abs(seen - lit).max() < 0.1 * 255, (app.upper_color, seen, lit)


@pytest.mark.parametrize("view", drawing.VIEWS)
def test_accessories_are_drawn_iff_annotated(view):
    for app in APPS:
        labels = _neutral(app, view=view).labels
        area = labels.size
        assert ((labels == drawing.HAT).sum() > 0.004 * area) == app.hat
        assert ((labels == drawing.BACKPACK).sum() > 0.01 * area) == app.backpack
        assert ((labels == drawing.BAG).sum() > 0.01 * area) == app.bag
        assert ((labels == drawing.HANDBAG).sum() > 0.005 * area) == app.handbag


def test_hat_and_items_are_visible_in_pixels():
    """With colours nothing else uses, the image itself (not just the labels) shows them."""
    marker = (255, 0, 255)
    for app in APPS[:30]:
        for field, flag in (
            ("hat_rgb", app.hat),
            ("backpack_rgb", app.backpack),
            ("bag_rgb", app.bag),
            ("handbag_rgb", app.handbag),
        ):
            image = _neutral(dataclasses.replace(app, **{field: marker})).image
            assert ((image == marker).all(-1).sum() > 20) == flag, field


def _toggle(app, **changes):
    on = _neutral(dataclasses.replace(app, **changes)).labels
    off = _neutral(dataclasses.replace(app, **{k: not v for k, v in changes.items()})).labels
    return on, off


def test_lengths_of_sleeves_lower_garment_and_hair_show():
    for app in APPS[:20]:
        short, long_ = _toggle(app, short_sleeves=True)
        assert (short == drawing.SKIN).sum() > (long_ == drawing.SKIN).sum() + 100
        short, long_ = _toggle(app, short_lower=True)
        assert (short == drawing.LOWER).sum() + 100 < (long_ == drawing.LOWER).sum()
        long_hair, short_hair = _toggle(app, long_hair=True)
        head_bottom = np.flatnonzero((short_hair == drawing.HAIR).any(1)).max()
        assert (long_hair[head_bottom + 1 :] == drawing.HAIR).sum() > 30
        assert (short_hair[head_bottom + 1 :] == drawing.HAIR).sum() == 0


def test_dress_fills_the_gap_between_the_legs():
    app = dataclasses.replace(APPS[0], short_lower=False, handbag=False, bag=False)
    for dress in (True, False):
        image, labels = _neutral(dataclasses.replace(app, dress=dress))
        rows = np.flatnonzero((labels == drawing.LOWER).any(1))
        knee = rows[0] + int(0.6 * (rows[-1] - rows[0]))
        centre = image.shape[1] // 2
        expected = app.lower_rgb if dress else scenes.NEUTRAL_BACKGROUND
        assert tuple(image[knee, centre]) == expected


def test_gender_and_age_cues():
    app = dataclasses.replace(APPS[0], age=2, female=False, build=1.0, height_factor=1.0)

    def shoulder_width(a):
        labels = _neutral(a).labels
        top = np.flatnonzero((labels == drawing.UPPER).any(1))[0]
        return (labels[top + 3] == drawing.UPPER).sum()

    def height_and_head(a):
        labels = _neutral(dataclasses.replace(a, hat=False)).labels
        rows = np.flatnonzero((labels != drawing.BACKGROUND).any(1))
        head = np.flatnonzero(
            ((labels == drawing.HAIR) | (labels == drawing.SKIN)).any(1)
            & ~(labels == drawing.UPPER).any(1)
        )
        return rows[-1] - rows[0], (head[head < rows[0] + 40].max() - rows[0])

    assert shoulder_width(dataclasses.replace(app, female=True)) < shoulder_width(app)
    adult_h, adult_head = height_and_head(app)
    child_h, child_head = height_and_head(dataclasses.replace(app, age=0))
    assert child_h < 0.8 * adult_h
    assert child_head / child_h > 1.2 * adult_head / adult_h
    for a in APPS:
        assert (a.hair_rgb in people.GREY_HAIR) == (a.age == 3)


def test_attribute_row_and_priors():
    apps = [S.identity_appearance(0, pid) for pid in range(1, 1201)]
    rows = np.stack([S.attribute_row(a) for a in apps])
    assert rows.shape == (1200, len(COLUMNS)) and rows.dtype == np.int64
    targets = columns_to_targets(rows)
    assert 0.10 < targets["hat"].mean() < 0.20
    age = np.bincount(targets["age"], minlength=4) / len(apps)
    assert age[1] + age[2] > 0.75 and (age > 0.03).all()
    for head, colours in (("upper_color", UPPER_COLORS), ("lower_color", LOWER_COLORS)):
        freq = np.bincount(targets[head], minlength=len(colours) + 1) / len(apps)
        assert (freq > 0.015).all() and 0.06 < freq[-1] < 0.14  # about 10% "none"
    for name in ("backpack", "bag", "handbag", "clothes", "down", "up", "hair", "gender"):
        assert 0.05 < targets[name].mean() < 0.95, name
    # dresses only on women, and long hair mostly on women, as in Market-1501
    female = targets["gender"] == 1
    assert (targets["clothes"][~female] == 1).all()
    assert targets["hair"][female].mean() > 3 * targets["hair"][~female].mean()


def test_draw_person_is_deterministic_for_an_rng():
    camera = S.make_camera(4, seed=1)
    a = S.draw_person(APPS[3], camera, np.random.default_rng(9))
    b = S.draw_person(APPS[3], camera, np.random.default_rng(9))
    assert a.shape == (128, 64, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
