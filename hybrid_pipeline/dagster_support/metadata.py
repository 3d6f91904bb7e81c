"""Metadata every table materialization carries, built one way for all layers."""


from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import dagster as dg
import polars as pl

from hybrid_pipeline.lakehouse.catalog import Table


def column_schema(schema: Mapping[str, pl.DataType]) -> dg.TableSchema:
    return dg.TableSchema(columns=[dg.TableColumn(name=n, type=str(t)) for n, t in schema.items()])


def catalog_metadata(table: Table) -> dict[str, Any]:
    """What the catalog declares about ``table``, as metadata: its name, owner, PII class and retention.

    Recorded with each materialization so the UI shows who owns a table, how sensitive it is and
    how far back it can be time-travelled, from the same declaration that maintenance applies.
    """
    return {
        "dagster/table_name": table.name,
        "catalog/owner": table.owner,
        "catalog/pii": table.pii,
        "catalog/retention_days": table.retention / timedelta(days=1),
    }


def table_metadata(
    uri: str,
    schema: Mapping[str, pl.DataType] | Table,
    rows: int,
    version: int | None,
    **extra: Any,
) -> dict[str, Any]:
    """Column schema, row count, location, Delta version and size of a table materialization.

    Given the catalog :class:`Table`, the column schema is the declared one and the catalog's
    entries (:func:`catalog_metadata`) come along; given a plain schema, just that schema.
    """
    columns: Mapping[str, pl.DataType] = schema.schema if isinstance(schema, Table) else schema
    declared = catalog_metadata(schema) if isinstance(schema, Table) else {}
    meta: dict[str, Any] = {
        "dagster/column_schema": column_schema(columns),
        "dagster/row_count": rows,
        "dagster/uri": uri,
        "delta_version": version if version is not None else -1,
        **declared,
    }
    meta.update(table_size(uri, version))
    meta.update(extra)
    return meta


def table_size(uri: str, version: int | None) -> dict[str, int]:
    """Bytes and data files of the table at ``version``, from its Delta log (no data read).

    Local tables only: on an object store the log would be read with credentials this
    function does not hold, so the figures are left out there rather than guessed.
    """
    if version is None or version < 0 or "://" in uri:
        return {}
    from deltalake import DeltaTable

    files = DeltaTable(uri, version=version).get_add_actions(flatten=True)
    sizes = files.column("size_bytes").to_pylist()
    return {"table_bytes": int(sum(sizes)), "table_files": len(sizes)}


def column_lineage(deps: Mapping[str, Sequence[tuple[dg.AssetKey, str]]]) -> dg.TableColumnLineage:
    return dg.TableColumnLineage(
        deps_by_column={
            col: [dg.TableColumnDep(asset_key=key, column_name=src) for key, src in sources]
            for col, sources in deps.items()
        }
    )


def check_result(  # noqa: ANN001 - Outcome
    outcome, *, asset_key: dg.AssetKey | None = None, check_name: str | None = None, **extra: Any
) -> dg.AssetCheckResult:
    """An :class:`Outcome` of :mod:`hybrid_pipeline.transforms.quality` as a check result.

    ``asset_key`` and ``check_name`` name the check when one step evaluates several.
    """
    severity = dg.AssetCheckSeverity.WARN if outcome.severity == "WARN" else dg.AssetCheckSeverity.ERROR
    meta = {k: (v if isinstance(v, (int, float, str, bool)) else dg.MetadataValue.json(v)) for k, v in outcome.metadata.items()}
    meta.update(extra)
    return dg.AssetCheckResult(
        asset_key=asset_key,
        check_name=check_name,
        passed=outcome.passed,
        severity=severity,
        metadata=meta,
        description=outcome.description or None,
    )


def measured(fn):  # noqa: ANN001, ANN201 - wraps any asset body
    """Adds throughput and resource use to every MaterializeResult the asset returns or yields.

    Recorded per materialization so the UI plots them over time: wall and CPU seconds,
    rows per second (from ``dagster/row_count``) and the process's peak RSS.
    """
    import functools
    import inspect
    import resource
    import time

    def stats(wall0: float, cpu0: float, rows: int | None) -> dict[str, Any]:
        wall = time.perf_counter() - wall0
        cpu = time.process_time() - cpu0
        out: dict[str, Any] = {
            "run/wall_s": round(wall, 3),
            "run/cpu_s": round(cpu, 3),
            "run/peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        if rows is not None and wall > 0:
            out["run/rows_per_s"] = round(rows / wall, 1)
        return out

    def enrich(result, wall0: float, cpu0: float):  # noqa: ANN001, ANN202
        if not isinstance(result, dg.MaterializeResult):
            return result
        meta = dict(result.metadata or {})
        rows = meta.get("dagster/row_count")
        rows = rows.value if hasattr(rows, "value") else rows
        meta.update(stats(wall0, cpu0, rows if isinstance(rows, int) else None))
        return result._replace(metadata=meta)

    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):  # noqa: ANN202
            wall0, cpu0 = time.perf_counter(), time.process_time()
            for item in fn(*args, **kwargs):
                yield enrich(item, wall0, cpu0)

        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):  # noqa: ANN202
        wall0, cpu0 = time.perf_counter(), time.process_time()
        return enrich(fn(*args, **kwargs), wall0, cpu0)

    return wrapper
