"""On-demand (request-time) features: one definition, the same values in training and in serving.

Training: Feast's ``get_historical_features`` with the request columns in the entity frame, over the
Delta offline store (the on-demand view of the generated repo runs ``on_demand.transform_python``).
Serving: ``POST /features`` with a ``"request"`` object, computed from the online records by
``on_demand.compute_rows``. For random requests both must agree exactly.
"""

from __future__ import annotations

import math
import warnings
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import values

from hybrid_pipeline.features import catalog, on_demand
from hybrid_pipeline.features.streaming import VIEW as STREAMING_VIEW
from hybrid_pipeline.features.streaming import CombinedReader
from hybrid_pipeline.online import OnlineReader, OnlineWriter
from hybrid_pipeline.serving import create_app

from .on_demand_data import build_world

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SPEC = on_demand.USER_REQUEST_FEATURES
UTC = timezone.utc


@pytest.fixture(autouse=True)
def in_memory_metric_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """Metric values in memory, as in ``serve`` (``import feast`` switches prometheus-client to files)."""
    monkeypatch.setattr(values, "ValueClass", values.MutexValue)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("on_demand"))


@pytest.fixture(scope="module")
def store(world):
    return world.store()


@pytest.fixture(scope="module")
def client(world):
    reader = OnlineReader.from_url(world.online_url, catalog.PROJECT)
    with TestClient(create_app(reader, catalog.USER_FEATURES_VIEW), raise_server_exceptions=False) as c:
        yield c
    reader.close()


# --------------------------------------------------------------------------- the row function


def test_compute_row_is_null_safe_and_exact():
    t = datetime(2024, 1, 5, 13, 30, 0, 250, tzinfo=UTC)
    row = {"request_time": t, "amount": 30.0, "last_event_at": t - timedelta(seconds=90, microseconds=250),
           "revenue_30d": 60.0, "purchases_30d": 4}
    assert on_demand.compute_row(row) == {"seconds_since_last_event": 90.00025, "request_hour": 13,
                                          "amount_vs_avg_order": 2.0}
    # no events, no purchases, zero revenue, NaN amount, naive request time (UTC)
    assert on_demand.compute_row({"request_time": datetime(2024, 1, 5, 2), "amount": 5.0, "last_event_at": None,
                                  "revenue_30d": 10.0, "purchases_30d": 0}) == {
        "seconds_since_last_event": None, "request_hour": 2, "amount_vs_avg_order": None}
    assert on_demand.compute_row({"request_time": t, "amount": float("nan"), "revenue_30d": 0.0,
                                  "purchases_30d": 3})["amount_vs_avg_order"] is None
    # Feast's full names are read too
    assert on_demand.compute_row({"request_time": t, "amount": 1.0, "user_features__revenue_30d": 2.0,
                                  "user_features__purchases_30d": 1})["amount_vs_avg_order"] == 0.5


def test_a_row_that_raises_gets_nulls_and_is_counted_not_the_batch():
    good = {"request_time": datetime(2024, 1, 1, 5, tzinfo=UTC), "amount": 1.0}
    bad = {"request_time": datetime(2024, 1, 1, 5, tzinfo=UTC), "amount": "not a number"}
    out, errors = on_demand.compute_rows([good, bad, good])
    assert errors == 1
    assert out[1] == dict.fromkeys(SPEC.outputs) and out[0]["request_hour"] == 5 == out[2]["request_hour"]


def test_the_streaming_view_name_is_the_one_the_stream_writes():
    assert on_demand.STREAMING_VIEW == STREAMING_VIEW


def test_the_version_changes_with_the_code_the_inputs_and_the_outputs():
    base = SPEC.version()
    assert SPEC.version({"user_features": "other"}) != base
    from dataclasses import replace

    assert replace(SPEC, outputs={**SPEC.outputs, "x": "Float64"}).version() != base
    assert "def compute_row" in on_demand.transformation_source()


# --------------------------------------------------------------------------- training == serving


def offline(store, user_ids: list[str], request_time: datetime, amount: float) -> list[dict]:
    entity = pd.DataFrame({"user_id": user_ids, "event_timestamp": [request_time] * len(user_ids),
                           "request_time": [request_time] * len(user_ids), "amount": [amount] * len(user_ids)})
    frame = store.get_historical_features(entity_df=entity, features=SPEC.feature_refs()).to_df()
    out = []
    for record in frame.to_dict("records"):
        row = {}
        for name in SPEC.outputs:
            v = record[name]
            row[name] = None if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) else v
        row["request_hour"] = None if row["request_hour"] is None else int(row["request_hour"])
        out.append(row)
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_on_demand_features_are_the_same_offline_and_online_for_random_requests(world, store, client, data):
    users = data.draw(st.lists(st.sampled_from(world.users), min_size=1, max_size=8), label="users")
    users = [*users, *data.draw(st.lists(st.sampled_from(["nobody", "u9999999"]), max_size=1), label="unknown")]
    offset = data.draw(st.integers(min_value=0, max_value=86_400 * 1_000_000 - 1), label="offset_us")
    request_time = world.data_end + timedelta(microseconds=offset)
    amount = data.draw(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), label="amount")

    trained = offline(store, users, request_time, amount)
    answer = client.post("/features", json={"user_ids": users, "request": {
        "amount": amount, "request_time": request_time.isoformat()}})
    assert answer.status_code == 200, answer.text
    served = [r["on_demand"] for r in answer.json()["results"]]
    assert served == trained
    assert all(r["request_hour"] == request_time.hour for r in served)
    assert any(r["seconds_since_last_event"] is not None for r in served[:-1] or served)


