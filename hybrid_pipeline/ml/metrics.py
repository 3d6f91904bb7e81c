"""Classification metrics in plain numpy (no scikit-learn at run time).

- :func:`roc_auc`: Mann-Whitney U from average ranks, so ties count one half;
- :func:`log_loss`: mean binary cross-entropy with probabilities clipped to [eps, 1-eps];
- :func:`expected_calibration_error`: 10 equal-width bins on [0, 1]; for binary
  scores the reliability of the positive-class probability (|mean label - mean
  score| per bin, weighted by the bin's share of rows); for a 2-D probability
  matrix the usual top-label version (|accuracy - confidence| per bin).
"""

from __future__ import annotations

from typing import Any

import numpy as np

ArrayLike = Any  # numpy array, torch tensor (cpu), list


def _np(x: ArrayLike) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _binary(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _np(y_true).astype(np.float64).reshape(-1)
    s = _np(y_score).astype(np.float64).reshape(-1)
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values, y_score {s.size}")
    if y.size == 0:
        raise ValueError("no rows to score")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must hold 0/1 labels")
    if np.isnan(s).any():
        raise ValueError("y_score holds NaN")
    return y, s


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their ranks (scipy's ``rankdata``)."""
    values = np.asarray(values).reshape(-1)
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    n = values.size
    # start index of each run of equal values
    new_group = np.empty(n, dtype=bool)
    if n:
        new_group[0] = True
        new_group[1:] = sorted_vals[1:] != sorted_vals[:-1]
    starts = np.flatnonzero(new_group)
    ends = np.append(starts[1:], n)  # exclusive
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks_sorted = np.repeat(mean_rank, ends - starts)
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = ranks_sorted
    return ranks


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties 1/2."""
    y, s = _binary(y_true, y_score)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUC needs both classes")
    ranks = average_ranks(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(y_true: ArrayLike, y_prob: ArrayLike, eps: float = 1e-15) -> float:
    """Mean of ``-(y log p + (1-y) log(1-p))``; ``p`` clipped to ``[eps, 1-eps]``."""
    y, p = _binary(y_true, y_prob)
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    # [0, 1/n), [1/n, 2/n), ..., [(n-1)/n, 1]: 1.0 goes in the last bin
    return np.minimum((conf * n_bins).astype(np.int64), n_bins - 1)


def expected_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> float:
    """ECE over ``n_bins`` equal-width bins.

    ``y_prob`` 1-D: binary, ``sum_b n_b/N * |mean(y in b) - mean(p in b)|``.
    ``y_prob`` 2-D (rows x classes): top-label, ``|accuracy - mean max prob|`` per bin.
    """
    prob = _np(y_prob).astype(np.float64)
    if prob.ndim == 2:
        y = _np(y_true).astype(np.int64).reshape(-1)
        if y.size != prob.shape[0]:
            raise ValueError(f"y_true has {y.size} values, y_prob {prob.shape[0]} rows")
        conf = prob.max(axis=1)
        hit = (prob.argmax(axis=1) == y).astype(np.float64)
    else:
        hit, conf = _binary(y_true, prob)
    if np.any((conf < 0) | (conf > 1)):
        raise ValueError("probabilities must lie in [0, 1]")
    idx = _bin_index(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_hit = np.bincount(idx, weights=hit, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    filled = counts > 0
    gap = np.abs(sum_hit[filled] - sum_conf[filled])  # = n_b * |mean hit - mean conf|
    return float(gap.sum() / conf.size)


def roc_curve(y_true: ArrayLike, y_score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)``, one point per distinct score (descending) plus (0, 0) at +inf."""
    y, s = _binary(y_true, y_score)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("a ROC curve needs both classes")
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    last_of_group = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    tps = np.cumsum(y_sorted)[last_of_group]
    fps = np.cumsum(1.0 - y_sorted)[last_of_group]
    tpr = np.r_[0.0, tps / n_pos]
    fpr = np.r_[0.0, fps / n_neg]
    thresholds = np.r_[np.inf, s_sorted[last_of_group]]
    return fpr, tpr, thresholds


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    y = _np(y_true).reshape(-1)
    p = _np(y_pred).reshape(-1)
    if y.size != p.size or y.size == 0:
        raise ValueError("accuracy needs two non-empty arrays of one length")
    return float(np.mean(y == p))


def binary_metrics(y_true: ArrayLike, y_prob: ArrayLike, n_bins: int = 10) -> dict[str, float]:
    """``auc``, ``log_loss``, ``ece``, ``accuracy`` (threshold 0.5), ``positive_rate``, ``rows``."""
    y, p = _binary(y_true, y_prob)
    both = 0 < y.sum() < y.size
    return {
        "auc": roc_auc(y, p) if both else float("nan"),
        "log_loss": log_loss(y, p),
        "ece": expected_calibration_error(y, p, n_bins),
        "accuracy": accuracy(y, (p >= 0.5).astype(np.float64)),
        "positive_rate": float(y.mean()),
        "rows": float(y.size),
    }


__all__ = [
    "accuracy",
    "average_ranks",
    "binary_metrics",
    "expected_calibration_error",
    "log_loss",
    "roc_auc",
    "roc_curve",
]
