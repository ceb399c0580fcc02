"""tf.data input pipelines: identity-balanced P x K training batches and evaluation batches.

Design for ``tf.distribute``: training builds its input with
``strategy.distribute_datasets_from_function``; every input pipeline (one per worker) yields
per-replica batches of ``P`` whole identities x K images, and each worker draws from its own
shard of the identities. Batch-hard triplet mining inside a replica therefore always sees all K
images of each of its identities, on one device, several GPUs or several workers (tested with
two logical devices in ``tests/test_pipeline.py``).

Everything per image is TF ops (no Python), parallel and prefetched. With a seed, augmentation
uses stateless random ops keyed by (seed, position in the stream) so runs are reproducible.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import tensorflow as tf

from tfmarket.hardware import usable_cores
from tfmarket.preprocess import MEAN_RGB, decode_image, resize_image, untuned

TRAIN_PREFETCH_BATCHES = 2  # batches ready ahead of the step (one in use, one being built)


def identity_index(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Groups image indices by identity.

    Args:
        labels: int [N] identity labels (any integers; gaps allowed, e.g. one worker's shard).

    Returns:
        (order int64 [N] image indices sorted by label, offsets int64 [C], counts int64 [C])
        over the C distinct labels in sorted order: the images of the c-th identity are
        ``order[offsets[c]:offsets[c] + counts[c]]``.
    """
    _, labels = np.unique(np.asarray(labels, dtype=np.int64), return_inverse=True)
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return order.astype(np.int64), offsets.astype(np.int64), counts.astype(np.int64)


def sample_pk_indices(order, offsets, counts, ids, k: int, seed):
    """Samples K images for each of the given identities.

    Without replacement when an identity has at least K images, with replacement otherwise
    (torchreid's RandomIdentitySampler rule), all vectorised.

    Args:
        order, offsets, counts: from :func:`identity_index` (tensors).
        ids: int64 [P] identities.
        k: images per identity.
        seed: int32 [2] stateless seed.

    Returns:
        int64 [P * K] image indices, identity by identity.
    """
    count = tf.gather(counts, ids)  # [P]
    # At least K columns, so the first K positions exist even when every identity has fewer
    # than K images (those rows are replaced by the with-replacement sample below).
    width = tf.maximum(tf.cast(tf.reduce_max(counts), tf.int32), k)
    seed_a, seed_b = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    # A random permutation per identity: random keys, positions past the identity's count pushed
    # to the end; the first K positions are then a sample without replacement.
    keys = tf.random.stateless_uniform([tf.size(ids), width], seed_a)
    valid = tf.range(tf.cast(width, tf.int64))[None, :] < count[:, None]
    keys = tf.where(valid, keys, 2.0)
    position = tf.argsort(keys, axis=1)[:, :k]  # [P, K]
    position = tf.cast(position, tf.int64)
    # With replacement for identities that have fewer than K images.
    uniform = tf.random.stateless_uniform([tf.size(ids), k], seed_b)
    repl = tf.cast(tf.floor(uniform * tf.cast(count[:, None], tf.float32)), tf.int64)
    repl = tf.minimum(repl, count[:, None] - 1)
    position = tf.where(count[:, None] >= k, position, repl)
    flat = tf.gather(offsets, ids)[:, None] + position
    return tf.reshape(tf.gather(order, flat), [-1])


def pk_batches(labels: np.ndarray, p: int, k: int, seed: int = 0,
               first_step: int = 0) -> tf.data.Dataset:
    """An endless dataset of int64 [P * K] image-index batches, from batch ``first_step`` on.

    Each pass over the identities visits every identity once in random order (P at a time,
    the last incomplete group dropped), like an epoch of torchreid's identity sampler. Batch n
    depends only on (seed, n), so a resumed run continues the same stream.
    """
    order, offsets, counts = identity_index(labels)
    num_ids = len(counts)
    if num_ids < p:
        raise ValueError(f"P = {p} identities per batch, but only {num_ids} identities to train on")
    order_t, offsets_t, counts_t = (tf.constant(a) for a in (order, offsets, counts))
    groups_per_pass = num_ids // p

    def batch_for(step):
        pass_index = step // groups_per_pass
        group = step % groups_per_pass
        perm = tf.random.experimental.stateless_shuffle(
            tf.range(num_ids, dtype=tf.int64), seed=tf.stack([seed, tf.cast(pass_index, tf.int32)])
        )
        ids = perm[group * p:(group + 1) * p]
        return sample_pk_indices(
            order_t, offsets_t, counts_t, ids, k, tf.stack([seed + 1, tf.cast(step, tf.int32)])
        )

    return tf.data.Dataset.counter(first_step).map(batch_for)


