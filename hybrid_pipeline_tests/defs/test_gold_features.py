"""gold/user_features dates each row by when its data became known: the end of the newest
landing day among the events it was computed from, never the wall clock of the run, so a rerun
or a backfill gives the same created timestamps, and a late event's landing day dates the rows
it rewrote."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from hybrid_pipeline.cli import materialize
from hybrid_pipeline_tests.conftest import make_env

SELECT = "key:bronze/events or key:silver/events* or key:gold/user_features"


def end_of(day: str) -> datetime:
    return datetime.combine(date.fromisoformat(day), time(23, 59, 59, 999_999), tzinfo=timezone.utc)


def land(root: Path, landing_day: str, events: list[tuple[str, str, str]]) -> None:
    """``(event_id, user_id, event day)`` events, landed on ``landing_day``."""
    folder = root / "events" / landing_day
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"event_id": event_id, "user_id": user, "session_id": f"s-{event_id}", "event_type": "view",
                    "timestamp": f"{day}T12:00:00+00:00", "product_id": "p1", "session_duration": 10.0,
                    "revenue": None, "user_segment": "regular", "email": f"{user}@example.com"})
        for event_id, user, day in events
    ]
    (folder / f"events-{landing_day}.jsonl").write_text("\n".join(lines) + "\n")


def created_by_day(env, user: str) -> dict[str, datetime]:  # noqa: ANN001
    rows = env.lakehouse.read("gold/user_features").filter(pl.col("user_id") == user).sort("event_date")
    return {d.isoformat(): c for d, c in zip(rows["event_date"], rows["created_timestamp"], strict=True)}


@pytest.mark.integration
def test_created_timestamps_come_from_landing_days_not_from_the_runs_wall_clock(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(tmp_path, monkeypatch)
    land(env.landing, "2024-01-01", [("e1", "u1", "2024-01-01"), ("e2", "u2", "2024-01-01")])
    land(env.landing, "2024-01-02", [("e3", "u1", "2024-01-02")])
    land(env.landing, "2024-01-03", [("e4", "u2", "2024-01-03")])
    with dg.instance_for_test() as instance:
        assert all(s.ok for s in materialize(["2024-01-01", "2024-01-02", "2024-01-03"], SELECT, instance=instance))
        first = env.lakehouse.read("gold/user_features").sort("user_id", "event_date")
        # on-time data: every row is known at the end of its own day (the landing day of its events)
        assert first["created_timestamp"].to_list() == first["event_timestamp"].to_list()
        assert created_by_day(env, "u1")["2024-01-02"] == end_of("2024-01-02")

        # the same day again, later: the same created timestamps (nothing reads the clock)
        assert all(s.ok for s in materialize(["2024-01-02"], SELECT, instance=instance))
        again = env.lakehouse.read("gold/user_features").sort("user_id", "event_date")
        assert again["created_timestamp"].to_list() == first["created_timestamp"].to_list()
        assert again["created_timestamp"].max() < datetime.now(timezone.utc) - timedelta(days=300)

        # a late event of 2024-01-01 lands on 2024-01-04 (D+3): the rows it rewrote are known then
        land(env.landing, "2024-01-04", [("e5", "u1", "2024-01-01")])
        assert all(s.ok for s in materialize(["2024-01-04"], SELECT, instance=instance))
        # (the newest event date is 2024-01-03: rows end there, known at the end of 2024-01-04)
        assert created_by_day(env, "u1") == {d: end_of("2024-01-04") for d in ("2024-01-01", "2024-01-02", "2024-01-03")}
        # u2 had no late event: its rows keep their own days
        assert all(c == end_of(d) for d, c in created_by_day(env, "u2").items())
        features = env.lakehouse.read("gold/user_features").filter(
            (pl.col("user_id") == "u1") & (pl.col("event_date") == date(2024, 1, 1)))
        assert features["total_events"].to_list() == [2]  # the row was rewritten with the late event
