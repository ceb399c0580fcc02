"""The Python API (``tfmarket.load`` -> predict / search) on a tiny export, and that ``rank``
goes through it: the API's ranking and attributes give the same files as the command."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tfmarket
from tfmarket.errors import TfmarketError

README = Path(__file__).resolve().parents[1] / "README.md"


def _with_rules(source: Path, dest: Path) -> Path:
    """A copy of an export with an attribute rule (neighbour voting + class priors) and a
    retrieval rule (DBA + alpha-QE, re-ranking, attribute distance) beside the model, as
    calibrate writes them: every branch of both rules is used."""
    from tfmarket.attributes import MARKET
    from tfmarket.retrieval import attribute_rule, retrieval_rule

    shutil.copytree(source, dest)
    priors = {h: list(np.linspace(1.0, 2.0, max(n, 2)) / np.linspace(1.0, 2.0, max(n, 2)).sum())
              for h, n in MARKET.head_sizes.items()}
    attribute_rule.save_rule(dest / attribute_rule.RULE_FILE,
                             attribute_rule.AttributeRule(3, 0.5, priors))
    retrieval_rule.save_rule(dest / retrieval_rule.RULE_FILE, retrieval_rule.RetrievalRule(
        expansion_k=2, rerank=True, k1=5, k2=2, attribute_weight=0.2))
    return dest


def test_import_load_and_predict_an_array_import_no_tensorflow(exported):
    out, _, _ = exported
    code = (
        "import sys, numpy as np, tfmarket\n"
        f"model = tfmarket.load({str(out)!r})\n"
        "images = np.random.default_rng(0).integers(0, 256, (3, model.height, model.width, 3),"
        " dtype=np.uint8)\n"
        "result = model.predict(images)\n"
        "assert result.embeddings.shape[0] == 3 and result.attributes.shape == (3, 27)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
        "print(model)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ExportedModel(" in proc.stdout and "model.onnx" in proc.stdout


def test_predict_takes_paths_a_folder_or_pixels_alike(exported, course_synth):
    from tfmarket.preprocess import load_images_numpy

    out, card, _ = exported
    model = tfmarket.load(out)
    assert model.path == out / "model.onnx"
    folder = course_synth / "queries"
    paths = sorted(str(p) for p in folder.iterdir())
    by_folder = model.predict(folder)
    by_paths = model.predict(paths)
    pixels = load_images_numpy(paths, model.height, model.width)
    by_pixels = model.predict(pixels, batch_size=5)
    assert by_folder.files == by_paths.files == paths and by_pixels.files is None
    np.testing.assert_array_equal(by_folder.embeddings, by_paths.embeddings)
    np.testing.assert_allclose(by_pixels.embeddings, by_paths.embeddings, atol=1e-6)
    emb = by_paths.embeddings
    assert emb.dtype == np.float32 and emb.shape == (len(paths), card["outputs"]["embedding"][1])
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    frame = by_paths.attributes
    assert list(frame.columns) == list(model.schema.columns)
    assert list(frame.index) == paths and frame.index.name == "file"
    assert set(np.unique(frame.to_numpy())) <= {1, 2, 3, 4}
    np.testing.assert_array_equal(frame.to_numpy(), by_pixels.attributes.to_numpy())
    # Pixels of another size are resized the shared way (preprocess.resize_image).
    from tfmarket.preprocess import resize_image

    larger = load_images_numpy(paths[:3], 2 * model.height, 2 * model.width)
    resized = np.stack([resize_image(image, model.height, model.width).numpy()
                        for image in larger])
    np.testing.assert_array_equal(model.predict(larger).embeddings,
                                  model.predict(resized).embeddings)


@pytest.mark.parametrize("rules", ["plain", "calibrated"])
def test_rank_command_and_api_write_byte_identical_files(exported, course_synth, tmp_path,
                                                         rules):
    from tfmarket.rank import main as rank_main
    from tfmarket.serving.submission import write_classification, write_reid

    out, _, _ = exported
    if rules == "calibrated":
        out = _with_rules(out, tmp_path / "export")
    ranked = tmp_path / "rank"
    assert rank_main(["--model", str(out / "model.onnx"), "--data", str(course_synth),
                      "--out", str(ranked), "--flip-test"]) == 0

    model = tfmarket.load(out, flip_test=True)
    if rules == "calibrated":
        assert model.retrieval_rule.needs_distances and model.attribute_rule.neighbours == 3
    queries = model.predict(course_synth / "queries")
    gallery = model.predict(course_synth / "test")
    hits = model.search(queries, gallery=gallery, topk=100)
    api = tmp_path / "api"
    api.mkdir()
    write_reid(api / "reid_test.txt", queries.names, gallery.names, hits.indices)
    write_classification(api / "classification_test.csv", gallery.names, gallery.columns,
                         model.schema)
    for name in ("reid_test.txt", "classification_test.csv"):
        assert (api / name).read_bytes() == (ranked / name).read_bytes(), name
    saved = np.load(ranked / "embeddings.npz")
    np.testing.assert_array_equal(saved["query_embedding"], queries.embeddings)
    np.testing.assert_array_equal(saved["query_attributes"], model.decide(queries, gallery))
    assert hits.files.shape == (len(queries), min(100, len(gallery)))
    assert list(hits.files[0]) == [gallery.files[i] for i in hits.indices[0]]
    assert (np.diff(hits.distances, axis=1) >= 0).all()


@pytest.mark.parametrize("rules", ["plain", "calibrated"])
def test_search_where_keeps_matching_gallery_images_in_rank_order(exported, course_synth,
                                                                  tmp_path, rules):
    out, _, _ = exported
    if rules == "calibrated":  # the rule is computed over the whole gallery, then filtered
        out = _with_rules(out, tmp_path / "export")
    model = tfmarket.load(out)
    queries = model.predict(course_synth / "queries")
    gallery = model.predict(course_synth / "test")
    # The binary attribute that splits this (barely trained) model's gallery most evenly.
    yes = (gallery.columns == 2).sum(axis=0)
    binary = [i for i, c in enumerate(model.schema.columns) if c != "age"]
    column = min(binary, key=lambda i: abs(yes[i] - len(gallery) / 2))
    name = model.schema.columns[column]
    allowed = set(np.flatnonzero(gallery.columns[:, column] == 2).tolist())
    assert 0 < len(allowed) < len(gallery), (name, yes)
    full = model.search(queries, gallery=gallery, topk=len(gallery))
    hits = model.search(queries, gallery=gallery, topk=5, where=name)
    assert hits.indices.shape == (len(queries), min(5, len(allowed)))
    for row, full_row in zip(hits.indices, full.indices, strict=True):
        assert set(row.tolist()) <= allowed
        # The same order as the unfiltered ranking, with the other images left out.
        assert row.tolist() == [i for i in full_row.tolist() if i in allowed][:len(row)]
    frame = hits.to_frame()
    assert list(frame.columns) == ["query", "rank", "file", "distance"]
    assert len(frame) == hits.indices.size
    with pytest.raises(TfmarketError, match="unknown attribute 'wings'"):
        model.search(queries, gallery=gallery, where="wings")
    # A filter nothing meets gives no hits (not an error).
    none = model.search(queries, gallery=gallery, where=f"{name}, {name}=1")
    assert none.indices.shape == (len(queries), 0) and none.to_frame().empty


def test_load_finds_the_models_of_an_export_and_refuses_others(exported, tmp_path):
    out, _, _ = exported
    assert tfmarket.load(out, int8=True).path == out / "model.int8.onnx"
    assert tfmarket.load(out / "model.onnx").path == out / "model.onnx"
    only_int8 = tmp_path / "int8"
    only_int8.mkdir()
    for name in ("model.int8.onnx", "model_card.json"):
        shutil.copy(out / name, only_int8 / name)
    assert tfmarket.load(only_int8).path == only_int8 / "model.int8.onnx"
    (tmp_path / "empty").mkdir()
    with pytest.raises(TfmarketError, match="no exported model"):
        tfmarket.load(tmp_path / "empty")
    with pytest.raises(TfmarketError, match="uint8 RGB images"):
        tfmarket.load(out).predict(np.zeros((2, 8, 8), np.float32))


def readme_snippet() -> str:
    """The first ```python block of the README's "Python API" section."""
    text = README.read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_snippet_runs(exported, course_synth, tmp_path, monkeypatch):
    out, _, _ = exported
    code = readme_snippet()
    # The files the snippet names, made from the tiny export and the synthetic data.
    (tmp_path / "exports").mkdir()
    shutil.copytree(out, tmp_path / "exports" / "demo")
    queries = sorted((course_synth / "queries").iterdir())
    for name, source in zip(("q1.jpg", "q2.jpg"), queries, strict=False):
        shutil.copy(source, tmp_path / name)
    shutil.copytree(course_synth / "test", tmp_path / "crops")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    hits = namespace["hits"]
    assert hits.queries == ["q1.jpg", "q2.jpg"] and hits.indices.shape[1] <= 10
    assert len(hits.gallery) == len(list((tmp_path / "crops").iterdir()))
    assert all(f.startswith("crops/") for f in hits.files.reshape(-1))
    out = namespace["out"]
    assert out.embeddings.shape[0] == 2 and list(out.attributes.index) == ["q1.jpg", "q2.jpg"]
