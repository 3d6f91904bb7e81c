"""OnlineWriter.write_frame and OnlineReader.get, without Feast, on both backends."""

from __future__ import annotations

import math
import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import polars as pl
import pytest

from hybrid_pipeline.online import OnlineReader, OnlineWriter

from .conftest import REDIS_URL

UTC = timezone.utc
T0 = datetime(2024, 3, 1, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "redis"])
def url_and_prefix(request, tmp_path: Path):
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'online.db'}", "unused"
    return REDIS_URL, request.getfixturevalue("redis_prefix")


@pytest.fixture
def pair(url_and_prefix):
    url, prefix = url_and_prefix
    writer = OnlineWriter.from_url(url, "proj", key_prefix=prefix, batch_size=50)
    reader = OnlineReader.from_url(url, "proj", key_prefix=prefix)
    yield writer, reader
    writer.close()
    reader.close()


def partition(day: int, users: range, **overrides) -> pl.DataFrame:
    """One daily partition of a gold user feature table."""
    n = len(users)
    data = {
        "user_id": [f"u{i}" for i in users],
        "event_timestamp": [T0 + timedelta(days=day)] * n,
        "clicks": [i * 10 + day for i in users],
        "revenue": [float(i) / 4 if i % 3 else None for i in users],
        "segment": [f"seg-{i % 4}" for i in users],
        "recent_products": [[f"p{i}", f"p{i + 1}"][: i % 3] for i in users],
    }
    data.update(overrides)
    return pl.DataFrame(data, schema_overrides={"event_timestamp": pl.Datetime("us", "UTC")})


def test_write_frame_then_get_returns_each_users_features(pair):
    writer, reader = pair
    frame = partition(0, range(120))
    assert writer.write_frame("user_features", frame, "user_id", "event_timestamp") == 120
    got = reader.get("user_features", ["u7", "nobody", "u0", "u7"])
    assert got[1] is None
    assert got[0] == {"clicks": 70, "revenue": 1.75, "segment": "seg-3", "recent_products": ["p7"]}
    assert got[2] == {"clicks": 0, "revenue": None, "segment": "seg-0", "recent_products": []}
    assert got[3] == got[0]
    assert reader.get_one("user_features", "u7") == got[0]
    assert reader.get_one("user_features", "nobody") is None
    assert reader.get("user_features", []) == []


def test_every_row_written_matches_the_frame(pair):
    writer, reader = pair
    frame = partition(2, range(300))
    writer.write_frame("uf", frame, "user_id", "event_timestamp")
    expected = frame.drop("user_id", "event_timestamp").to_dicts()
    assert reader.get("uf", frame["user_id"].to_list()) == expected


def test_a_later_partition_replaces_and_an_earlier_one_does_not(pair):
    writer, reader = pair
    writer.write_frame("uf", partition(5, range(10)), "user_id", "event_timestamp")
    writer.write_frame("uf", partition(3, range(20)), "user_id", "event_timestamp")  # backfill of an older day
    clicks = [f["clicks"] for f in reader.get("uf", [f"u{i}" for i in range(20)])]
    assert clicks == [i * 10 + 5 for i in range(10)] + [i * 10 + 3 for i in range(10, 20)]
    records = reader.get_records("uf", ["u1", "u15"])
    assert [r.event_ts for r in records] == [T0 + timedelta(days=5), T0 + timedelta(days=3)]


def test_duplicate_entities_in_a_frame_keep_the_newest_row(pair):
    writer, reader = pair
    frame = pl.DataFrame(
        {
            "user_id": ["a", "a", "b", "a"],
            "ts": [T0 + timedelta(hours=h) for h in (2, 5, 1, 3)],
            "x": [2, 5, 1, 3],
        }
    )
    assert writer.write_frame("v", frame, "user_id", "ts") == 2  # one record per entity
    assert reader.get("v", ["a", "b"]) == [{"x": 5}, {"x": 1}]


