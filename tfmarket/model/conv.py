"""A Conv2D whose kernel gradient, where TensorFlow's own is slow, is computed by matmuls.

On CPUs, TensorFlow's bfloat16 filter-gradient kernel for 3x3 convolutions (oneDNN's, run on
TensorFlow's thread pool) takes about twice as long as the same oneDNN kernel does in PyTorch on
ResNet50's wider stages. The filter gradient of a 3x3, stride-1, "same" convolution is a sum of
nine matrix products, one per tap (kh, kw):

    dK[kh, kw] = X_shifted(kh, kw)^T · dY    [C_in, N·H·W] x [N·H·W, C_out] -> [C_in, C_out]

where X_shifted is the zero-padded input shifted by the tap. TensorFlow's bfloat16 matmul
computes those at about the speed PyTorch's convolution kernel reaches. Measured per kernel by
``benchmarks/conv_grad.py`` (batch 64, AMD EPYC with avx512_bf16, benchmarks/README.md): at
128x64 images 1.9x faster at 512 channels, 1.6x at 256, 1.2x at 128, 0.8x at 64; at 256x128
images 1.6x, 1.2x, 0.7x and 0.7x. In float32 it gains nothing (TensorFlow's kernel is fine).

The kernel gradient of a 1x1, stride-1 convolution is one such product (one tap). oneDNN's
float32 1x1 filter-gradient kernel (PyTorch runs the same one) is slow where the kernel is large
and the map small (likely its reduction of per-thread partial gradients, which grows with
C_in x C_out). On ResNet50's stage 5 (1x1 kernels of 1024x512 up to 1024x2048, on the
smallest maps) one matmul is faster in float32 on a 2-core AVX2-only AMD EPYC: 1.6-1.9x at
128x64 images (``benchmarks/conv_grad.py --kinds 1x1``) and 1.5-2.0x at 256x128, about 5% of
the float32 training step. On stage 4 and the strided layers it is slower, so it applies from
:data:`MATMUL_GRADIENT_MIN_WEIGHTS` kernel weights.
"""

from __future__ import annotations

import keras

from tfmarket.model.layers import trains_on_cpu

# Input channels from which the per-tap matmuls beat TensorFlow's bfloat16 kernel at both
# image sizes measured (see above): ResNet50's stages 4 and 5.
TAP_GRADIENT_MIN_CHANNELS = 256

# C_in x C_out from which one matmul beats TensorFlow's float32 1x1 filter gradient at both image
# sizes measured (see above): ResNet50's stage 5 (1024 x 512 and up), not stage 4 (256 x 1024).
MATMUL_GRADIENT_MIN_WEIGHTS = 1024 * 512


def tap_kernel_gradient(inputs, grad_outputs):
    """Kernel gradient of a 3x3, stride-1, "same" convolution.

    Args:
        inputs: [N, H, W, C_in], the convolution's input.
        grad_outputs: [N, H, W, C_out], the loss's gradient with respect to its output.

    Returns:
        [3, 3, C_in, C_out], in the inputs' dtype (products accumulate in float32 in the
        matmul kernels, as in the convolution's).
    """
    import tensorflow as tf

    shape = tf.shape(inputs)
    height, width = shape[1], shape[2]
    channels_in, channels_out = inputs.shape[-1], grad_outputs.shape[-1]
    padded = tf.pad(inputs, [[0, 0], [1, 1], [1, 1], [0, 0]])
    grad_rows = tf.reshape(grad_outputs, (-1, channels_out))
    taps = [
        tf.matmul(tf.reshape(padded[:, i:i + height, j:j + width, :], (-1, channels_in)),
                  grad_rows, transpose_a=True)
        for i in range(3) for j in range(3)
    ]
    return tf.reshape(tf.stack(taps), (3, 3, channels_in, channels_out))


def pointwise_kernel_gradient(inputs, grad_outputs):
    """Kernel gradient of a 1x1, stride-1 convolution: one matmul.

    Args:
        inputs: [N, H, W, C_in], the convolution's input.
        grad_outputs: [N, H, W, C_out], the loss's gradient with respect to its output.

    Returns:
        [1, 1, C_in, C_out], in the inputs' dtype.
    """
    import tensorflow as tf

    channels_in, channels_out = inputs.shape[-1], grad_outputs.shape[-1]
    product = tf.matmul(tf.reshape(inputs, (-1, channels_in)),
                        tf.reshape(grad_outputs, (-1, channels_out)), transpose_a=True)
    return tf.reshape(product, (1, 1, channels_in, channels_out))


