"""Folding the input normalisation into the first convolution, for portable serving graphs.

The training model normalises pixels with :class:`~tfmarket.model.layers.Normalize`: ``caffe``
(ResNet50's Keras weights) subtracts the ImageNet mean and flips RGB to BGR, ``torch`` subtracts
the mean and divides by the std. Converted to ONNX, the flip (TensorFlow's ``ReverseV2``)
becomes ``ReverseSequence`` with Shape/Gather/Expand around it, which OpenCV's DNN module (5.x)
refuses. Both the flip and the per-channel scale are linear maps of the channels, so the
convolution that reads the normalised image can absorb them exactly: with
``Normalize(x) = (x - mean)[..., order] * scale``,

    conv(Normalize(x), K) = conv(x - mean, K')    K'[:, :, order[c], :] = scale[c] K[:, :, c, :]

Zero padding before that convolution (ResNet50's ``conv1_pad``) commutes with both. The mean
cannot be folded the same way: the padding is zero in the normalised image, i.e. the mean in
pixels, so a folded bias would be wrong along the borders; it stays one ``Sub`` of a constant
[3] vector, which every runtime runs.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import tree

from tfmarket.model.layers import Normalize, SubtractMean


def fold_normalization(model: keras.Model) -> keras.Model | None:
    """``model`` with its ``normalize`` layer's channel order and scale folded into the first
    convolution's kernel (see the module docstring), or None when its graph is not
    ``normalize -> [ZeroPadding2D ...] -> Conv2D`` with that convolution the only reader.

    Same inputs, outputs and results (to float rounding) as ``model``; every layer but those
    two is shared with it, weights included, so the copy costs one kernel's memory.
    """
    try:
        normalize = model.get_layer("normalize")
    except ValueError:
        return None
    if not isinstance(normalize, Normalize) or len(_nodes(normalize)) != 1:
        return None
    conv = _sole_convolution(model, _nodes(normalize)[0].output_tensors[0])
    if conv is None:
        return None
    order, scale = normalize.channel_map()
    kernel, *bias = conv.get_weights()  # kernel [kh, kw, 3, filters]
    folded_kernel = np.empty_like(kernel)
    for channel in range(3):
        folded_kernel[:, :, order[channel], :] = kernel[:, :, channel, :] * scale[channel]
    folded = conv.__class__.from_config(conv.get_config())
    folded.build(_nodes(conv)[0].input_tensors[0].shape)
    folded.set_weights([folded_kernel, *bias])
    replace = {id(normalize): SubtractMean(name=normalize.name, dtype=normalize.dtype_policy),
               id(conv): folded}
    # recursive: the convolution sits inside the backbone, a nested model.
    return keras.models.clone_model(model, clone_function=lambda layer: replace.get(id(layer),
                                                                                   layer),
                                    recursive=True)


def _nodes(layer) -> list:
    """The calls of ``layer`` (Keras's graph nodes: input_tensors, output_tensors)."""
    return list(getattr(layer, "_inbound_nodes", []))


def _readers(graph: keras.Model, tensor) -> list:
    """(layer, node) of every call in ``graph`` that takes ``tensor``."""
    return [(layer, node) for layer in graph.layers for node in _nodes(layer)
            if any(t is tensor for t in tree.flatten(node.input_tensors))]


def _sole_convolution(graph: keras.Model, tensor):
    """The Conv2D that ``tensor`` alone reaches (through nested models' inputs and zero
    padding), used nowhere else; None when there is none or ``tensor`` has other readers."""
    while True:
        readers = _readers(graph, tensor)
        if len(readers) != 1:
            return None
        layer, node = readers[0]
        if isinstance(layer, keras.Model):
            if len(layer.inputs) != 1:
                return None
            graph, tensor = layer, layer.inputs[0]
        elif (isinstance(layer, keras.layers.ZeroPadding2D)
              and layer.data_format == "channels_last"):
            tensor = node.output_tensors[0]
        elif (type(layer) is keras.layers.Conv2D and layer.groups == 1
              and layer.data_format == "channels_last" and len(_nodes(layer)) == 1):
            return layer
        else:
            return None
