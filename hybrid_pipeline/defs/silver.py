"""Silver: typed, validated, deduplicated events, and what was set aside with reasons."""


import dagster as dg
import polars as pl

from hybrid_pipeline.defs.keys import BRONZE_EVENTS, SILVER_DUPLICATES, SILVER_EVENTS, SILVER_QUARANTINE, table_of
from hybrid_pipeline.defs.metadata import check_result, measured, table_metadata
from hybrid_pipeline.defs.resources import DataPolicyResource, LakehouseResource
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.sources.landing import BRONZE_SCHEMA
from hybrid_pipeline.transforms import quality
from hybrid_pipeline.transforms.contract import silver_schema
from hybrid_pipeline.transforms.silver import DUPLICATES_SCHEMA, QUARANTINE_SCHEMA, clean_events

_OWNERS = ["team:data-platform"]


def _rows(lh: Lakehouse, table: str, schema: dict, day: str) -> pl.LazyFrame:
    return lh.scan_or_empty(table, schema).filter(pl.col("landing_date") == day)


def _count(lf: pl.LazyFrame) -> int:
    return int(lf.select(pl.len()).collect().item())


def build_silver(partitions: dg.PartitionsDefinition) -> dg.Definitions:
    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                SILVER_EVENTS,
                deps=[BRONZE_EVENTS],
                description="Events typed against the contract (pandera), deduplicated on event_id across "
                "all days, email replaced by a salted hash; physically partitioned by event_date.",
                group_name="silver",
                kinds={"delta", "polars", "pandera"},
                owners=_OWNERS,
                tags={"layer": "silver", "pii": "hashed"},
            ),
            dg.AssetSpec(
                SILVER_QUARANTINE,
                deps=[BRONZE_EVENTS],
                description="Rejected bronze records with the raw payload, the reason and the source file and line.",
                group_name="silver",
                kinds={"delta", "polars"},
                owners=_OWNERS,
                tags={"layer": "silver", "pii": "raw"},
            ),
            dg.AssetSpec(
                SILVER_DUPLICATES,
                deps=[BRONZE_EVENTS],
                description="Valid records removed as duplicates, pointing at the record that was kept.",
                group_name="silver",
                kinds={"delta", "polars"},
                owners=_OWNERS,
                tags={"layer": "silver"},
            ),
        ],
        partitions_def=partitions,
        # One silver writer at a time: cross-day dedup reads what other partitions kept.
        pool="silver_writer",
    )
    @measured
    def silver_events(context: dg.AssetExecutionContext, lakehouse: LakehouseResource, policy: DataPolicyResource):
        day = context.partition_key
        lh = lakehouse.lakehouse()
        events, quarantine, duplicates = table_of(SILVER_EVENTS), table_of(SILVER_QUARANTINE), table_of(SILVER_DUPLICATES)
        bronze = _rows(lh, table_of(BRONZE_EVENTS), BRONZE_SCHEMA, day).collect()
        existing = lh.scan_or_empty(events, silver_schema()).filter(pl.col("landing_date") != day)
        batch = clean_events(bronze, existing, policy.pii_salt)
        where = f"landing_date = '{day}'"
        v_events = lh.replace_where(events, batch.events, where, partition_by=["event_date"])
        v_quarantine = lh.replace_where(quarantine, batch.quarantine, where, partition_by=["landing_date"])
        v_duplicates = lh.replace_where(duplicates, batch.duplicates, where, partition_by=["landing_date"])
        conservation = quality.row_conservation(
            bronze.height, batch.events.height, batch.quarantine.height, batch.duplicates.height
        )
        event_dates = sorted({str(d) for d in batch.events["event_date"].unique().to_list()})
        if batch.drift:
            context.log.warning(f"schema drift on {day}: unknown fields {batch.drift}")
        yield dg.MaterializeResult(
            asset_key=SILVER_EVENTS,
            metadata=table_metadata(
                lh.uri(events),
                silver_schema(),
                batch.events.height,
                v_events,
                bronze_rows=bronze.height,
                quarantined_rows=batch.quarantine.height,
                duplicate_rows=batch.duplicates.height,
                rows_conserved=conservation.passed,
                event_dates=dg.MetadataValue.json(event_dates),
                schema_drift=dg.MetadataValue.json(batch.drift),
            ),
        )
        yield dg.MaterializeResult(
            asset_key=SILVER_QUARANTINE,
            metadata=table_metadata(
                lh.uri(quarantine),
                QUARANTINE_SCHEMA,
                batch.quarantine.height,
                v_quarantine,
                reasons=dg.MetadataValue.json(batch.reasons()),
            ),
        )
        yield dg.MaterializeResult(
            asset_key=SILVER_DUPLICATES,
            metadata=table_metadata(lh.uri(duplicates), DUPLICATES_SCHEMA, batch.duplicates.height, v_duplicates),
        )

    def silver_check(name: str, description: str):  # noqa: ANN202 - decorator factory
        return dg.asset_check(
            asset=SILVER_EVENTS,
            name=name,
            description=description,
            blocking=True,
            partitions_def=partitions,
        )

    @silver_check("schema_matches_contract", "silver/events has exactly the contract's columns and types.")
    def schema_matches_contract(lakehouse: LakehouseResource) -> dg.AssetCheckResult:
        lh = lakehouse.lakehouse()
        return check_result(quality.schema_matches(dict(lh.scan(table_of(SILVER_EVENTS)).collect_schema()), silver_schema()))

    @silver_check("keys_not_null", "No null event_id, user_id, session_id, event_type or timestamp.")
    def keys_not_null(context: dg.AssetCheckExecutionContext, lakehouse: LakehouseResource) -> dg.AssetCheckResult:
        lh = lakehouse.lakehouse()
        return check_result(quality.keys_not_null(_rows(lh, table_of(SILVER_EVENTS), silver_schema(), context.partition_key)))

    @silver_check("event_id_unique", "event_id is unique across the whole table (all days).")
    def event_id_unique(lakehouse: LakehouseResource) -> dg.AssetCheckResult:
        lh = lakehouse.lakehouse()
        return check_result(quality.event_ids_unique(lh.scan(table_of(SILVER_EVENTS)).select("event_id")))

    @silver_check("event_type_valid", "Every event_type is one of the contract's values.")
    def event_type_valid(context: dg.AssetCheckExecutionContext, lakehouse: LakehouseResource) -> dg.AssetCheckResult:
        lh = lakehouse.lakehouse()
        return check_result(quality.enums_valid(_rows(lh, table_of(SILVER_EVENTS), silver_schema(), context.partition_key)))

    @silver_check("row_conservation", "bronze rows == silver + quarantine + duplicates for the landing day.")
    def row_conservation(context: dg.AssetCheckExecutionContext, lakehouse: LakehouseResource) -> dg.AssetCheckResult:
        lh, day = lakehouse.lakehouse(), context.partition_key
        return check_result(
            quality.row_conservation(
                _count(_rows(lh, table_of(BRONZE_EVENTS), BRONZE_SCHEMA, day)),
                _count(_rows(lh, table_of(SILVER_EVENTS), silver_schema(), day)),
                _count(_rows(lh, table_of(SILVER_QUARANTINE), QUARANTINE_SCHEMA, day)),
                _count(_rows(lh, table_of(SILVER_DUPLICATES), DUPLICATES_SCHEMA, day)),
            )
        )

    @silver_check("quarantine_rate", "Share of the landing day's records quarantined: WARN or ERROR above thresholds.")
    def quarantine_rate(
        context: dg.AssetCheckExecutionContext, lakehouse: LakehouseResource, policy: DataPolicyResource
    ) -> dg.AssetCheckResult:
        lh, day = lakehouse.lakehouse(), context.partition_key
        return check_result(
            quality.quarantine_rate(
                _count(_rows(lh, table_of(BRONZE_EVENTS), BRONZE_SCHEMA, day)),
                _count(_rows(lh, table_of(SILVER_QUARANTINE), QUARANTINE_SCHEMA, day)),
                policy.quarantine_warn_rate,
                policy.quarantine_error_rate,
            )
        )

    return dg.Definitions(
        assets=[silver_events],
        asset_checks=[schema_matches_contract, keys_not_null, event_id_unique, event_type_valid, row_conservation, quarantine_rate],
    )
