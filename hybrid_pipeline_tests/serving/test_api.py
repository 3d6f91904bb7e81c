"""The serving API: lookups, validation, API key, prediction, metrics, failures."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from hybrid_pipeline.online import OnlineWriter
from hybrid_pipeline.serving import MAX_BATCH, create_app

from .conftest import API_KEY, T0, USERS, VIEW, TestClient, mean_clicks_predictor


def features_of(user: str) -> dict:
    f = dict(USERS[user])
    if isinstance(f["revenue"], float) and math.isnan(f["revenue"]):
        f["revenue"] = None  # JSON has no NaN
    return f


# --------------------------------------------------------------------------- lookups


def test_single_lookup_returns_the_users_features_and_event_time(client):
    response = client.get("/features/u1")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {
        "user_id": "u1",
        "found": True,
        "event_timestamp": T0.isoformat(),
        "features": USERS["u1"],
    }


def test_nan_features_are_served_as_null_not_invalid_json(client):
    response = client.get("/features/odd.id:with-all_chars")
    assert response.status_code == 200
    assert "NaN" not in response.text
    assert response.json()["features"] == features_of("odd.id:with-all_chars")


def test_unknown_user_is_404_with_a_json_message(client):
    response = client.get("/features/ghost")
    assert response.status_code == 404
    assert response.json() == {
        "error": "not_found",
        "detail": "no features for user 'ghost' in 'user_features'",
        "user_id": "ghost",
    }


def test_batch_lookup_keeps_request_order_and_flags_unknown_users(client):
    ids = ["u2", "ghost", "u1", "u2"]
    response = client.post("/features", json={"user_ids": ids})
    assert response.status_code == 200
    body = response.json()
    assert body["feature_view"] == VIEW
    assert (body["found_count"], body["missing_count"]) == (3, 1)
    assert [r["user_id"] for r in body["results"]] == ids
    assert [r["found"] for r in body["results"]] == [True, False, True, True]
    assert body["results"][1] == {"user_id": "ghost", "found": False, "event_timestamp": None, "features": None}
    assert body["results"][0]["features"] == features_of("u2") == body["results"][3]["features"]
    assert body["results"][2]["features"] == features_of("u1")


def test_a_full_batch_of_the_maximum_size_is_served(client):
    ids = ["u1"] + [f"x{i}" for i in range(MAX_BATCH - 1)]
    body = client.post("/features", json={"user_ids": ids}).json()
    assert len(body["results"]) == MAX_BATCH and body["found_count"] == 1


def test_64_characters_is_the_longest_valid_id(client):
    assert client.get("/features/" + "a" * 64).status_code == 404  # valid, unknown
    assert client.get("/features/" + "a" * 65).status_code == 422


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "user_id",
    ["é", "a b", "a\tb", "a\x00b", "x;drop table", "'", "%", "\u202eevil", "🙂", "a" * 65, "a" * 60_000, "a+b",
     "<script>"],
)
def test_malformed_single_ids_are_422_with_a_message(client, user_id):
    response = client.get("/features/" + quote(user_id, safe=""))
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"] == "invalid_user_id"
    assert "1-64 characters" in body["detail"]
    assert len(response.content) < 1000  # a huge id is not echoed back


def test_unmatched_paths_and_methods_are_json_4xx(client):
    assert client.get("/features/a/b").status_code == 404
    assert client.get("/nothing-here").json()["error"] == "not_found"
    response = client.delete("/features/u1")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"
    assert client.get("/features", follow_redirects=False).status_code == 405


DEEP = b"[" * 100_000 + b"]" * 100_000
BAD_BODIES = [
    (b"", 400, "invalid_json"),
    (b"   ", 400, "invalid_json"),
    (b"{", 400, "invalid_json"),
    (b"{'user_ids': ['u1']}", 400, "invalid_json"),
    (DEEP, 400, "invalid_json"),
    (b'{"user_ids": [' + b"9" * 5000 + b"]}", 400, "invalid_json"),
    (b"\xff\xfe\x00{", 400, "invalid_json"),
    (b"NaN", 422, "invalid_request"),
    (b"null", 422, "invalid_request"),
    (b"[]", 422, "invalid_request"),
    (b'["u1"]', 422, "invalid_request"),
    (b'"u1"', 422, "invalid_request"),
    (b"{}", 422, "invalid_request"),
    (b'{"user_id": ["u1"]}', 422, "invalid_request"),
    (b'{"user_ids": ["u1"], "extra": 1}', 422, "invalid_request"),
    (b'{"user_ids": "u1"}', 422, "invalid_request"),
    (b'{"user_ids": {"0": "u1"}}', 422, "invalid_request"),
    (b'{"user_ids": null}', 422, "invalid_request"),
    (b'{"user_ids": []}', 422, "empty_batch"),
    (b'{"user_ids": [1]}', 422, "invalid_user_id"),
    (b'{"user_ids": [null]}', 422, "invalid_user_id"),
    (b'{"user_ids": [true]}', 422, "invalid_user_id"),
    (b'{"user_ids": [["u1"]]}', 422, "invalid_user_id"),
    (b'{"user_ids": [{"id": "u1"}]}', 422, "invalid_user_id"),
    (b'{"user_ids": ["u1", ""]}', 422, "invalid_user_id"),
    ('{"user_ids": ["\u00e9"]}'.encode(), 422, "invalid_user_id"),
    (b'{"user_ids": ["\\ud800"]}', 422, "invalid_user_id"),
    (json.dumps({"user_ids": ["a" * 65]}).encode(), 422, "invalid_user_id"),
    (json.dumps({"user_ids": ["u1"] * (MAX_BATCH + 1)}).encode(), 422, "batch_too_large"),
    (json.dumps({"user_ids": ["a" * 64] * 20_000}).encode(), 413, "body_too_large"),
]


@pytest.mark.parametrize(("body", "status", "error"), BAD_BODIES, ids=[f"case{i}" for i in range(len(BAD_BODIES))])
@pytest.mark.parametrize("route", ["/features", "/predict"])
def test_bad_batch_bodies_are_4xx_with_a_clear_json_message(client, route, body, status, error):
    response = client.post(route, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"] == error
    assert response.json()["detail"]


def test_invalid_ids_in_a_batch_are_pointed_at_by_index(client):
    body = client.post("/features", json={"user_ids": ["u1", "bad id", "u2", 7]}).json()
    assert body["invalid_indexes"] == [1, 3]
    assert "index 1" in body["detail"]


# --------------------------------------------------------------------------- API key


def test_data_routes_need_the_api_key(keyed_client):
    assert keyed_client.get("/features/u1", headers={"X-API-Key": API_KEY}).status_code == 200
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": API_KEY + "x"}, {"Authorization": API_KEY}):
        response = keyed_client.get("/features/u1", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"] == "unauthorized"
        assert response.headers["www-authenticate"] == "API-Key"
        assert keyed_client.post("/features", json={"user_ids": ["u1"]}, headers=headers).status_code == 401
    assert keyed_client.post("/features", json={"user_ids": ["u1"]}, headers={"x-api-key": API_KEY}).status_code == 200


def test_without_a_key_nothing_about_the_request_is_validated_or_revealed(keyed_client):
    assert keyed_client.get("/features/ghost").status_code == 401
    assert keyed_client.get("/features/é").status_code == 401
    assert keyed_client.post("/features", content=b"{not json").status_code == 401


def test_a_non_ascii_key_header_is_401_not_500(keyed_client):
    response = keyed_client.get("/features/u1", headers=[(b"x-api-key", "clé-ü".encode("latin-1"))])
    assert response.status_code == 401


def test_health_and_metrics_are_open_for_probes_and_scrapers(keyed_client):
    assert keyed_client.get("/health").json() == {"status": "ok", "feature_view": VIEW, "predict": False}
    assert keyed_client.get("/metrics").status_code == 200


# --------------------------------------------------------------------------- predict


def test_predict_scores_found_users_in_one_call_and_nulls_the_rest(reader):
    calls: list[list[dict]] = []

    def predictor(rows):
        calls.append(rows)
        return mean_clicks_predictor(rows)

    with TestClient(create_app(reader, VIEW, predictor=predictor)) as client:
        body = client.post("/predict", json={"user_ids": ["u1", "ghost", "u2"]}).json()
        assert body["results"] == [
            {"user_id": "u1", "found": True, "score": 1.0},
            {"user_id": "ghost", "found": False, "score": None},
            {"user_id": "u2", "found": True, "score": 0.0},
        ]
        assert calls == [[USERS["u1"], USERS["u2"]]]
        assert client.post("/predict", json={"user_ids": ["ghost"]}).json()["found_count"] == 0
        assert len(calls) == 1  # nobody found: the model is not called


def test_async_and_numpy_predictors_work(reader):
    np = pytest.importorskip("numpy")

    async def async_predictor(rows):
        return [1.5] * len(rows)

    with TestClient(create_app(reader, VIEW, predictor=async_predictor)) as client:
        assert client.post("/predict", json={"user_ids": ["u1"]}).json()["results"][0]["score"] == 1.5
    with TestClient(create_app(reader, VIEW, predictor=lambda rows: np.array([np.nan] * len(rows)))) as client:
        assert client.post("/predict", json={"user_ids": ["u1"]}).json()["results"][0]["score"] is None


def test_predict_exists_only_with_a_predictor(keyed_client):
    response = keyed_client.post("/predict", json={"user_ids": ["u1"]}, headers={"X-API-Key": API_KEY})
    assert response.status_code in (404, 405)


def test_a_failing_or_miscounting_model_is_a_server_error_in_json(reader):
    def broken(rows):
        raise RuntimeError("model exploded")

    with TestClient(create_app(reader, VIEW, predictor=broken), raise_server_exceptions=False) as client:
        response = client.post("/predict", json={"user_ids": ["u1"]})
        assert response.status_code == 500 and response.json()["error"] == "prediction_failed"
        assert "exploded" not in response.text
    with TestClient(create_app(reader, VIEW, predictor=lambda rows: [0.0]), raise_server_exceptions=False) as client:
        response = client.post("/predict", json={"user_ids": ["u1", "u2"]})
        assert response.status_code == 500 and "wrong number" in response.json()["detail"]


# --------------------------------------------------------------------------- metrics


def metric(text: str, name: str, **labels: str) -> float:
    """Value of one Prometheus sample, 0.0 when absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        sample, value = line.rsplit(" ", 1)
        if sample.split("{", 1)[0] != name:
            continue
        got = {}
        if "{" in sample:
            for part in sample[sample.index("{") + 1: -1].split('",'):
                k, v = part.split("=", 1)
                got[k] = v.strip('"')
        if all(got.get(k) == v for k, v in labels.items()):
            return float(value)
    return 0.0


