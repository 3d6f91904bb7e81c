"""The same generated dirty landing days through the Dagster daily job, once with HYBRID_ENGINE=polars
and once with HYBRID_ENGINE=spark: every silver, gold analytics and feature table is identical.

Only the ``engine`` resource differs between the two runs (the Spark one reuses the test
session: dagster-pyspark's lazy resource gets the running session back). Tables are compared
after sorting on their keys, to the bit, schemas included (nothing is summed in floating point,
see ``engines.shared``).
"""

from __future__ import annotations

from datetime import date

import dagster as dg
import polars as pl
import pytest
from dagster_pyspark import LazyPySparkResource
from polars.testing import assert_frame_equal

from hybrid_pipeline.dagster_support.engine import EngineResource
from hybrid_pipeline.definitions import PIPELINE_JOB, build_definitions
from hybrid_pipeline.engines.spark_session import SparkSettings
from hybrid_pipeline.settings import Settings
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline.sources.landing import landed_dates

pytestmark = pytest.mark.integration

CONFIG = GeneratorConfig(days=3, events_per_day=1000, dirty_rate=0.05, seed=23, start_date=date(2024, 1, 1))
TABLES = {
    "silver/events": ["event_id"],
    "silver/events_quarantine": ["source_file", "line_number"],
    "silver/events_duplicates": ["source_file", "line_number"],
    "gold/daily_metrics": ["event_date", "user_segment"],
    "gold/fact_events": ["event_id"],
    "gold/user_landing_summary": ["landing_date", "user_id"],
    "gold/dim_user": ["user_id"],
    "gold/dim_date": ["date_key"],
    "gold/user_features": ["user_id", "event_date"],
    "gold/user_labels": ["user_id", "event_date"],
}


def _settings(root, landing, engine: str) -> Settings:
    return Settings.from_env(
        {
            "HYBRID_ENGINE": engine,
            "HYBRID_LANDING_DIR": str(landing),
            "HYBRID_LAKEHOUSE_ROOT": str(root / "lakehouse"),
            "HYBRID_START_DATE": "2024-01-01",
            "HYBRID_PII_SALT": "both-engines-salt",
            "DAGSTER_HOME": str(root / "dagster_home"),
            "HYBRID_FEATURE_REPO": str(root / "feature_repo"),
        }
    )


@pytest.fixture(scope="module")
def runs(spark, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    landing = tmp_path_factory.mktemp("both_landing")
    generate(CONFIG, landing)
    days = landed_dates(landing)
    session_conf = SparkSettings(master="local[2]", shuffle_partitions=4, driver_memory="1g").conf()
    out = {}
    for name in ("polars", "spark"):
        root = tmp_path_factory.mktemp(f"both_{name}")
        settings = _settings(root, landing, name)
        engine = EngineResource(engine=name, pyspark=LazyPySparkResource(spark_config=session_conf))  # type: ignore[arg-type]
        job = build_definitions(settings, resource_overrides={"engine": engine}).resolve_job_def(PIPELINE_JOB)
        results = []
        with dg.instance_for_test() as instance:
            for day in days:
                result = job.execute_in_process(partition_key=day, instance=instance, raise_on_error=False)
                checks = [
                    (e.event_specific_data.check_name, e.event_specific_data.passed)
                    for e in result.all_events
                    if e.event_type_value == "ASSET_CHECK_EVALUATION"
                ]
                results.append((day, result.success, checks))
        out[name] = (settings, results, engine)
    return out


def test_every_landing_day_succeeds_with_every_check_passing_on_both_engines(runs) -> None:
    for name, (_, results, _) in runs.items():
        assert len(results) == CONFIG.days
        for day, success, checks in results:
            assert success, (name, day)
            assert checks and all(passed for _, passed in checks), (name, day, checks)


def test_the_spark_run_really_ran_on_spark(runs, spark) -> None:
    from hybrid_pipeline.engines.compute import PolarsEngine, SparkEngine

    assert isinstance(runs["polars"][2].compute(), PolarsEngine)
    engine = runs["spark"][2].compute()
    assert isinstance(engine, SparkEngine) and engine.spark is spark


def test_silver_gold_and_feature_tables_are_identical(runs) -> None:
    from hybrid_pipeline.lakehouse import Lakehouse

    a = Lakehouse(runs["polars"][0].lakehouse_root)
    b = Lakehouse(runs["spark"][0].lakehouse_root)
    for table, key in TABLES.items():
        x, y = a.read(table), b.read(table)
        assert x.height > 0 or table == "gold/user_labels", table  # labels need 7 observed days after the row
        assert x.schema == y.schema, table
        try:
            assert_frame_equal(x.sort(key), y.sort(key), check_exact=True)  # to the bit
        except AssertionError as exc:
            raise AssertionError(f"{table}: {exc}") from exc
    dirt = a.read("silver/events_quarantine").group_by("reason").len()
    assert dirt.height >= 5 and a.read("silver/events_duplicates").height > 0  # the dirt is really there
    assert b.read("gold/fact_events").select(pl.col("user_key").null_count()).item() == 0
