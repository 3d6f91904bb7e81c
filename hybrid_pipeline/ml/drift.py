"""Population Stability Index per feature, between a reference frame and a current one.

``PSI = sum_b (cur_b - ref_b) * ln(cur_b / ref_b)`` over bins ``b`` with
proportions ``ref_b``, ``cur_b``. Numeric bins are the reference's deciles
(quantile edges, duplicates merged, so a discrete feature gets fewer bins;
the outer bins are open, so current values outside the reference range
still count). Strings/booleans/categoricals get one bin per reference
category plus one for categories the reference never had. Nulls get a bin
of their own when either side has any. Empty bins are smoothed: a
proportion below ``eps`` counts as ``eps`` (so one empty bin cannot make PSI
infinite). Rules of thumb: < 0.1 stable, 0.1-0.25 WARN, >= 0.25 ERROR.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

import numpy as np
import polars as pl

Severity = Literal["OK", "WARN", "ERROR"]
WARN_PSI: Final = 0.1
ERROR_PSI: Final = 0.25
DEFAULT_EPS: Final = 1e-4
_RANK: Final = {"OK": 0, "WARN": 1, "ERROR": 2}


def severity(psi_value: float | None, warn: float = WARN_PSI, error: float = ERROR_PSI) -> Severity:
    """``ERROR`` at >= ``error``, ``WARN`` at >= ``warn``, else ``OK``; an unknown PSI is ``ERROR``."""
    if psi_value is None or not np.isfinite(psi_value):
        return "ERROR"
    if psi_value >= error:
        return "ERROR"
    if psi_value >= warn:
        return "WARN"
    return "OK"


def _psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray, eps: float) -> float:
    ref = np.maximum(ref_counts / max(ref_counts.sum(), 1), eps)
    cur = np.maximum(cur_counts / max(cur_counts.sum(), 1), eps)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges: the reference's ``1/bins .. (bins-1)/bins`` quantiles, duplicates merged."""
    if bins < 2:
        raise ValueError("bins must be >= 2")
    ref = np.asarray(reference, dtype=np.float64)
    ref = ref[np.isfinite(ref)]
    if ref.size == 0:
        return np.empty(0)
    return np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)[1:-1]))


def psi(reference: Any, current: Any, bins: int = 10, eps: float = DEFAULT_EPS) -> float:
    """PSI of one numeric feature (array-likes; NaN/None counted in a null bin)."""
    ref = np.asarray(reference, dtype=np.float64).reshape(-1)
    cur = np.asarray(current, dtype=np.float64).reshape(-1)
    return _numeric_psi(ref, cur, bins, eps)["psi"]


def _numeric_psi(ref: np.ndarray, cur: np.ndarray, bins: int, eps: float) -> dict[str, Any]:
    ref_ok, cur_ok = np.isfinite(ref), np.isfinite(cur)
    if not ref_ok.any() or cur.size == 0:
        return {"psi": None, "bins": 0, "reason": "no reference values" if not ref_ok.any() else "no current rows"}
    edges = quantile_edges(ref[ref_ok], bins)
    k = edges.size + 1
    ref_counts = np.bincount(np.searchsorted(edges, ref[ref_ok], side="right"), minlength=k)
    cur_counts = np.bincount(np.searchsorted(edges, cur[cur_ok], side="right"), minlength=k)
    ref_null, cur_null = int((~ref_ok).sum()), int((~cur_ok).sum())
    if ref_null or cur_null:
        ref_counts = np.append(ref_counts, ref_null)
        cur_counts = np.append(cur_counts, cur_null)
    return {"psi": _psi_from_counts(ref_counts.astype(np.float64), cur_counts.astype(np.float64), eps),
            "bins": int(ref_counts.size), "edges": [float(e) for e in edges],
            "ref_mean": float(ref[ref_ok].mean()),
            "cur_mean": float(cur[cur_ok].mean()) if cur_ok.any() else None}