def augment_batch(images, seed, pad: int, flip: bool, erase_prob: float):
    """Training augmentation of a batch, uint8 [B, H, W, 3] -> uint8 [B, H, W, 3].

    Per sample: horizontal flip, zero-pad by ``pad`` and random-crop back, random erasing
    (Zhong et al. 2020: area 2-40%, aspect 0.3-3.3) filled with the mean pixel so the erased
    block is neutral after normalisation, as torchreid does. Done on whole batches with
    per-sample random parameters: one vectorised op each instead of a dozen small ops per
    image, which is what keeps a 2-core CPU ahead of the training step.

    Args:
        seed: int32 [2] stateless seed for this batch.
    """
    batch = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    seeds = tf.random.experimental.stateless_split(seed, 7)
    fill = tf.constant([round(m) for m in MEAN_RGB], tf.uint8)
    # Crop rows with one gather of whole rows (cheap). Columns need a per-pixel gather anyway,
    # so flip, crop and erasing share it: every output pixel names the source column it reads,
    # and erased pixels read an extra column that holds the fill colour.
    if pad > 0:
        images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        top = tf.random.stateless_uniform([batch], seeds[1], 0, 2 * pad + 1, dtype=tf.int32)
        left = tf.random.stateless_uniform([batch], seeds[2], 0, 2 * pad + 1, dtype=tf.int32)
        rows = top[:, None] + tf.range(height)[None, :]  # [B, H]
        images = tf.gather(images, rows, axis=1, batch_dims=1)  # [B, H, W + 2 pad, 3]
    else:
        left = tf.zeros([batch], tf.int32)
    if not (pad > 0 or flip or erase_prob > 0):
        return images
    padded_width = width + 2 * pad
    cols = left[:, None] + tf.range(width)[None, :]  # [B, W]
    if flip:
        flips = tf.random.stateless_uniform([batch], seeds[0]) < 0.5
        mirrored = left[:, None] + (width - 1 - tf.range(width))[None, :]
        cols = tf.where(flips[:, None], mirrored, cols)
    source = tf.broadcast_to(cols[:, None, :], [batch, height, width])  # [B, H, W]
    if erase_prob > 0:
        area = float(height * width)
        target = tf.random.stateless_uniform([batch], seeds[3], 0.02, 0.4) * area
        log_ratio = tf.random.stateless_uniform([batch], seeds[4], np.log(0.3), np.log(1 / 0.3))
        ratio = tf.exp(log_ratio)
        eh = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32), 1, height)
        ew = tf.clip_by_value(tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32), 1, width)
        corner = tf.random.stateless_uniform([batch, 2], seeds[5])
        e_top = tf.cast(corner[:, 0] * tf.cast(height - eh + 1, tf.float32), tf.int32)
        e_left = tf.cast(corner[:, 1] * tf.cast(width - ew + 1, tf.float32), tf.int32)
        r = tf.range(height)[None, :]
        c = tf.range(width)[None, :]
        apply = tf.random.stateless_uniform([batch], seeds[6]) < erase_prob
        in_rows = (r >= e_top[:, None]) & (r < (e_top + eh)[:, None]) & apply[:, None]
        in_cols = (c >= e_left[:, None]) & (c < (e_left + ew)[:, None])  # [B, W]
        mask = in_rows[:, :, None] & in_cols[:, None, :]  # [B, H, W]
        source = tf.where(mask, padded_width, source)
        fill_column = tf.broadcast_to(fill, [batch, height, 1, 3])
        images = tf.concat([images, fill_column], axis=2)
    return tf.gather(images, source, axis=2, batch_dims=2)


# Cached file bytes become one tensor that tf.data may serialise with the dataset graph, and
# serialised graphs are limited to 2 GB; larger training sets are read from disk instead.
CACHE_LIMIT_BYTES = 1 << 30


