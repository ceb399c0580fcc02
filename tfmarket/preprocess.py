"""The one preprocessing path shared by training, export and ranking (no train/serve skew).

bytes --decode_image--> uint8 [h, w, 3] --resize_image--> uint8 [H, W, 3]
      --(inside the model: ``tfmarket.model.layers.Normalize``)--> float [H, W, 3] normalised.

Training feeds the model float32 pixel values in [0, 255]; the exported serving graph takes
uint8 [B, H, W, 3] and casts; both then go through the same ``Normalize`` layer in the model.
"""

from __future__ import annotations

# ImageNet statistics in 0-255 units (what keras.applications weights expect after "torch"
# style preprocessing); kept in one place for the model and for random-erasing fill values.
MEAN_RGB = (123.675, 116.28, 103.53)
STD_RGB = (58.395, 57.12, 57.375)


def decode_image(image_bytes):
    """JPEG/PNG/BMP/GIF bytes -> uint8 [h, w, 3]; grayscale is expanded to three channels."""
    import tensorflow as tf

    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def resize_image(image, height: int, width: int):
    """uint8 [h, w, 3] -> uint8 [height, width, 3], bilinear; a no-op when already that size.

    Antialiasing only when shrinking: it changes nothing when enlarging (Market-1501's 64x128
    crops to 128x256) but costs 4-5x the time there.
    """
    import tensorflow as tf

    shape = tf.shape(image)

    def _resize(antialias: bool):
        def run():
            resized = tf.image.resize(image, (height, width), method="bilinear",
                                      antialias=antialias)
            return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)

        return run

    same = tf.logical_and(tf.equal(shape[0], height), tf.equal(shape[1], width))
    shrink = tf.logical_or(shape[0] > height, shape[1] > width)
    out = tf.cond(same, lambda: tf.identity(image),
                  lambda: tf.cond(shrink, _resize(True), _resize(False)))
    out.set_shape([height, width, 3])
    return out


def load_image(path, height: int, width: int):
    """Image file path (string tensor) -> uint8 [height, width, 3]."""
    import tensorflow as tf

    return resize_image(decode_image(tf.io.read_file(path)), height, width)


def untuned(ds):
    """``ds`` with tf.data's autotuning off; its parallelism must then be fixed by the caller.

    Destroying an iterator of an autotuned pipeline waits for tf.data's autotuning thread,
    which sleeps for a period that doubles up to a minute: it held the end of ``fit`` for up to
    46 s (benchmarks/README.md, "Fixed: up to a minute lost as fit returns") and the end of
    2 in 5 embeddings of 1024 crops for 18 s (the "Fixed: 18–22 s lost at the end of an
    embedding" section there). Decoding is a small part of a CPU's training or inference time,
    so tuning it gains nothing.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def image_batches(paths, height: int, width: int, batch_size: int):
    """tf.data of uint8 [B, height, width, 3] batches of ``paths`` decoded in order (the last
    one may be short): what ranking, embedding and export decode files with. One decode per
    usable core, two batches ready ahead, no autotuning (:func:`untuned`)."""
    import tensorflow as tf

    from tfmarket.hardware import usable_cores

    ds = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
    ds = ds.map(lambda p: load_image(p, height, width), num_parallel_calls=usable_cores(),
                deterministic=True)
    return untuned(ds.batch(batch_size).prefetch(2))


def load_images_numpy(paths, height: int, width: int):
    """Decodes files with the same TF ops into uint8 [N, height, width, 3] (for ranking).

    Runs through :func:`image_batches` so decoding is parallel; check files first with
    ``tfmarket.data.check.require_readable`` for errors that name the file.
    """
    import numpy as np

    arrays = [batch.numpy() for batch in image_batches(paths, height, width, 256)]
    if not arrays:
        return np.zeros((0, height, width, 3), np.uint8)
    return np.concatenate(arrays)
