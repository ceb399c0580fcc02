"""The Keras network and what trains it.

* ``network``: backbones (ResNet-50, a tiny one for tests) + BNNeck + ID head + attribute heads,
  the serving (uint8 -> probabilities) model, and loading a run's ``.keras`` file.
* ``layers``: normalisation, fused batch norm, GeM pooling, L2 normalise, cosine classifier,
  cluster prototypes. ``losses``, ``schedules``, ``keras_metrics``: what ``compile`` takes.

Every custom class is registered as ``tfmarket>ClassName`` (``keras.saving``); those names are
stored in ``.keras`` files and must not change.

May import: the foundations (``tfmarket.attributes``, ``errors``, ``preprocess``) and Keras.
Nothing here reads data or configs (``tfmarket.training.build`` turns a config into calls).
"""
