"""``python -m tfmarket.adapt``: DBSCAN and k-reciprocal distances on hand-made cases, a tiny
end-to-end adaptation (interrupted and resumed), and every bad input as one clear error that
leaves no run directory behind."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tfmarket.errors import ConfigError, DataError, TfmarketError
from tfmarket.retrieval.cluster import (
    cluster_centroids,
    cluster_purity,
    cluster_stats,
    dbscan,
    drop_large_clusters,
    eps_from_quantile,
)

ROOT = Path(__file__).resolve().parents[1]
# Small neighbourhoods: the synthetic test set has ~6 images per person.
TINY = ["adapt.rounds=2", "adapt.epochs_per_round=1", "adapt.steps_per_epoch=2",
        "adapt.k1=6", "adapt.k2=2", "adapt.min_samples=3", "adapt.eps=0.5"]


# --- clustering ---------------------------------------------------------------------------------


def test_dbscan_hand_computed_case():
    # eps 0.25, min_samples 3 (self included). Neighbourhoods:
    #   0.0, 0.1: {0.0, 0.1, 0.2} -> core;  0.2: {0.0, 0.1, 0.2, 0.42} -> core
    #   0.42: {0.2, 0.42} -> border of the first cluster (0.71 is 0.29 away)
    #   1.0 .. 1.3: 3 or 4 neighbours each -> core, a second cluster
    #   3.0, 0.71: alone -> noise
    x = np.array([0.0, 0.1, 0.2, 0.42, 1.0, 1.1, 1.2, 1.3, 3.0, 0.71])
    d = np.abs(x[:, None] - x[None, :])
    assert dbscan(d, 0.25, 3).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, -1, -1]
    # min_samples 5: no sample has 5 neighbours, so everything is noise.
    assert dbscan(d, 0.25, 5).tolist() == [-1] * 10


def test_dbscan_border_sample_joins_its_nearest_core_and_sparse_input_agrees():
    import scipy.sparse as sp

    # eps 0.25, min_samples 4: 0.2 (5 neighbours) and 0.64 (4) are core, 0.40 has 3
    # neighbours (0.2 at 0.20, 0.64 at 0.24): a border sample of both clusters, nearer 0.2.
    x = np.array([0.0, 0.05, 0.1, 0.2, 0.40, 0.64, 0.74, 0.84, 0.94])
    d = np.abs(x[:, None] - x[None, :])
    expected = [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert dbscan(d, 0.25, 4).tolist() == expected
    # A sparse radius graph (pairs beyond eps not stored; the zero diagonal not stored either).
    assert dbscan(sp.csr_matrix(np.where(d <= 0.25, d, 0.0)), 0.25, 4).tolist() == expected


def test_dbscan_core_samples_match_a_plain_breadth_first_search():
    rng = np.random.default_rng(0)
    for _ in range(20):
        points = rng.normal(size=(50, 2)) * rng.uniform(0.3, 2.0)
        d = np.linalg.norm(points[:, None] - points[None], axis=-1)
        eps, min_samples = rng.uniform(0.2, 0.8), int(rng.integers(2, 6))
        labels = dbscan(d, eps, min_samples)
        near = d <= eps
        core = near.sum(1) >= min_samples
        # Two core samples share a cluster iff a chain of core samples within eps links them.
        reach = near & core[:, None] & core[None, :]
        for _ in range(len(d)):
            reach = reach | ((reach.astype(int) @ reach.astype(int)) > 0)
        same = labels[:, None] == labels[None, :]
        assert (same[np.ix_(core, core)] == reach[np.ix_(core, core)]).all()
        assert ((labels == -1) == ~(near[:, core].any(1))).all()


def test_stats_and_centroids():
    labels = np.array([0, 0, 1, -1, 1, 1])
    stats = cluster_stats(labels)
    assert (stats["clusters"], stats["outliers"], stats["max_size"], stats["sizes"]) == (2, 1, 3,
                                                                                          [2, 3])
    assert stats["clustered_fraction"] == pytest.approx(5 / 6)
    emb = np.eye(6, 4, dtype=np.float32)
    cent = cluster_centroids(emb, labels, 2)
    assert cent.shape == (2, 4) and np.allclose(np.linalg.norm(cent, axis=1), 1.0)
    assert np.allclose(cent[0], [2 ** -0.5, 2 ** -0.5, 0, 0])


def test_large_clusters_become_outliers_and_the_rest_are_renumbered():
    labels = np.array([0, 0, 0, 1, 1, -1, 2, 2, 2, 2, 3])
    assert drop_large_clusters(labels, 3).tolist() == [0, 0, 0, 1, 1, -1, -1, -1, -1, -1, 2]
    assert drop_large_clusters(labels, 0).tolist() == labels.tolist()
    assert drop_large_clusters(np.array([-1, -1]), 3).tolist() == [-1, -1]


def test_cluster_purity_hand_computed():
    # Cluster 0 = {a, a}, cluster 1 = {a, b}, one b left out.
    got = cluster_purity(np.array([0, 0, 1, 1, -1]), np.array([7, 7, 7, 9, 9]))
    assert got["purity"] == pytest.approx(3 / 4)
    # Same-cluster pairs: (a,a) and (a,b): 1 of 2 is one person. Same-person pairs among the
    # clustered: the three a's, 3 pairs, 1 of them together.
    assert got["pair_precision"] == pytest.approx(1 / 2)
    assert got["pair_recall"] == pytest.approx(1 / 3)
    assert got["pair_f1"] == pytest.approx(0.4)
    assert got["clustered_fraction"] == pytest.approx(4 / 5)
    perfect = cluster_purity(np.array([1, 1, 0, 0]), np.array([3, 3, 8, 8]))
    assert perfect["purity"] == perfect["pair_precision"] == perfect["pair_recall"] == 1.0
    assert cluster_purity(np.array([-1, -1]), np.array([1, 2]))["purity"] == 0.0
    # The b left out becomes a cluster of its own: 5 crops, same-cluster pairs 1 + 1 (+ 0),
    # same-person pairs 3 (a) + 1 (b), together 1: precision 1/2, recall 1/4.
    whole = cluster_purity(np.array([0, 0, 1, 1, -1]), np.array([7, 7, 7, 9, 9]),
                           outliers_as_singletons=True)
    assert (whole["pair_precision"], whole["pair_recall"]) == pytest.approx((1 / 2, 1 / 4))
    assert whole["purity"] == pytest.approx(4 / 5) and whole["clustered_fraction"] == 0.8


def test_cluster_prototypes_give_cosine_over_temperature_and_reload(tmp_path):
    import keras

    from tfmarket.model.keras_metrics import KnownAccuracy, KnownBinaryAccuracy
    from tfmarket.model.layers import ClusterPrototypes

    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(5, 8)).astype(np.float32)  # [C, D], not unit rows
    x = rng.normal(size=(3, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, ClusterPrototypes(5, 0.05, name="cluster")(inputs))
    model.get_layer("cluster").set_weights([centroids.T])
    unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
    expected = x @ unit.T / 0.05
    assert np.allclose(model.predict(x, verbose=0), expected, atol=1e-4)
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert np.allclose(again.predict(x, verbose=0), expected, atol=1e-4)

    acc = KnownAccuracy()
    logits = np.array([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0], [0.0, 1.0]], np.float32)
    acc.update_state(np.array([0, 0, -1, 1]), logits)  # 2 of the 3 known are right
    assert float(acc.result()) == pytest.approx(2 / 3)
    acc.reset_state()
    acc.update_state(np.array([-1, -1]), logits[:2])
    assert float(acc.result()) == 0.0
    binary = KnownBinaryAccuracy()
    # logits > 0 predict 1: right, wrong, unknown (skipped), right
    binary.update_state(np.array([[1], [1], [-1], [0]]), np.array([[0.5], [-2.0], [3.0], [-0.1]]))
    assert float(binary.result()) == pytest.approx(2 / 3)


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_k_reciprocal_neighbours_match_the_dense_reference(lam):
    from tfmarket.retrieval.rerank import (
        k_reciprocal_distance_rows,
        k_reciprocal_neighbours,
        k_reciprocal_rerank_dense,
    )
    from tfmarket.retrieval.search import l2_normalize

    def euclid(a, b):
        return np.sqrt(np.maximum(2.0 - 2.0 * a @ b.T, 0.0))

    x = l2_normalize(np.random.default_rng(1).normal(size=(40, 8))).astype(np.float32)
    full = np.concatenate([b for _, b in k_reciprocal_distance_rows(x, 6, 3, lam, chunk_size=7)])
    assert np.allclose(full, full.T, atol=1e-5) and np.allclose(np.diag(full), 0, atol=1e-5)
    # The reference ranks queries x[:15] against a gallery x[15:] over the same 40 samples;
    # its original-distance term is normalised by the query's row only, ours symmetrically.
    a = 15
    ab = k_reciprocal_rerank_dense(euclid(x[:a], x[a:]), euclid(x[:a], x[:a]),
                                   euclid(x[a:], x[a:]), k1=6, k2=3, lambda_value=lam)
    ba = k_reciprocal_rerank_dense(euclid(x[a:], x[:a]), euclid(x[a:], x[a:]),
                                   euclid(x[:a], x[:a]), k1=6, k2=3, lambda_value=lam)
    assert np.allclose(full[:a, a:], (ab + ba.T) / 2, atol=1e-5)
    graph = k_reciprocal_neighbours(x, 0.5, 6, 3, lam, chunk_size=9)
    stored = np.zeros((40, 40), bool)
    stored[tuple(np.stack(graph.nonzero()))] = True
    stored[np.diag_indices(40)] = True  # distance 0 may be stored as an explicit zero
    assert (stored == (full <= 0.5)).all()


def test_eps_from_quantile_is_the_mean_of_the_smallest_pair_distances():
    rng = np.random.default_rng(2)
    d = rng.uniform(size=(30, 30))
    d = (d + d.T) / 2
    np.fill_diagonal(d, 0)
    pairs = np.sort(d[np.triu_indices(30, 1)])
    blocks = [(s, d[s:s + 7]) for s in range(0, 30, 7)]
    for q in (0.01, 0.1, 1.0):
        wanted = int(round(q * len(pairs)))
        assert eps_from_quantile(blocks, 30, q) == pytest.approx(pairs[:wanted].mean(), abs=1e-4)


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, course_synth):
    """A one-epoch tiny run on the synthetic course data (holdout validation)."""
    from tfmarket.config import load_config
    from tfmarket.training.run import run as train_run

    workdir = tmp_path_factory.mktemp("adapt") / "source"
    config = load_config(ROOT / "configs" / "smoke.yaml",
                         [f"data.root={course_synth}", "train.epochs=1",
                          "train.steps_per_epoch=2"])
    train_run(config, workdir)
    return workdir


def _crops(course_synth):
    return [course_synth / "test", course_synth / "queries"]


def test_adapt_end_to_end_interrupted_and_resumed(tmp_path, source_run, course_synth, capsys,
                                                  monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tfmarket.training import adapt_plan, adapt_rounds

    workdir = tmp_path / "adapted"
    trained = []
    real_train_round = adapt_rounds._Adaptation._train_round

    def interrupted(self, previous, r, clusters):
        if r == 2:
            raise KeyboardInterrupt  # a kill after round 1 finished
        trained.append(r)
        return real_train_round(self, previous, r, clusters)

    monkeypatch.setattr(adapt_rounds._Adaptation, "_train_round", interrupted)
    plan = adapt_plan.prepare(source_run, _crops(course_synth), workdir, None, TINY)
    with pytest.raises(KeyboardInterrupt):
        adapt_rounds.run(plan)
    state = json.loads((workdir / "adapt" / "state.json").read_text())
    assert state["rounds_done"] == 1 and state["pending"]["round"] == 2

    def counted(self, previous, r, clusters):
        trained.append(r)
        return real_train_round(self, previous, r, clusters)

    monkeypatch.setattr(adapt_rounds._Adaptation, "_train_round", counted)
    metrics = adapt_rounds.run(adapt_plan.prepare(source_run, _crops(course_synth), workdir,
                                                  None, TINY))
    out = capsys.readouterr().out
    assert trained == [1, 2], "round 1 is not trained again"
    assert "resuming after round 1/2" in out and "transductive: true" in out

    for name in ("config.yaml", "model.keras", "best.keras", "history.csv", "metrics.json"):
        assert (workdir / name).is_file(), name
    written = json.loads((workdir / "metrics.json").read_text())
    assert written["transductive"] is True and len(written["rounds"]) == 2
    seen = written["images_seen"]
    assert seen["rounds"] == [2 * 16, 2 * 16] and seen["total"] == 64
    assert seen["source_run"] == 2 * 16 and seen["with_source"] == 96
    assert seen["labelled"] + seen["pseudo"] == 64
    assert all(r["clusters"] >= 2 and r["val_mAP"] is not None for r in written["rounds"])
    assert metrics["best_val_mAP"] == written["best_val_mAP"] is not None

    import yaml

    config = yaml.safe_load((workdir / "config.yaml").read_text())
    assert config["adapt"]["source"] == str(source_run.resolve())
    assert config["adapt"]["transductive"] is True and config["adapt"]["rounds"] == 2
    assert config["data"]["root"] == str(course_synth.resolve())
    assert config["data"]["validation"] == "holdout"

    acc = EventAccumulator(str(workdir / "tensorboard" / "adapt"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    for tag in ("clusters/clusters", "clusters/outliers", "clusters/clustered_fraction",
                "clusters/mean_size", "clusters/max_size", "clusters/size", "holdout/mAP",
                "images_seen"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"
    assert [e.step for e in acc.Tensors("holdout/mAP")] == [0, 1, 2]  # 0: the source model

    # The saved models have the source run's outputs: the "cluster" prototypes exist only
    # while a round trains.
    from tfmarket.model.network import load_run_model

    def outputs(path):
        return sorted(load_run_model(path).output_names)

    source_outputs = outputs(source_run / "best.keras")
    assert "cluster" not in source_outputs
    assert outputs(workdir / "best.keras") == outputs(workdir / "model.keras") == source_outputs

    # The run directory is a normal one: export takes it (ONNX is covered by test_export_rank).
    from tfmarket.serving.export import export_run

    card = export_run(workdir, tmp_path / "export", parity_images=4)
    assert card["source_model"] == "best.keras"
    assert card["training_config"]["adapt"]["transductive"] is True

    # A finished run is not adapted again; a resumed run keeps its settings except the
    # clustering ones (which only shape rounds still to come).
    assert adapt_plan.prepare(source_run, _crops(course_synth), workdir, None, TINY).complete
    assert adapt_plan.prepare(source_run, _crops(course_synth), workdir, None,
                              [*TINY, "adapt.eps=0.4"]).complete
    with pytest.raises(ConfigError, match=r"other settings \(adapt.learning_rate"):
        adapt_plan.prepare(source_run, _crops(course_synth), workdir, None,
                           [*TINY, "adapt.learning_rate=0.1"])


# --- bad input --------------------------------------------------------------------------------


def _prepare(source, crops, workdir, overrides=()):
    from tfmarket.training.adapt_plan import prepare

    return prepare(source, crops, workdir, None, [*TINY, *overrides])


def _image_folder(folder: Path, count: int, course_synth: Path) -> Path:
    folder.mkdir(parents=True)
    for image in sorted((course_synth / "test").iterdir())[:count]:
        shutil.copy(image, folder / image.name)
    return folder


def test_bad_sources(tmp_path, source_run, course_synth):
    workdir = tmp_path / "new"
    with pytest.raises(DataError, match="source run directory not found"):
        _prepare(tmp_path / "missing", _crops(course_synth), workdir)
    no_model = tmp_path / "no_model"
    no_model.mkdir()
    shutil.copy(source_run / "config.yaml", no_model)
    with pytest.raises(TfmarketError, match="no trained model"):
        _prepare(no_model, _crops(course_synth), workdir)
    with pytest.raises(DataError, match="no config.yaml"):
        _prepare(course_synth, _crops(course_synth), workdir)
    assert not workdir.exists()


def test_bad_crops(tmp_path, source_run, course_synth):
    workdir = tmp_path / "new"
    with pytest.raises(DataError, match="folder not found"):
        _prepare(source_run, [tmp_path / "nowhere"], workdir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        _prepare(source_run, [tmp_path / "empty"], workdir)
    stray = _image_folder(tmp_path / "stray", 10, course_synth)
    (stray / "notes.txt").write_text("not a crop")
    with pytest.raises(DataError, match="notes.txt"):
        _prepare(source_run, [stray], workdir)
    tiny = _image_folder(tmp_path / "tiny", 5, course_synth)
    (tiny / "Thumbs.db").write_bytes(b"\0")  # skipped, not an error
    with pytest.raises(DataError, match=r"only 5 crop image\(s\).*at least 6"):
        _prepare(source_run, [tiny], workdir)
    broken = _image_folder(tmp_path / "broken", 10, course_synth)
    (broken / "000000.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="000000.jpg"):
        _prepare(source_run, [broken], workdir)
    assert not workdir.exists()


def test_other_crops_are_inductive(tmp_path, source_run, course_synth):
    plan = _prepare(source_run, [_image_folder(tmp_path / "elsewhere", 12, course_synth)],
                    tmp_path / "new")
    assert plan.transductive_images == 0 and plan.config.adapt.transductive is False


def test_validation_images_join_the_crops_for_the_transductive_proxy(tmp_path, source_run,
                                                                     course_synth):
    crops = [_image_folder(tmp_path / "elsewhere", 12, course_synth)]
    plain = _prepare(source_run, crops, tmp_path / "new")
    from tfmarket.training.adapt_plan import prepare

    plan = prepare(source_run, crops, tmp_path / "new", None, TINY, with_validation_images=True)
    validation = {str(Path(p).resolve())
                  for p in plan.data.val_query.paths + plan.data.val_gallery.paths}
    assert validation and validation <= set(plan.crops)
    assert len(plan.crops) == len(plain.crops) + len(validation)
    assert plan.config.adapt.validation_in_crops is True
    assert plain.config.adapt.validation_in_crops is False
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("override, message", [
    ("model.backbone=resnet50", "model.backbone cannot change"),
    ("data.val_ids=2", "data.val_ids cannot change"),
    ("adapt.eps=1.0", r"adapt.eps must be in \(0, 1\)"),
    ("adapt.labelled_fraction=1", "adapt.labelled_fraction must be"),
    ("adapt.temperature=0", "adapt.temperature must be positive"),
    ("adapt.max_cluster_size=2", r"adapt.max_cluster_size must be 0 \(no limit\) or at least"),
    ("adapt.warmup_steps=-1", "adapt.warmup_steps must be 0 or more"),
])
def test_bad_settings(tmp_path, source_run, course_synth, override, message):
    with pytest.raises(ConfigError, match=message):
        _prepare(source_run, _crops(course_synth), tmp_path / "new", [override])
    assert not (tmp_path / "new").exists()


def test_a_folder_that_is_not_an_adaptation_is_left_alone(tmp_path, source_run, course_synth):
    with pytest.raises(ConfigError, match="not an interrupted adaptation"):
        _prepare(source_run, _crops(course_synth), source_run)


def test_budget_and_clustering_errors_leave_no_run_directory(tmp_path, source_run,
                                                             course_synth):
    from tfmarket.training.adapt_rounds import run

    workdir = tmp_path / "new"
    with pytest.raises(ConfigError, match="over adapt.image_budget 90"):
        run(_prepare(source_run, _crops(course_synth), workdir, ["adapt.image_budget=90"]))
    # A radius too small for any neighbour: no cluster at all.
    with pytest.raises(TfmarketError, match=r"eps 0\.001, min_samples 3.*found 0 cluster"
                                            r".*raise adapt.eps"):
        run(_prepare(source_run, _crops(course_synth), workdir, ["adapt.eps=0.001"]))
    assert not workdir.exists()


def test_cli_error_is_one_line_without_tensorflow(tmp_path, course_synth):
    proc = subprocess.run(
        [sys.executable, "-m", "tfmarket.adapt", "--source", str(tmp_path / "missing"),
         "--crops", str(course_synth / "test"), "--workdir", str(tmp_path / "new")],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "source run directory not found" in errors[0]
    assert "Traceback" not in proc.stderr and not (tmp_path / "new").exists()
