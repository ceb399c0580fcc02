"""Tiny datasets in the real on-disk formats of DukeMTMC-reID, MSMT17, CUHK03 and custom crops.

Test fixtures for the readers: real file names, real list files, real ``.mat`` files
(``scipy.io.savemat``; CUHK03's raw ``cuhk-03.mat`` as MATLAB v7.3 HDF5 with h5py) and small
images (16x32 plain colours, one per identity and camera). Each writer returns the counts a
reader should find: ``{split: (images, identities, cameras)}`` plus format details.
NumPy, SciPy and Pillow only (h5py for :func:`write_cuhk03_raw`).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from tfmarket.data.duke import DUKE_ATTRIBUTES

W, H = 16, 32
# Field order of the real duke_attribute.mat test struct (the train struct follows
# DUKE_ATTRIBUTES): the two differ, so readers must index by name.
DUKE_TEST_ORDER = (
    "boots", "shoes", "top", "gender", "hat", "backpack", "bag", "handbag",
    "downblack", "downwhite", "downred", "downgray", "downblue", "downgreen", "downbrown",
    "upblack", "upwhite", "upred", "upgray", "upblue", "upgreen", "uppurple", "upbrown",
)
assert sorted(DUKE_TEST_ORDER) == sorted(DUKE_ATTRIBUTES)


def _image(path: Path, pid: int, cam: int, k: int = 0) -> Path:
    """A small plain image whose colour depends on identity, camera and shot."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = ((pid * 53) % 256, (cam * 71 + k * 13) % 256, (pid * 29 + cam * 17) % 256)
    Image.new("RGB", (W, H), rgb).save(path)
    return path


def _counts(rows: list[tuple[int, int]]) -> tuple[int, int, int]:
    """(images, identities > 0, cameras) of a list of (pid, cam)."""
    return len(rows), len({p for p, _ in rows if p > 0}), len({c for _, c in rows})


def _savemat(path: Path, variables: dict) -> None:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, variables)
    path.write_bytes(buffer.getvalue())


def _cell(strings) -> np.ndarray:
    """A MATLAB cell of strings, as scipy.io.savemat writes one (object array)."""
    cell = np.empty((1, len(strings)), dtype=object)
    for i, s in enumerate(strings):
        cell[0, i] = s
    return cell


# --- DukeMTMC-reID -----------------------------------------------------------------------------


def duke_attribute_rows(pids, seed: int = 0) -> dict[int, np.ndarray]:
    """Random rows (DUKE_ATTRIBUTES order, 1 = no, 2 = yes) for some identities: each yes/no
    attribute drawn, at most one upper and one lower colour marked (sometimes none)."""
    rng = np.random.default_rng(seed)
    rows = {}
    for pid in pids:
        row = np.ones(len(DUKE_ATTRIBUTES), dtype=np.int64)
        for i, name in enumerate(DUKE_ATTRIBUTES):
            if not name.startswith(("up", "down")):
                row[i] = rng.integers(1, 3)
        for prefix in ("up", "down"):
            group = [i for i, n in enumerate(DUKE_ATTRIBUTES) if n.startswith(prefix)]
            pick = int(rng.integers(0, len(group) + 1))  # len(group): no colour marked
            if pick < len(group):
                row[group[pick]] = 2
        rows[pid] = row
    return rows


def write_duke_attribute_mat(path: Path, tables: dict[str, dict[int, np.ndarray]]) -> None:
    """``duke_attribute.mat``: struct duke_attribute.{train,test}, one 1 x N uint8 field per
    attribute (train in DUKE_ATTRIBUTES order, test in DUKE_TEST_ORDER) + image_index cell."""
    root = np.empty((1, 1), dtype=[("train", object), ("test", object)])
    for split, order in (("train", DUKE_ATTRIBUTES), ("test", DUKE_TEST_ORDER)):
        pids = sorted(tables[split])
        struct = np.empty((1, 1), dtype=[(name, object) for name in (*order, "image_index")])
        for name in order:
            column = DUKE_ATTRIBUTES.index(name)
            struct[0, 0][name] = np.array([[tables[split][p][column] for p in pids]], np.uint8)
        struct[0, 0]["image_index"] = _cell([f"{p:04d}" for p in pids])
        root[0, 0][split] = struct
    _savemat(path, {"duke_attribute": root})


