"""Metrics against hand-computed cases (and scikit-learn, which tests may use)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hybrid_pipeline.ml.metrics import (
    average_ranks,
    binary_metrics,
    expected_calibration_error,
    log_loss,
    roc_auc,
    roc_curve,
)


def test_auc_counts_correctly_ordered_pairs() -> None:
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3 of 4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)
    assert roc_auc([0, 1], [0.2, 0.9]) == 1.0
    assert roc_auc([1, 0], [0.2, 0.9]) == 0.0


def test_auc_counts_ties_as_half() -> None:
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    # (0.5 vs 0.1)=1, (0.5 vs 0.5)=1/2, (0.9 vs 0.1)=1, (0.9 vs 0.5)=1 -> 3.5/4
    assert roc_auc([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9]) == pytest.approx(0.875)


def test_auc_needs_both_classes() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc([1, 1], [0.1, 0.2])


def test_average_ranks_share_ties() -> None:
    assert average_ranks(np.array([10, 20, 20, 5])).tolist() == [2.0, 3.5, 3.5, 1.0]


def test_log_loss_by_hand() -> None:
    expected = -(math.log(0.8) + math.log(0.7)) / 2  # 0.2899...
    assert log_loss([1, 0], [0.8, 0.3]) == pytest.approx(expected)
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-15))  # clipped, finite


def test_ece_binary_by_hand() -> None:
    # bin [0.1,0.2): mean p 0.1, mean y 0.5 -> 0.4 x 2/4; bin [0.9,1]: 0.9 vs 1.0 -> 0.1 x 2/4
    assert expected_calibration_error([0, 1, 1, 1], [0.1, 0.1, 0.9, 0.9]) == pytest.approx(0.25)
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0  # 1.0 lands in the last bin
    assert expected_calibration_error([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.0


def test_ece_top_label_for_class_probabilities() -> None:
    # row 1: conf 0.7, right -> |1-0.7|; row 2: conf 0.6, wrong -> |0-0.6|; each 1/2 of the rows
    probs = np.array([[0.7, 0.3], [0.6, 0.4]])
    assert expected_calibration_error([0, 1], probs) == pytest.approx((0.3 + 0.6) / 2)


def test_roc_curve_runs_from_origin_to_one() -> None:
    fpr, tpr, thr = roc_curve([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])

    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)
    assert thr[0] == np.inf


def test_agrees_with_scikit_learn_on_random_scores_with_ties() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.round(np.clip(0.3 * y + rng.uniform(0, 0.7, 500), 0, 1), 2)  # rounding makes ties

    assert roc_auc(y, p) == pytest.approx(sk.roc_auc_score(y, p), abs=1e-12)
    assert log_loss(y, p) == pytest.approx(sk.log_loss(y, p), rel=1e-9)


def test_binary_metrics_bundle() -> None:
    m = binary_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert m["auc"] == pytest.approx(0.75)
    assert m["accuracy"] == 0.75 and m["rows"] == 4.0 and m["positive_rate"] == 0.5


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        log_loss([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        log_loss([0, 1], [0.1])
