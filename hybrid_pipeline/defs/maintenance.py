"""Table maintenance: compaction, Z-ordering and vacuum, as a job with a weekly schedule."""


from datetime import timedelta

import dagster as dg

from hybrid_pipeline.defs.keys import DELTA_TABLES, ZORDER_BY, table_of
from hybrid_pipeline.defs.resources import DataPolicyResource, LakehouseResource

ZORDER = {table_of(key): columns for key, columns in ZORDER_BY.items()}
ALL_TABLES = [table_of(key) for key in DELTA_TABLES]


@dg.op(description="Compact every table; Z-order the large ones on their lookup keys.")
def optimize_tables(context: dg.OpExecutionContext, lakehouse: LakehouseResource) -> list[str]:
    lh = lakehouse.lakehouse()
    done = []
    for table in ALL_TABLES:
        if not lh.exists(table):
            continue
        metrics = lh.optimize(table, ZORDER.get(table))
        context.log.info(f"optimized {table}: +{metrics.get('numFilesAdded')} -{metrics.get('numFilesRemoved')} files")
        done.append(table)
    return done


@dg.op(description="Delete files older than the retention that no table version inside it still uses.")
def vacuum_tables(
    context: dg.OpExecutionContext, tables: list[str], lakehouse: LakehouseResource, policy: DataPolicyResource
) -> dict[str, int]:
    lh = lakehouse.lakehouse()
    retention = timedelta(hours=policy.vacuum_retention_hours)
    removed_by_table = {}
    for table in tables:
        removed = lh.vacuum(table, retention)
        context.log.info(f"vacuumed {table}: {len(removed)} files removed (retention {retention})")
        removed_by_table[table] = len(removed)
    return removed_by_table


@dg.job(description="Compact, Z-order and vacuum the lakehouse tables.", tags={"kind": "maintenance"})
def lakehouse_maintenance() -> None:
    vacuum_tables(optimize_tables())


maintenance_schedule = dg.ScheduleDefinition(
    job=lakehouse_maintenance,
    cron_schedule="0 3 * * 0",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


def build_maintenance() -> dg.Definitions:
    return dg.Definitions(jobs=[lakehouse_maintenance], schedules=[maintenance_schedule])