def test_metrics_count_requests_by_route_template_and_status(client):
    for path in ("/features/u1", "/features/u2", "/features/ghost", "/features/bad id"):
        client.get(path)
    client.post("/features", json={"user_ids": ["u1", "ghost"]})
    client.post("/predict", json={"user_ids": ["u1"]})
    text = client.get("/metrics").text
    route = "/features/{user_id}"
    assert metric(text, "hybrid_serving_requests_total", route=route, method="GET", status="200") == 2
    assert metric(text, "hybrid_serving_requests_total", route=route, method="GET", status="404") == 1
    assert metric(text, "hybrid_serving_requests_total", route=route, method="GET", status="422") == 1
    assert metric(text, "hybrid_serving_requests_total", route="/features", method="POST", status="200") == 1
    assert metric(text, "hybrid_serving_request_duration_seconds_count", route=route, method="GET") == 4
    assert metric(text, "hybrid_serving_request_duration_seconds_bucket", route=route, method="GET", le="+Inf") == 4
    assert metric(text, "hybrid_serving_predict_duration_seconds_count") == 1
    assert metric(text, "hybrid_serving_feature_lookups_total", result="found") == 4
    assert metric(text, "hybrid_serving_feature_lookups_total", result="missing") == 2
    assert metric(text, "hybrid_serving_batch_size_sum", route="/features") == 2
    assert 'user_id="' not in text and "ghost" not in text  # no per-user label cardinality