def test_the_training_frame_carries_the_on_demand_features_beside_the_stored_ones(world, store):
    t = world.data_end + timedelta(hours=1)
    users = world.users[:20]
    entity = pd.DataFrame({"user_id": users, "event_timestamp": [t] * 20, "request_time": [t] * 20,
                           "amount": [25.0] * 20})
    frame = store.get_historical_features(entity_df=entity, features=[
        *catalog.feature_refs(), *SPEC.feature_refs()]).to_df()
    assert list(frame.columns[-3:]) == list(SPEC.outputs)
    with_purchases = frame[frame["purchases_30d"] > 0]
    assert not with_purchases.empty
    expected = 25.0 / (with_purchases["revenue_30d"] / with_purchases["purchases_30d"])
    assert (with_purchases["amount_vs_avg_order"] - expected).abs().max() < 1e-12
    assert (frame["seconds_since_last_event"] > 0).all()


# --------------------------------------------------------------------------- serving contract


def test_request_time_defaults_to_when_the_server_received_the_request(client, world):
    before = datetime.now(UTC)
    answer = client.post("/features", json={"user_ids": [world.users[0]], "request": {"amount": 10.0}}).json()
    after = datetime.now(UTC)
    result = answer["results"][0]["on_demand"]
    assert result["request_hour"] in {before.hour, after.hour}
    last = on_demand._utc(OnlineReader.from_url(world.online_url, catalog.PROJECT)
                          .get(catalog.ACTIVITY_VIEW, [world.users[0]])[0]["last_event_at"])
    assert (before - last).total_seconds() <= result["seconds_since_last_event"] <= (after - last).total_seconds()


def test_a_request_without_a_field_the_view_needs_is_a_422_naming_it(client, world):
    answer = client.post("/features", json={"user_ids": [world.users[0]], "request": {"request_time": "2024-01-01T00:00:00Z"}})
    assert answer.status_code == 422
    [error] = answer.json()["detail"]
    assert error["loc"] == ["body", "request", "amount"] and error["type"] == "missing"
    bad = client.post("/features", json={"user_ids": [world.users[0]], "request": {"amount": 1.0, "colour": "red"}})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "request", "colour"]
    # without a request object nothing changes: no on-demand features
    plain = client.post("/features", json={"user_ids": [world.users[0]]}).json()
    assert "on_demand" not in plain["results"][0]


@pytest.mark.parametrize("combined", [False, True], ids=["online-reader", "combined-reader"])
def test_the_stream_counts_as_the_newest_event(world, tmp_path, combined):
    user = world.users[0]
    url = f"sqlite://{tmp_path / 'online.db'}"
    with OnlineReader.from_url(world.online_url, catalog.PROJECT) as src, OnlineWriter.from_url(url, catalog.PROJECT) as w:
        for view in (catalog.USER_FEATURES_VIEW, catalog.ACTIVITY_VIEW):
            [record] = src.get_records(view, [user])
            w.write_records(view, [(user, record.features, record.event_ts_us, None)])
        pushed = world.data_end + timedelta(minutes=5)
        w.write_records(STREAMING_VIEW, [(user, {"events_1h": 3, "revenue_1h": 0.0}, pushed, None)])
    reader = OnlineReader.from_url(url, catalog.PROJECT)
    served = CombinedReader(reader) if combined else reader  # what `serve` reads through, or the plain store
    with TestClient(create_app(served, catalog.USER_FEATURES_VIEW)) as c:
        t = pushed + timedelta(seconds=7)
        got = c.post("/features", json={"user_ids": [user], "request": {"amount": 1.0, "request_time": t.isoformat()}})
    reader.close()
    assert got.json()["results"][0]["on_demand"]["seconds_since_last_event"] == 7.0


def test_a_row_that_raises_when_serving_is_null_and_counted_in_metrics(world, monkeypatch):
    reader = OnlineReader.from_url(world.online_url, catalog.PROJECT)
    user = world.users[0]

    def flaky(row):
        if row.get("amount") == 13.0:
            raise ZeroDivisionError("unlucky amount")
        return on_demand.compute_row(row)

    from dataclasses import replace

    spec = replace(SPEC, udf=flaky)
    with TestClient(create_app(reader, catalog.USER_FEATURES_VIEW, predictor=lambda rows: [0.5] * len(rows),
                               on_demand=spec), raise_server_exceptions=False) as c:
        bad = c.post("/predict", json={"user_ids": [user, user], "request": {"amount": 13.0}})
        good = c.post("/predict", json={"user_ids": [user], "request": {"amount": 12.0}})
        metrics = c.get("/metrics").text
    reader.close()
    assert bad.status_code == 200 and good.status_code == 200
    assert bad.json()["results"][0]["on_demand"] == dict.fromkeys(SPEC.outputs)
    assert good.json()["results"][0]["on_demand"]["request_hour"] is not None
    assert 'hybrid_serving_on_demand_errors_total{view="user_request_features"} 2.0' in metrics
