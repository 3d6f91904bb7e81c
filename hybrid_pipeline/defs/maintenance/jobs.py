"""Table maintenance: compaction, Z-ordering and vacuum, as a job with a weekly schedule.

What is maintained, and how, is read off the lakehouse catalog: every declared table is
compacted, Z-ordered on its declared columns (so compaction keeps the clustering its readers
rely on) and vacuumed with its own retention.
"""


import dagster as dg

from hybrid_pipeline.dagster_support.resources import LakehouseResource
from hybrid_pipeline.lakehouse import catalog


@dg.op(description="Compact every catalog table; Z-order the ones that declare Z-order columns.")
def optimize_tables(context: dg.OpExecutionContext, lakehouse: LakehouseResource) -> list[str]:
    lh = lakehouse.lakehouse()
    done = []
    for table in catalog.TABLES:
        if not lh.exists(table.name):  # not written yet: nothing to compact
            continue
        metrics = lh.optimize(table.name, list(table.zorder_by) or None)
        context.log.info(f"optimized {table.name}: +{metrics.get('numFilesAdded')} -{metrics.get('numFilesRemoved')} files")
        done.append(table.name)
    return done


@dg.op(description="Delete files older than each table's retention that no table version inside it still uses.")
def vacuum_tables(context: dg.OpExecutionContext, tables: list[str], lakehouse: LakehouseResource) -> dict[str, int]:
    lh = lakehouse.lakehouse()
    removed_by_table = {}
    for name in tables:
        retention = catalog.table(name).retention
        removed = lh.vacuum(name, retention)
        context.log.info(f"vacuumed {name}: {len(removed)} files removed (retention {retention})")
        removed_by_table[name] = len(removed)
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
