import numpy as np
import pytest
import tensorflow as tf
from conftest import write_jpeg

from tfmarket.data.pipeline import (
    augment_batch,
    eval_dataset,
    identity_index,
    pk_batches,
    train_dataset,
)
from tfmarket.preprocess import decode_image, load_image, resize_image


@pytest.fixture(scope="module")
def small_set(tmp_path_factory):
    """6 identities with 1..6 images each, 30x60 JPEGs (odd size on purpose)."""
    root = tmp_path_factory.mktemp("pk")
    paths, labels = [], []
    for label in range(6):
        for i in range(label + 1):
            paths.append(str(write_jpeg(root / f"{label}_{i}.jpg", (40 * label, 100, 50),
                                        size=(30, 60))))
            labels.append(label)
    return paths, np.array(labels)


def test_identity_index_groups_by_label():
    order, offsets, counts = identity_index(np.array([2, 0, 2, 1, 0]))
    assert counts.tolist() == [2, 1, 2]
    for label in range(3):
        members = order[offsets[label]:offsets[label] + counts[label]]
        assert (np.array([2, 0, 2, 1, 0])[members] == label).all()


def test_every_batch_is_p_by_k(small_set):
    _, labels = small_set
    p, k = 3, 4
    for batch in pk_batches(labels, p, k, seed=1).take(20):
        got = labels[batch.numpy()].reshape(p, k)
        assert (got == got[:, :1]).all(), "each group of K holds one identity"
        assert len(set(got[:, 0].tolist())) == p, "P distinct identities"


def test_pk_without_replacement_when_enough_images(small_set):
    _, labels = small_set
    for batch in pk_batches(labels, 2, 4, seed=2).take(20):
        idx = batch.numpy().reshape(2, 4)
        for group in idx:
            if (labels == labels[group[0]]).sum() >= 4:
                assert len(set(group.tolist())) == 4


def test_pk_when_every_identity_has_fewer_than_k_images():
    # e.g. synthetic data with 3 images per identity and K = 4: sampled with replacement
    labels = np.repeat(np.arange(5), 3)
    for batch in pk_batches(labels, 2, 4, seed=3).take(10):
        got = labels[batch.numpy()].reshape(2, 4)
        assert (got == got[:, :1]).all() and got[0, 0] != got[1, 0]


def test_pk_epoch_visits_every_identity(small_set):
    _, labels = small_set
    seen = [labels[b.numpy()[0::2]] for b in pk_batches(labels, 3, 2, seed=0).take(2)]
    assert sorted(np.concatenate(seen).tolist()) == list(range(6))


def test_pk_is_deterministic_for_a_seed(small_set):
    _, labels = small_set
    a = [b.numpy() for b in pk_batches(labels, 2, 4, seed=5).take(5)]
    b = [b.numpy() for b in pk_batches(labels, 2, 4, seed=5).take(5)]
    c = [b.numpy() for b in pk_batches(labels, 2, 4, seed=6).take(5)]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_train_dataset_shapes_targets_and_determinism(small_set):
    paths, labels = small_set
    targets = {"hat": labels % 2}
    kwargs = dict(height=32, width=16, p=2, k=3, seed=7)
    ds = train_dataset(paths, labels, targets, **kwargs)
    images, y = next(iter(ds))
    assert images.shape == (6, 32, 16, 3) and images.dtype == tf.float32
    assert float(tf.reduce_max(images)) <= 255.0
    np.testing.assert_array_equal(y["hat"].numpy(), y["id"].numpy() % 2)
    again, _ = next(iter(train_dataset(paths, labels, targets, **kwargs)))
    np.testing.assert_array_equal(images.numpy(), again.numpy())
    uncached, _ = next(iter(train_dataset(paths, labels, targets, cache_bytes=False, **kwargs)))
    np.testing.assert_array_equal(images.numpy(), uncached.numpy())


