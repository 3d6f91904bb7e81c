"""Every asset check passes on a healthy lakehouse and fails on the damage it exists to catch."""

from __future__ import annotations

from datetime import date

import dagster as dg
import polars as pl
import pytest
from deltalake import write_deltalake

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.dagster_support.keys import DAILY_METRICS, SILVER_EVENTS
from hybrid_pipeline.dagster_support.resources import DataPolicyResource
from hybrid_pipeline.definitions import build_definitions, daily_partitions
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline_tests.conftest import TEST_SALT, make_env

pytestmark = pytest.mark.integration
DAY = "2024-01-01"


@pytest.fixture(scope="module")
def healthy(tmp_path_factory):
    root = tmp_path_factory.mktemp("checks")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        generate(GeneratorConfig(days=1, events_per_day=800, seed=3, dirty_rate=0.05, start_date=date(2024, 1, 1)), env.landing)
        with dg.instance_for_test() as instance:
            [summary] = materialize([DAY], instance=instance, daily_only=True)
            assert summary.ok
            yield env, instance


def run_checks(env, instance, **policy) -> dict[str, tuple[bool, str]]:
    overrides = {"policy": DataPolicyResource(pii_salt=TEST_SALT, **policy)} if policy else None
    defs = build_definitions(env.settings, resource_overrides=overrides)
    job = dg.define_asset_job(
        "checks_only",
        selection=dg.AssetSelection.checks_for_assets(SILVER_EVENTS, DAILY_METRICS),
        partitions_def=daily_partitions(env.settings),
    )
    result = dg.Definitions.merge(defs, dg.Definitions(jobs=[job])).resolve_job_def("checks_only").execute_in_process(
        tags={"dagster/partition": DAY}, instance=instance, raise_on_error=False
    )
    return {
        e.check_name: (e.passed, e.severity.value)
        for e in (ev.event_specific_data for ev in result.all_events if ev.event_type_value == "ASSET_CHECK_EVALUATION")
    }


@pytest.fixture
def damage(healthy):
    """Lets a test damage tables; every table is restored to its healthy version afterwards."""
    env, instance = healthy
    lh = env.lakehouse
    tables = ["silver/events", "gold/daily_metrics"]
    versions = {t: lh.version(t) for t in tables}
    yield env, instance
    for t, v in versions.items():
        if lh.version(t) != v:
            lh.delta(t).restore(v)


def failed(results) -> set[str]:
    return {name for name, (passed, _) in results.items() if not passed}


def _silver_row(env, **changes) -> pl.DataFrame:
    row = env.lakehouse.read("silver/events").head(1)
    return row.with_columns(pl.lit(v).cast(row.schema[k]).alias(k) for k, v in changes.items())


def test_all_checks_pass_on_a_healthy_lakehouse(healthy):
    results = run_checks(*healthy)
    assert set(results) == {
        "schema_matches_contract",
        "keys_not_null",
        "event_id_unique",
        "event_type_valid",
        "row_conservation",
        "quarantine_rate",
        "reconciles_with_silver",
    }
    assert failed(results) == set()


def test_a_duplicated_event_breaks_uniqueness_conservation_and_reconciliation(damage):
    env, instance = damage
    env.lakehouse.append("silver/events", _silver_row(env))
    assert failed(run_checks(env, instance)) == {"event_id_unique", "row_conservation", "reconciles_with_silver"}


def test_a_null_key_fails_keys_not_null(damage):
    env, instance = damage
    env.lakehouse.append("silver/events", _silver_row(env, event_id="extra-1", user_id=None))
    assert "keys_not_null" in failed(run_checks(env, instance))


def test_an_unknown_event_type_fails_event_type_valid(damage):
    env, instance = damage
    env.lakehouse.append("silver/events", _silver_row(env, event_id="extra-2", event_type="hover"))
    assert "event_type_valid" in failed(run_checks(env, instance))


def test_a_column_missing_from_silver_fails_the_schema_check(damage):
    env, instance = damage
    lh = env.lakehouse
    write_deltalake(lh.uri("silver/events"), lh.read("silver/events").drop("email_hash").to_arrow(), mode="overwrite", schema_mode="overwrite")
    results = run_checks(env, instance)
    assert results["schema_matches_contract"] == (False, "ERROR")


def test_gold_that_disagrees_with_silver_fails_reconciliation(damage):
    env, instance = damage
    lh = env.lakehouse
    metrics = lh.read("gold/daily_metrics").with_columns(pl.col("total_revenue") + 1.0)
    lh.replace_where("gold/daily_metrics", metrics, "true")
    assert failed(run_checks(env, instance)) == {"reconciles_with_silver"}


def test_quarantine_rate_warns_above_the_low_threshold_and_errors_above_the_high_one(healthy):
    env, instance = healthy
    assert run_checks(env, instance, quarantine_warn_rate=0.001, quarantine_error_rate=0.9)["quarantine_rate"] == (False, "WARN")
    assert run_checks(env, instance, quarantine_warn_rate=0.001, quarantine_error_rate=0.002)["quarantine_rate"] == (False, "ERROR")
