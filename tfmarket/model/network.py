"""Backbone + BNNeck + ID head + one head per attribute, with dict outputs.

Training model (``build_model``), input float32 [B, H, W, 3] pixel values in [0, 255]:

* ``features``  [B, D]  pooled feature before the BN neck (batch-hard triplet loss).
* ``embedding`` [B, D]  L2-normalised feature after the BN neck (ranking).
* ``id``        [B, num_ids] identity logits (label-smoothed softmax loss).
* one logits output per attribute head of the dataset's attribute schema (``heads``, default
  Market-1501's :data:`tfmarket.attributes.HEADS`: ``age`` [B, 4], binary heads [B, 1],
  ``upper_color`` [B, 9], ``lower_color`` [B, 10]; none for a re-ID-only schema).

Inference model (``build_inference_model``): uint8 [B, H, W, 3] -> ``embedding`` and every
attribute's probabilities (softmax / sigmoid). This is what export writes.
"""

from __future__ import annotations

from collections.abc import Mapping

import keras

from tfmarket.attributes import HEADS
from tfmarket.model import conv as _conv  # noqa: F401  (registers TapGradConv2D for loading)
from tfmarket.model.fold import fold_normalization
from tfmarket.model.layers import (
    CosineClassifier,
    FusedBatchNormalization,
    GeMPooling,
    L2Normalize,
    Normalize,
)

BACKBONES = ("resnet50", "tiny")
POOLINGS = ("avg", "gem")
ID_HEADS = ("linear", "cosine")
# Outputs of the training model that are not attribute heads ("cluster": tfmarket.adapt's
# pseudo-identity logits, on the models it trains, and in the best.keras of runs it adapted
# before that file kept the source architecture).
REID_OUTPUTS = ("features", "embedding", "id", "cluster")


def _resnet50(input_shape, weights: str | None, last_stride: int,
              fused_batchnorm: bool = True, tap_gradient: bool = True) -> keras.Model:
    """Keras ResNet50 feature extractor [B, H, W, 3] -> [B, H/32, W/32, 2048] (/16 if stride 1).

    ``weights``: "imagenet", None, or a path to a weights file for ResNet50(include_top=False).
    ``fused_batchnorm``: its 53 BN layers train with TensorFlow's fused kernel
    (:class:`tfmarket.model.layers.FusedBatchNormalization`: same weights and results, faster).
    ``tap_gradient``: its 3x3 and 1x1 convolutions are
    :class:`tfmarket.model.conv.TapGradConv2D` (same weights and results; where faster, their
    kernel gradient is computed by matmuls).
    """
    base = keras.applications.ResNet50(include_top=False, weights=weights, input_shape=input_shape)
    if last_stride == 2 and not fused_batchnorm and not tap_gradient:
        return base
    # Rebuilding from the edited config keeps every weight's shape and order.
    config = base.get_config()
    for layer in config["layers"]:
        # BoT's last-stride trick: stride 1 in the first block of stage 5 (both the main path
        # and the projection shortcut).
        if layer["config"]["name"] in ("conv5_block1_1_conv", "conv5_block1_0_conv"):
            layer["config"]["strides"] = (last_stride, last_stride)
        if fused_batchnorm and layer["class_name"] == "BatchNormalization":
            layer["module"] = "tfmarket.model.layers"
            layer["registered_name"] = "tfmarket>FusedBatchNormalization"
        if tap_gradient and layer["class_name"] == "Conv2D" \
                and tuple(layer["config"]["kernel_size"]) in ((3, 3), (1, 1)):
            layer["module"] = "tfmarket.model.conv"
            layer["registered_name"] = "tfmarket>TapGradConv2D"
    model = keras.Model.from_config(config)
    model.set_weights(base.get_weights())
    return model


def _tiny_backbone(input_shape, fused_batchnorm: bool = True) -> keras.Model:
    """Three conv stages (32/64/128 filters) for tests: [B, H, W, 3] -> [B, H/8, W/8, 128]."""
    batchnorm = FusedBatchNormalization if fused_batchnorm else keras.layers.BatchNormalization
    inputs = keras.Input(input_shape)
    x = inputs
    for i, filters in enumerate((32, 64, 128)):
        x = keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                                name=f"tiny_conv{i}")(x)
        x = batchnorm(name=f"tiny_bn{i}")(x)
        x = keras.layers.ReLU(name=f"tiny_relu{i}")(x)
    return keras.Model(inputs, x, name="tiny_backbone")


def build_backbone(name: str, input_shape, weights: str | None = None, last_stride: int = 1,
                   fused_batchnorm: bool = True, tap_gradient: bool = True):
    """Returns (feature-map model, normalisation mode its weights expect)."""
    if name == "resnet50":
        return _resnet50(input_shape, weights, last_stride, fused_batchnorm, tap_gradient), \
            "caffe"
    if name == "tiny":
        if weights not in (None, "", "none"):
            raise ValueError("the tiny backbone has no pretrained weights; use weights: none")
        return _tiny_backbone(input_shape, fused_batchnorm), "torch"
    raise ValueError(f"unknown backbone {name!r}; valid backbones: {', '.join(BACKBONES)}")


