"""CUHK03 (Li et al., CVPR 2014) with the new 767/700 protocol (Zhong et al., CVPR 2017).

Layout (what torchreid's CUHK03 reader leaves in its ``cuhk03/`` folder)::

    ROOT/images_labeled/    1_001_1_01.png ...   camera pair, person, view 1-2, image 01-10
    ROOT/images_detected/
    ROOT/cuhk03_new_protocol_config_labeled.mat
    ROOT/cuhk03_new_protocol_config_detected.mat
    [ROOT/cuhk03_release/cuhk-03.mat]             the raw release (MATLAB v7.3 = HDF5)

Each protocol file holds ``filelist`` (image names), ``labels`` (identity of each image, 1-1467),
``camId`` and the 1-based index vectors ``train_idx``, ``query_idx`` and ``gallery_idx`` into
them. The reader uses them as torchreid does: identity = ``labels``, camera = the view field of
the file name (1 or 2, the camera within the identity's camera pair; every identity is seen by
exactly one pair, so this is what the same-camera rule of the evaluation needs). Training
identities are kept as numbers (not relabelled).

Variants: ``labeled`` (hand-drawn boxes, the default; dataset name ``cuhk03`` or
``cuhk03-labeled``) and ``detected`` (DPM detections; ``cuhk03-detected``).

Without ``images_<variant>/``, :func:`extract_cuhk03` (``python -m tfmarket.data
extract-cuhk03 ROOT``) writes both image folders from ``cuhk03_release/cuhk-03.mat``, with the
file names torchreid uses; it needs h5py.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from tfmarket.attributes import NO_ATTRIBUTES
from tfmarket.data.filenames import parse_cuhk03
from tfmarket.data.records import Records, ReidDataset, make_records
from tfmarket.errors import DataError

VARIANTS = ("labeled", "detected")
RAW_MAT = Path("cuhk03_release") / "cuhk-03.mat"
_FIELDS = ("filelist", "labels", "train_idx", "query_idx", "gallery_idx")


def protocol_file(root: Path, variant: str) -> Path:
    return root / f"cuhk03_new_protocol_config_{variant}.mat"


def detect_cuhk03(root: Path) -> str:
    """``"cuhk03"`` (labeled), ``"cuhk03-detected"`` or "" (not a CUHK03 folder).

    A variant is recognised by its protocol file plus its image folder, labeled first; a folder
    with only some of the CUHK03 files (e.g. the raw release and no images yet) is ``"cuhk03"``,
    whose reader then says what is missing.
    """
    for variant, name in zip(VARIANTS, ("cuhk03", "cuhk03-detected"), strict=True):
        if protocol_file(root, variant).is_file() and (root / f"images_{variant}").is_dir():
            return name
    markers = [protocol_file(root, v) for v in VARIANTS] + [root / f"images_{v}" for v in VARIANTS]
    return "cuhk03" if any(m.exists() for m in markers) else ""


def read_protocol(path: Path) -> dict[str, np.ndarray]:
    """A ``cuhk03_new_protocol_config_*.mat`` -> {"filelist": str [N], "labels": int [N],
    "train_idx"|"query_idx"|"gallery_idx": 0-based int arrays}; DataError naming the file."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"{path}: CUHK03 protocol file not found")
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises many types for malformed files
        raise DataError(f"{path}: not a readable .mat file ({exc})") from None
    missing = [f for f in _FIELDS if f not in mat]
    if missing:
        raise DataError(f"{path}: lacks fields {missing} (needs {', '.join(_FIELDS)})")
    try:
        names = [str(np.asarray(x).ravel()[0]) for x in np.asarray(mat["filelist"]).ravel()]
        labels = np.asarray(mat["labels"]).ravel().astype(np.int64)
    except (IndexError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed filelist or labels ({exc})") from None
    if len(labels) != len(names):
        raise DataError(
            f"{path}: labels has {len(labels)} entries but filelist has {len(names)}"
        )
    if len(labels) and labels.min() < 1:
        raise DataError(f"{path}: labels must be identities >= 1, found {labels.min()}")
    out: dict[str, np.ndarray] = {"filelist": np.asarray(names, dtype=object), "labels": labels}
    for key in _FIELDS[2:]:
        try:
            index = np.asarray(mat[key]).ravel().astype(np.int64)
        except (TypeError, ValueError):
            raise DataError(f"{path}: {key} is not a vector of indexes") from None
        bad = index[(index < 1) | (index > len(names))]
        if len(bad):
            raise DataError(
                f"{path}: {key} holds index {bad[0]} outside 1..{len(names)} (1-based indexes "
                "into filelist)"
            )
        out[key] = index - 1
    return out


def _split(protocol: dict, key: str, folder: Path, mat: Path) -> Records:
    index = protocol[key]
    names = protocol["filelist"][index]
    paths = [folder / str(n) for n in names]
    try:
        present = set(os.listdir(folder))
    except OSError:
        present = set()
    for path, i in zip(paths, index, strict=True):
        if path.name not in present:
            missing = sum(p.name not in present for p in paths)
            raise DataError(
                f"{path}: not found (filelist entry {i + 1} of {mat.name}, {key}; {missing} "
                f"images of this split missing)"
            )
    cams = [parse_cuhk03(p).view for p in paths]
    return make_records(paths, protocol["labels"][index], cams, schema=NO_ATTRIBUTES)


def load_cuhk03(root: str | Path, variant: str = "labeled") -> ReidDataset:
    """Reads a CUHK03 folder (see the module docstring) in the new 767/700 protocol."""
    if variant not in VARIANTS:
        raise DataError(f"unknown CUHK03 variant {variant!r}; valid: {', '.join(VARIANTS)}")
    root = Path(root)
    folder = root / f"images_{variant}"
    if not folder.is_dir():
        if (root / RAW_MAT).is_file():
            raise DataError(
                f"{folder}: folder not found; extract the images from {root / RAW_MAT} first: "
                f"python -m tfmarket.data extract-cuhk03 {root} (needs h5py), or let "
                "torchreid's CUHK03 dataset extract them"
            )
        raise DataError(f"{folder}: folder not found (CUHK03 layout)")
    mat = protocol_file(root, variant)
    protocol = read_protocol(mat)
    train, query, gallery = (
        _split(protocol, key, folder, mat) for key in ("train_idx", "query_idx", "gallery_idx")
    )
    sources = {key: f"{variant}/{key}_idx" for key in ("train", "query", "gallery")}
    return ReidDataset("cuhk03", root, train, query, gallery, variant=variant, sources=sources)


# --- raw release -------------------------------------------------------------------------------


def extract_cuhk03(root: str | Path, overwrite: bool = False) -> dict[str, int]:
    """Writes ``images_labeled/`` and ``images_detected/`` from ``cuhk03_release/cuhk-03.mat``.

    The raw file is MATLAB v7.3 (HDF5): ``labeled`` and ``detected`` are cells with one entry
    per camera pair, each a persons x 10 cell of images (the first five from view 1, the rest
    from view 2; empty where a person has fewer). Images are written as PNG named
    ``{pair}_{person:03d}_{view}_{image:02d}.png`` (all 1-based), the names torchreid writes and
    the protocol files list. Each folder is written beside the final one and renamed into place.

    Returns:
        {variant: number of images written}; a variant whose folder exists is skipped (0) unless
        ``overwrite``.

    Raises:
        DataError: h5py is not installed, or the file is missing or not the expected structure.
    """
    root = Path(root)
    raw = root / RAW_MAT
    if not raw.is_file():
        raise DataError(f"{raw}: raw CUHK03 file not found")
    try:
        import h5py
    except ImportError:
        raise DataError(
            f"{raw}: reading it needs h5py (pip install h5py); or extract the images with "
            "torchreid's CUHK03 dataset and copy its images_labeled/, images_detected/ and "
            "cuhk03_new_protocol_config_*.mat here"
        ) from None
    from PIL import Image

    counts = {}
    try:
        mat = h5py.File(raw, "r")
    except OSError as exc:
        raise DataError(f"{raw}: not an HDF5 (MATLAB v7.3) file ({exc})") from None
    with mat:
        for variant in VARIANTS:
            final = root / f"images_{variant}"
            if final.is_dir() and not overwrite:
                counts[variant] = 0
                continue
            if variant not in mat:
                raise DataError(f"{raw}: no {variant!r} cell")
            tmp = root / f".images_{variant}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
            written = 0
            try:
                for pair, pair_ref in enumerate(np.asarray(mat[variant]).ravel(), start=1):
                    persons = np.asarray(mat[pair_ref]).T  # persons x 10 references
                    for person in range(persons.shape[0]):
                        for k, ref in enumerate(persons[person]):
                            image = np.asarray(mat[ref]).T  # H x W x 3
                            if image.size == 0 or image.ndim < 3:
                                continue  # an empty cell: fewer than ten images
                            view = 1 if k < 5 else 2
                            name = f"{pair}_{person + 1:03d}_{view}_{k + 1:02d}.png"
                            Image.fromarray(image.astype(np.uint8)).save(tmp / name)
                            written += 1
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                shutil.rmtree(tmp, ignore_errors=True)
                raise DataError(f"{raw}: unexpected {variant!r} structure ({exc})") from None
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            counts[variant] = written
    return counts
