"""The evaluation gate's rule, with plain numbers: a floor, and a bounded regression against production."""

import math

from hybrid_pipeline.ml.gate import gate_verdict


def test_a_first_model_above_the_floor_passes():
    verdict = gate_verdict(0.75, None, None, auc_floor=0.70, max_auc_regression=0.01)
    assert verdict.passed and verdict.reasons == ()


def test_a_model_below_the_floor_fails_with_the_reason():
    verdict = gate_verdict(0.65, None, None, auc_floor=0.70, max_auc_regression=0.01)
    assert not verdict.passed and verdict.reasons == ("AUC 0.6500 is below the floor 0.7",)


def test_a_regression_within_the_allowance_passes_and_beyond_it_fails():
    assert gate_verdict(0.795, 0.80, 3, auc_floor=0.70, max_auc_regression=0.01).passed
    verdict = gate_verdict(0.78, 0.80, 3, auc_floor=0.70, max_auc_regression=0.01)
    assert not verdict.passed
    assert verdict.reasons == ("AUC 0.7800 is more than 0.01 below production v3 (0.8000) on the same rows",)


def test_an_undefined_auc_never_passes_and_an_undefined_production_auc_never_blocks():
    assert not gate_verdict(math.nan, None, None, auc_floor=0.70, max_auc_regression=0.01).passed
    assert gate_verdict(0.75, math.nan, 2, auc_floor=0.70, max_auc_regression=0.01).passed
