"""Attribute decisions from head probabilities: neighbour voting and prior adjustment.

The attribute heads are trained with class-balanced losses, so the plain decision (sigmoid
>= 0.5, softmax argmax) favours rare values: good label-based mA, lower accuracy. Two knobs,
chosen on a labelled validation pool (:func:`choose_rule`), trade between the two and borrow
strength from re-identification:

* ``neighbours`` k: an image's probabilities are averaged with those of its k - 1 nearest
  images (cosine distance of the embeddings) in the same pool. Attributes belong to the
  person, and the nearest images are mostly the same person seen by other cameras, so the
  average is a vote over several views. This is transductive, like k-reciprocal re-ranking:
  it uses the other unlabelled images of the pool, never their labels. k = 1 is the image
  alone; k should stay below the typical number of images per identity.
* ``prior_weight`` tau: logit adjustment (Menon et al., ICLR 2021): class c scores
  ``log p_c + tau * log pi_c`` with ``pi`` the training-set class frequencies. tau = 0 keeps
  the balanced decisions; larger tau moves them towards the accuracy-optimal ones.

Neighbours come from an exact search of the pool against itself (:func:`nearest_neighbours`),
whose cost grows with the square of the pool: fine for Market-sized galleries (22k images:
seconds), not for millions (use the plain rule there).

Every function takes the model's attribute schema (``schema``, default Market-1501's
:data:`tfmarket.attributes.MARKET`): its heads and the columns decisions are written in.

Plain NumPy (plus :func:`tfmarket.retrieval.search.cosine_topk`); no TensorFlow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tfmarket.attributes import MARKET, AttributeSchema
from tfmarket.errors import TfmarketError

RULE_FILE = "attribute_rule.json"  # written beside model.onnx by tfmarket.calibrate
NEIGHBOURS_GRID = (1, 3, 5, 10, 15)
PRIOR_WEIGHT_GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class AttributeRule:
    """How head probabilities become attribute values.

    Attributes:
        neighbours: images averaged per decision (the image and its k - 1 nearest); 1 = alone.
        prior_weight: tau of the logit adjustment; 0 = plain threshold / argmax.
        priors: head -> training class frequencies (binary heads: [p(no), p(yes)]); needed
            when ``prior_weight`` is not 0.
    """

    neighbours: int = 1
    prior_weight: float = 0.0
    priors: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self):
        if self.neighbours < 1:
            raise TfmarketError(f"attribute rule: neighbours must be >= 1, got {self.neighbours}")
        if self.prior_weight and not self.priors:
            self.check_priors(())

    def check_priors(self, heads) -> None:
        """TfmarketError unless the rule has a prior for each of ``heads`` (when it needs
        priors: ``prior_weight`` not 0)."""
        missing = sorted(set(heads) - set(self.priors)) if self.priors else ["all"]
        if self.prior_weight and missing:
            raise TfmarketError(f"attribute rule: prior_weight {self.prior_weight} needs class "
                                f"priors for every head; missing {', '.join(missing)}")

    @property
    def is_plain(self) -> bool:
        return self.neighbours == 1 and self.prior_weight == 0

    def describe(self) -> str:
        if self.is_plain:
            return "plain (threshold 0.5 / argmax per image)"
        return (f"average over {self.neighbours} nearest images, "
                f"prior weight {self.prior_weight:g}")


def class_priors(targets: Mapping[str, np.ndarray],
                 schema: AttributeSchema = MARKET) -> dict[str, list[float]]:
    """Training class frequencies per head, add-one smoothed (so every log is finite).

    Args:
        targets: head -> int [N] class index, -1 where unknown (``train.attribute_targets``).
        schema: the heads.
    """
    priors = {}
    for head, n_classes in schema.head_sizes.items():
        t = np.asarray(targets[head])
        t = t[t >= 0]
        counts = np.bincount(t, minlength=max(n_classes, 2)).astype(np.float64) + 1.0
        priors[head] = (counts / counts.sum()).tolist()
    return priors


def _as_class_probs(n_classes: int, p: np.ndarray) -> np.ndarray:
    """[N, C] class probabilities; a sigmoid head's [N] or [N, 1] becomes [N, 2] (no, yes)."""
    p = np.asarray(p, dtype=np.float64)
    if n_classes == 1:
        yes = p.reshape(-1)
        return np.stack([1.0 - yes, yes], axis=1)
    return p


