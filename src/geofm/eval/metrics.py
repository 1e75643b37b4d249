"""Classification metrics on numpy arrays (torch tensors are accepted and converted).

``scores`` is an ``(N, C)`` array of class scores (logits, probabilities or kNN votes: only the order
matters), ``labels`` an ``(N,)`` integer array. Top-k with ``k`` larger than the number of classes is
clipped to the number of classes (so top-5 on a 3-class problem is 1.0).
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check(scores: np.ndarray, labels: np.ndarray) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-D (N, C), got shape {scores.shape}")
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels must be 1-D of length {scores.shape[0]}, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got range "
                         f"[{labels.min()}, {labels.max()}]")


def topk_accuracy(scores, labels, ks: Iterable[int] = (1, 5)) -> dict[int, float]:
    """Fraction of samples whose true label is among the ``k`` highest scores, for each ``k``.

    Ties are broken by the stable order of ``argsort`` (lower class index first). ``k`` is clipped to
    the number of classes; an empty input gives ``nan``.
    """
    scores, labels = _np(scores).astype(np.float64), _np(labels).astype(np.int64)
    _check(scores, labels)
    n, c = scores.shape
    out: dict[int, float] = {}
    if n == 0:
        return {int(k): float("nan") for k in ks}
    order = np.argsort(-scores, axis=1, kind="stable")
    for k in ks:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        kk = min(int(k), c)
        hit = (order[:, :kk] == labels[:, None]).any(axis=1)
        out[int(k)] = float(hit.mean())
    return out


def confusion_matrix(preds, labels, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 matrix, rows = true class, columns = predicted class."""
    preds, labels = _np(preds).astype(np.int64).ravel(), _np(labels).astype(np.int64).ravel()
    if preds.shape != labels.shape:
        raise ValueError(f"preds {preds.shape} and labels {labels.shape} differ in length")
    for name, a in (("preds", preds), ("labels", labels)):
        if a.size and (a.min() < 0 or a.max() >= n_classes):
            raise ValueError(f"{name} must lie in [0, {n_classes})")
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def per_class_accuracy(preds, labels, n_classes: int) -> np.ndarray:
    """Recall of each class (``nan`` for a class absent from ``labels``)."""
    cm = confusion_matrix(preds, labels, n_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)


def summarize(scores, labels, classes: Sequence[str]) -> dict:
    """The evaluate-stage record: ``top1``, ``top5``, ``per_class`` ``{name: acc | None}`` and the
    confusion matrix (as a nested list under ``confusion``)."""
    scores, labels = _np(scores), _np(labels).astype(np.int64)
    n_classes = len(classes)
    if scores.shape[1] != n_classes:
        raise ValueError(f"scores have {scores.shape[1]} columns but there are {n_classes} classes")
    acc = topk_accuracy(scores, labels, (1, 5))
    preds = scores.argmax(axis=1) if len(scores) else np.zeros(0, dtype=np.int64)
    pc = per_class_accuracy(preds, labels, n_classes)
    return {
        "top1": acc[1],
        "top5": acc[5],
        "per_class": {str(name): (None if np.isnan(v) else float(v)) for name, v in zip(classes, pc)},
        "confusion": confusion_matrix(preds, labels, n_classes).tolist(),
    }


def mcnemar_exact_p(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value for ``b`` and ``c`` discordant pairs: the probability, under "both
    classifiers are equally good" (each discordant image goes either way with probability 1/2), of a split at
    least as uneven as ``b`` : ``c``, i.e. ``min(1, 2 P(X <= min(b, c)))`` with ``X ~ Binomial(b + c, 1/2)``
    (McNemar 1947; the exact form: Fagerland, Lydersen and Laake 2013, BMC Med. Res. Methodol. 13:91).
    Computed in log space, so test sets of any size are fine; no discordant pair gives 1."""
    b, c = int(b), int(c)
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got {b}, {c}")
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    from math import lgamma, log

    i = np.arange(k + 1, dtype=np.float64)
    log_terms = (lgamma(n + 1) - np.array([lgamma(x + 1) + lgamma(n - x + 1) for x in i]) - n * log(2.0))
    top = log_terms.max()
    tail = float(np.exp(top) * np.exp(log_terms - top).sum())
    return min(1.0, 2.0 * tail)


def paired_top1(scores_a, scores_b, labels) -> dict:
    """Two classifiers' top-1 on the same test images, image by image: ``a_only`` (images only ``a`` gets
    right), ``b_only``, ``both_right``, ``both_wrong``, the gain ``top1(a) - top1(b)`` and McNemar's exact
    p-value (:func:`mcnemar_exact_p`) of the discordant images. Top-1 is the highest score, ties to the lower
    class index (as :func:`topk_accuracy`)."""
    a, b, labels = _np(scores_a), _np(scores_b), _np(labels).astype(np.int64)
    _check(a.astype(np.float64), labels)
    _check(b.astype(np.float64), labels)
    if len(labels) == 0:
        return {"a_only": 0, "b_only": 0, "both_right": 0, "both_wrong": 0, "gain": float("nan"), "mcnemar_p": 1.0}
    ra, rb = a.argmax(axis=1) == labels, b.argmax(axis=1) == labels
    a_only, b_only = int((ra & ~rb).sum()), int((rb & ~ra).sum())
    return {"a_only": a_only, "b_only": b_only, "both_right": int((ra & rb).sum()),
            "both_wrong": int((~ra & ~rb).sum()), "gain": float(ra.mean() - rb.mean()),
            "mcnemar_p": mcnemar_exact_p(a_only, b_only)}
