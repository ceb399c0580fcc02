"""Test-time retrieval: query expansion, attribute-aware distance and re-ranking, as one rule.

A :class:`RetrievalRule` says how ``python -m tfmarket.rank`` turns embeddings and attribute
probabilities into the query x gallery distance; ``python -m tfmarket.calibrate`` chooses one
on the validation identities (at the test gallery's size with ``--distractors``) and writes it
to ``retrieval.json`` beside the model. In the order they are applied:

1. **Expansion** (``expansion_k`` > 0): database-side augmentation (DBA) replaces every gallery
   embedding by the weighted mean of itself and its ``expansion_k`` nearest gallery embeddings,
   then alpha-query expansion (alpha-QE, Radenovic et al. 2018) does the same for each query
   over its nearest (augmented) gallery embeddings; neighbour weights are
   ``max(similarity, 0) ** expansion_alpha``. Transductive in the way re-ranking is: it uses
   the other unlabelled gallery images, never labels.
2. **Distance**: cosine distance ``1 - q . g`` in [0, 2], or with ``rerank`` the k-reciprocal
   distance of :mod:`tfmarket.retrieval.rerank` (Zhong et al. 2017) with ``k1``, ``k2``,
   ``lambda_value``.
3. **Attributes** (``attribute_weight`` w > 0): adds ``w x`` the mean squared Hellinger distance
   between the two images' predicted attribute distributions (in [0, 1], averaged over heads;
   a sigmoid head is the two-class distribution [1 - p, p]). Two crops the model thinks differ
   in gender, bag and colours are pushed apart even where the embeddings are close.

Plain NumPy: the CLIs that use it need no TensorFlow.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from tfmarket.errors import TfmarketError
from tfmarket.retrieval.search import cosine_topk, l2_normalize

RULE_FILE = "retrieval.json"
_CHUNK = 1024  # rows whose weighted neighbour means are formed at a time (chunk x k x D)


@dataclasses.dataclass(frozen=True)
class RetrievalRule:
    """How query x gallery distances are computed; the default is plain cosine distance."""

    expansion_k: int = 0  # DBA + alpha-QE neighbours; 0 = no expansion
    expansion_alpha: float = 3.0
    attribute_weight: float = 0.0
    rerank: bool = False
    k1: int = 20
    k2: int = 6
    lambda_value: float = 0.3

    def __post_init__(self):
        if self.expansion_k < 0 or self.attribute_weight < 0 or self.expansion_alpha < 0:
            raise TfmarketError(f"retrieval rule: negative setting in {self}")

    @property
    def needs_distances(self) -> bool:
        """Whether ranking needs the full distance matrix (an index search cannot do it)."""
        return self.rerank or self.attribute_weight > 0

    def describe(self) -> str:
        parts = []
        if self.expansion_k:
            parts.append(f"DBA + alpha-QE (k={self.expansion_k}, alpha={self.expansion_alpha:g})")
        parts.append(f"k-reciprocal re-ranking (k1={self.k1}, k2={self.k2}, "
                     f"lambda={self.lambda_value:g})" if self.rerank else "cosine distance")
        if self.attribute_weight:
            parts.append(f"+ {self.attribute_weight:g} x attribute distance")
        return ", ".join(parts)


def save_rule(path: str | Path, rule: RetrievalRule, report: dict | None = None) -> None:
    """Writes ``{"rule": {...}, "report": {...}}`` (the report is what chose it)."""
    Path(path).write_text(json.dumps({"rule": dataclasses.asdict(rule), "report": report or {}},
                                     indent=2, default=float))


def load_rule(path: str | Path) -> RetrievalRule:
    path = Path(path)
    if not path.is_file():
        raise TfmarketError(f"{path}: retrieval rule file not found")
    try:
        fields = json.loads(path.read_text())["rule"]
        return RetrievalRule(**fields)
    except (ValueError, KeyError, TypeError) as exc:
        raise TfmarketError(f"{path}: not a retrieval rule written by calibrate ({exc})"
                            ) from None


# --- expansion ---------------------------------------------------------------------------------


def nearest(rows: np.ndarray, pool: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [N, k] indices, float32 [N, k] cosine similarities) of the k nearest ``pool``
    rows of each row, nearest first: :func:`tfmarket.retrieval.search.cosine_topk` as
    similarities."""
    index, dist = cosine_topk(rows, pool, k)
    return index, 1.0 - dist


def _weighted_mean(pool: np.ndarray, near: np.ndarray, sims: np.ndarray,
                   alpha: float) -> np.ndarray:
    """sum_j max(sim_j, 0) ** alpha * pool[near_j] for each row: [N, D] (not normalised)."""
    out = np.empty((len(near), pool.shape[1]), np.float32)
    for s in range(0, len(near), _CHUNK):
        weights = np.maximum(sims[s:s + _CHUNK], 0.0) ** alpha
        out[s:s + _CHUNK] = np.einsum("ck,ckd->cd", weights, pool[near[s:s + _CHUNK]])
    return out


