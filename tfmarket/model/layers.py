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

    def channel_map(self) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """(order, scale) with ``call(x) == (x - MEAN_RGB)[..., order] * scale``: the part of
        the normalisation a following convolution can absorb into its kernel
        (:func:`tfmarket.model.fold.fold_normalization`)."""
        if self.mode == "caffe":
            return (2, 1, 0), (1.0, 1.0, 1.0)
        return (0, 1, 2), tuple(1.0 / s for s in STD_RGB)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="tfmarket")
class SubtractMean(keras.layers.Layer):
    """Pixel values in [0, 255] minus the ImageNet mean (RGB): what is left of
    :class:`Normalize` in a serving graph once its channel order and scale are folded into the
    first convolution (:func:`tfmarket.model.fold.fold_normalization`).

    Input float [B, H, W, 3]; output same shape and dtype.
    """

    def call(self, images):
        return images - ops.cast(ops.convert_to_tensor(MEAN_RGB), images.dtype)


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


def unit_length(x, axis: int = -1):
    """``x`` cast to float32 and scaled to unit L2 norm along ``axis`` (zero stays zero)."""
    x = ops.cast(x, "float32")
    return x / ops.sqrt(ops.maximum(ops.sum(x * x, axis=axis, keepdims=True), 1e-12))


@keras.saving.register_keras_serializable(package="tfmarket")
class L2Normalize(keras.layers.Layer):
    """[B, D] -> [B, D] unit rows, computed in float32."""

    def call(self, x):
        return unit_length(x)

    def compute_output_shape(self, input_shape):
        return input_shape



@keras.saving.register_keras_serializable(package="tfmarket")
class CosineClassifier(keras.layers.Layer):
    """Cosine similarity to one learned direction per class, times ``scale``.

    The normalised classifier of NormFace / CosFace / ArcFace: logits depend only on the angle
    between the feature and each class weight, so a margin on the target's cosine
    (``tfmarket.model.losses.SoftmaxLoss(margin=)``) shapes the embedding's angles directly.

    Input float [B, D] (any norm); output float32 [B, units] logits, ``scale`` x cos.
    """

    def __init__(self, units: int, scale: float = 30.0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.units = int(units)
        self.scale = float(scale)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units),
                                      initializer="glorot_uniform", name="kernel")

    def call(self, x):
        # Unit feature rows and unit class columns: the product is the cosine.
        return ops.matmul(unit_length(x), unit_length(self.kernel, axis=0)) * self.scale

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale}


@keras.saving.register_keras_serializable(package="tfmarket")
class ClusterPrototypes(CosineClassifier):
    """One prototype per pseudo-identity: a :class:`CosineClassifier` with scale
    1 / ``temperature``, set from the cluster centroids ([D, C]) with ``set_weights``.

    ``tfmarket.adapt``'s cluster loss (a softmax over these logits) is the prototype form of
    Cluster Contrast's (Dai et al. 2022) memory loss: each prototype starts at its cluster's
    mean embedding and, being normalised, moves only in direction. Unlike a rebuilt ID
    classifier it gives every pseudo-identity a calibrated logit from the first step.
    """

    def __init__(self, num_clusters: int, temperature: float = 0.05, **kwargs):
        super().__init__(num_clusters, 1.0 / float(temperature), **kwargs)
        self.num_clusters = int(num_clusters)
        self.temperature = float(temperature)

    def get_config(self):
        config = super().get_config()
        del config["units"], config["scale"]
        return {**config, "num_clusters": self.num_clusters, "temperature": self.temperature}


# Below this epsilon TensorFlow's fused kernel silently raises it (a cuDNN requirement), which
# would change the math; such layers keep Keras's own path.
FUSED_MIN_EPSILON = 1.001e-5

# The compute dtypes FusedBatchNormV3 takes.
FUSED_DTYPES = ("float16", "bfloat16", "float32")