def _assert_untuned(ds, maps: int):
    """Autotuning off and every parallel map's parallelism fixed (not AUTOTUNE's -1)."""
    assert ds.options().autotune.enabled is False
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    nodes = {node.name: node for node in graph.node}
    parallel_maps = [node for node in graph.node if node.op.startswith("ParallelMapDataset")]
    assert len(parallel_maps) == maps
    for node in parallel_maps:  # the last data input is num_parallel_calls
        last = [name for name in node.input if not name.startswith("^")][-1]
        calls = tf.make_ndarray(nodes[last.split(":")[0]].attr["value"].tensor)
        assert int(calls) >= 1


def test_training_pipeline_has_autotuning_off_and_fixed_parallelism(small_set):
    # tf.data's autotuning thread held up the end of fit by up to a minute (benchmarks/README.md,
    # "A minute lost as fit returns"); the options must reach what fit iterates, after the
    # model-target mapping of tfmarket.training.fit.make_dataset_fn.
    paths, labels = small_set
    ds = train_dataset(paths, labels, {}, height=32, width=16, p=2, k=3, seed=7)
    _assert_untuned(ds, maps=2)
    assert ds.map(lambda x, y: (x, y)).options().autotune.enabled is False


def test_decoding_for_validation_ranking_and_export_is_untuned_and_in_order(small_set):
    # The same wait held the end of 2 in 5 embeddings of 1024 crops for 18 s
    # (benchmarks/README.md, "Fixed: 18–22 s lost at the end of an embedding").
    from tfmarket.preprocess import image_batches, load_images_numpy

    paths, labels = small_set
    batches = image_batches(paths, 32, 16, batch_size=4)
    _assert_untuned(batches, maps=1)
    validation = eval_dataset(paths, height=32, width=16, batch_size=4)
    _assert_untuned(validation, maps=1)
    expected = np.stack([load_image(tf.constant(p), 32, 16).numpy() for p in paths])
    decoded = np.concatenate([b.numpy() for b in batches])
    np.testing.assert_array_equal(decoded, expected)
    np.testing.assert_array_equal(load_images_numpy(paths, 32, 16), expected)
    rows = list(validation)
    assert [len(r["image"]) for r in rows] == [4, 4, 4, 4, 4, 1]
    np.testing.assert_array_equal(np.concatenate([r["image"] for r in rows]),
                                  expected.astype(np.float32))


def test_preprocessing_eager_equals_inside_tf_data(tmp_path):
    path = str(write_jpeg(tmp_path / "a.jpg", size=(37, 81)))
    eager = load_image(tf.constant(path), 64, 32).numpy()
    ds = tf.data.Dataset.from_tensors(path).map(lambda p: load_image(p, 64, 32))
    np.testing.assert_array_equal(eager, next(iter(ds)).numpy())
    seed = tf.constant([1, 2])
    batch = np.stack([eager, eager[::-1]])
    a = augment_batch(tf.constant(batch), seed, 4, True, 1.0).numpy()
    ds = tf.data.Dataset.from_tensors(batch).map(lambda x: augment_batch(x, seed, 4, True, 1.0))
    np.testing.assert_array_equal(a, next(iter(ds)).numpy())


def test_grayscale_and_png_decode_to_rgb(tmp_path):
    gray = write_jpeg(tmp_path / "g.jpg", mode="L")
    png = write_jpeg(tmp_path / "p.png", fmt="PNG")
    for path in (gray, png):
        image = decode_image(tf.io.read_file(str(path)))
        assert image.shape[-1] == 3
    gray_rgb = decode_image(tf.io.read_file(str(gray))).numpy()
    assert (gray_rgb[..., 0] == gray_rgb[..., 1]).all()


def test_resize_is_identity_at_the_right_size():
    x = tf.constant(np.random.default_rng(0).integers(0, 255, (8, 4, 3)), tf.uint8)
    np.testing.assert_array_equal(resize_image(x, 8, 4).numpy(), x.numpy())
    assert resize_image(x, 16, 8).shape == (16, 8, 3)


