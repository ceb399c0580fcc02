"""Readers of DukeMTMC-reID, MSMT17, CUHK03 and custom crops on fixtures in their real formats.

Every fixture is written by ``tfmarket.data.synthetic.formats`` (real file names, list files and
``.mat`` files, 16x32 images), so these tests need no real data and run in seconds.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_jpeg

from tfmarket.attributes import DUKE
from tfmarket.config import CHOICES, load_config
from tfmarket.data.__main__ import main as data_cli
from tfmarket.data.cuhk03 import extract_cuhk03
from tfmarket.data.duke import DUKE_ATTRIBUTES, read_duke_attribute_mat
from tfmarket.data.msmt17 import load_msmt17
from tfmarket.data.records import Records
from tfmarket.data.registry import LAYOUTS, detect_layout, load_dataset
from tfmarket.data.split import split_validation
from tfmarket.data.summary import dataset_summary
from tfmarket.data.synthetic.formats import (
    write_cuhk03,
    write_cuhk03_raw,
    write_custom,
    write_duke,
    write_duke_attribute_mat,
    write_msmt17,
)
from tfmarket.errors import DataError
from tfmarket.retrieval.metrics import evaluate_ranking, per_query_metrics_from_order


def counts(records: Records) -> tuple[int, int, int]:
    """(images, identities > 0, cameras), as the writers report them."""
    return len(records), len(np.unique(records.pids[records.pids > 0])), len(
        np.unique(records.cams))


def assert_counts(dataset, expected: dict, train_key: str = "train") -> None:
    assert counts(dataset.train) == tuple(expected[train_key])
    assert counts(dataset.query) == tuple(expected["query"])
    assert counts(dataset.gallery) == tuple(expected["gallery"])


# --- DukeMTMC-reID -----------------------------------------------------------------------------


def test_duke_counts_cameras_and_attributes_by_name(tmp_path):
    info = write_duke(tmp_path / "duke")
    ds = load_dataset(tmp_path / "duke")
    assert ds.layout == "dukemtmcreid" and detect_layout(tmp_path / "duke") == "dukemtmcreid"
    assert_counts(ds, info)
    assert set(np.unique(ds.train.cams)) <= set(range(1, 9))
    assert ds.schema == DUKE and ds.train.attributes.shape == (len(ds.train), 23)
    assert ds.train.attribute_names == DUKE_ATTRIBUTES == DUKE.columns
    for records, split in ((ds.train, "train"), (ds.query, "test"), (ds.gallery, "test")):
        assert records.schema == DUKE
        for pid, row in zip(records.pids, records.attributes, strict=True):
            expected = info["tables"][split].get(int(pid), np.zeros(len(DUKE_ATTRIBUTES)))
            np.testing.assert_array_equal(row, expected)
    assert ds.train.has_attributes.all()
    distractor = ds.gallery.pids == 4000  # gallery-only identity, not in the attribute file
    assert distractor.any() and not ds.gallery.has_attributes[distractor].any()
    # subset() keeps the attributes and the schema
    part = ds.train.subset(np.array([2, 0]))
    np.testing.assert_array_equal(part.attributes, ds.train.attributes[[2, 0]])
    assert part.schema == DUKE


def test_duke_attribute_mat_train_and_test_orders_differ(tmp_path):
    tables = {"train": {1: np.arange(23) % 2 + 1}, "test": {2: (np.arange(23) + 1) % 2 + 1}}
    write_duke_attribute_mat(tmp_path / "duke_attribute.mat", tables)
    read = read_duke_attribute_mat(tmp_path / "duke_attribute.mat")
    np.testing.assert_array_equal(read["train"][1], tables["train"][1])
    np.testing.assert_array_equal(read["test"][2], tables["test"][2])


def test_duke_without_attribute_file(tmp_path):
    write_duke(tmp_path / "duke", attributes=False)
    ds = load_dataset(tmp_path / "duke", "dukemtmcreid")
    assert ds.schema == DUKE and not ds.train.has_attributes.any()
    assert ds.train.attributes.shape == (len(ds.train), 23) and not ds.train.attributes.any()


def test_duke_attribute_file_without_a_field(tmp_path):
    import scipy.io

    info = write_duke(tmp_path / "duke")
    path = tmp_path / "duke" / "duke_attribute.mat"
    raw = scipy.io.loadmat(str(path))["duke_attribute"][0, 0]
    train = raw["train"][0, 0]
    kept = [n for n in train.dtype.names if n != "hat"]
    struct = np.empty((1, 1), dtype=[(n, object) for n in kept])
    for n in kept:
        struct[0, 0][n] = train[n]
    root = np.empty((1, 1), dtype=[("train", object), ("test", object)])
    root[0, 0]["train"], root[0, 0]["test"] = struct, raw["test"]
    scipy.io.savemat(str(path), {"duke_attribute": root})
    with pytest.raises(DataError, match=r"duke_attribute.mat: duke_attribute.train lacks fields "
                                        r"\['hat'\]"):
        load_dataset(info["root"])
    scipy.io.savemat(str(path), {"something_else": np.ones(3)})
    with pytest.raises(DataError, match="duke_attribute.mat: no variable 'duke_attribute'"):
        load_dataset(info["root"])


def test_duke_bad_file_name_is_named(tmp_path):
    write_duke(tmp_path / "duke")
    write_jpeg(tmp_path / "duke" / "query" / "0002_c9_f0000001.jpg")  # camera 9
    with pytest.raises(DataError, match=r"0002_c9_f0000001.jpg: file name does not follow "
                                        r"DukeMTMC-reID's PPPP_cC_fFFFFFFF.jpg"):
        load_dataset(tmp_path / "duke")


def test_market_and_duke_told_apart_by_file_names(tmp_path):
    for d in ("bounding_box_train", "bounding_box_test", "query"):
        write_jpeg(tmp_path / "m" / d / "0002_c1s1_000451_03.jpg", size=(16, 32))
    assert detect_layout(tmp_path / "m") == "market1501"
    with pytest.raises(DataError, match="PPPP_cC_fFFFFFFF"):  # forcing Duke names the file
        load_dataset(tmp_path / "m", "dukemtmcreid")


# --- MSMT17 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_train_plus_val_query_gallery(tmp_path, version):
    info = write_msmt17(tmp_path / "msmt", version=version)
    ds = load_dataset(tmp_path / "msmt")
    assert (ds.layout, ds.variant) == ("msmt17", version)
    assert_counts(ds, info, train_key="train+val")
    assert ds.train.pids.min() == 1, "list identity 0 is stored as 1 (0 = distractor)"
    assert set(np.unique(ds.query.cams)) <= set(range(1, 16))
    assert dataset_summary(ds)["splits"]["train"]["folder"] == "list_train+list_val"
    alone = load_msmt17(tmp_path / "msmt", include_val=False)
    assert counts(alone.train) == tuple(info["train"])


@pytest.mark.parametrize("edit,message", [
    (lambda t: t + "0001/only_a_path.jpg\n", r"list_query.txt: line 4: expected 'relative/path"
                                             r".jpg pid', got 1 field"),
    (lambda t: t + "0001/0001_000_01_0303morning_0001_0.jpg x\n",
     r"list_query.txt: line 4: identity 'x' is not an integer"),
    (lambda t: t + "0001/0001_000_01_0303morning_0001_0.jpg 1\n",
     r"list_query.txt: line 4: .*0001_000_01_0303morning_0001_0.jpg not found"),
    (lambda t: t + "0001/0001_000_99_0303morning_0001_0.jpg 1\n",
     r"list_query.txt: line 4: .*does not follow MSMT17's .*camera CC 01-15"),
    (lambda t: t + "0001/notes.txt 1\n", r"list_query.txt: line 4: 0001/notes.txt is not an "
                                         r"image"),
])
def test_msmt17_bad_list_lines_are_named(tmp_path, edit, message):
    write_msmt17(tmp_path / "msmt", num_test_ids=3, images_per_id=4)
    path = tmp_path / "msmt" / "list_query.txt"
    path.write_text(edit(path.read_text()))
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / "msmt")


def test_msmt17_missing_image_folder(tmp_path):
    import shutil

    write_msmt17(tmp_path / "msmt")
    shutil.rmtree(tmp_path / "msmt" / "test")
    with pytest.raises(DataError, match="MSMT17 image folders not found"):
        load_dataset(tmp_path / "msmt")


# --- CUHK03 ------------------------------------------------------------------------------------


def test_cuhk03_labeled_and_detected(tmp_path):
    info = write_cuhk03(tmp_path / "cuhk03")
    assert detect_layout(tmp_path / "cuhk03") == "cuhk03"
    labeled = load_dataset(tmp_path / "cuhk03")
    assert (labeled.layout, labeled.variant) == ("cuhk03", "labeled")
    assert_counts(labeled, info["labeled"])
    detected = load_dataset(tmp_path / "cuhk03", "cuhk03-detected")
    assert detected.variant == "detected"
    assert_counts(detected, info["detected"])
    assert len(detected.train) == len(labeled.train) - 1
    assert set(labeled.query.cams) == {1, 2}, "camera = view within the camera pair"
    assert all("images_detected" in p for p in detected.gallery.paths)


def test_cuhk03_detected_only_is_detected(tmp_path):
    info = write_cuhk03(tmp_path / "c", variants=("detected",))
    assert detect_layout(tmp_path / "c") == "cuhk03-detected"
    assert_counts(load_dataset(tmp_path / "c"), info["detected"])


def test_cuhk03_bad_protocol_files(tmp_path):
    import scipy.io

    write_cuhk03(tmp_path / "c", variants=("labeled",))
    mat = tmp_path / "c" / "cuhk03_new_protocol_config_labeled.mat"
    fields = {k: v for k, v in scipy.io.loadmat(str(mat)).items() if not k.startswith("__")}
    scipy.io.savemat(str(mat), {**fields, "query_idx": fields["query_idx"] + 1000})
    with pytest.raises(DataError, match=r"config_labeled.mat: query_idx holds index \d+ outside "
                                        r"1..\d+"):
        load_dataset(tmp_path / "c")
    scipy.io.savemat(str(mat), {k: v for k, v in fields.items() if k != "labels"})
    with pytest.raises(DataError, match=r"config_labeled.mat: lacks fields \['labels'\]"):
        load_dataset(tmp_path / "c")
    scipy.io.savemat(str(mat), fields)
    victim = sorted((tmp_path / "c" / "images_labeled").iterdir())[0]
    victim.unlink()
    with pytest.raises(DataError, match=rf"{victim.name}: not found \(filelist entry 1 of "
                                        r"cuhk03_new_protocol_config_labeled.mat"):
        load_dataset(tmp_path / "c")


def test_cuhk03_raw_mat_extraction(tmp_path):
    root = tmp_path / "c"
    names = write_cuhk03_raw(root)
    (root / "cuhk03_new_protocol_config_labeled.mat").write_bytes(b"")  # detection needs it
    with pytest.raises(DataError, match="extract-cuhk03"):
        load_dataset(root)
    assert data_cli(["extract-cuhk03", str(root)]) == 0
    for variant, expected in names.items():
        written = sorted(p.name for p in (root / f"images_{variant}").iterdir())
        assert written == sorted(expected)
    from PIL import Image

    with Image.open(root / "images_labeled" / "1_001_2_06.png") as image:
        assert image.size == (16, 32) and image.mode == "RGB"
    assert extract_cuhk03(root) == {"labeled": 0, "detected": 0}, "existing folders are kept"


# --- custom crops ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["csv", "txt", "folders"])
def test_custom_formats(tmp_path, mode):
    info = write_custom(tmp_path / "mine", mode=mode)
    assert detect_layout(tmp_path / "mine") == "custom"
    ds = load_dataset(tmp_path / "mine")
    assert_counts(ds, info)
    assert (ds.train.pids > 0).all(), "junk and distractors never train"
    if mode == "folders":
        assert (ds.gallery.cams == -1).all()
    else:
        assert (ds.gallery.pids == 0).sum() == 1, "a distractor stays in the gallery"
        assert (ds.gallery.cams > 0).all()


def test_custom_train_only_holds_out_identities_without_cameras(tmp_path):
    root = tmp_path / "mine"
    for pid in range(1, 7):
        for k in range(3):
            write_jpeg(root / "train" / f"{pid:02d}" / f"{k}.jpg", size=(16, 32))
    ds = load_dataset(root)
    assert len(ds.query) == 0 and (ds.train.cams == -1).all()
    rest, query, gallery = split_validation(ds.train, 2, seed=0)
    assert len(query) == 2 and len(gallery) == 4 and len(rest) == 12


@pytest.mark.parametrize("text,message", [
    ("path,pid,camid\nimages/a.jpg\n", r"train.csv: line 2: expected 'path,pid,camid', got 1"),
    ("images/missing.jpg,3,1\n", r"train.csv: line 1: .*missing.jpg not found"),
    ("images/a.jpg,3,-5\n", r"train.csv: line 1: identity must be >= -1 .* camera >= -1"),
    ("images/a.jpg,three,1\n", r"train.csv: line 1: identity 'three' is not an integer"),
])
def test_custom_bad_lists_are_named(tmp_path, text, message):
    root = tmp_path / "mine"
    write_jpeg(root / "images" / "a.jpg", size=(16, 32))
    (root / "train.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        load_dataset(root)


def test_custom_query_without_gallery_and_bad_folder(tmp_path):
    root = tmp_path / "mine"
    write_custom(root, mode="folders")
    import shutil

    shutil.rmtree(root / "gallery")
    with pytest.raises(DataError, match="query is given but gallery is not"):
        load_dataset(root)
    shutil.rmtree(root / "query")
    write_jpeg(root / "train" / "alice" / "0.jpg", size=(16, 32))
    with pytest.raises(DataError, match=r"train/alice: identity folder name is not an integer"):
        load_dataset(root, "custom")


def test_unknown_cameras_count_as_different_cameras():
    dist = np.array([[0.1, 0.2, 0.3]])
    unknown = evaluate_ranking(dist, [5], [5, 7, 5], [-1], [-1, -1, -1])
    assert unknown["num_valid_queries"] == 1 and unknown["mAP"] == pytest.approx((1 + 2 / 3) / 2)
    known = evaluate_ranking(dist, [5], [5, 7, 5], [1], [1, 2, 2])  # same camera dropped
    assert known["mAP"] == pytest.approx(0.5)
    order = per_query_metrics_from_order(np.array([[0, 1, 2]]), [5], [5, 7, 5], [-1],
                                         [-1, -1, -1], 3)
    assert order["ap"][0] == pytest.approx((1 + 2 / 3) / 2)


# --- detection, CLI, config --------------------------------------------------------------------


def test_summary_cli_detects_and_forces_every_dataset(tmp_path, capsys):
    write_duke(tmp_path / "duke")
    write_msmt17(tmp_path / "msmt", version="V2")
    write_cuhk03(tmp_path / "cuhk03")
    write_custom(tmp_path / "mine")
    expected = {"duke": ("dukemtmcreid", None), "msmt": ("msmt17", "V2"),
                "cuhk03": ("cuhk03", "labeled"), "mine": ("custom", None)}
    for folder, (layout, variant) in expected.items():
        for extra in ([], ["--dataset", layout], ["--layout", layout]):
            assert data_cli(["summary", str(tmp_path / folder), "--json", *extra]) == 0
            summary = json.loads(capsys.readouterr().out)
            assert (summary["layout"], summary.get("variant")) == (layout, variant)
    assert data_cli(["summary", str(tmp_path / "duke")]) == 0
    text = capsys.readouterr().out
    assert "(layout: dukemtmcreid)" in text and "100%" in text.splitlines()[2]
    assert data_cli(["summary", str(tmp_path / "cuhk03"), "--dataset", "cuhk03-detected"]) == 0
    assert "(layout: cuhk03, detected)" in capsys.readouterr().out


def test_forcing_the_wrong_or_an_unknown_dataset(tmp_path, capsys):
    write_msmt17(tmp_path / "msmt")
    assert data_cli(["summary", str(tmp_path / "msmt"), "--dataset", "dukemtmcreid"]) == 2
    assert "bounding_box_train: folder not found (DukeMTMC-reID layout)" in (
        capsys.readouterr().err)
    assert data_cli(["summary", str(tmp_path / "msmt"), "--dataset", "duke"]) == 2
    err = capsys.readouterr().err
    assert "unknown dataset (layout) 'duke'; valid names: auto, market1501" in err
    assert "msmt17" in err and "custom" in err and len(err.strip().splitlines()) == 1


def test_nothing_recognised_suggests_a_subfolder(tmp_path):
    write_msmt17(tmp_path / "MSMT17_V1")
    with pytest.raises(DataError, match=r"not a Market-1501 folder.*did you mean .*MSMT17_V1"):
        load_dataset(tmp_path)


def test_config_layout_accepts_every_dataset():
    assert CHOICES["data.layout"] == ("auto", *LAYOUTS)
    for name in LAYOUTS:
        assert load_config(overrides=[f"data.layout={name}"]).data.layout == name


def test_data_dataset_names_the_dataset_for_training(tmp_path):
    from tfmarket.config import dataset_name
    from tfmarket.errors import ConfigError
    from tfmarket.training.data import load_training_data

    assert CHOICES["data.dataset"] == CHOICES["data.layout"]
    root = tmp_path / "duke"
    write_duke(root, train_ids=tuple(range(1, 13)), images_per_id=4)
    config = load_config(overrides=[f"data.root={root}", "data.dataset=dukemtmcreid"])
    assert dataset_name(config.data) == "dukemtmcreid"
    data = load_training_data(config.data, tmp_path / "run")
    # Duke has a labelled query/gallery: auto validation is official, every identity trains.
    assert data.validation == "official" and len(data.identities) == 12
    assert data.records.schema.name == "dukemtmcreid"
    # Forcing another dataset than the folder holds is the reader's named error.
    forced = load_config(overrides=[f"data.root={root}", "data.dataset=msmt17"])
    with pytest.raises(DataError, match="list_train.txt|MSMT17"):
        load_training_data(forced.data, tmp_path / "run2")
    both = load_config(overrides=["data.dataset=course", "data.layout=market1501"])
    with pytest.raises(ConfigError, match="same setting"):
        dataset_name(both.data)
    assert dataset_name(load_config(overrides=["data.layout=course"]).data) == "course"
    with pytest.raises(ConfigError, match="data.dataset"):
        load_config(overrides=["data.dataset=duke"])
