"""From embeddings and attribute probabilities to rankings, decisions and scores. Plain NumPy
(faiss for the index search): no TensorFlow, so the serving side and notebooks use it cheaply.

* ``metrics``, ``attribute_metrics``: Market-1501 re-ID metrics (CMC, mAP, mINP) and attribute
  recognition metrics: the same code scores validation during training and ``rank``.
* ``search``: exact chunked cosine top-k and faiss indexes.
* ``rerank``: k-reciprocal re-ranking (and its neighbour graph, used by clustering).
* ``retrieval_rule``: expansion + attribute-aware distance + re-ranking as one calibrated rule.
* ``attribute_rule``: neighbour voting and prior adjustment of attribute decisions.
* ``cluster``: DBSCAN on a sparse neighbour graph (adapt's pseudo-labels).

May import: the foundations (``tfmarket.attributes``, ``errors``, ``console``) only.
"""
