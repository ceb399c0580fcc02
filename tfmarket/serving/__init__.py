"""Using a trained model: export it, run the exported model, and turn its outputs into files.

* ``export``: a run -> SavedModel + ONNX (+ int8) with a model card and a parity check.
* ``predictor``: the Python API (``tfmarket.load``): an export with its card and rules,
  ``predict`` and ``search``; ``rank`` runs through it.
* ``embed``: the embedders of an exported model (the shared preprocessing, flip test), in
  onnxruntime or OpenVINO (``openvino_runtime``), chosen by ``open_embedder``.
* ``onnx_ops``: the portable ONNX operator set the exported models keep to.
* ``quantize``: int8 ONNX (static QDQ and dynamic).
* ``ranking``: ``rank``'s whole job (inputs, ranking, files, metrics, report).
* ``calibration``: choosing an export's attribute and retrieval rules on validation.
* ``store``: the embedding store of ``gallery`` (shards, merge, filtered search, index).
* ``parquet_store``: the Parquet store many workers write at once (a folder of shards and a
  manifest), read like a ``.npz`` store; ``ray_embed``: ``gallery embed --engine ray``
  (Ray Data actors writing it; Ray imported lazily).
* ``submission``, ``report``, ``npzfile``: the submission files, the HTML ranked-list report,
  and reproducible ``.npz`` files.

May import: the foundations, ``tfmarket.data``, ``tfmarket.retrieval``, and (to export or
calibrate a run) ``tfmarket.model`` and ``tfmarket.training``; never a command. Ranking an
exported model needs no Keras: ``embed`` uses onnxruntime (or OpenVINO), and TensorFlow only
to decode images the shared way.
"""