def _image_source(paths: list[str], cache_bytes: bool):
    """Returns f(index) -> encoded bytes; holds file bytes in memory when ``cache_bytes``.

    Falls back to reading the files per step when they total more than ``CACHE_LIMIT_BYTES``.
    """
    if cache_bytes and sum(os.path.getsize(p) for p in paths) > CACHE_LIMIT_BYTES:
        print(f"tfmarket: {len(paths)} training images exceed the "
              f"{CACHE_LIMIT_BYTES >> 20} MB in-memory cache; reading them from disk",
              file=sys.stderr)
        cache_bytes = False
    if cache_bytes:
        blobs = tf.constant([_read_bytes(p) for p in paths])
        return lambda i: tf.gather(blobs, i)
    path_t = tf.constant(paths)
    return lambda i: tf.io.read_file(tf.gather(path_t, i))


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def train_dataset(
    paths: list[str],
    labels: np.ndarray,
    targets: dict[str, np.ndarray],
    *,
    height: int,
    width: int,
    p: int,
    k: int,
    seed: int = 0,
    pad: int = 10,
    flip: bool = True,
    erase_prob: float = 0.5,
    cache_bytes: bool = True,
    first_step: int = 0,
) -> tf.data.Dataset:
    """Endless P x K training batches.

    Args:
        paths: [N] image files.
        labels: int [N] contiguous identity labels.
        targets: name -> int [N] per-image targets (attribute heads); the identity label is
            added as ``"id"``.
        first_step: index of the first batch (a resumed run passes the steps already done).

    Yields:
        (images float32 [P*K, H, W, 3] in [0, 255], {name: int32 [P*K]}).
    """
    source = _image_source(list(paths), cache_bytes)
    columns = {"id": np.asarray(labels, np.int32)}
    columns.update({name: np.asarray(v, np.int32) for name, v in targets.items()})
    column_t = {name: tf.constant(v) for name, v in columns.items()}
    batch = p * k

    def load(index):
        return resize_image(decode_image(source(index)), height, width), index

    def augment_and_label(step, batch):
        images, index = batch
        images = augment_batch(images, tf.stack([seed, tf.cast(step, tf.int32)]), pad, flip,
                               erase_prob)
        return tf.cast(images, tf.float32), {n: tf.gather(v, index) for n, v in column_t.items()}

    # Fixed parallelism, autotuning off (preprocess.untuned: the end of fit waited for tf.data's
    # autotuning thread, 43 s in one full demo of four); the pipeline is ~1% of a CPU step.
    threads = usable_cores()
    ds = pk_batches(labels, p, k, seed, first_step).unbatch()
    ds = ds.map(load, num_parallel_calls=threads, deterministic=True)
    ds = ds.batch(batch, drop_remainder=True).enumerate(first_step)
    ds = ds.map(augment_and_label, num_parallel_calls=threads, deterministic=True)
    return untuned(ds.prefetch(TRAIN_PREFETCH_BATCHES))


def eval_dataset(
    paths: list[str],
    *,
    height: int,
    width: int,
    batch_size: int = 128,
    pids: np.ndarray | None = None,
    cams: np.ndarray | None = None,
) -> tf.data.Dataset:
    """Deterministic evaluation batches, no augmentation.

    Yields:
        {"image": float32 [B, H, W, 3] in [0, 255], "pid": int64 [B], "camera": int64 [B],
         "file": string [B]} in file order.
    """
    n = len(paths)
    pids = np.full(n, -1) if pids is None else np.asarray(pids)
    cams = np.full(n, -1) if cams is None else np.asarray(cams)
    ds = tf.data.Dataset.from_tensor_slices(
        {"file": list(paths), "pid": pids.astype(np.int64), "camera": cams.astype(np.int64)}
    )

    def load(row):
        image = resize_image(decode_image(tf.io.read_file(row["file"])), height, width)
        return {**row, "image": tf.cast(image, tf.float32)}

    # Fixed parallelism, autotuning off (preprocess.untuned): validation's predict would
    # otherwise wait for tf.data's autotuning thread as its iterator is destroyed.
    ds = ds.map(load, num_parallel_calls=usable_cores(), deterministic=True)
    return untuned(ds.batch(batch_size).prefetch(2))
