import json
import shutil

import numpy as np
import pytest
from conftest import ATTRIBUTE_MAT, COURSE, MINI, needs, write_jpeg

from tfmarket.attributes import COLUMNS
from tfmarket.data.__main__ import main as data_cli
from tfmarket.data.check import find_unreadable
from tfmarket.data.filenames import list_images, parse_course_train, parse_original
from tfmarket.data.market1501 import read_annotations_csv, read_attribute_mat
from tfmarket.data.registry import load_dataset
from tfmarket.data.split import relabel, split_validation
from tfmarket.errors import DataError


def test_parse_file_names():
    assert parse_original("0002_c1s1_000451_03.jpg") == (2, 1)
    assert parse_original("-1_c3s2_012345_01.jpg") == (-1, 3)
    assert parse_original("0000_c6s4_002202_00.jpg") == (0, 6)
    assert parse_course_train("0002_c1_016620005.jpg") == (2, 1)
    with pytest.raises(DataError, match="img001.jpg.*PPPP_cCsS"):
        parse_original("img001.jpg")
    with pytest.raises(DataError, match="0002_c1s1_000451_03.jpg.*PPPP_cC_"):
        parse_course_train("0002_c1s1_000451_03.jpg")


def test_list_images_skips_thumbs_db_and_rejects_strays(tmp_path):
    write_jpeg(tmp_path / "0001_c1_000000001.jpg")
    (tmp_path / "Thumbs.db").write_bytes(b"\0" * 64)
    (tmp_path / ".DS_Store").write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["0001_c1_000000001.jpg"]
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt"):
        list_images(tmp_path)
    with pytest.raises(DataError, match="folder not found"):
        list_images(tmp_path / "missing")


def test_original_layout_junk_distractors_and_attributes(market_synth):
    ds = load_dataset(market_synth)
    assert ds.layout == "market1501"
    assert (ds.train.pids > 0).all(), "no junk or distractor in training"
    assert (ds.gallery.pids == 0).any(), "distractors stay in the gallery"
    assert not (ds.gallery.pids == -1).any(), "junk is dropped"
    assert ds.train.has_attributes.all()
    assert not ds.gallery.has_attributes[ds.gallery.pids == 0].any()
    # The join goes by field name: compare with a direct by-name read of the .mat file.
    import scipy.io

    train = scipy.io.loadmat(str(market_synth / "market_attribute.mat"))["market_attribute"][0, 0][
        "train"][0, 0]
    ids = [int(np.asarray(x).ravel()[0]) for x in train["image_index"].ravel()]
    pid = int(ds.train.pids[0])
    row = ids.index(pid)
    for c, name in enumerate(COLUMNS):
        assert ds.train.attributes[0, c] == int(train[name].ravel()[row]), name


def test_original_layout_missing_folder(tmp_path, market_synth):
    broken = tmp_path / "m"
    shutil.copytree(market_synth, broken)
    shutil.rmtree(broken / "query")
    with pytest.raises(DataError, match="not a Market-1501 folder"):
        load_dataset(broken)
    with pytest.raises(DataError, match="query: folder not found"):
        load_dataset(broken, "market1501")


def test_course_layout_reads_csv_and_unlabelled_splits(course_synth):
    ds = load_dataset(course_synth)
    assert ds.layout == "course"
    assert ds.train.has_attributes.all()
    assert not ds.query.labelled and not ds.gallery.labelled
    table = read_annotations_csv(course_synth / "annotations_train.csv")
    np.testing.assert_array_equal(ds.train.attributes[0], table[int(ds.train.pids[0])])


