"""Identity-disjoint validation split and contiguous training labels."""

from __future__ import annotations

import numpy as np

from tfmarket.data.records import Records, ReidDataset
from tfmarket.errors import ConfigError, DataError

# What ``data.validation`` may resolve to (see :func:`resolve_validation`).
VALIDATION_SETS = ("holdout", "official", "none")


def relabel(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dataset identities -> contiguous labels 0..C-1 (in sorted identity order).

    Returns:
        (labels int64 [N], identities int64 [C]) with ``identities[labels] == pids``.
    """
    identities, labels = np.unique(pids, return_inverse=True)
    return labels.astype(np.int64), identities.astype(np.int64)


def split_validation(
    train: Records, num_val_ids: int, seed: int = 0
) -> tuple[Records, Records, Records]:
    """Carves held-out identities from the training records.

    Only identities seen by at least two cameras are eligible (a Market-1501 query needs a
    match from another camera); where cameras are unknown (-1, which evaluation never counts as
    the same camera), identities with at least two images. For each held-out identity one image
    per camera (unknown counting as one camera) becomes a query, like Market-1501's own query
    set; the rest goes to the gallery. An identity with exactly one image per camera keeps one
    camera's image for the gallery, so that every held-out identity has gallery images.

    Returns:
        (train_rest, val_query, val_gallery), identity-disjoint from each other's training part.
    """
    ids = np.unique(train.pids)
    if num_val_ids <= 0:
        empty = train.subset(np.zeros(len(train), bool))
        return train, empty, empty
    eligible = np.array([p for p in ids if _eligible(train.cams[train.pids == p])])
    if len(eligible) < num_val_ids or len(ids) - num_val_ids < 2:
        raise DataError(
            f"cannot hold out {num_val_ids} validation identities: {len(ids)} training "
            f"identities, {len(eligible)} seen by two or more cameras (or, camera unknown, "
            "with two or more images)"
        )
    rng = np.random.default_rng(seed)
    val_ids = np.sort(rng.choice(eligible, size=num_val_ids, replace=False))
    in_val = np.isin(train.pids, val_ids)
    query_mask = np.zeros(len(train), dtype=bool)
    for pid in val_ids:
        mine = train.pids == pid
        cams = rng.permutation(np.unique(train.cams[mine]))
        if mine.sum() == len(cams):
            cams = cams[1:]
        for cam in cams:
            candidates = np.flatnonzero(mine & (train.cams == cam))
            query_mask[rng.choice(candidates)] = True
    return (
        train.subset(~in_val),
        train.subset(query_mask),
        train.subset(in_val & ~query_mask),
    )


def _eligible(cams: np.ndarray) -> bool:
    """One identity's cameras allow a query with a match from another camera."""
    unknown = cams < 0
    return len(np.unique(cams[~unknown])) >= 2 or (bool(unknown.any()) and len(cams) >= 2)


def default_val_ids(num_ids: int) -> int:
    """10% of the training identities, at least 2 when there are enough."""
    return max(2, num_ids // 10) if num_ids >= 10 else 0


def has_official_evaluation(dataset: ReidDataset) -> bool:
    """The layout has a labelled query/gallery pair (original Market-1501 does; the course
    layout's ``queries/`` and ``test/`` are unlabelled)."""
    return (dataset.query.labelled and dataset.gallery.labelled
            and len(dataset.query) > 0 and len(dataset.gallery) > 0)


def resolve_validation(choice: str, dataset: ReidDataset) -> tuple[str, str]:
    """``data.validation`` -> (one of :data:`VALIDATION_SETS`, the reason, one line).

    ``auto`` is ``official`` where the dataset has a labelled query/gallery (a researcher
    reproduces published numbers on it, training on every identity), else ``holdout``.
    """
    official = has_official_evaluation(dataset)
    if choice == "auto":
        if official:
            return "official", (f"auto: {dataset.layout} layout has a labelled query/gallery "
                                f"({len(dataset.query)} / {len(dataset.gallery)} images)")
        return "holdout", (f"auto: the {dataset.layout} layout's query/gallery is unlabelled, "
                           "so identities are held out of training")
    if choice == "official" and not official:
        raise ConfigError(
            f"data.validation: official needs a labelled query/gallery, but {dataset.root} is "
            f"the {dataset.layout} layout, whose query/gallery images carry no identities; use "
            "data.validation=holdout (identities held out of training) or none")
    if choice not in VALIDATION_SETS:
        raise ConfigError(f"data.validation: {choice!r} is not one of auto, "
                          + ", ".join(VALIDATION_SETS))
    return choice, "set in the config"


def validation_split(dataset: ReidDataset, validation: str, num_val_ids: int,
                     seed: int = 0) -> tuple[Records, Records, Records]:
    """(training records, validation query, validation gallery) for a resolved ``validation``.

    ``holdout`` carves ``num_val_ids`` identities (0 = :func:`default_val_ids`) out of the
    training set (:func:`split_validation`); ``official`` trains on every training identity and
    scores the dataset's query against its gallery (distractors and same-camera matches are
    handled by the Market-1501 protocol in ``tfmarket.retrieval.metrics``); ``none`` trains on
    everything and validates on nothing (empty query and gallery).
    """
    train = dataset.train
    if validation == "official":
        return train, dataset.query, dataset.gallery
    if validation == "none":
        empty = train.subset(np.zeros(len(train), bool))
        return train, empty, empty
    num_ids = len(np.unique(train.pids))
    return split_validation(train, num_val_ids or default_val_ids(num_ids), seed)
