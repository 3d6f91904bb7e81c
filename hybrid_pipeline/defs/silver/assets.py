"""Silver: typed, validated, deduplicated events, and what was set aside with reasons.

A landing day keeps the events it owns (the first record of an event_id in landing day, file
and line order), whatever order the days are processed in: processed after a later day, it
takes its events back and that day's rows become duplicates. The materialization records those
days and the moved rows' event dates (``rehomed_landing_days``, ``rehomed_event_dates``), which
the gold assets of the same day read to recompute them (``defs.gold_analytics.assets.rehomed_since``).
"""


from collections.abc import Iterator

import dagster as dg
import polars as pl

from hybrid_pipeline.dagster_support.engine import ENGINE_TAG, EngineResource, engine_kinds
from hybrid_pipeline.dagster_support.keys import BRONZE_EVENTS, SILVER_DUPLICATES, SILVER_EVENTS, SILVER_QUARANTINE, table_of
from hybrid_pipeline.dagster_support.loading import current_settings, daily_partitions
from hybrid_pipeline.dagster_support.metadata import check_result, measured, table_metadata
from hybrid_pipeline.dagster_support.resources import DataPolicyResource, LakehouseResource
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.lakehouse.event_index import EventIndex
from hybrid_pipeline.sources.landing import BRONZE_SCHEMA
from hybrid_pipeline.transforms import quality
from hybrid_pipeline.transforms.contract import REQUIRED_KEYS, silver_schema
from hybrid_pipeline.transforms.silver import DUPLICATES_SCHEMA, QUARANTINE_SCHEMA

_OWNERS = ["team:data-platform"]


def _rows(lh: Lakehouse, table: str, schema: dict, day: str) -> pl.LazyFrame:
    return lh.scan_or_empty(table, schema).filter(pl.col("landing_date") == day)


def _count(lf: pl.LazyFrame) -> int:
    return int(lf.select(pl.len()).collect().item())