def write_duke(
    root: str | Path,
    train_ids=(1, 5, 9, 12),
    test_ids=(2, 7, 30),
    distractor_ids=(4000,),
    images_per_id: int = 3,
    attributes: bool = True,
    seed: int = 0,
) -> dict:
    """DukeMTMC-reID: bounding_box_train/, bounding_box_test/, query/, duke_attribute.mat.

    Training and gallery identities get ``images_per_id`` images over cameras 1-8; each test
    identity one query from a camera it also has in the gallery; ``distractor_ids`` appear in
    the gallery only (as Duke's 408 distractor identities do) and are not in the attribute file.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows: dict[str, list[tuple[int, int]]] = {"train": [], "query": [], "gallery": []}
    folders = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

    def shoot(split: str, pid: int, cams) -> None:
        for k, cam in enumerate(cams):
            frame = int(rng.integers(10**7))
            _image(root / folders[split] / f"{pid:04d}_c{cam}_f{frame:07d}.jpg", pid, cam, k)
            rows[split].append((pid, int(cam)))

    for pid in train_ids:
        shoot("train", pid, rng.choice(np.arange(1, 9), images_per_id))
    for pid in test_ids:
        cams = rng.choice(np.arange(1, 9), images_per_id, replace=False)
        shoot("gallery", pid, cams)
        shoot("query", pid, cams[:1])
    for pid in distractor_ids:
        shoot("gallery", pid, rng.choice(np.arange(1, 9), images_per_id))
    for folder in folders.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
    tables = {
        "train": duke_attribute_rows(train_ids, seed),
        "test": duke_attribute_rows(test_ids, seed + 1),
    }
    if attributes:
        write_duke_attribute_mat(root / "duke_attribute.mat", tables)
    return {"root": str(root), "tables": tables,
            **{split: _counts(r) for split, r in rows.items()}}


# --- MSMT17 ------------------------------------------------------------------------------------


def write_msmt17(
    root: str | Path,
    version: str = "V1",
    num_train_ids: int = 4,
    num_test_ids: int = 3,
    images_per_id: int = 4,
    seed: int = 0,
) -> dict:
    """MSMT17_V1 / MSMT17_V2: per-identity folders and the four list files.

    Identities are numbered from 0 in both train and test (as in the real lists). Each training
    identity's last image goes to ``list_val.txt``; each test identity's first image is a query.
    """
    root = Path(root)
    train_dir, test_dir = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}[
        version]
    rng = np.random.default_rng(seed)
    lists: dict[str, list[str]] = {"train": [], "val": [], "query": [], "gallery": []}
    rows: dict[str, list[tuple[int, int]]] = {k: [] for k in lists}
    times = ("0303morning", "0113noon", "0302afternoon")

    def shoot(folder: str, pid: int, k: int, seq: int) -> tuple[str, int]:
        cam = int(rng.integers(1, 16))
        name = f"{pid:04d}_{seq:03d}_{cam:02d}_{times[k % 3]}_{int(rng.integers(10**4)):04d}_{k}"
        name += "_ex.jpg" if k == 1 else ".jpg"  # some real names end in _ex
        _image(root / folder / f"{pid:04d}" / name, pid, cam, k)
        return f"{pid:04d}/{name} {pid}", cam

    for pid in range(num_train_ids):
        for k in range(images_per_id):
            line, cam = shoot(train_dir, pid, k, k)
            split = "val" if k == images_per_id - 1 else "train"
            lists[split].append(line)
            rows[split].append((pid + 1, cam))
    for pid in range(num_test_ids):
        for k in range(images_per_id):
            line, cam = shoot(test_dir, pid, k, k)
            split = "query" if k == 0 else "gallery"
            lists[split].append(line)
            rows[split].append((pid + 1, cam))
    for split, lines in lists.items():
        (root / f"list_{split}.txt").write_text("\n".join(lines) + "\n")
    counts = {split: _counts(r) for split, r in rows.items()}
    merged = _counts(rows["train"] + rows["val"])
    return {"root": str(root), "version": version, **counts, "train+val": merged}


# --- CUHK03 ------------------------------------------------------------------------------------


def _cuhk03_people(num_pairs: int, persons_per_pair: int):
    """(pair, person, label): labels 1.. numbered across pairs, as the protocol files do."""
    label = 0
    for pair in range(1, num_pairs + 1):
        for person in range(1, persons_per_pair + 1):
            label += 1
            yield pair, person, label


def write_cuhk03(
    root: str | Path,
    num_pairs: int = 2,
    persons_per_pair: int = 3,
    images_per_view: int = 2,
    num_train_ids: int = 3,
    variants=("labeled", "detected"),
) -> dict:
    """images_<variant>/ (PNG, ``A_PPP_V_II.png``) + cuhk03_new_protocol_config_<variant>.mat.

    The first ``num_train_ids`` identities train; for each other identity the first image of
    each view is a query and the rest is gallery (as in the new protocol: one query per view).
    The detected variant drops the last image of the first person (as real detection misses).
    """
    root = Path(root)
    out = {"root": str(root)}
    for variant in variants:
        filelist, labels, cams, train_idx, query_idx, gallery_idx = [], [], [], [], [], []
        for pair, person, label in _cuhk03_people(num_pairs, persons_per_pair):
            for view in (1, 2):
                for j in range(images_per_view):
                    k = (view - 1) * 5 + j + 1  # images 1-5 from view 1, 6-10 from view 2
                    if variant == "detected" and label == 1 and view == 2 and j == 1:
                        continue
                    name = f"{pair}_{person:03d}_{view}_{k:02d}.png"
                    _image(root / f"images_{variant}" / name, label, view, k)
                    filelist.append(name)
                    labels.append(label)
                    cams.append(view)
                    index = len(filelist)  # 1-based
                    if label <= num_train_ids:
                        train_idx.append(index)
                    elif j == 0:
                        query_idx.append(index)
                    else:
                        gallery_idx.append(index)
        cell = np.empty((len(filelist), 1), dtype=object)
        for i, name in enumerate(filelist):
            cell[i, 0] = name
        column = lambda v: np.asarray(v, dtype=np.float64).reshape(-1, 1)  # noqa: E731
        _savemat(root / f"cuhk03_new_protocol_config_{variant}.mat", {
            "filelist": cell, "labels": column(labels), "camId": column(cams),
            "train_idx": column(train_idx), "query_idx": column(query_idx),
            "gallery_idx": column(gallery_idx),
        })
        rows = {
            split: [(labels[i - 1], cams[i - 1]) for i in idx]
            for split, idx in (("train", train_idx), ("query", query_idx),
                               ("gallery", gallery_idx))
        }
        out[variant] = {split: _counts(r) for split, r in rows.items()}
    return out


def write_cuhk03_raw(
    root: str | Path, num_pairs: int = 2, persons_per_pair: int = 2, images_per_view: int = 2
) -> dict[str, list[str]]:
    """``cuhk03_release/cuhk-03.mat`` as MATLAB v7.3 writes it (HDF5; needs h5py).

    ``labeled`` and ``detected`` are 1 x pairs cells of references; each pair a (transposed)
    10 x persons cell of image references; images stored transposed (3 x W x H uint8); a missing
    image is MATLAB's empty array (``[0, 0]`` uint64). Returns {variant: image names expected}.
    """
    import h5py

    root = Path(root)
    path = root / "cuhk03_release" / "cuhk-03.mat"
    path.parent.mkdir(parents=True, exist_ok=True)
    names: dict[str, list[str]] = {}
    with h5py.File(path, "w") as mat:
        refs = mat.create_group("#refs#")
        counter = iter(range(10**6))

        def store(array) -> h5py.Reference:
            return refs.create_dataset(f"r{next(counter)}", data=array).ref

        for variant in ("labeled", "detected"):
            names[variant] = []
            pair_refs = np.empty((1, num_pairs), dtype=h5py.ref_dtype)
            for pair in range(1, num_pairs + 1):
                cells = np.empty((10, persons_per_pair), dtype=h5py.ref_dtype)
                for person in range(1, persons_per_pair + 1):
                    for k in range(10):
                        view = 1 if k < 5 else 2
                        if k % 5 < images_per_view:
                            image = np.full((H, W, 3), (pair * 40 + person * 7 + k) % 256,
                                            np.uint8)
                            cells[k, person - 1] = store(image.T)
                            names[variant].append(f"{pair}_{person:03d}_{view}_{k + 1:02d}.png")
                        else:
                            cells[k, person - 1] = store(np.zeros(2, np.uint64))
                pair_refs[0, pair - 1] = store(cells)
            mat.create_dataset(variant, data=pair_refs)
    return names


# --- custom crops ------------------------------------------------------------------------------


def write_custom(
    root: str | Path,
    mode: str = "csv",
    train_ids=(3, 8, 11),
    test_ids=(20, 21),
    images_per_id: int = 3,
    cameras: bool = True,
) -> dict:
    """Your own crops: ``csv`` (train.csv / query.csv / gallery.csv with a header, images under
    ``images/``), ``txt`` (train.txt ..., space-separated, images under ``crops/``) or
    ``folders`` (train/<pid>/, query/<pid>/, gallery/<pid>/; cameras unknown).

    Lists also carry one distractor (pid 0) in the gallery and one junk image (-1) in train.
    """
    root = Path(root)
    if mode not in ("csv", "txt", "folders"):
        raise ValueError(f"unknown mode {mode!r}; valid: csv, txt, folders")
    cameras = cameras and mode != "folders"
    rows: dict[str, list[tuple[int, int]]] = {"train": [], "query": [], "gallery": []}
    lines: dict[str, list[str]] = {k: [] for k in rows}
    image_dir = {"csv": "images", "txt": "crops"}.get(mode, "")

    def shoot(split: str, pid: int, k: int, cam: int) -> None:
        name = f"{split}_{pid}_{k}.jpg"
        if mode == "folders":
            _image(root / split / str(pid) / name, pid, cam, k)
        else:
            _image(root / image_dir / name, pid, cam, k)
            sep = "," if mode == "csv" else " "
            fields = [f"{image_dir}/{name}", str(pid)] + ([str(cam)] if cameras else [])
            lines[split].append(sep.join(fields))
        if pid > 0:
            rows[split].append((pid, cam if cameras else -1))

    for pid in train_ids:
        for k in range(images_per_id):
            shoot("train", pid, k, 1 + k % 2)
    for pid in test_ids:
        for k in range(images_per_id):
            shoot("query" if k == 0 else "gallery", pid, k, 1 + k % 3)
    if mode != "folders":
        shoot("gallery", 0, 0, 2)  # a distractor: kept in the gallery
        rows["gallery"].append((0, 2 if cameras else -1))
        shoot("train", -1, 0, 1)  # junk: dropped
        header = {"csv": "path,pid,camid" if cameras else "path,pid", "txt": "# path pid camid"}
        for split, split_lines in lines.items():
            text = "\n".join([header[mode], *split_lines]) + "\n"
            (root / f"{split}.{mode}").write_text(text)
    return {"root": str(root), **{split: _counts(r) for split, r in rows.items()}}