def test_unmatched_paths_are_one_label_not_one_per_path(client):
    for i in range(5):
        client.get(f"/random-{i}")
    text = client.get("/metrics").text
    assert metric(text, "hybrid_serving_requests_total", route="unmatched", method="GET", status="404") == 5
    assert "random-" not in text


def test_each_app_has_its_own_registry(reader):
    a, b = create_app(reader, VIEW), create_app(reader, VIEW)
    with TestClient(a) as ca, TestClient(b) as cb:
        ca.get("/features/u1")
        ca.get("/features/u1")
        cb.get("/features/u1")
        route = "/features/{user_id}"
        assert metric(ca.get("/metrics").text, "hybrid_serving_requests_total", route=route, status="200") == 2
        assert metric(cb.get("/metrics").text, "hybrid_serving_requests_total", route=route, status="200") == 1


def test_apps_count_only_their_own_requests_in_prometheus_multiprocess_mode(tmp_path: Path):
    """``import feast`` sets PROMETHEUS_MULTIPROC_DIR; when that happens before prometheus_client is
    first imported, stock metrics of one process share their values by name and labels. The
    apps' counts must stay their own (run in a fresh interpreter: the mode is chosen at import)."""
    script = f"""
import os
os.environ["PROMETHEUS_MULTIPROC_DIR"] = {str(tmp_path)!r}
from prometheus_client import values
assert values.ValueClass is not values.MutexValue  # the process is in multiprocess mode
from hybrid_pipeline_tests.serving.conftest import TestClient, mean_clicks_predictor, USERS, T0, VIEW
from hybrid_pipeline_tests.serving.test_api import metric
from hybrid_pipeline.online import OnlineReader, OnlineWriter
from hybrid_pipeline.serving import create_app
url = "sqlite://{tmp_path / 'online.db'}"
with OnlineWriter.from_url(url, "proj") as writer:
    writer.write_records(VIEW, [(u, f, T0, None) for u, f in USERS.items()])
reader = OnlineReader.from_url(url, "proj")
a, b = create_app(reader, VIEW, predictor=mean_clicks_predictor), create_app(reader, VIEW, predictor=mean_clicks_predictor)
with TestClient(a) as ca, TestClient(b) as cb:
    for _ in range(3):
        ca.get("/features/u1")
        ca.post("/predict", json={{"user_ids": ["u1", "ghost"]}})
    cb.get("/features/u1")
    ta, tb = ca.get("/metrics").text, cb.get("/metrics").text
route = "/features/{{user_id}}"
got = (
    metric(ta, "hybrid_serving_requests_total", route=route, status="200"),
    metric(tb, "hybrid_serving_requests_total", route=route, status="200"),
    metric(ta, "hybrid_serving_predict_duration_seconds_count"),
    metric(tb, "hybrid_serving_predict_duration_seconds_count"),
    metric(ta, "hybrid_serving_feature_lookups_total", result="missing"),
    metric(tb, "hybrid_serving_feature_lookups_total", result="found"),
)
assert got == (3, 1, 3, 0, 3, 1), got
print("ok")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[2],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stdout + proc.stderr


# --------------------------------------------------------------------------- failures and contracts


class BrokenReader:
    def get(self, view, ids):
        raise ConnectionError("redis is down")

    def get_records(self, view, ids):
        raise ConnectionError("redis is down")

    def ping(self):
        raise ConnectionError("redis is down")


def test_a_failing_store_is_503_for_lookups_and_health(reader):
    with TestClient(create_app(BrokenReader(), VIEW), raise_server_exceptions=False) as client:
        response = client.get("/features/u1")
        assert response.status_code == 503 and response.json()["error"] == "store_unavailable"
        assert client.post("/features", json={"user_ids": ["u1"]}).status_code == 503
        assert client.get("/health").status_code == 503
        assert client.get("/health").json()["status"] == "unavailable"


def test_a_reader_without_event_times_is_refused_when_the_app_is_built():
    class FeaturesOnly:  # would serve every user with "event_timestamp": null
        def get(self, view, ids):
            return [USERS.get(i) for i in ids]

        def ping(self):
            return True

    with pytest.raises(TypeError, match="get_records"):
        create_app(FeaturesOnly(), VIEW)


def test_non_json_native_feature_values_are_converted(tmp_path: Path):
    from datetime import datetime, timezone

    from hybrid_pipeline.online import OnlineReader

    url = f"sqlite://{tmp_path / 'o.db'}"
    when = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    with OnlineWriter.from_url(url, "p") as w:
        w.write_records(VIEW, [("u", {"ts": when, "raw": b"\x00\x01", "inf": math.inf, "nested": {"a": [1.0]}},
                                T0, None)])
    with TestClient(create_app(OnlineReader.from_url(url, "p"), VIEW)) as client:
        assert client.get("/features/u").json()["features"] == {
            "ts": when.isoformat(), "raw": "AAE=", "inf": None, "nested": {"a": [1.0]},
        }


def test_create_app_refuses_meaningless_settings(reader):
    with pytest.raises(ValueError):
        create_app(reader, "")
    with pytest.raises(ValueError):
        create_app(reader, VIEW, api_key="")


# --------------------------------------------------------------------------- run_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_server_serves_the_app_over_http(tmp_path: Path):
    url = f"sqlite://{tmp_path / 'o.db'}"
    with OnlineWriter.from_url(url, "proj") as writer:
        writer.write_records(VIEW, [("u1", {"clicks": 10}, T0, None)])
    port = free_port()
    env = dict(os.environ, HYBRID_SERVING_API_KEY="k")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybrid_pipeline.serving", "--url", url, "--project", "proj", "--view", VIEW,
         "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as http:
            while True:
                try:
                    health = http.get("/health")
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise AssertionError(f"server did not start: {proc.stdout.read()!r}") from None
                    time.sleep(0.1)
            assert health.json()["status"] == "ok"
            assert http.get("/features/u1").status_code == 401
            response = http.get("/features/u1", headers={"X-API-Key": "k"})
            assert response.json()["features"] == {"clicks": 10}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