def nearest_neighbours(embeddings: np.ndarray, k: int,
                       rows: np.ndarray | None = None) -> np.ndarray:
    """int [R, min(k, N)]: the k nearest rows of ``embeddings`` [N, D] (cosine distance) to
    each of ``rows`` (default: all N rows), the row itself first."""
    from tfmarket.retrieval.search import cosine_topk, l2_normalize

    emb = l2_normalize(embeddings)
    rows = np.arange(len(emb)) if rows is None else np.asarray(rows, dtype=np.int64)
    k = min(int(k), len(emb))
    indices, _ = cosine_topk(emb[rows], emb, k)
    # Exact duplicates tie with the row itself (ties go by index); put the row first so that
    # k = 1 means "the image alone".
    for i in np.flatnonzero(indices[:, 0] != rows):
        others = [j for j in indices[i] if j != rows[i]]
        indices[i] = [rows[i], *others[: k - 1]]
    return indices


def decide(probs: Mapping[str, np.ndarray], rule: AttributeRule,
           neighbours: np.ndarray | None = None,
           schema: AttributeSchema = MARKET) -> np.ndarray:
    """Probabilities -> attribute columns under ``rule``.

    Args:
        probs: head -> probabilities ([N, C] softmax, [N] or [N, 1] sigmoid), one pool.
        rule: the decision rule.
        neighbours: int [R, >= rule.neighbours] pool indices from :func:`nearest_neighbours`
            (needed when ``rule.neighbours > 1``; only the first ``rule.neighbours`` columns
            are used): decisions are made for those R images (all N when R = N).
        schema: the model's attribute schema (its heads, the columns written).

    Returns:
        int [N, columns] (int [R, columns] with ``neighbours``) in annotation encoding
        (Market-1501: [N, 27] in ``tfmarket.attributes.COLUMNS`` order).
    """
    heads = schema.head_sizes
    if not heads:
        raise ValueError(f"the {schema.name} attribute schema has no heads: nothing to decide")
    rule.check_priors(heads)
    n = len(np.asarray(probs[next(iter(heads))]))
    k = min(rule.neighbours, n)  # a pool smaller than k: every image votes
    if k > 1 and (neighbours is None or neighbours.ndim != 2 or neighbours.shape[1] < k
                  or neighbours.max(initial=0) >= n):
        raise ValueError(f"rule averages {k} images; pass neighbours [rows, >= {k}] into the "
                         f"pool of {n} from nearest_neighbours")
    adjusted = {}
    for head, n_classes in heads.items():
        p = _as_class_probs(n_classes, probs[head])
        if k > 1:
            p = p[neighbours[:, :k]].mean(axis=1)
        if rule.prior_weight:
            # argmax of log p_c + tau log pi_c, as probabilities: p_c pi_c^tau, renormalised
            p = p * np.asarray(rule.priors[head]) ** rule.prior_weight
            p = p / p.sum(axis=1, keepdims=True)
        adjusted[head] = p[:, 1:] if n_classes == 1 else p
    # The same per-image decision as everywhere else (sigmoid >= 0.5, softmax argmax).
    return schema.predicted_columns(adjusted)


def _summary(metrics: dict) -> dict:
    return {"mA": metrics["mA"], "mean_accuracy": metrics["mean_accuracy"]}


def evaluate_rules(probs: Mapping[str, np.ndarray], embeddings: np.ndarray,
                   truth: np.ndarray, priors: dict[str, list[float]],
                   neighbours_grid: Sequence[int] = NEIGHBOURS_GRID,
                   prior_weight_grid: Sequence[float] = PRIOR_WEIGHT_GRID,
                   schema: AttributeSchema = MARKET) -> list[dict]:
    """Attribute mA and mean accuracy of every (neighbours, prior_weight) pair on one pool.

    Args:
        probs: head -> probabilities of the N pool images.
        embeddings: float [N, D] embeddings of the same images.
        truth: int [N, columns] annotation-encoded labels in ``schema``'s columns (0 = unknown,
            ignored).

    Returns:
        [{"neighbours", "prior_weight", "mA", "mean_accuracy"}], grid order.
    """
    from tfmarket.retrieval.attribute_metrics import attribute_metrics

    nearest = nearest_neighbours(embeddings, max(neighbours_grid))
    rows = []
    for k in neighbours_grid:
        for tau in prior_weight_grid:
            rule = AttributeRule(int(k), float(tau), priors)
            scored = _summary(attribute_metrics(truth, decide(probs, rule, nearest, schema),
                                                schema.columns, schema.multiclass))
            rows.append({"neighbours": int(k), "prior_weight": float(tau), **scored})
    return rows


