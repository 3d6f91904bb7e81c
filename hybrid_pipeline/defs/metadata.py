"""Metadata every table materialization carries, built one way for all layers."""


from collections.abc import Mapping, Sequence
from typing import Any

import dagster as dg
import polars as pl


def column_schema(schema: Mapping[str, pl.DataType]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name=n, type=str(t)) for n, t in schema.items()])


def table_metadata(
    uri: str,
    schema: Mapping[str, pl.DataType],
    rows: int,
    version: int | None,
    **extra: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "dagster/column_schema": column_schema(schema),
        "dagster/row_count": rows,
        "dagster/uri": uri,
        "delta_version": version if version is not None else -1,
    }
    meta.update(extra)
    return meta


def column_lineage(deps: Mapping[str, Sequence[tuple[dg.AssetKey, str]]]) -> dg.TableColumnLineage:
    return dg.TableColumnLineage(
        deps_by_column={
            col: [dg.TableColumnDep(asset_key=key, column_name=src) for key, src in sources]
            for col, sources in deps.items()
        }
    )


def check_result(outcome, **extra: Any) -> dg.AssetCheckResult:  # noqa: ANN001 - Outcome
    """An :class:`Outcome` of :mod:`hybrid_pipeline.transforms.quality` as a check result."""
    severity = dg.AssetCheckSeverity.WARN if outcome.severity == "WARN" else dg.AssetCheckSeverity.ERROR
    meta = {k: (v if isinstance(v, (int, float, str, bool)) else dg.MetadataValue.json(v)) for k, v in outcome.metadata.items()}
    meta.update(extra)
    return dg.AssetCheckResult(
        passed=outcome.passed,
        severity=severity,
        metadata=meta,
        description=outcome.description or None,
    )
