"""Attribute recognition metrics (:func:`attribute_metrics`): per attribute accuracy,
label-based mA, precision / recall / F1, and example-based (instance) scores, on
annotation-encoded columns (0 = unknown, ignored). Plain NumPy (no TensorFlow).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from tfmarket.attributes import AGE_CLASSES, COLUMNS

UNKNOWN = 0
NO, YES = 1, 2


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def _binary_column(t: np.ndarray, p: np.ndarray) -> dict:
    known = t != UNKNOWN
    t, p = t[known], p[known]
    pos, neg = t == YES, t == NO
    tp = int(np.sum(pos & (p == YES)))
    tn = int(np.sum(neg & (p == NO)))
    fp = int(np.sum(neg & (p == YES)))
    fn = int(np.sum(pos) - tp)  # includes unanswered (0) predictions
    n_pos, n_neg, n_pred_pos = int(pos.sum()), int(neg.sum()), int(np.sum(p == YES))
    tpr, tnr = _ratio(tp, n_pos), _ratio(tn, n_neg)
    if tpr is not None and tnr is not None:
        balanced = (tpr + tnr) / 2
    else:
        # One class absent from the truth: only the defined half can be measured.
        balanced = tpr if tpr is not None else tnr
    if n_pred_pos > 0:
        precision = tp / n_pred_pos
    else:
        precision = 0.0 if n_pos > 0 else None
    return {
        "count": int(known.sum()),
        "accuracy": _ratio(tp + tn, len(t)),
        "mA": balanced,
        "precision": precision,
        "recall": tpr,
        "F1": _ratio(2 * tp, 2 * tp + fp + fn),
        "positives": n_pos,
        "negatives": n_neg,
    }


def _multiclass_column(t: np.ndarray, p: np.ndarray, n_classes: int) -> dict:
    known = t != UNKNOWN
    t, p = t[known], p[known]
    recalls, precisions, f1s = [], [], []
    for c in range(1, n_classes + 1):
        true_c, pred_c = t == c, p == c
        if not true_c.any():
            continue  # macro averages run over the classes present in the truth
        tp = int(np.sum(true_c & pred_c))
        recalls.append(tp / int(true_c.sum()))
        precisions.append(tp / int(pred_c.sum()) if pred_c.any() else 0.0)
        f1s.append(2 * tp / (int(true_c.sum()) + int(pred_c.sum())))
    return {
        "count": int(known.sum()),
        "accuracy": _ratio(int(np.sum(t == p)), len(t)),
        "mA": _mean(recalls),
        "precision": _mean(precisions),
        "recall": _mean(recalls),
        "F1": _mean(f1s),
        "classes_present": len(recalls),
    }


def _instance_metrics(true_cols: np.ndarray, pred_cols: np.ndarray,
                      multiclass: Mapping[int, int]) -> dict:
    """Example-based metrics over a label set of the binary columns + each multi-class column
    one-hot (Market-1501: 26 binary columns + age's 4 classes = 30 labels).

    ``multiclass``: column index -> number of classes (values 1..C)."""
    binary = [i for i in range(true_cols.shape[1]) if i not in multiclass]
    t_bin, p_bin = true_cols[:, binary], pred_cols[:, binary]
    known_bin = t_bin != UNKNOWN
    t_parts, p_parts = [(t_bin == YES) & known_bin], [(p_bin == YES) & known_bin]
    for col, n_classes in multiclass.items():
        classes = np.arange(1, n_classes + 1)
        t_col, p_col = true_cols[:, col], pred_cols[:, col]
        t_parts.append(t_col[:, None] == classes)
        p_parts.append((p_col[:, None] == classes) & (t_col != UNKNOWN)[:, None])
    t_lab, p_lab = np.concatenate(t_parts, axis=1), np.concatenate(p_parts, axis=1)
    inter = np.sum(t_lab & p_lab, axis=1).astype(np.float64)
    union = np.sum(t_lab | p_lab, axis=1)
    n_true, n_pred = t_lab.sum(axis=1), p_lab.sum(axis=1)

    def safe(num, den):
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    acc, prec, rec = safe(inter, union), safe(inter, n_pred), safe(inter, n_true)
    f1 = safe(2 * prec * rec, prec + rec)
    if len(inter) == 0:
        return {k: None for k in ("accuracy", "precision", "recall", "F1")}
    return {
        "accuracy": float(acc.mean()),
        "precision": float(prec.mean()),
        "recall": float(rec.mean()),
        "F1": float(f1.mean()),
    }


def attribute_metrics(
    true_columns: np.ndarray,
    pred_columns: np.ndarray,
    names: Sequence[str] = COLUMNS,
    classes: Mapping[str, int] | None = None,
) -> dict:
    """Attribute-recognition metrics on annotation-encoded columns.

    Encoding (as the annotation files): binary columns 1 = no, 2 = yes; ``age`` 1-4.
    ``0`` means unknown. Entries whose **truth** is 0 are ignored for that column (and left
    out of the instance label sets). A **prediction** of 0 on a known truth counts as no answer:
    it is wrong for accuracy, and for a binary column it is neither a predicted positive nor a
    predicted negative (so it lowers both TPR and TNR).

    Per column (a dict under ``per_attribute[name]``):

    * ``accuracy``: fraction of known entries predicted exactly.
    * ``mA``: label-based balanced accuracy (Li et al., PETA/RAP): binary ``(TPR + TNR) / 2``
      with positive = 2. When the truth has no positives (or no negatives) only the defined
      half is used (``TNR`` or ``TPR``). For ``age``: mean per-class recall over the classes
      present in the truth.
    * ``precision``, ``recall``, ``F1`` of the positive class (2). Age: macro averages over
      the classes present in the truth (a present class never predicted has precision 0).
      For binary columns ``recall`` is None without true positives, ``precision`` is None when
      nothing is predicted positive and the truth has no positive (0 if it has some), and
      ``F1 = 2TP / (2TP + FP + FN)`` is None when that denominator is 0.
    * ``count``: known entries; binary columns add ``positives``/``negatives``, age adds
      ``classes_present``.

    Undefined values are None (JSON null) and are skipped by the overall means.

    Overall: ``mean_accuracy``, ``mA``, ``mean_F1``, ``mean_precision``, ``mean_recall``: means
    over the columns. ``instance``: example-based ``accuracy`` = |Y n P| / |Y u P|,
    ``precision`` = |Y n P| / |P|, ``recall`` = |Y n P| / |Y| and per-example ``F1``, each
    averaged over the examples, where Y/P are an example's true/predicted positive labels
    among the binary columns plus each multi-class column one-hot (Market-1501: 26 binary
    columns plus age one-hot, 30 labels); a ratio with an empty
    denominator counts as 0 for that example (Jia et al.'s PAR baseline convention).

    Args:
        true_columns: int [N, C] in ``names`` order (C = 27 for ``COLUMNS``).
        pred_columns: int [N, C], same encoding.
        names: column names (an attribute schema's ``columns``).
        classes: column -> number of classes for the multi-class columns (values 1..C; an
            attribute schema's ``multiclass``); all others are binary. Default: the column
            named ``age`` is 4-class (Market-1501).

    Returns:
        JSON-serialisable dict (python floats, ints, None).

    Raises:
        ValueError: shape mismatch or a value outside the encoding.
    """
    t = np.asarray(true_columns)
    p = np.asarray(pred_columns)
    names = tuple(names)
    if t.ndim != 2 or t.shape != p.shape or t.shape[1] != len(names):
        raise ValueError(
            f"expected true and predicted columns of shape [N, {len(names)}], "
            f"got {t.shape} and {p.shape}"
        )
    t, p = t.astype(np.int64), p.astype(np.int64)
    if classes is None:
        classes = {"age": len(AGE_CLASSES)} if "age" in names else {}
    multiclass = {names.index(c): int(n) for c, n in classes.items()}
    per_attribute = {}
    for i, name in enumerate(names):
        allowed = np.arange(0, multiclass[i] + 1) if i in multiclass else np.array([0, 1, 2])
        for which, arr in (("true", t), ("predicted", p)):
            bad = ~np.isin(arr[:, i], allowed)
            if bad.any():
                raise ValueError(
                    f"{which} column {name!r} has value {int(arr[:, i][bad][0])}; "
                    f"allowed: {allowed.tolist()} (0 = unknown)"
                )
        if i in multiclass:
            per_attribute[name] = _multiclass_column(t[:, i], p[:, i], multiclass[i])
        else:
            per_attribute[name] = _binary_column(t[:, i], p[:, i])

    cols = list(per_attribute.values())
    out = {
        "mean_accuracy": _mean([c["accuracy"] for c in cols]),
        "mA": _mean([c["mA"] for c in cols]),
        "mean_F1": _mean([c["F1"] for c in cols]),
        "mean_precision": _mean([c["precision"] for c in cols]),
        "mean_recall": _mean([c["recall"] for c in cols]),
        "num_examples": int(t.shape[0]),
        "per_attribute": per_attribute,
    }
    out["instance"] = _instance_metrics(t, p, multiclass)
    return out