def test_augment_erasing_fills_with_the_mean_pixel():
    x = tf.zeros((8, 64, 32, 3), tf.uint8)
    out = augment_batch(x, tf.constant([3, 4]), pad=0, flip=False, erase_prob=1.0).numpy()
    erased = (out != 0).any(-1)  # [B, H, W]
    for sample in erased:
        rows, cols = np.nonzero(sample)
        assert sample.sum() >= 0.02 * 64 * 32 * 0.5
        assert sample.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1), "one rectangle"
    assert (out[erased] == [124, 116, 104]).all()


def test_augment_flip_and_crop_are_per_sample():
    """Every sample is its own flip/crop of the input: a shifted (maybe mirrored) copy."""
    rng = np.random.default_rng(0)
    x = rng.integers(1, 255, (16, 32, 16, 3)).astype(np.uint8)
    out = augment_batch(tf.constant(x), tf.constant([5, 6]), pad=3, flip=True,
                        erase_prob=0.0).numpy()
    flipped = 0
    for src, got in zip(x, out, strict=True):
        padded = np.pad(src, [(3, 3), (3, 3), (0, 0)])
        found = False
        for mirror in (False, True):
            img = padded[:, ::-1] if mirror else padded
            for dy in range(7):
                for dx in range(7):
                    if np.array_equal(img[dy:dy + 32, dx:dx + 16], got):
                        found, flipped = True, flipped + mirror
        assert found
    assert 0 < flipped < 16


def test_eval_dataset_is_ordered_and_labelled(small_set):
    paths, labels = small_set
    rows = list(eval_dataset(paths, height=32, width=16, batch_size=4, pids=labels,
                             cams=np.ones(len(paths))))
    files = [f.decode() for r in rows for f in r["file"].numpy()]
    assert files == paths
    assert np.concatenate([r["pid"].numpy() for r in rows]).tolist() == labels.tolist()


def test_two_replicas_each_get_whole_identities(small_set):
    """As train.py builds input: every replica's batch holds P whole identities."""
    paths, labels = small_set
    devices = tf.config.list_logical_devices("CPU")
    assert len(devices) >= 2, "conftest configures two logical CPUs"
    strategy = tf.distribute.MirroredStrategy([d.name for d in devices[:2]])
    p, k = 2, 3

    def dataset_fn(context):
        return train_dataset(paths, labels, {}, height=16, width=8, p=p, k=k, seed=0)

    dist = strategy.distribute_datasets_from_function(dataset_fn)
    for _, (_, y) in zip(range(5), dist, strict=False):
        per_replica = strategy.experimental_local_results(y["id"])
        assert len(per_replica) == 2
        for ids in per_replica:
            groups = ids.numpy().reshape(p, k)
            assert (groups == groups[:, :1]).all()
            assert len(set(groups[:, 0].tolist())) == p


def test_sampler_accepts_label_gaps(small_set):
    """A worker's shard of identities has gaps in its labels."""
    _, labels = small_set
    shard = labels % 2 == 1
    sub = labels[shard]
    for batch in pk_batches(sub, 3, 2, seed=0).take(3):
        got = sub[batch.numpy()].reshape(3, 2)
        assert (got == got[:, :1]).all() and set(got[:, 0]) == {1, 3, 5}


def test_training_set_over_the_cache_limit_is_read_from_disk(small_set, monkeypatch, capsys):
    from tfmarket.data import pipeline

    paths, labels = small_set
    kwargs = dict(height=32, width=16, p=2, k=3, seed=7)
    cached, _ = next(iter(train_dataset(paths, labels, {}, **kwargs)))
    assert "reading them from disk" not in capsys.readouterr().err
    monkeypatch.setattr(pipeline, "CACHE_LIMIT_BYTES", 100)
    from_disk, _ = next(iter(train_dataset(paths, labels, {}, **kwargs)))
    assert "exceed the 0 MB in-memory cache; reading them from disk" in capsys.readouterr().err
    np.testing.assert_array_equal(cached.numpy(), from_disk.numpy())
