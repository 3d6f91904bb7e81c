"""Running one point-in-time join on every path, and a Feast store over one Delta table."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from hybrid_pipeline.features import pit
from hybrid_pipeline.features.key_index import build_key_index
from hybrid_pipeline.features.pit import FeatureSourceSpec, point_in_time_join, point_in_time_join_lazy
from hybrid_pipeline.features.repo import FeatureTableSpec, apply_feature_repo, write_feature_repo


@contextmanager
def index_only():
    """Fails the join if it matches by scanning: the key index must serve it."""

    def scanned(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the join scanned instead of using the key index")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pit, "match_rows", scanned)
        yield


def every_path(
    entity_df: Any, spec: FeatureSourceSpec, table: pl.DataFrame, *, indexable: bool = True
) -> dict[str, pl.DataFrame]:
    """The join of ``entity_df`` with ``spec`` (whose frame is ``table``) on each path: the
    eager scan (two passes and one), the lazy plan and the key index, which must serve it
    without scanning (``indexable=False``: only where ``table`` can be indexed)."""
    out = {
        "scan": point_in_time_join(entity_df, [replace(spec, rescannable=True)]),
        "scan, one pass": point_in_time_join(entity_df, [replace(spec, rescannable=False)]),
        "lazy plan": point_in_time_join_lazy(entity_df, [spec]).collect(),
    }
    index = build_key_index(table, spec.join_keys[0], spec.timestamp_field, spec.created_timestamp_field)
    assert index is not None or not indexable, "the table should have a key index"
    if index is not None:
        with index_only():
            out["key index"] = point_in_time_join(entity_df, [replace(spec, rescannable=True, key_index=index)])
    return out


def delta_feature_store(root: Path, table: pl.DataFrame, entity_value_type: str, ttl: timedelta | None = None):
    """A Feast store with one view ``fv`` (key ``k``, timestamp ``ts``, feature ``v``:
    Int64) over ``table`` written as a Delta table under ``root``."""
    uri = str(root / "lake" / "fv")
    table.write_delta(uri)
    spec = FeatureTableSpec(name="fv", delta_uri=uri, entity_key="k", entity_value_type=entity_value_type,
                            timestamp_field="ts", features={"v": "Int64"}, ttl=ttl)
    repo = write_feature_repo(root / "repo", "units", [spec], {"type": "sqlite", "path": str(root / "online.db")})
    return apply_feature_repo(repo)
