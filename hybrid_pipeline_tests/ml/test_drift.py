"""PSI: ~0 for one distribution, > 0.25 for a clearly shifted one; severities by threshold."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from hybrid_pipeline.ml.drift import drift_report, psi, quantile_edges, severity


def normal(n: int, seed: int, loc: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc, scale, n)


def test_same_distribution_is_about_zero() -> None:
    assert psi(normal(20_000, 0), normal(20_000, 1)) < 0.01
    assert psi(normal(5_000, 0), normal(5_000, 0)) == pytest.approx(0.0, abs=1e-12)


def test_a_clear_shift_is_an_error() -> None:
    value = psi(normal(20_000, 0), normal(20_000, 1, loc=1.0))
    assert value > 0.25 and severity(value) == "ERROR"


def test_psi_by_hand_on_two_bins() -> None:
    # reference median 1.5 -> bins (<1.5) and (>=1.5), 50/50; current 80/20
    ref = [1.0, 1.0, 2.0, 2.0]
    cur = [1.0] * 8 + [2.0] * 2
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert psi(ref, cur, bins=2) == pytest.approx(expected)


def test_empty_bins_are_smoothed_not_infinite() -> None:
    value = psi(normal(1_000, 0), normal(1_000, 1, loc=50.0))
    assert math.isfinite(value) and value > 1


def test_severity_thresholds() -> None:
    assert [severity(v) for v in (0.0, 0.099, 0.1, 0.249, 0.25, 3.0)] == ["OK", "OK", "WARN", "WARN", "ERROR", "ERROR"]
    assert severity(None) == "ERROR" and severity(float("nan")) == "ERROR"


def test_quantile_edges_merge_ties() -> None:
    # deciles of a two-valued feature: 1,1,1,1,1.5,2,2,2,2 -> three distinct edges, not nine
    assert quantile_edges(np.array([1.0] * 50 + [2.0] * 50)).tolist() == [1.0, 1.5, 2.0]


def test_drift_report_per_feature_and_overall() -> None:
    n = 10_000
    ref = pl.DataFrame({"stable": normal(n, 0), "shifted": normal(n, 1), "mild": normal(n, 2),
                        "segment": np.where(normal(n, 3) > 0, "a", "b")})
    cur = pl.DataFrame({"stable": normal(n, 4), "shifted": normal(n, 5, loc=1.5), "mild": normal(n, 6, loc=0.45),
                        "segment": np.where(normal(n, 7) > 1, "a", "c")})

    report = drift_report(ref, cur, ["stable", "shifted", "mild", "segment"])

    f = report["features"]
    assert f["stable"]["severity"] == "OK" and f["stable"]["psi"] < 0.01
    assert f["shifted"]["severity"] == "ERROR"
    assert f["mild"]["severity"] == "WARN", f["mild"]["psi"]
    assert f["segment"]["kind"] == "categorical" and f["segment"]["unseen_categories"] == ["c"]
    assert f["segment"]["severity"] == "ERROR"
    assert report["severity"] == "ERROR"
    assert report["max_psi_feature"] in ("shifted", "segment")
    assert set(report["error_features"]) == {"shifted", "segment"} and report["warn_features"] == ["mild"]
    assert report["ref_rows"] == report["cur_rows"] == n


def test_nulls_get_their_own_bin() -> None:
    ref = {"x": [float(i) for i in range(100)]}
    cur = {"x": [float(i) for i in range(50)] + [None] * 50}
    report = drift_report(ref, cur, ["x"])
    assert report["features"]["x"]["cur_null_fraction"] == 0.5
    assert report["features"]["x"]["severity"] == "ERROR"


def test_missing_current_column_is_an_error_and_missing_reference_column_raises() -> None:
    report = drift_report({"x": [1.0, 2.0]}, {"y": [1.0]}, ["x"])
    assert report["features"]["x"]["psi"] is None and report["severity"] == "ERROR"
    with pytest.raises(KeyError):
        drift_report({"x": [1.0]}, {"x": [1.0]}, ["nope"])
