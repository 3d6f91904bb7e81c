"""A landing day's gold tables: independent tables are computed side by side, a failing table
does not hide the ones that were written, a subset computes only what was asked, and the rows
its silver step took back from later landing days are recomputed there too."""

from __future__ import annotations

import threading
from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.dagster_support.keys import DAILY_METRICS, DIM_DATE, DIM_USER, FACT_EVENTS, SILVER_EVENTS, USER_LANDING_SUMMARY
from hybrid_pipeline.defs.gold_analytics.assets import Rehomed, build_day, rehomed_since
from hybrid_pipeline.engines.compute import PolarsEngine, Written
from hybrid_pipeline.engines.shared import DIM_USER_SCHEMA
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline.transforms.gold import DAILY_METRICS_SCHEMA, dim_date
from hybrid_pipeline_tests.conftest import make_env

ALL = {DAILY_METRICS, FACT_EVENTS, USER_LANDING_SUMMARY, DIM_USER, DIM_DATE}
DAY = "2024-01-01"


class RecordingEngine(PolarsEngine):
    """Writes nothing heavy: records calls, optionally meets another thread or fails."""

    def __init__(self, barrier: threading.Barrier | None = None, fail: str | None = None) -> None:
        self.calls: list[str] = []
        self.days: list[tuple[str, str]] = []
        self.users: list[str] = []
        self.barrier = barrier
        self.fail = fail

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.barrier is not None and name in ("write_fact_events", "write_user_landing_summary"):
            self.barrier.wait()  # only returns if the other chain is running at the same time
        if name == self.fail:
            raise RuntimeError(f"{name} broke")

    def daily_metrics(self, lh, dates):  # noqa: ANN001, ANN201
        self._call("daily_metrics")
        return pl.DataFrame(schema=DAILY_METRICS_SCHEMA)

    def write_fact_events(self, lh, landing_day):  # noqa: ANN001, ANN201
        self._call("write_fact_events")
        self.days.append(("fact_events", landing_day))
        return Written(None, 0, {"event_id": pl.String()})

    def write_user_landing_summary(self, lh, landing_day):  # noqa: ANN001, ANN201
        self._call("write_user_landing_summary")
        self.days.append(("user_landing_summary", landing_day))
        return Written(None, 0, {"user_id": pl.String()})

    def dim_user(self, lh, landing_day, users=()):  # noqa: ANN001, ANN201
        self._call("dim_user")
        self.users = list(users)
        return pl.DataFrame(schema=DIM_USER_SCHEMA)


@pytest.fixture()
def lh(tmp_path) -> Lakehouse:
    return Lakehouse(str(tmp_path / "lake"))


def keys(results: list[dg.MaterializeResult]) -> set[dg.AssetKey]:
    return {r.asset_key for r in results}


def test_the_fact_table_and_the_user_tables_are_computed_at_the_same_time(lh: Lakehouse) -> None:
    engine = RecordingEngine(barrier=threading.Barrier(2, timeout=20))

    results = list(build_day(lh, engine, DAY, ALL))

    assert keys(results) == ALL
    assert all(r.metadata["run/table_wall_s"] >= 0 for r in results)


def test_one_thread_computes_the_same_tables_one_after_another(lh: Lakehouse) -> None:
    engine = RecordingEngine()

    assert keys(build_day(lh, engine, DAY, ALL, threads=1)) == ALL
    assert engine.calls.index("write_user_landing_summary") < engine.calls.index("dim_user")


def test_a_failing_table_fails_the_step_after_the_written_tables_are_reported(lh: Lakehouse) -> None:
    engine = RecordingEngine(fail="write_user_landing_summary")
    reported: list[dg.MaterializeResult] = []

    with pytest.raises(RuntimeError, match="write_user_landing_summary broke"):
        for result in build_day(lh, engine, DAY, ALL):
            reported.append(result)

    # dim_user needs this run's summary, so it is not built on a stale one; the others are
    assert keys(reported) == {FACT_EVENTS, DAILY_METRICS, DIM_DATE}
    assert "dim_user" not in engine.calls


def test_a_subset_computes_only_the_selected_tables(lh: Lakehouse) -> None:
    engine = RecordingEngine()

    assert keys(build_day(lh, engine, DAY, {DIM_USER})) == {DIM_USER}
    assert engine.calls == ["dim_user"]  # reads the summaries already stored


def test_dim_date_holds_the_event_dates_of_the_landing_day(lh: Lakehouse) -> None:
    silver = pl.DataFrame(
        {"landing_date": [DAY, DAY, "2024-01-02"], "event_date": [date(2023, 12, 30), date(2024, 1, 1), date(2024, 1, 2)]}
    )
    lh.replace_where("silver/events", silver, "true")

    (result,) = build_day(lh, RecordingEngine(), DAY, {DIM_DATE})

    assert lh.read("gold/dim_date")["date"].to_list() == [date(2023, 12, 30), date(2024, 1, 1)]
    assert result.metadata["dagster/row_count"] == 2