def _conv_with_kernel_gradient(inputs, kernel, bias, kernel_gradient):
    """conv2d(inputs, kernel, stride 1, "same") [+ bias], differentiated with
    ``kernel_gradient(inputs, grad_outputs)`` for the kernel (:func:`tap_kernel_gradient` or
    :func:`pointwise_kernel_gradient`) and TensorFlow's own kernel for the input.

    inputs [N, H, W, C_in], kernel [k, k, C_in, C_out], bias [C_out] or None, all in one dtype.
    """
    import tensorflow as tf

    @tf.custom_gradient
    def conv(x, k, *b):
        y = tf.nn.conv2d(x, k, strides=1, padding="SAME")
        if b:
            y = tf.nn.bias_add(y, b[0])

        def grad(dy):
            dx = tf.raw_ops.Conv2DBackpropInput(
                input_sizes=tf.shape(x), filter=k, out_backprop=dy, strides=[1, 1, 1, 1],
                padding="SAME")
            grads = [dx, kernel_gradient(x, dy)]
            if b:
                # Summed in float32: 10^4-10^5 terms would lose the low bits in bfloat16.
                grads.append(tf.cast(tf.reduce_sum(tf.cast(dy, "float32"), axis=(0, 1, 2)),
                                     dy.dtype))
            return grads

        return y, grad

    return conv(inputs, kernel) if bias is None else conv(inputs, kernel, bias)


@keras.saving.register_keras_serializable(package="tfmarket", name="TapGradConv2D")
class Conv2D(keras.layers.Conv2D):
    """Keras ``Conv2D`` whose kernel gradient, where that is faster, is computed by matmuls.

    It applies in training, on the TensorFlow backend with no GPU visible, to a convolution with
    stride 1, dilation 1, one group, channels last:

    * 3x3, "same" padding, bfloat16 compute, at least :data:`TAP_GRADIENT_MIN_CHANNELS` input
      channels: :func:`tap_kernel_gradient` (nine matmuls);
    * 1x1, float32 compute, at least :data:`MATMUL_GRADIENT_MIN_WEIGHTS` kernel weights
      (C_in x C_out): :func:`pointwise_kernel_gradient` (one matmul).

    Everywhere else, and always in the forward pass, it is Keras's layer.

    Import it as :data:`TapGradConv2D`. The class keeps Keras's name because Keras's weight
    files key a layer's variables by its class name: weights and backups of runs trained with
    Keras's layer load into this one and back. ``.keras`` configs record it as
    ``tfmarket>TapGradConv2D``.

    Input [N, H, W, C_in] -> [N, H, W, filters].
    """

    def call(self, inputs, training=None):
        kernel_gradient = self._kernel_gradient(inputs) if training else None
        if kernel_gradient is None:
            return super().call(inputs)
        kernel = keras.ops.cast(self.kernel, self.compute_dtype)
        bias = keras.ops.cast(self.bias, self.compute_dtype) if self.use_bias else None
        outputs = _conv_with_kernel_gradient(
            keras.ops.cast(inputs, self.compute_dtype), kernel, bias, kernel_gradient)
        return self.activation(outputs) if self.activation is not None else outputs

    def _kernel_gradient(self, inputs):
        """The matmul kernel gradient that applies to this layer and input, else None."""
        if keras.backend.backend() != "tensorflow" or not (
                tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1)
                and self.groups == 1 and self.data_format == "channels_last"
                and len(inputs.shape) == 4):
            return None
        kernel_gradient = matmul_kernel_gradient(
            tuple(self.kernel_size), self.padding, self.compute_dtype, inputs.shape[-1] or 0,
            self.filters)
        return kernel_gradient if kernel_gradient is not None and trains_on_cpu() else None


def matmul_kernel_gradient(kernel_size: tuple[int, int], padding: str, compute_dtype: str,
                           channels_in: int, channels_out: int):
    """For a stride-1 convolution trained on a CPU: the matmul form of its kernel gradient
    where that beats TensorFlow's kernel (:func:`tap_kernel_gradient`,
    :func:`pointwise_kernel_gradient`), else None (TensorFlow's kernel)."""
    if tuple(kernel_size) == (3, 3) and padding == "same" and compute_dtype == "bfloat16" \
            and channels_in >= TAP_GRADIENT_MIN_CHANNELS:
        return tap_kernel_gradient
    if tuple(kernel_size) == (1, 1) and compute_dtype == "float32" \
            and channels_in * channels_out >= MATMUL_GRADIENT_MIN_WEIGHTS:
        return pointwise_kernel_gradient
    return None


TapGradConv2D = Conv2D