def trains_on_cpu() -> bool:
    """True on the TensorFlow backend with no GPU visible: where tfmarket's CPU forms of
    training kernels apply (BN statistics by matmul here, kernel gradients by matmul in
    :mod:`tfmarket.model.conv`); on GPUs cuDNN's kernels are the fast ones."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


# Float32 training on a CPU normalises with batch_norm_training_by_matmul (False: the fused
# kernel everywhere; benchmarks compare the two).
STATISTICS_BY_MATMUL = True


def batch_norm_training_by_matmul(x, gamma, beta, epsilon: float):
    """Training-mode batch normalisation, float32 NHWC: statistics by matmul, the affine map
    as a 1x1 depthwise convolution.

    The forward pass of TensorFlow's fused kernel on CPUs (oneDNN's ``bnorm`` on channels-last
    maps) reads each map at a fraction of memory speed: on ResNet50's maps at 128x64 (batch 64,
    2-core AVX2-only AMD EPYC, ``benchmarks/batchnorm.py``) it took 1.05-2.1x as long as this
    per map, 280 against 198 ms over a step's 53 layers, and the float32 training step gained
    about 4% (benchmarks/README.md). Here both
    per-channel sums are ``ones [1, N·H·W] x rows [N·H·W, C]`` products, which read the map in
    order on every core, and the normalisation is one fused pass. The squares are taken about
    the first row (the shifted-data algorithm), so the variance keeps its digits when a
    channel's mean is large against its spread. The backward pass is TensorFlow's fused
    gradient kernel given these statistics (the batch mean and biased variance, as its own
    forward pass saves them).

    Args:
        x: float32 [N, H, W, C].
        gamma, beta: float32 [C].

    Returns:
        (y float32 [N, H, W, C], batch mean [C], biased batch variance [C]).
    """
    import tensorflow as tf

    channels = x.shape[-1]

    @tf.custom_gradient
    def normalize(x, gamma, beta):
        rows = tf.reshape(x, (-1, channels))  # [M, C]
        count = tf.shape(rows)[0]
        ones = tf.ones((1, count), x.dtype)
        shift = tf.stop_gradient(tf.reduce_sum(rows[:1], axis=0))  # first row; 0 if none
        sums = tf.matmul(ones, rows)[0]
        shifted_squares = tf.matmul(ones, tf.math.squared_difference(rows, shift))[0]
        inverse_count = 1.0 / tf.cast(count, x.dtype)
        mean = sums * inverse_count
        variance = tf.maximum(
            shifted_squares * inverse_count - tf.square(mean - shift), 0.0)
        scale = gamma * tf.math.rsqrt(variance + epsilon)
        # The affine map as a 1x1 depthwise convolution plus bias: one fused pass over the map
        # (a multiply and an add would be two).
        y = tf.nn.bias_add(
            tf.nn.depthwise_conv2d(x, tf.reshape(scale, (1, 1, channels, 1)), [1, 1, 1, 1],
                                   "VALID"),
            beta - mean * scale)

        def grad(dy, _dmean=None, _dvariance=None):
            # The statistics feed only the moving averages (assignments, not the loss).
            # reserve_space_2 as the biased variance is the CPU kernels' convention (Eigen,
            # oneDNN); cuDNN's reads an inverse standard deviation there, so this form must
            # stay off GPUs (trains_on_cpu).
            dx, dgamma, dbeta = tf.raw_ops.FusedBatchNormGradV3(
                y_backprop=dy, x=x, scale=gamma, reserve_space_1=mean,
                # reserve_space_3 is a workspace only the fused ReLU variant reads.
                reserve_space_2=variance, reserve_space_3=variance, epsilon=epsilon,
                data_format="NHWC", is_training=True)[:3]
            return dx, dgamma, dbeta

        return (y, tf.stop_gradient(mean), tf.stop_gradient(variance)), grad

    return normalize(x, gamma, beta)


@keras.saving.register_keras_serializable(package="tfmarket", name="FusedBatchNormalization")
class BatchNormalization(keras.layers.BatchNormalization):
    """Keras ``BatchNormalization`` whose training step runs TensorFlow's fused kernel.

    Import it as :data:`FusedBatchNormalization`. The class keeps Keras's name because Keras's
    weight files (``.weights.h5``, the ``.keras`` archive, ``BackupAndRestore`` backups) key a
    layer's variables by its class name: so the weights and backups of runs trained with
    Keras's layer load into this one and back. ``.keras`` configs record it as
    ``tfmarket>FusedBatchNormalization``.

    Keras 3 normalises with separate moments / normalisation ops after upcasting bfloat16 or
    float16 activations to float32, which costs a full extra read and write of every activation
    map, forward and backward, in each of ResNet50's 53 BN layers. ``FusedBatchNormV3`` does it
    in one pass in the input's dtype (statistics in float32; oneDNN on CPUs, cuDNN on GPUs).
    Float32 training on a CPU takes :func:`batch_norm_training_by_matmul` instead (oneDNN's
    forward kernel is slow on channels-last maps); its backward pass is the same fused kernel.

    Same weights, same semantics: output normalised with the batch's biased variance, moving
    statistics ``m = m * momentum + batch_stat * (1 - momentum)`` with the biased variance, as in
    Keras 3 (the kernel returns the Bessel-corrected one, which is undone here). Inference,
    masks, renorm, synchronized BN, frozen layers, inputs that are not 4-D channels-last and
    non-TensorFlow backends use Keras's own code, so a trained model computes what it did.

    Input [B, H, W, C] -> same shape, in the layer's compute dtype.
    """

    def _fusable(self, inputs, training, mask) -> bool:
        return (
            bool(training) and self.trainable and mask is None
            and not getattr(self, "renorm", False)  # Keras < 3.14 has no renorm
            and not getattr(self, "synchronized", False) and keras.backend.backend() == "tensorflow"
            and len(inputs.shape) == 4 and self.axis in (3, -1)
            and self.epsilon >= FUSED_MIN_EPSILON
            # FusedBatchNormV3's types; Keras's code serves any other (float64).
            and self.compute_dtype in FUSED_DTYPES
        )

    def _statistics_by_matmul(self) -> bool:
        """Whether the training step takes :func:`batch_norm_training_by_matmul`: in float32,
        with no GPU visible (cuDNN's kernel is the fast one there; bfloat16 sums would round)."""
        return STATISTICS_BY_MATMUL and self.compute_dtype == "float32" and trains_on_cpu()

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = ops.cast(inputs, self.compute_dtype)
        channels = x.shape[-1]
        gamma = ops.cast(self.gamma, "float32") if self.scale else ops.ones((channels,))
        beta = ops.cast(self.beta, "float32") if self.center else ops.zeros((channels,))
        if self._statistics_by_matmul():
            y, mean, variance = batch_norm_training_by_matmul(x, gamma, beta, self.epsilon)
        else:
            y, mean, corrected = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True, data_format="NHWC")[:3]
            count = ops.cast(ops.prod(ops.shape(x)[:-1]), "float32")
            variance = corrected * (count - 1.0) / ops.maximum(count, 1.0)
        moving_mean = ops.cast(self.moving_mean, "float32")
        moving_variance = ops.cast(self.moving_variance, "float32")
        self.moving_mean.assign(moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return y


FusedBatchNormalization = BatchNormalization