def _categorical_psi(ref: pl.Series, cur: pl.Series, eps: float) -> dict[str, Any]:
    if ref.len() == 0 or cur.len() == 0:
        return {"psi": None, "bins": 0, "reason": "no reference rows" if ref.len() == 0 else "no current rows"}
    ref_s, cur_s = ref.cast(pl.String), cur.cast(pl.String)
    ref_vc = dict(ref_s.drop_nulls().value_counts().iter_rows())
    cur_vc = dict(cur_s.drop_nulls().value_counts().iter_rows())
    cats = sorted(ref_vc)
    ref_counts = [ref_vc[c] for c in cats] + [0]
    cur_counts = [cur_vc.get(c, 0) for c in cats] + [sum(v for c, v in cur_vc.items() if c not in ref_vc)]
    ref_null, cur_null = ref_s.null_count(), cur_s.null_count()
    if ref_null or cur_null:
        ref_counts.append(ref_null)
        cur_counts.append(cur_null)
    return {"psi": _psi_from_counts(np.asarray(ref_counts, np.float64), np.asarray(cur_counts, np.float64), eps),
            "bins": len(ref_counts), "categories": len(cats),
            "unseen_categories": sorted(c for c in cur_vc if c not in ref_vc)[:20]}


def _frame(data: Any) -> pl.DataFrame:
    if isinstance(data, pl.LazyFrame):
        return data.collect()
    if isinstance(data, pl.DataFrame):
        return data
    if isinstance(data, Mapping):
        return pl.DataFrame(dict(data))
    return pl.from_pandas(data) if hasattr(data, "iloc") else pl.DataFrame(data)


def feature_psi(ref: pl.Series, cur: pl.Series, bins: int = 10, eps: float = DEFAULT_EPS) -> dict[str, Any]:
    """PSI and context for one column (numeric or categorical by the reference dtype)."""
    out: dict[str, Any]
    if ref.dtype.is_numeric():
        out = {"kind": "numeric",
               **_numeric_psi(ref.cast(pl.Float64).fill_null(float("nan")).to_numpy(),
                              cur.cast(pl.Float64, strict=False).fill_null(float("nan")).to_numpy(), bins, eps)}
    else:
        out = {"kind": "categorical", **_categorical_psi(ref, cur, eps)}
    out["ref_rows"] = int(ref.len())
    out["cur_rows"] = int(cur.len())
    out["ref_null_fraction"] = float(ref.null_count() / ref.len()) if ref.len() else None
    out["cur_null_fraction"] = float(cur.null_count() / cur.len()) if cur.len() else None
    return out


def drift_report(
    ref: Any,
    cur: Any,
    cols: Sequence[str],
    *,
    bins: int = 10,
    eps: float = DEFAULT_EPS,
    warn: float = WARN_PSI,
    error: float = ERROR_PSI,
) -> dict[str, Any]:
    """PSI per column of ``cols`` between ``ref`` and ``cur`` (polars/pandas frames or dicts of arrays).

    Returns ``{"features": {col: {psi, severity, kind, bins, rows, null fractions, ...}},
    "severity": worst severity, "max_psi", "max_psi_feature", "warn_features",
    "error_features", "warn_threshold", "error_threshold", "ref_rows", "cur_rows"}``.
    A column missing from ``cur`` is an ERROR with ``psi=None``.
    """
    if not 0 < warn <= error:
        raise ValueError("need 0 < warn <= error")
    ref_df, cur_df = _frame(ref), _frame(cur)
    features: dict[str, dict[str, Any]] = {}
    for col in cols:
        if col not in ref_df.columns:
            raise KeyError(f"reference frame has no column {col!r}")
        if col not in cur_df.columns:
            info: dict[str, Any] = {"psi": None, "kind": None, "reason": "missing from current frame"}
        else:
            info = feature_psi(ref_df[col], cur_df[col], bins, eps)
        info["severity"] = severity(info.get("psi"), warn, error)
        features[col] = info
    scored = {c: f["psi"] for c, f in features.items() if f.get("psi") is not None}
    worst: Severity = max((f["severity"] for f in features.values()), key=_RANK.__getitem__, default="OK")
    max_feature = max(scored, key=scored.__getitem__) if scored else None
    return {
        "features": features,
        "severity": worst,
        "max_psi": scored[max_feature] if max_feature is not None else None,
        "max_psi_feature": max_feature,
        "warn_features": [c for c, f in features.items() if f["severity"] == "WARN"],
        "error_features": [c for c, f in features.items() if f["severity"] == "ERROR"],
        "warn_threshold": warn,
        "error_threshold": error,
        "ref_rows": ref_df.height,
        "cur_rows": cur_df.height,
    }


__all__ = ["DEFAULT_EPS", "ERROR_PSI", "WARN_PSI", "Severity", "drift_report", "feature_psi", "psi",
           "quantile_edges", "severity"]