def test_created_column_breaks_ties_and_is_not_a_feature(pair):
    writer, reader = pair
    frame = pl.DataFrame(
        {"user_id": ["a", "a"], "ts": [T0, T0], "created": [T0 + timedelta(minutes=9), T0 + timedelta(minutes=1)],
         "x": ["newer load", "older load"]}
    )
    writer.write_frame("v", frame, "user_id", "ts", created_col="created")
    assert reader.get("v", ["a"]) == [{"x": "newer load"}]
    assert reader.get_records("v", ["a"])[0].created_ts == T0 + timedelta(minutes=9)


def test_features_argument_selects_columns(pair):
    writer, reader = pair
    writer.write_frame("v", partition(0, range(3)), "user_id", "event_timestamp", features=["segment"])
    assert reader.get("v", ["u1"]) == [{"segment": "seg-1"}]


def test_naive_datetimes_dates_and_epoch_ints_are_accepted_as_event_time(pair):
    writer, reader = pair
    naive = pl.DataFrame({"user_id": ["n"], "ts": [datetime(2024, 3, 2)], "x": [1]})
    day = pl.DataFrame({"user_id": ["d"], "ts": [date(2024, 3, 2)], "x": [1]})
    ints = pl.DataFrame({"user_id": ["i"], "ts": [1_709_337_600_000_000], "x": [1]})
    other_zone = pl.DataFrame({"user_id": ["z"], "ts": [datetime(2024, 3, 2, 1, 0)], "x": [1]}).with_columns(
        pl.col("ts").dt.replace_time_zone("Europe/Paris")
    )
    for frame in (naive, day, ints, other_zone):
        writer.write_frame("v", frame, "user_id", "ts")
    stamps = [r.event_ts for r in reader.get_records("v", ["n", "d", "i", "z"])]
    assert stamps == [datetime(2024, 3, 2, tzinfo=UTC)] * 4


def test_non_string_entity_ids_are_stored_as_strings(pair):
    writer, reader = pair
    writer.write_frame("v", pl.DataFrame({"id": [1, 22], "ts": [T0, T0], "x": [1.5, math.inf]}), "id", "ts")
    got = reader.get("v", ["22", "1"])
    assert got[0] == {"x": math.inf} and got[1] == {"x": 1.5}


def test_null_keys_or_timestamps_are_refused_not_dropped(pair):
    writer, _ = pair
    with pytest.raises(ValueError, match="null"):
        writer.write_frame("v", pl.DataFrame({"user_id": ["a", None], "ts": [T0, T0], "x": [1, 2]}), "user_id", "ts")
    with pytest.raises(ValueError, match="null"):
        writer.write_frame("v", pl.DataFrame({"user_id": ["a", "b"], "ts": [T0, None], "x": [1, 2]}), "user_id", "ts")


def test_bad_columns_are_reported(pair):
    writer, _ = pair
    frame = partition(0, range(2))
    with pytest.raises(KeyError, match="nope"):
        writer.write_frame("v", frame, "nope", "event_timestamp")
    with pytest.raises(KeyError, match="missing_feature"):
        writer.write_frame("v", frame, "user_id", "event_timestamp", features=["missing_feature"])
    with pytest.raises(TypeError, match="timestamp column"):
        writer.write_frame("v", frame, "user_id", "segment")


def test_empty_frames_write_nothing(pair):
    writer, reader = pair
    assert writer.write_frame("v", partition(0, range(0)), "user_id", "event_timestamp") == 0
    assert reader.get("v", ["u0"]) == [None]


def test_write_records_and_views_are_separate(pair):
    writer, reader = pair
    writer.write_records("a", [("u1", {"x": 1}, T0, None)])
    writer.write_records("b", [("u1", {"x": 2}, T0, None)])
    assert reader.get("a", ["u1"]) == [{"x": 1}] and reader.get("b", ["u1"]) == [{"x": 2}]


def test_the_direct_client_does_not_import_feast():
    """Serving must not pay Feast's import (seconds): the client modules stay Feast-free."""
    import subprocess

    code = "import sys, hybrid_pipeline.online, hybrid_pipeline.serving; print('feast' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "False"