def expand(query_emb: np.ndarray, gallery_emb: np.ndarray, k: int, alpha: float,
           gallery_neighbours: tuple[np.ndarray, np.ndarray] | None = None,
           ) -> tuple[np.ndarray, np.ndarray]:
    """DBA on the gallery, then alpha-QE of the queries over the augmented gallery.

    Args:
        query_emb: float32 [N, D], L2-normalised.
        gallery_emb: float32 [M, D], L2-normalised.
        k: neighbours averaged in, besides the image itself.
        alpha: weight exponent; 0 = plain mean.
        gallery_neighbours: optional :func:`nearest` (gallery, gallery, >= k + 1), reused
            across several k.

    Returns:
        (query float32 [N, D], gallery float32 [M, D]), L2-normalised.
    """
    q = l2_normalize(query_emb)
    g = l2_normalize(gallery_emb)
    if k <= 0:
        return q, g
    near, sims = gallery_neighbours or nearest(g, g, k + 1)
    # A gallery image's nearest neighbour is itself (similarity 1): DBA's "itself" term.
    g = l2_normalize(_weighted_mean(g, near[:, :k + 1], sims[:, :k + 1], alpha))
    q_near, q_sims = nearest(q, g, k)
    q = l2_normalize(q + _weighted_mean(g, q_near, q_sims, alpha))
    return q, g


# --- attributes --------------------------------------------------------------------------------


def attribute_features(probabilities: Mapping[str, np.ndarray],
                       heads: Mapping[str, int]) -> np.ndarray:
    """Square roots of each head's class distribution, concatenated.

    Args:
        probabilities: head -> float [N] (sigmoid heads, heads[h] == 1) or [N, C] (softmax).
        heads: head -> number of classes (1 = sigmoid): the model's attribute schema's
            ``head_sizes`` (Market-1501's: :data:`tfmarket.attributes.HEADS`).

    Returns:
        float32 [N, sum of classes (2 per sigmoid head)]; the dot product of two rows is the
        sum over heads of the Bhattacharyya coefficients.
    """
    parts = []
    for head, n_classes in heads.items():
        p = np.asarray(probabilities[head], dtype=np.float32)
        if n_classes == 1:
            p = p.reshape(-1, 1)
            p = np.concatenate([1.0 - p, p], axis=1)
        parts.append(np.sqrt(np.clip(p, 0.0, 1.0)))
    return np.concatenate(parts, axis=1).astype(np.float32)


def attribute_distance(query_features: np.ndarray, gallery_features: np.ndarray,
                       num_heads: int) -> np.ndarray:
    """Mean squared Hellinger distance over heads: float32 [N, M] in [0, 1]."""
    return np.clip(1.0 - (query_features @ gallery_features.T) / num_heads, 0.0, 1.0)


# --- the whole rule ----------------------------------------------------------------------------


def distances(query_out: Mapping[str, np.ndarray], gallery_out: Mapping[str, np.ndarray],
              rule: RetrievalRule, heads: Mapping[str, int]) -> np.ndarray:
    """Query x gallery distances under ``rule``.

    Args:
        query_out, gallery_out: model outputs: ``"embedding"`` float32 [N, D] / [M, D]
            (L2-normalised) and, when ``rule.attribute_weight`` > 0, each head's probabilities.
        heads: head -> number of classes, see :func:`attribute_features`.

    Returns:
        float32 [N, M]; smaller = more alike.
    """
    q, g = expand(query_out["embedding"], gallery_out["embedding"], rule.expansion_k,
                  rule.expansion_alpha)
    if rule.rerank:
        from tfmarket.retrieval.rerank import k_reciprocal_rerank

        dist = k_reciprocal_rerank(q, g, k1=rule.k1, k2=rule.k2, lambda_value=rule.lambda_value)
    else:
        dist = (1.0 - q @ g.T).astype(np.float32)
    if rule.attribute_weight > 0:
        if not heads:
            raise TfmarketError(f"the retrieval rule adds an attribute distance (weight "
                                f"{rule.attribute_weight:g}), but the model has no attribute "
                                "heads; use --retrieval plain")
        missing = [h for h in heads if h not in query_out or h not in gallery_out]
        if missing:
            raise TfmarketError(f"attribute-aware distance: no probabilities for heads {missing}")
        dist += rule.attribute_weight * attribute_distance(
            attribute_features(query_out, heads), attribute_features(gallery_out, heads),
            len(heads))
    return dist



# --- choosing on validation --------------------------------------------------------------------