# -- rows re-homed by the day's silver step -----------------------------------------------------

LATER = "2024-01-03"


def test_the_landing_days_that_lost_rows_to_the_day_are_rewritten_too(lh: Lakehouse) -> None:
    silver = pl.DataFrame({"landing_date": [DAY, LATER], "event_date": [date(2024, 1, 1), date(2024, 1, 3)]})
    lh.replace_where("silver/events", silver, "true")
    lh.replace_where("gold/user_landing_summary", pl.DataFrame({"user_id": ["u1", "u9"], "landing_date": [LATER, "2024-01-05"]}), "true")
    engine = RecordingEngine()

    list(build_day(lh, engine, DAY, ALL, threads=1, rehomed=Rehomed((LATER,), (date(2023, 12, 20),))))

    assert engine.days == [("fact_events", DAY), ("fact_events", LATER), ("user_landing_summary", DAY), ("user_landing_summary", LATER)]
    assert engine.users == ["u1"]  # the later day's users, read before its summary is rewritten


def test_an_event_date_left_without_events_leaves_the_date_dimension(lh: Lakehouse) -> None:
    silver = pl.DataFrame({"landing_date": [DAY], "event_date": [date(2024, 1, 1)]})
    lh.replace_where("silver/events", silver, "true")
    lh.replace_where("gold/dim_date", dim_date([date(2023, 12, 20), date(2024, 1, 1)]), "true")

    list(build_day(lh, RecordingEngine(), DAY, {DIM_DATE}, rehomed=Rehomed((LATER,), (date(2023, 12, 20),))))

    assert lh.read("gold/dim_date")["date"].to_list() == [date(2024, 1, 1)]


def _report(instance: dg.DagsterInstance, key: dg.AssetKey, day: str, **rehomed: list[str]) -> None:
    metadata = {name: dg.MetadataValue.json(value) for name, value in rehomed.items()}
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=key, partition=day, metadata=metadata))


def test_rehomed_since_collects_every_silver_run_after_the_last_gold_run_of_the_day(instance: dg.DagsterInstance) -> None:
    _report(instance, SILVER_EVENTS, DAY, rehomed_landing_days=["2024-01-09"], rehomed_event_dates=["2024-01-09"])
    _report(instance, FACT_EVENTS, DAY)  # gold caught up with that one
    _report(instance, SILVER_EVENTS, DAY, rehomed_landing_days=[LATER], rehomed_event_dates=["2023-12-20"])
    _report(instance, SILVER_EVENTS, DAY, rehomed_landing_days=[], rehomed_event_dates=[])  # a rerun moved nothing
    _report(instance, SILVER_EVENTS, "2024-01-02", rehomed_landing_days=["2024-01-07"], rehomed_event_dates=["2024-01-07"])

    assert rehomed_since(instance, DAY, [FACT_EVENTS]) == Rehomed((LATER,), (date(2023, 12, 20),))
    # a table never materialized for the day has every silver run of the day to catch up with
    assert rehomed_since(instance, DAY, [FACT_EVENTS, DIM_USER]) == Rehomed(
        (LATER, "2024-01-09"), (date(2023, 12, 20), date(2024, 1, 9))
    )
    assert rehomed_since(instance, "2024-01-05", [FACT_EVENTS]) == Rehomed()


TABLES = [
    "silver/events",
    "silver/events_quarantine",
    "silver/events_duplicates",
    "gold/fact_events",
    "gold/user_landing_summary",
    "gold/dim_user",
    "gold/daily_metrics",
    "gold/dim_date",
    "gold/user_features",
    "gold/user_labels",
]


def _materialized(root: Path, order: list[str]) -> tuple[dict[str, pl.DataFrame], list]:
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        config = GeneratorConfig(days=3, events_per_day=300, seed=5, dirty_rate=0.2, start_date=date(2024, 1, 1))
        generate(config, env.landing)
        with dg.instance_for_test() as instance:
            summaries = materialize(order, instance=instance, daily_only=True)
            silver = [
                r.asset_materialization.metadata
                for r in instance.fetch_materializations(SILVER_EVENTS, limit=10, ascending=True).records
            ]
        return {t: env.lakehouse.read(t).sort(pl.all()) for t in TABLES}, [summaries, silver]


@pytest.mark.integration
def test_landing_days_materialized_out_of_order_give_the_tables_of_date_order(tmp_path: Path) -> None:
    days = ["2024-01-01", "2024-01-02", "2024-01-03"]
    expected, _ = _materialized(tmp_path / "in_order", days)
    got, (summaries, silver) = _materialized(tmp_path / "out_of_order", [days[0], days[2], days[1]])

    assert all(s.ok for s in summaries), [(s.label, s.failed_steps, [c for c in s.checks if not c[1]]) for s in summaries]
    for table in TABLES:
        assert_frame_equal(got[table].select(expected[table].columns), expected[table], check_exact=True)
    assert silver[-1]["rehomed_landing_days"].value == [days[2]]  # day 2 took its events back from day 3
    assert silver[-1]["rehomed_rows"].value > 0