def build_model(
    num_ids: int,
    *,
    height: int = 256,
    width: int = 128,
    backbone: str = "resnet50",
    weights: str | None = None,
    last_stride: int = 1,
    pooling: str = "avg",
    embedding_dim: int = 0,
    dropout: float = 0.0,
    fused_batchnorm: bool = True,
    tap_gradient: bool = True,
    heads: Mapping[str, int] | None = None,
    id_head: str = "linear",
    id_scale: float = 30.0,
) -> keras.Model:
    """The training model; see the module docstring for outputs.

    ``fused_batchnorm``: the backbone's BN layers train with TensorFlow's fused kernel; False
    gives Keras's own layers (same weights and results, slower; for comparison).
    ``heads``: attribute head -> output width (1 = sigmoid), in output order
    (``AttributeSchema.head_sizes``); None = Market-1501's :data:`HEADS`, {} = re-ID only.
    ``id_head``: "linear" (BoT's bias-free classifier) or "cosine" (a
    :class:`~tfmarket.model.layers.CosineClassifier`, logits ``id_scale`` x cosine).
    """
    heads = HEADS if heads is None else dict(heads)
    clash = [h for h in heads if h in REID_OUTPUTS]
    if clash:
        raise ValueError(f"attribute heads may not be named {', '.join(clash)}")
    if id_head not in ID_HEADS:
        raise ValueError(f"unknown id_head {id_head!r}; valid: {', '.join(ID_HEADS)}")
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    if weights in ("", "none", "None"):
        weights = None
    images = keras.Input((height, width, 3), name="image")
    trunk, mode = build_backbone(backbone, (height, width, 3), weights, last_stride,
                                 fused_batchnorm, tap_gradient)
    x = Normalize(mode, name="normalize")(images)
    x = trunk(x)
    if pooling == "gem":
        features = GeMPooling(name="gem_pool")(x)
    else:
        features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if embedding_dim:
        features = keras.layers.Dense(embedding_dim, name="reduce")(features)
    # Triplet loss sees the feature before BN, everything else the one after (BNNeck,
    # Luo et al. 2019); the neck has no shift so the classifier acts on a centred feature.
    features = keras.layers.Activation("linear", dtype="float32", name="features")(features)
    neck = keras.layers.BatchNormalization(center=False, name="bnneck")(features)
    outputs = {
        "features": features,
        "embedding": L2Normalize(name="embedding")(neck),
        "id": (CosineClassifier(num_ids, id_scale, name="id") if id_head == "cosine" else
               keras.layers.Dense(num_ids, use_bias=False, dtype="float32", name="id"))(neck),
    }
    head_input = keras.layers.Dropout(dropout, name="head_dropout")(neck) if dropout else neck
    for head, n_classes in heads.items():
        outputs[head] = keras.layers.Dense(n_classes, dtype="float32", name=head)(head_input)
    return keras.Model(images, outputs, name=f"tfmarket_{backbone}")


def load_run_model(path) -> keras.Model:
    """A run's ``.keras`` file (``best.keras``, ``model.keras``, an adapt round's), uncompiled.

    Registers tfmarket's custom layers, losses, metrics and schedules first: a fresh process
    (``python -m tfmarket.export``) has not imported them, and Keras cannot rebuild the model
    without them. Raises DataError naming the file when it does not load.
    """
    import tfmarket.model.keras_metrics  # noqa: F401  (registers the custom objects for loading)
    import tfmarket.model.losses  # noqa: F401
    import tfmarket.model.schedules  # noqa: F401
    from tfmarket.errors import DataError

    try:
        return keras.models.load_model(path, compile=False)
    except (OSError, TypeError, ValueError, KeyError) as exc:
        raise DataError(f"{path}: not a loadable tfmarket model ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200]})") from None


def model_heads(model: keras.Model) -> dict[str, int]:
    """The attribute heads of a training model: head -> output width, by name."""
    names = sorted(set(model.output_names) - set(REID_OUTPUTS))
    return {name: model.get_layer(name).units for name in names}


def build_inference_model(model: keras.Model, fold: bool = True) -> keras.Model:
    """uint8 [B, H, W, 3] -> {"embedding": [B, D], head: probabilities} for serving.

    Softmax heads give [B, C] class probabilities, binary heads [B, 1] P(yes); the heads are
    the training model's own (:func:`model_heads`).

    ``fold``: the normalisation's channel flip / scale folded into the first convolution
    (:func:`tfmarket.model.fold.fold_normalization`), so the ONNX graph has no
    ``ReverseSequence`` (what OpenCV's DNN module refuses); same results to float rounding.
    Models it cannot fold are served as they are. False: ``model`` itself, unchanged (the
    reference export's parity check compares the folded graph against).
    """
    height, width = model.input_shape[1:3]
    images = keras.Input((height, width, 3), dtype="uint8", name="image")
    x = keras.layers.Activation("linear", dtype="float32", name="to_float")(
        keras.ops.cast(images, "float32")
    )
    raw = ((fold and fold_normalization(model)) or model)(x)
    outputs = {"embedding": keras.layers.Identity(name="embedding_out")(raw["embedding"])}
    for head, n_classes in model_heads(model).items():
        act = "sigmoid" if n_classes == 1 else "softmax"
        prob = keras.layers.Activation(act, dtype="float32", name=f"{head}_prob")(raw[head])
        outputs[head] = prob
    return keras.Model(images, outputs, name="tfmarket_inference")