EXPANSION_GRID = ((0, 3.0), (1, 3.0), (2, 3.0), (3, 3.0), (5, 3.0), (10, 3.0))
ATTRIBUTE_WEIGHT_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
RERANK_GRID = ((20, 6, 0.3), (20, 3, 0.3), (30, 6, 0.3), (20, 6, 0.5), (30, 6, 0.5),
               (15, 4, 0.3))
_SCORES = ("mAP", "rank1", "rank5", "mINP")


def choose_rule(query_out: Mapping[str, np.ndarray], gallery_out: Mapping[str, np.ndarray],
                query_pids: np.ndarray, gallery_pids: np.ndarray, query_cams: np.ndarray,
                gallery_cams: np.ndarray, heads: Mapping[str, int], *,
                expansion_grid=EXPANSION_GRID, attribute_weight_grid=ATTRIBUTE_WEIGHT_GRID,
                rerank_grid=RERANK_GRID, progress=None) -> tuple[RetrievalRule, list[dict]]:
    """The rule with the best Market-1501 mAP on labelled queries/gallery (ties: Rank-1).

    Search, in stages, so that re-ranking (the costly part) runs ``2 x len(rerank_grid)``
    times, not once per combination:

    1. every expansion setting with cosine distance, each with every attribute weight (the
       attribute distance is added to a distance computed once);
    2. every re-ranking setting, on no expansion and on the best expansion of stage 1, each
       with every attribute weight.

    Args:
        query_out, gallery_out: ``"embedding"`` float32 [N, D] / [M, D] and head probabilities.
        query_pids, gallery_pids, query_cams, gallery_cams: int [N] / [M] labels (gallery
            identity 0 = distractor).
        heads: head -> number of classes; {} (a re-ID-only model) scores attribute weight 0
            only.
        progress: optional callable(str) told what is being scored.

    Returns:
        (best rule, one row per scored rule: its settings, mAP, rank1, rank5, mINP).
    """
    from tfmarket.retrieval.metrics import evaluate_ranking

    if 0.0 not in attribute_weight_grid or (0, 3.0) not in [tuple(e) for e in expansion_grid]:
        raise TfmarketError("the grids must include attribute weight 0 and expansion (0, 3) "
                            "(the plain rule every choice is compared with)")
    labels = (query_pids, gallery_pids, query_cams, gallery_cams)
    if heads:
        q_attr = attribute_features(query_out, heads)
        g_attr = attribute_features(gallery_out, heads)
        attr = attribute_distance(q_attr, g_attr, len(heads))
    else:
        attribute_weight_grid = (0.0,)
    rows: list[dict] = []

    def score_all(base: RetrievalRule, dist: np.ndarray) -> None:
        for weight in attribute_weight_grid:
            rule = dataclasses.replace(base, attribute_weight=float(weight))
            scores = evaluate_ranking(dist + weight * attr if weight else dist, *labels)
            rows.append({**dataclasses.asdict(rule), "describe": rule.describe(),
                         **{k: scores[k] for k in _SCORES}})

    def best(candidates: list[dict]) -> dict:
        return max(candidates, key=lambda r: (r["mAP"], r["rank1"]))

    cosine_bases = {}
    g_unit = l2_normalize(gallery_out["embedding"])
    g_near = nearest(g_unit, g_unit, max(int(k) for k, _ in expansion_grid) + 1)
    for k, alpha in expansion_grid:
        if progress:
            progress(f"expansion k={k}, alpha={alpha:g}")
        q, g = expand(query_out["embedding"], g_unit, int(k), float(alpha), g_near)
        base = RetrievalRule(expansion_k=int(k), expansion_alpha=float(alpha))
        cosine_bases[base] = (q, g)
        score_all(base, (1.0 - q @ g.T).astype(np.float32))
    top = best(rows)
    expansions = {RetrievalRule(), RetrievalRule(expansion_k=top["expansion_k"],
                                                expansion_alpha=top["expansion_alpha"])}
    from tfmarket.retrieval.rerank import k_reciprocal_rerank

    for base in sorted(expansions, key=lambda r: r.expansion_k):
        q, g = cosine_bases[base]
        for k1, k2, lam in rerank_grid:
            if progress:
                progress(f"re-ranking k1={k1}, k2={k2}, lambda={lam:g} "
                         f"(expansion k={base.expansion_k})")
            rule = dataclasses.replace(base, rerank=True, k1=int(k1), k2=int(k2),
                                       lambda_value=float(lam))
            score_all(rule, k_reciprocal_rerank(q, g, k1=rule.k1, k2=rule.k2,
                                                lambda_value=rule.lambda_value))
    chosen = best(rows)
    fields = {f.name for f in dataclasses.fields(RetrievalRule)}
    return RetrievalRule(**{k: v for k, v in chosen.items() if k in fields}), rows
