"""Bronze: every landed record kept as received, with where it came from."""


from datetime import datetime, timezone

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.keys import BRONZE_EVENTS, BRONZE_LANDED_FILES, table_of
from hybrid_pipeline.dagster_support.loading import current_settings, daily_partitions
from hybrid_pipeline.dagster_support.metadata import measured, table_metadata
from hybrid_pipeline.dagster_support.resources import LakehouseResource, LandingZoneResource
from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.sources.landing import BRONZE_SCHEMA, LANDED_FILES_SCHEMA, collect_landing, ingested_files


def build_bronze(partitions: dg.PartitionsDefinition) -> dg.Definitions:
    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                BRONZE_EVENTS,
                description="Every landed event record as received (payload text) with source file, "
                "line, content hash and ingest time. Append-only; a file is ingested once.",
                group_name="bronze",
                kinds={"delta", "polars"},
                owners=["team:data-platform"],
                tags={"layer": "bronze"},
            ),
            dg.AssetSpec(
                BRONZE_LANDED_FILES,
                description="One row per landed file per landing day: ingested, already ingested "
                "(same content elsewhere) or rejected with the reason.",
                group_name="bronze",
                kinds={"delta", "polars"},
                owners=["team:data-platform"],
                tags={"layer": "bronze"},
            ),
        ],
        partitions_def=partitions,
        pool="bronze_writer",
    )
    @measured
    def bronze_events(context: dg.AssetExecutionContext, lakehouse: LakehouseResource, landing: LandingZoneResource):
        day = context.partition_key
        lh = lakehouse.lakehouse()
        events, files = table_of(BRONZE_EVENTS), table_of(BRONZE_LANDED_FILES)
        known = ingested_files(lh.scan_or_empty(events, BRONZE_SCHEMA))
        batch = collect_landing(landing.root, day, known, datetime.now(timezone.utc))
        version = lh.version(events)
        if batch.records.height:
            version = lh.append(events, batch.records, partition_by=list(catalog.BRONZE_EVENTS.partition_by))
        files_version = lh.replace_where(
            files, batch.files, f"landing_date = '{day}'", partition_by=list(catalog.BRONZE_LANDED_FILES.partition_by)
        )
        status = batch.files.group_by("status").len()
        status_counts = dict(zip(status["status"].to_list(), status["len"].to_list(), strict=True))
        partition_rows = lh.scan_or_empty(events, BRONZE_SCHEMA).filter(pl.col("landing_date") == day).select(pl.len()).collect().item()
        rejected = batch.files.filter(batch.files["status"] == "rejected")
        if rejected.height:
            context.log.warning(f"rejected files on {day}: {rejected.select('source_file', 'reason').to_dicts()}")
        yield dg.MaterializeResult(
            asset_key=BRONZE_EVENTS,
            metadata=table_metadata(
                lh.uri(events),
                BRONZE_SCHEMA,
                partition_rows,
                version,
                new_records=batch.records.height,
                files_ingested=status_counts.get("ingested", 0),
                files_already_ingested=status_counts.get("already_ingested", 0),
                files_rejected=status_counts.get("rejected", 0),
            ),
        )
        yield dg.MaterializeResult(
            asset_key=BRONZE_LANDED_FILES,
            metadata=table_metadata(
                lh.uri(files),
                LANDED_FILES_SCHEMA,
                batch.files.height,
                files_version,
                rejected_files=dg.MetadataValue.json(rejected.select("source_file", "reason").to_dicts()),
            ),
        )

    return dg.Definitions(assets=[bronze_events])


@dg.definitions
def defs() -> dg.Definitions:
    """Bronze under the load's settings (the daily partitions start at ``HYBRID_START_DATE``)."""
    settings = current_settings()
    return build_bronze(daily_partitions(settings))
