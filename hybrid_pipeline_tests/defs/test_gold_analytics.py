"""A landing day's gold tables: independent tables are computed side by side, a failing table
does not hide the ones that were written, and a subset computes only what was asked."""

from __future__ import annotations

import threading
from datetime import date

import dagster as dg
import polars as pl
import pytest

from hybrid_pipeline.defs.gold_analytics import build_day
from hybrid_pipeline.defs.keys import DAILY_METRICS, DIM_DATE, DIM_USER, FACT_EVENTS, USER_LANDING_SUMMARY
from hybrid_pipeline.engines.compute import PolarsEngine, Written
from hybrid_pipeline.engines.shared import DIM_USER_SCHEMA
from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.transforms.gold import DAILY_METRICS_SCHEMA

ALL = {DAILY_METRICS, FACT_EVENTS, USER_LANDING_SUMMARY, DIM_USER, DIM_DATE}
DAY = "2024-01-01"


class RecordingEngine(PolarsEngine):
    """Writes nothing heavy: records calls, optionally meets another thread or fails."""

    def __init__(self, barrier: threading.Barrier | None = None, fail: str | None = None) -> None:
        self.calls: list[str] = []
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
        return Written(None, 0, {"event_id": pl.String()})

    def write_user_landing_summary(self, lh, landing_day):  # noqa: ANN001, ANN201
        self._call("write_user_landing_summary")
        return Written(None, 0, {"user_id": pl.String()})

    def dim_user(self, lh, landing_day):  # noqa: ANN001, ANN201
        self._call("dim_user")
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
