"""One SparkSession and one generated dirty landing zone for every engine test (2 cores: share).

The session is local[2] with 4 shuffle partitions and a small driver; it is started once per
test session and stopped at the end. Without Java or pyspark the Spark tests are skipped.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline.sources.landing import collect_landing, landed_dates
from hybrid_pipeline.transforms.contract import silver_schema
from hybrid_pipeline.transforms.silver import SilverBatch, clean_events

SALT = "engine-test-salt"
START = date(2024, 3, 1)
CONFIG = GeneratorConfig(days=3, events_per_day=2000, dirty_rate=0.05, seed=11, start_date=START)
NOW = datetime(2024, 4, 1, tzinfo=timezone.utc)


@dataclass
class PolarsRun:
    """The reference: bronze per landing day and what ``clean_events`` made of it, in order."""

    landing: Path
    bronze: dict[str, pl.DataFrame]
    batches: dict[str, SilverBatch]
    silver: pl.DataFrame  # all days

    def existing_before(self, day: str) -> pl.DataFrame:
        """Silver as the polars run saw it when it cleaned ``day`` (earlier days only)."""
        days = sorted(self.batches)
        earlier = days[: days.index(day)]
        frames = [self.batches[d].events for d in earlier]
        return pl.concat(frames) if frames else pl.DataFrame(schema=silver_schema())


def run_polars(landing: Path, config: GeneratorConfig) -> PolarsRun:
    generate(config, landing)
    bronze: dict[str, pl.DataFrame] = {}
    batches: dict[str, SilverBatch] = {}
    silver = pl.DataFrame(schema=silver_schema())
    for day in landed_dates(landing):
        bronze[day] = collect_landing(landing, day, {}, NOW).records
        batches[day] = clean_events(bronze[day], silver.lazy(), SALT)
        silver = pl.concat([silver, batches[day].events])
    return PolarsRun(landing, bronze, batches, silver)


@pytest.fixture(scope="session")
def polars_run(tmp_path_factory: pytest.TempPathFactory) -> PolarsRun:
    return run_polars(tmp_path_factory.mktemp("engines_landing"), CONFIG)


def _java_available() -> bool:
    return bool(os.environ.get("JAVA_HOME") or shutil.which("java"))


@pytest.fixture(scope="session")
def spark() -> Iterator[object]:
    pytest.importorskip("pyspark")
    if not _java_available():
        pytest.skip("Spark needs Java")
    from hybrid_pipeline.engines.spark_session import SparkSettings, get_spark

    session = get_spark(SparkSettings(master="local[2]", shuffle_partitions=4, driver_memory="1g"))
    yield session
    session.stop()


@dataclass
class SparkRun:
    """The Spark path over the same landings: bronze written by delta-rs (as the bronze asset
    does), then per landing day Spark silver written through ``delta_commit``."""

    lakehouse: object  # hybrid_pipeline.lakehouse.Lakehouse
    spark_lakehouse: object  # SparkLakehouse
    batches: dict[str, SilverBatch]  # collected before writing, normalised
    versions: dict[str, dict[str, int]]  # day -> table -> version written


SILVER_TABLES = {"events": "silver/events", "quarantine": "silver/events_quarantine", "duplicates": "silver/events_duplicates"}
SILVER_PARTITIONS = {"events": ["event_date"], "quarantine": ["landing_date"], "duplicates": ["landing_date"]}


def spark_clean_day(slh, day: str) -> object:
    """One landing day through the Spark silver step, reading bronze and silver snapshots."""
    from hybrid_pipeline.engines.spark_silver import clean_events as spark_clean_events

    bronze = slh.scan("bronze/events", predicate=f"landing_date = '{day}'")
    if slh.exists(SILVER_TABLES["events"]):
        existing = slh.scan(SILVER_TABLES["events"], predicate=f"landing_date != '{day}'")
    else:
        existing = slh.spark.createDataFrame([], "event_id string, landing_date string, source_file string, line_number long")
    return spark_clean_events(bronze, existing, SALT)


def write_silver(slh, day: str, batch) -> dict[str, int]:
    where = f"landing_date = '{day}'"
    return {
        name: slh.replace_where(SILVER_TABLES[name], getattr(batch, name), where, partition_by=SILVER_PARTITIONS[name])
        for name in SILVER_TABLES
    }


@pytest.fixture(scope="session")
def spark_run(spark, polars_run: PolarsRun, tmp_path_factory: pytest.TempPathFactory) -> SparkRun:
    from hybrid_pipeline.engines.delta_commit import SparkLakehouse
    from hybrid_pipeline.lakehouse import Lakehouse

    lh = Lakehouse(str(tmp_path_factory.mktemp("engines_lakehouse")))
    for day, records in polars_run.bronze.items():
        lh.append("bronze/events", records, partition_by=["landing_date"])
    slh = SparkLakehouse(lh, spark)
    batches: dict[str, SilverBatch] = {}
    versions: dict[str, dict[str, int]] = {}
    for day in polars_run.batches:
        batch = spark_clean_day(slh, day)
        try:
            batches[day] = batch.to_polars()
            versions[day] = write_silver(slh, day, batch)
        finally:
            batch.unpersist()
    return SparkRun(lh, slh, batches, versions)