@pytest.mark.parametrize("mutate,message", [
    (lambda f: f.drop(columns=["hat"]), "missing columns hat"),
    (lambda f: f.iloc[1:], "is not in"),
    (lambda f: f.assign(bag=["x"] + list(f["bag"][1:])), "line 2 has empty or non-numeric"),
    (lambda f: f.assign(age=[7] + list(f["age"][1:])), "age must be 1-4"),
    (lambda f: __import__("pandas").concat([f, f.iloc[:1]]), "more than one line"),
])
def test_malformed_csv_is_reported_with_the_file(tmp_path, course_synth, mutate, message):
    import pandas as pd

    root = tmp_path / "c"
    shutil.copytree(course_synth, root)
    frame = pd.read_csv(root / "annotations_train.csv")
    mutate(frame).to_csv(root / "annotations_train.csv", index=False)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(root)
    assert "annotations_train.csv" in str(err.value) or ".jpg" in str(err.value)


def test_malformed_file_name_in_train(tmp_path, course_synth):
    root = tmp_path / "c"
    shutil.copytree(course_synth, root)
    write_jpeg(root / "train" / "person7.jpg")
    with pytest.raises(DataError, match="person7.jpg"):
        load_dataset(root)


def test_corrupt_truncated_and_non_image_files_are_named(tmp_path):
    good = write_jpeg(tmp_path / "good.jpg")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not a jpeg at all")
    gray = write_jpeg(tmp_path / "gray.jpg", mode="L")
    png = write_jpeg(tmp_path / "png.png", fmt="PNG")
    bad = dict(find_unreadable([good, truncated, garbage, gray, png]))
    assert set(bad) == {str(truncated), str(garbage)}


def test_summary_check_exits_1_and_names_the_file(tmp_path, course_synth, capsys):
    root = tmp_path / "c"
    shutil.copytree(course_synth, root)
    victim = sorted((root / "test").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:100])
    assert data_cli(["summary", str(root), "--json", "--check"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [u["file"] for u in report["check"]["unreadable"]] == [str(victim)]


def test_summary_missing_folder_is_a_clear_error(tmp_path, capsys):
    assert data_cli(["summary", str(tmp_path / "nope")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err


def test_validation_split_is_identity_disjoint(course_synth):
    train = load_dataset(course_synth).train
    rest, query, gallery = split_validation(train, 4, seed=0)
    assert len(rest) + len(query) + len(gallery) == len(train)
    assert not set(rest.pids) & set(query.pids)
    assert set(query.pids) == set(gallery.pids)
    for pid in set(query.pids):
        cams = query.cams[query.pids == pid]
        assert len(cams) == len(set(cams)), "one query per identity per camera"
    with pytest.raises(DataError, match="cannot hold out"):
        split_validation(train, 100)


def test_relabel_is_contiguous():
    labels, ids = relabel(np.array([42, 7, 42, 1001]))
    assert labels.tolist() == [1, 0, 1, 2] and ids.tolist() == [7, 42, 1001]


@needs(ATTRIBUTE_MAT)
def test_real_attribute_mat_join_by_name():
    import scipy.io

    tables = read_attribute_mat(ATTRIBUTE_MAT)
    assert len(tables["train"]) == 751 and len(tables["test"]) == 750
    raw = scipy.io.loadmat(str(ATTRIBUTE_MAT))["market_attribute"][0, 0]
    for split in ("train", "test"):
        struct = raw[split][0, 0]
        first = int(np.asarray(struct["image_index"].ravel()[0]).ravel()[0])
        expected = [int(struct[c].ravel()[0]) for c in COLUMNS]
        assert tables[split][first].tolist() == expected


@needs(COURSE)
def test_real_course_summary_counts(capsys):
    assert data_cli(["summary", str(COURSE), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layout"] == "course"
    splits = summary["splits"]
    assert (splits["train"]["images"], splits["train"]["identities"]) == (12989, 751)
    assert splits["gallery"]["images"] == 19688 and splits["query"]["images"] == 2248


@needs(MINI)
def test_real_mini_original_layout(capsys):
    assert data_cli(["summary", str(MINI), "--json", "--check"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["layout"] == "market1501"
    assert all(s["images"] == 32 for s in summary["splits"].values())
    assert summary["splits"]["train"]["attribute_coverage"] == 1.0