def build_silver(partitions: dg.PartitionsDefinition, engine: str) -> dg.Definitions:
    """Silver assets and checks; the three tables are computed by ``engine`` (their kind says which)."""

    @dg.multi_asset(
        specs=[
            dg.AssetSpec(
                SILVER_EVENTS,
                deps=[BRONZE_EVENTS],
                description="Events typed against the contract (pandera), deduplicated on event_id across "
                "all days, email replaced by a salted hash; physically partitioned by event_date.",
                group_name="silver",
                kinds=engine_kinds(engine, "delta", "pandera"),
                owners=_OWNERS,
                tags={"layer": "silver", "pii": "hashed", **ENGINE_TAG},
            ),
            dg.AssetSpec(
                SILVER_QUARANTINE,
                deps=[BRONZE_EVENTS],
                description="Rejected bronze records with the raw payload, the reason and the source file and line.",
                group_name="silver",
                kinds=engine_kinds(engine, "delta"),
                owners=_OWNERS,
                tags={"layer": "silver", "pii": "raw", **ENGINE_TAG},
            ),
            dg.AssetSpec(
                SILVER_DUPLICATES,
                deps=[BRONZE_EVENTS],
                description="Valid records removed as duplicates, pointing at the record that was kept.",
                group_name="silver",
                kinds=engine_kinds(engine, "delta"),
                owners=_OWNERS,
                tags={"layer": "silver", **ENGINE_TAG},
            ),
        ],
        partitions_def=partitions,
        # One silver writer at a time: cross-day dedup reads what other partitions kept. On Spark
        # too (not the spark pool: an op has one pool, and this one already runs one at a time).
        pool="silver_writer",
    )
    @measured
    def silver_events(
        context: dg.AssetExecutionContext, lakehouse: LakehouseResource, policy: DataPolicyResource, engine: EngineResource
    ):
        day = context.partition_key
        lh = lakehouse.lakehouse()
        events, quarantine, duplicates = table_of(SILVER_EVENTS), table_of(SILVER_QUARANTINE), table_of(SILVER_DUPLICATES)
        written = engine.compute().write_silver(lh, day, policy.pii_salt)
        rows, versions = written.rows, written.versions
        conservation = quality.row_conservation(written.bronze_rows, rows["events"], rows["quarantine"], rows["duplicates"])
        if written.drift:
            # Reported, not warned: the drift is in the metadata, the UI and the CLI summary.
            context.log.info(f"schema drift on {day}: unknown fields {written.drift}")
        if written.rehomed_rows:
            context.log.info(
                f"{day} took back {written.rehomed_rows} event(s) kept by later landing days "
                f"{written.rehomed_landing_days}; they are duplicates there now"
            )
        yield dg.MaterializeResult(
            asset_key=SILVER_EVENTS,
            metadata=table_metadata(
                lh.uri(events),
                silver_schema(),
                rows["events"],
                versions["events"],
                bronze_rows=written.bronze_rows,
                quarantined_rows=rows["quarantine"],
                duplicate_rows=rows["duplicates"],
                rows_conserved=conservation.passed,
                event_dates=dg.MetadataValue.json(written.event_dates),
                schema_drift=dg.MetadataValue.json(written.drift),
                rehomed_rows=written.rehomed_rows,
                rehomed_landing_days=dg.MetadataValue.json(written.rehomed_landing_days),
                rehomed_event_dates=dg.MetadataValue.json(written.rehomed_event_dates),
            ),
        )
        yield dg.MaterializeResult(
            asset_key=SILVER_QUARANTINE,
            metadata=table_metadata(
                lh.uri(quarantine),
                QUARANTINE_SCHEMA,
                rows["quarantine"],
                versions["quarantine"],
                reasons=dg.MetadataValue.json(written.reasons),
            ),
        )
        yield dg.MaterializeResult(
            asset_key=SILVER_DUPLICATES,
            metadata=table_metadata(lh.uri(duplicates), DUPLICATES_SCHEMA, rows["duplicates"], versions["duplicates"]),
        )

    checks = {
        "schema_matches_contract": "silver/events has exactly the contract's columns and types.",
        "keys_not_null": "No null event_id, user_id, session_id, event_type or timestamp.",
        "event_id_unique": "event_id is unique across the whole table: the landing day's ids are distinct "
        "and none is stored under another landing day.",
        "event_type_valid": "Every event_type is one of the contract's values.",
        "row_conservation": "bronze rows == silver + quarantine + duplicates for the landing day.",
        "quarantine_rate": "Share of the landing day's records quarantined: WARN or ERROR above thresholds.",
    }

    @dg.multi_asset_check(
        specs=[
            dg.AssetCheckSpec(name, asset=SILVER_EVENTS, description=text, blocking=True, partitions_def=partitions)
            for name, text in checks.items()
        ],
        can_subset=True,
        description="The silver contract for one landing day, read back from the stored tables.",
    )
    def silver_checks(
        context: dg.AssetCheckExecutionContext, lakehouse: LakehouseResource, policy: DataPolicyResource
    ) -> Iterator[dg.AssetCheckResult]:
        # One step reads each stored table once for all of the day's checks; each check can
        # still be run on its own (can_subset) from the UI.
        lh, day = lakehouse.lakehouse(), context.partition_key
        selected = {key.name for key in context.selected_asset_check_keys}
        events = lh.scan_or_empty(table_of(SILVER_EVENTS), silver_schema())
        rows = events.filter(pl.col("landing_date") == day).select(*REQUIRED_KEYS).collect()
        bronze = _count(_rows(lh, table_of(BRONZE_EVENTS), BRONZE_SCHEMA, day))
        quarantined = _count(_rows(lh, table_of(SILVER_QUARANTINE), QUARANTINE_SCHEMA, day))
        outcomes = {
            "schema_matches_contract": lambda: quality.schema_matches(dict(events.collect_schema()), silver_schema()),
            "keys_not_null": lambda: quality.keys_not_null(rows.lazy()),
            # other days' ids from the event index (verified against silver's version first), so
            # the check's cost does not grow with the table's history
            "event_id_unique": lambda: quality.event_ids_unique(
                rows.lazy(), EventIndex(lh, table_of(SILVER_EVENTS)).current().lookup(rows["event_id"], exclude_day=day).lazy()
            ),
            "event_type_valid": lambda: quality.enums_valid(rows.lazy()),
            "row_conservation": lambda: quality.row_conservation(
                bronze, rows.height, quarantined, _count(_rows(lh, table_of(SILVER_DUPLICATES), DUPLICATES_SCHEMA, day))
            ),
            "quarantine_rate": lambda: quality.quarantine_rate(
                bronze, quarantined, policy.quarantine_warn_rate, policy.quarantine_error_rate
            ),
        }
        for name in checks:
            if name in selected:
                yield check_result(outcomes[name](), asset_key=SILVER_EVENTS, check_name=name)

    return dg.Definitions(
        assets=[silver_events],
        asset_checks=[silver_checks],
    )


@dg.definitions
def defs() -> dg.Definitions:
    """Silver under the load's settings: partitions from ``HYBRID_START_DATE``, kinds and pool from ``HYBRID_ENGINE``."""
    settings = current_settings()
    return build_silver(daily_partitions(settings), settings.engine)
