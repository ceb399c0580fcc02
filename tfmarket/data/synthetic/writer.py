"""Writing a synthetic dataset: which identity is shot by which camera, the file names of the
course and Market-1501 layouts, the attribute files (``annotations_train.csv``,
``market_attribute.mat``), the ground truth of the unlabelled splits, built beside the target
and renamed into place.

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
from pathlib import Path

import numpy as np
from PIL import Image

from tfmarket.attributes import COLUMNS
from tfmarket.data.synthetic.domains import DEFAULT_DOMAIN, DOMAINS, Domain
from tfmarket.data.synthetic.drawing import draw_distractor, draw_junk, render_person
from tfmarket.data.synthetic.people import Appearance, attribute_row, identity_appearance
from tfmarket.data.synthetic.scenes import get_domain, make_camera

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

LAYOUTS = ("course", "market1501")
TRUTH_FILE = "synthetic_truth.csv"
SUMMARY_FILE = "synthetic.json"  # also marks a folder as ours, so overwrite=True may replace it
JPEG_QUALITY = 90


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
            image = draw_distractor(camera, image_rng, height, width)
        elif shot.role == "junk":
            image = draw_junk(camera, image_rng, height, width)
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