def pick(rows: list[dict], max_ma_drop: float) -> dict:
    """The row with the best mean accuracy among those whose mA is at most ``max_ma_drop``
    below the plain rule's (neighbours 1, prior weight 0, which must be in ``rows``); ties go
    to the higher mA, then the earlier row."""
    plain = next((r for r in rows if r["neighbours"] == 1 and r["prior_weight"] == 0), None)
    if plain is None:
        raise ValueError("the grid must contain the plain rule (neighbours 1, prior weight 0)")
    allowed = [r for r in rows if r["mA"] >= plain["mA"] - max_ma_drop - 1e-12]
    return max(allowed, key=lambda r: (r["mean_accuracy"], r["mA"]))


def cross_validate(probs: Mapping[str, np.ndarray], embeddings: np.ndarray,
                   truth: np.ndarray, pids: np.ndarray, priors: dict[str, list[float]],
                   max_ma_drop: float, repeats: int = 5, seed: int = 0,
                   schema: AttributeSchema = MARKET, **grid) -> dict:
    """Honest estimate of choosing the rule on validation: split the identities in two
    halves, choose on one half, score on the other (both ways), ``repeats`` random splits.

    Returns:
        {"plain": {mA, mean_accuracy}, "chosen": {...}} averaged over the 2 x repeats held-out
        halves, and the per-fold choices under "folds".
    """
    from tfmarket.retrieval.attribute_metrics import attribute_metrics

    pids = np.asarray(pids)
    ids = np.unique(pids)
    if len(ids) < 4:
        raise TfmarketError(f"cross-validating the attribute rule needs >= 4 identities, "
                            f"got {len(ids)}")
    rng = np.random.default_rng(seed)
    folds = []
    for _ in range(repeats):
        perm = rng.permutation(ids)
        halves = (perm[: len(ids) // 2], perm[len(ids) // 2:])
        for choose_on, score_on in ((0, 1), (1, 0)):
            a = np.flatnonzero(np.isin(pids, halves[choose_on]))
            b = np.flatnonzero(np.isin(pids, halves[score_on]))
            sub = {h: np.asarray(v)[a] for h, v in probs.items()}
            chosen = pick(evaluate_rules(sub, embeddings[a], truth[a], priors, schema=schema,
                                         **grid), max_ma_drop)
            rule = AttributeRule(chosen["neighbours"], chosen["prior_weight"], priors)
            held = {h: np.asarray(v)[b] for h, v in probs.items()}
            nearest = nearest_neighbours(embeddings[b], rule.neighbours)
            columns = (schema.columns, schema.multiclass)
            folds.append({
                "neighbours": rule.neighbours, "prior_weight": rule.prior_weight,
                "chosen": _summary(attribute_metrics(
                    truth[b], decide(held, rule, nearest, schema), *columns)),
                "plain": _summary(attribute_metrics(
                    truth[b], decide(held, AttributeRule(), schema=schema), *columns)),
            })
    mean = {which: {key: float(np.mean([f[which][key] for f in folds]))
                    for key in ("mA", "mean_accuracy")} for which in ("plain", "chosen")}
    return {**mean, "folds": folds}


def save_rule(path: str | Path, rule: AttributeRule, report: dict | None = None) -> None:
    """Writes the rule (and how it was chosen) as JSON, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps({"rule": asdict(rule), **(report or {})}, indent=2))
    tmp.replace(path)


def load_rule(path: str | Path) -> AttributeRule:
    """Reads a rule written by :func:`save_rule`; a clear error naming the file otherwise."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())["rule"]
        return AttributeRule(int(raw["neighbours"]), float(raw["prior_weight"]),
                             {h: [float(x) for x in v] for h, v in raw.get("priors", {}).items()})
    except FileNotFoundError:
        raise TfmarketError(f"{path}: attribute rule file not found") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise TfmarketError(f"{path}: not an attribute rule file ({exc!r})") from None
