"""Small custom Keras layers (registered, so ``.keras`` files reload without custom_objects)."""

from __future__ import annotations

import keras
from keras import ops

from tfmarket.preprocess import MEAN_RGB, STD_RGB


@keras.saving.register_keras_serializable(package="tfmarket")
class Normalize(keras.layers.Layer):
    """Pixel values in [0, 255] -> what the backbone's weights expect.

    ``mode="caffe"``: RGB -> BGR and ImageNet mean subtracted (Keras's ResNet50 weights).
    ``mode="torch"``: ImageNet mean/std normalisation (other backbones).

    Input float [B, H, W, 3]; output same shape and dtype.
    """

    def __init__(self, mode: str = "torch", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "torch"):
            raise ValueError(f"unknown normalisation mode {mode!r}; valid: caffe, torch")
        self.mode = mode

    def call(self, images):
        mean = ops.cast(ops.convert_to_tensor(MEAN_RGB), images.dtype)
        if self.mode == "caffe":
            return ops.flip(images - mean, axis=-1)
        std = ops.cast(ops.convert_to_tensor(STD_RGB), images.dtype)
        return (images - mean) / std

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="tfmarket")
class GeMPooling(keras.layers.Layer):
    """Generalised-mean pooling (Radenovic et al. 2018) with a learnable exponent p.

    Input [B, H, W, C] -> [B, C]. Computed in float32: x**p overflows float16 for p ~ 3.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.initial_p = p
        self.eps = eps

    def build(self, input_shape):
        self.p = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.initial_p), name="p"
        )

    def call(self, x):
        x = ops.cast(x, "float32")
        p = ops.cast(self.p, "float32")
        pooled = ops.mean(ops.power(ops.maximum(x, self.eps), p), axis=(1, 2))
        return ops.cast(ops.power(pooled, 1.0 / p), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "p": self.initial_p, "eps": self.eps}


@keras.saving.register_keras_serializable(package="tfmarket")
class L2Normalize(keras.layers.Layer):
    """[B, D] -> [B, D] unit rows, computed in float32."""

    def call(self, x):
        x = ops.cast(x, "float32")
        return x / ops.sqrt(ops.maximum(ops.sum(x * x, axis=-1, keepdims=True), 1e-12))

    def compute_output_shape(self, input_shape):
        return input_shape
