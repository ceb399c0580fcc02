"""The ``market1501`` TFDS builder reproduces what ``load_dataset`` reads, in both layouts.

The fixtures are tiny hand-written datasets (a few 16x32 images, an annotation CSV and a
``market_attribute.mat``), so the test needs neither the real data nor the synthetic generator.
"""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from tfmarket.attributes import COLUMNS, LOWER_COLORS, UPPER_COLORS
from tfmarket.data import tfds_builder
from tfmarket.data.registry import load_dataset
from tfmarket.errors import ConfigError, DataError

W, H = 16, 32


def _attribute_row(rng: np.random.Generator) -> np.ndarray:
    """One valid row in file encoding; sometimes no colour marked (as in the real files)."""
    row = np.ones(len(COLUMNS), dtype=np.int64)
    row[0] = rng.integers(1, 5)
    row[1:10] = rng.integers(1, 3, size=9)
    start = 10
    for colors in (UPPER_COLORS, LOWER_COLORS):
        pick = rng.integers(0, len(colors) + 1)
        if pick < len(colors):
            row[start + pick] = 2
        start += len(colors)
    return row


def _write_image(path: Path, rng: np.random.Generator, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, size=(H, W, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA")
    if mode == "L":
        image = image.convert("L")
    elif mode == "P":
        image = image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    elif mode == "RGB":
        image = image.convert("RGB")
    image.save(path)


def _write_course(root: Path, rng: np.random.Generator) -> None:
    ids = (3, 8, 15)
    for pid in ids:
        for k, cam in enumerate((1, 4)):
            _write_image(root / "train" / f"{pid:04d}_c{cam}_{k:09d}.jpg", rng)
    _write_image(root / "train" / "0015_c6_000000007.jpg", rng, mode="L")  # grayscale JPEG
    _write_image(root / "train" / "0008_c2_000000009.png", rng, mode="RGBA")  # PNG with alpha
    header = ",".join(("id", *COLUMNS))
    lines = [header] + [",".join(map(str, (pid, *_attribute_row(rng)))) for pid in ids]
    (root / "annotations_train.csv").write_text("\n".join(lines) + "\n")
    for i in range(4):
        _write_image(root / "test" / f"{i + 1:06d}.jpg", rng)
    _write_image(root / "test" / "000005.png", rng, mode="P")  # palette PNG
    for i in range(2):
        _write_image(root / "queries" / f"{i + 101:06d}.jpg", rng)


def _mat_struct(table: dict[int, np.ndarray], rng: np.random.Generator) -> dict:
    """A ``market_attribute.{train,test}`` struct: 1xN uint8 per field, image_index cell."""
    ids = sorted(table)
    index = np.empty((1, len(ids)), dtype=object)
    for i, pid in enumerate(ids):
        index[0, i] = f"{pid:04d}"
    fields = {
        c: np.array([[table[p][j] for p in ids]], dtype=np.uint8) for j, c in enumerate(COLUMNS)
    }
    order = rng.permutation(len(COLUMNS))  # field order differs between structs in the real file
    struct = {COLUMNS[j]: fields[COLUMNS[j]] for j in order}
    struct["image_index"] = index
    return struct


def _write_original(root: Path, rng: np.random.Generator) -> None:
    import scipy.io

    for pid in (2, 7):
        for cam in (1, 3):
            _write_image(root / "bounding_box_train" / f"{pid:04d}_c{cam}s1_000{pid}51_01.jpg", rng)
    _write_image(root / "bounding_box_train" / "0007_c5s2_000151_02.jpg", rng, mode="L")
    _write_image(root / "bounding_box_train" / "-1_c1s1_000001_00.jpg", rng)  # junk: dropped
    for pid, cam in ((4, 2), (4, 6), (5, 1), (0, 3)):  # 0000 = distractor: kept in the gallery
        _write_image(root / "bounding_box_test" / f"{pid:04d}_c{cam}s1_000{cam}01_01.jpg", rng)
    _write_image(root / "bounding_box_test" / "-1_c2s1_000002_00.jpg", rng)
    for pid, cam in ((4, 1), (5, 3)):
        _write_image(root / "query" / f"{pid:04d}_c{cam}s1_000{cam}11_00.jpg", rng)
    train = {pid: _attribute_row(rng) for pid in (2, 7)}
    test = {pid: _attribute_row(rng) for pid in (4, 5, 9)}
    scipy.io.savemat(
        str(root / "market_attribute.mat"),
        {"market_attribute": {"train": _mat_struct(train, rng), "test": _mat_struct(test, rng)}},
    )


SPLITS = {  # config -> (tfds split, ReidDataset attribute)
    "course": (("train", "train"), ("query", "query"), ("test", "gallery")),
    "original": (("train", "train"), ("query", "query"), ("gallery", "gallery")),
}
LAYOUT = {"course": "course", "original": "market1501"}


@pytest.fixture
def own_tempdir(tmp_path, monkeypatch):
    """TFDS makes an (empty) temp dir for every new builder: keep those inside tmp_path."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """config -> (manual_dir, data_dir, builder); both configs built once for the module."""
    base = tmp_path_factory.mktemp("tfds")
    rng = np.random.default_rng(0)
    saved_tempdir = tempfile.tempdir
    tempfile.tempdir = str(base)  # TFDS makes an (empty) temp dir per new builder: keep it here
    try:
        out = {}
        for config, write in (("course", _write_course), ("original", _write_original)):
            manual = base / f"{config}_src"
            write(manual, rng)
            data_dir = base / f"{config}_data"
            out[config] = (manual, data_dir, tfds_builder.build(manual, data_dir, config=config))
        yield out
    finally:
        tempfile.tempdir = saved_tempdir


@pytest.mark.parametrize("config", ["course", "original"])
def test_splits_match_load_dataset(built, config):
    manual, _, builder = built[config]
    reference = load_dataset(manual, layout=LAYOUT[config])
    assert set(builder.info.splits) == {name for name, _ in SPLITS[config]}
    for split, attribute in SPLITS[config]:
        records = getattr(reference, attribute)
        assert builder.info.splits[split].num_examples == len(records) > 0
        examples = list(builder.as_dataset(split=split).as_numpy_iterator())
        assert [e["file_name"].decode() for e in examples] == [Path(p).name for p in records.paths]
        np.testing.assert_array_equal([e["id"] for e in examples], records.pids)
        np.testing.assert_array_equal([e["camera"] for e in examples], records.cams)
        np.testing.assert_array_equal(
            np.stack([e["attributes"] for e in examples]), records.attributes
        )
        for example, path in zip(examples, records.paths, strict=True):
            image = example["image"]
            assert image.dtype == np.uint8 and image.shape == (H, W, 3)
            with Image.open(path) as pil:
                grayscale = pil.mode == "L"
                expected = np.asarray(pil.convert("RGB"))
            if Path(path).suffix == ".png":  # lossless: exact pixels
                np.testing.assert_array_equal(image, expected)
            else:  # JPEG decoders differ slightly (chroma upsampling); TF's own is exact
                tf_image = tf.io.decode_image(Path(path).read_bytes(), channels=3).numpy()
                np.testing.assert_array_equal(image, tf_image)
                assert np.abs(image.astype(int) - expected).mean() < 2
            if grayscale:
                assert (image == image[..., :1]).all()


def test_labels_of_fixture(built):
    """The fixtures exercise the cases that matter: junk dropped, distractor kept, unlabelled."""
    _, _, original = built["original"]
    gallery = list(original.as_dataset(split="gallery").as_numpy_iterator())
    assert sorted(int(e["id"]) for e in gallery) == [0, 4, 4, 5]
    distractor = next(e for e in gallery if e["id"] == 0)
    assert (distractor["attributes"] == 0).all()
    assert all((e["attributes"] > 0).all() for e in gallery if e["id"] > 0)
    train = list(original.as_dataset(split="train").as_numpy_iterator())
    assert len(train) == 5 and all(e["id"] in (2, 7) for e in train)
    _, _, course = built["course"]
    for split in ("test", "query"):
        for e in course.as_dataset(split=split).as_numpy_iterator():
            assert e["id"] == -1 and e["camera"] == -1 and (e["attributes"] == 0).all()


def test_file_bytes_kept_and_odd_images_normalised(built):
    manual, _, builder = built["course"]
    raw = builder.as_dataset(split="train", decoders={"image": tfds.decode.SkipDecoding()})
    for e in raw.as_numpy_iterator():
        name = e["file_name"].decode()
        original = (manual / "train" / name).read_bytes()
        if name.endswith(".png"):  # RGBA -> stored as RGB PNG
            assert Image.open(io.BytesIO(e["image"])).mode == "RGB"
        else:
            assert e["image"] == original


def test_info_and_files(built):
    _, data_dir, builder = built["course"]
    info = builder.info
    assert list(info.metadata["attribute_names"]) == list(COLUMNS)
    assert info.features["attributes"].shape == (len(COLUMNS),)
    assert "Zheng" in info.citation and "Lin" in info.citation
    assert "annotations_train.csv" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert "market_attribute.mat" in builder.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert sorted(p.name for p in data_dir.iterdir()) == ["downloads", "market1501"]
    assert (data_dir / "market1501" / "course" / "1.0.0" / "dataset_info.json").is_file()
    # Reopening the prepared data needs neither the manual folder nor a rebuild.
    reopened = tfds_builder.Market1501(data_dir=str(data_dir), config="course")
    assert reopened.info.splits["test"].num_examples == 5


def test_build_errors(built, tmp_path, own_tempdir):
    with pytest.raises(ConfigError, match="valid configs"):
        tfds_builder.build(tmp_path, tmp_path / "out", config="market")
    with pytest.raises(DataError, match="not found"):
        tfds_builder.build(tmp_path / "missing", tmp_path / "out")
    manual, _, _ = built["course"]
    with pytest.raises(DataError, match="bounding_box_train"):  # wrong layout for the config
        tfds_builder.build(manual, tmp_path / "out", config="original")


def test_rebuild_reuses_unless_overwrite(tmp_path, own_tempdir):
    rng = np.random.default_rng(1)
    manual = tmp_path / "src"
    _write_course(manual, rng)
    data_dir = tmp_path / "data"
    assert tfds_builder.build(manual, data_dir).info.splits["test"].num_examples == 5
    _write_image(manual / "test" / "000099.jpg", rng)
    assert tfds_builder.build(manual, data_dir).info.splits["test"].num_examples == 5
    rebuilt = tfds_builder.build(manual, data_dir, overwrite=True)
    assert rebuilt.info.splits["test"].num_examples == 6


def test_course_without_queries(tmp_path, own_tempdir):
    manual = tmp_path / "src"
    _write_course(manual, np.random.default_rng(2))
    shutil.rmtree(manual / "queries")
    builder = tfds_builder.build(manual, tmp_path / "data", config="course")
    assert set(builder.info.splits) == {"train", "test"}


@pytest.mark.parametrize("config", ["dukemtmcreid", "msmt17"])
def test_reid_crops_configs_match_load_dataset(tmp_path, own_tempdir, config):
    """``reid_crops``: the other datasets' readers, with their own attribute schema."""
    from tfmarket.attributes import schema_for_layout
    from tfmarket.data.synthetic.formats import write_duke, write_msmt17

    manual = tmp_path / "src"
    if config == "dukemtmcreid":
        write_duke(manual)
    else:
        write_msmt17(manual, version="V2")
    builder = tfds_builder.build(manual, tmp_path / "data", config=config)
    reference = load_dataset(manual, layout=config)
    schema = schema_for_layout(reference.layout)
    assert builder.info.metadata["attribute_schema"] == schema.to_dict()
    assert ("attributes" in builder.info.features) == bool(schema.columns)
    assert set(builder.info.splits) == {"train", "query", "gallery"}
    for split in ("train", "query", "gallery"):
        records = getattr(reference, split)
        examples = list(builder.as_dataset(split=split).as_numpy_iterator())
        assert [e["file_name"].decode() for e in examples] == [Path(p).name for p in records.paths]
        np.testing.assert_array_equal([e["id"] for e in examples], records.pids)
        np.testing.assert_array_equal([e["camera"] for e in examples], records.cams)
        if schema.columns:
            np.testing.assert_array_equal(np.stack([e["attributes"] for e in examples]),
                                          records.attributes)
