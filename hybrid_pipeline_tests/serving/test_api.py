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


def validation_errors(response) -> list[dict]:
    """The errors of a 422 in FastAPI's standard shape ``{"detail": [{"type", "loc", "msg"}, ...]}``."""
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert errors and all({"type", "loc", "msg"} <= set(e) for e in errors), errors
    return errors


@pytest.mark.parametrize(
    "user_id",
    ["é", "a b", "a\tb", "a\x00b", "x;drop table", "'", "%", "\u202eevil", "🙂", "a" * 65, "a" * 60_000, "a+b",
     "<script>"],
)
def test_malformed_single_ids_are_422_pointing_at_the_path(client, user_id):
    response = client.get("/features/" + quote(user_id, safe=""))
    errors = validation_errors(response)
    assert [(e["type"], e["loc"]) for e in errors] == [("string_pattern_mismatch", ["path", "user_id"])]
    assert len(response.content) < 1000  # a huge id is not echoed back


def test_unmatched_paths_and_methods_are_json_4xx(client):
    assert client.get("/features/a/b").status_code == 404
    assert client.get("/nothing-here").json()["error"] == "not_found"
    response = client.delete("/features/u1")
    assert response.status_code == 405 and response.json()["error"] == "method_not_allowed"
    assert client.get("/features", follow_redirects=False).status_code == 405


DEEP = b"[" * 100_000 + b"]" * 100_000
NOT_JSON = [b"   ", b"{", b"{'user_ids': ['u1']}", b"\xff\xfe\x00{"]
UNPARSEABLE = [DEEP, b'{"user_ids": [' + b"9" * 5000 + b"]}"]  # valid JSON grammar, beyond what the parser takes
INVALID = [  # (body, type and loc of the first error)
    (b"", "missing", ["body"]),
    (b"NaN", "model_attributes_type", ["body"]),
    (b"null", "model_attributes_type", ["body"]),
    (b"[]", "model_attributes_type", ["body"]),
    (b'["u1"]', "model_attributes_type", ["body"]),
    (b'"u1"', "model_attributes_type", ["body"]),
    (b"{}", "missing", ["body", "user_ids"]),
    (b'{"user_id": ["u1"]}', "missing", ["body", "user_ids"]),
    (b'{"user_ids": ["u1"], "extra": 1}', "extra_forbidden", ["body", "extra"]),
    (b'{"user_ids": "u1"}', "list_type", ["body", "user_ids"]),
    (b'{"user_ids": {"0": "u1"}}', "list_type", ["body", "user_ids"]),
    (b'{"user_ids": null}', "list_type", ["body", "user_ids"]),
    (b'{"user_ids": []}', "too_short", ["body", "user_ids"]),
    (b'{"user_ids": [1]}', "string_type", ["body", "user_ids", 0]),
    (b'{"user_ids": [null]}', "string_type", ["body", "user_ids", 0]),
    (b'{"user_ids": [true]}', "string_type", ["body", "user_ids", 0]),
    (b'{"user_ids": [["u1"]]}', "string_type", ["body", "user_ids", 0]),
    (b'{"user_ids": [{"id": "u1"}]}', "string_type", ["body", "user_ids", 0]),
    (b'{"user_ids": ["u1", ""]}', "string_pattern_mismatch", ["body", "user_ids", 1]),
    ('{"user_ids": ["\u00e9"]}'.encode(), "string_pattern_mismatch", ["body", "user_ids", 0]),
    (b'{"user_ids": ["\\ud800"]}', "string_unicode", ["body", "user_ids", 0]),
    (b'{"user_ids": [NaN]}', "string_type", ["body", "user_ids", 0]),
    (json.dumps({"user_ids": ["a" * 65]}).encode(), "string_pattern_mismatch", ["body", "user_ids", 0]),
    (json.dumps({"user_ids": ["u1"] * (MAX_BATCH + 1)}).encode(), "too_long", ["body", "user_ids"]),
]
ROUTES = ["/features", "/predict"]


def post_json(client, route: str, body: bytes):
    return client.post(route, content=body, headers={"content-type": "application/json"})


@pytest.mark.parametrize("body", NOT_JSON, ids=[f"case{i}" for i in range(len(NOT_JSON))])
@pytest.mark.parametrize("route", ROUTES)
def test_a_body_that_is_not_json_is_422_json_invalid(client, route, body):
    assert validation_errors(post_json(client, route, body))[0]["type"] == "json_invalid"


@pytest.mark.parametrize("body", UNPARSEABLE, ids=["too-deep", "huge-int"])
@pytest.mark.parametrize("route", ROUTES)
def test_a_body_the_json_parser_gives_up_on_is_400_with_a_json_message(client, route, body):
    response = post_json(client, route, body)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_body" and response.json()["detail"]


@pytest.mark.parametrize(("body", "error_type", "loc"), INVALID, ids=[f"case{i}" for i in range(len(INVALID))])
@pytest.mark.parametrize("route", ROUTES)
def test_invalid_batch_bodies_are_422_pointing_at_the_offending_field(client, route, body, error_type, loc):
    response = post_json(client, route, body)
    first = validation_errors(response)[0]
    assert (first["type"], first["loc"]) == (error_type, loc)
    assert len(response.content) < 1000  # inputs are not echoed back, however large


@pytest.mark.parametrize("route", ROUTES)
def test_a_body_over_the_size_limit_is_413(client, route):
    body = json.dumps({"user_ids": ["a" * 64] * 20_000}).encode()
    assert post_json(client, route, body).status_code == 413


def test_invalid_ids_in_a_batch_are_pointed_at_by_index(client):
    errors = validation_errors(client.post("/features", json={"user_ids": ["u1", "bad id", "u2", 7]}))
    assert [e["loc"] for e in errors] == [["body", "user_ids", 1], ["body", "user_ids", 3]]


def test_a_body_sent_without_a_json_content_type_is_not_parsed(client):
    response = client.post("/features", content=b'{"user_ids": ["u1"]}', headers={"content-type": "text/plain"})
    assert validation_errors(response)[0]["loc"] == ["body"]


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
    assert keyed_client.post("/features", json={"user_ids": ["é", 7]}).status_code == 401
    assert keyed_client.post("/features", json={"wrong": "shape"}).status_code == 401
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


# --------------------------------------------------------------------------- OpenAPI


DOCUMENTATION_ROUTES = ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")


def served_operations(app) -> set[tuple[str, str]]:
    """(path, method) of every route the app serves, but the routes that serve its documentation."""
    return {(route.path, method.lower()) for route in app.routes if route.path not in DOCUMENTATION_ROUTES
            for method in route.methods - {"HEAD"}}


def resolve(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


@pytest.mark.parametrize("fixture", ["client", "keyed_client"])
def test_the_openapi_document_describes_every_route_with_its_request_and_response(request, fixture):
    client = request.getfixturevalue(fixture)
    spec = client.get("/openapi.json").json()
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == served_operations(client.app)
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            ok = op["responses"]["200"]["content"]
            assert ok and all(media["schema"] for media in ok.values()), (path, method)
            if method == "post":
                body = resolve(spec, op["requestBody"]["content"]["application/json"]["schema"])
                assert body["required"] == ["user_ids"] and body["properties"]["user_ids"]["maxItems"] == MAX_BATCH
                assert resolve(spec, op["responses"]["422"]["content"]["application/json"]["schema"])


def test_the_documented_response_models_are_the_ones_served(client):
    spec = client.get("/openapi.json").json()

    def schema(path: str, method: str) -> dict:
        return resolve(spec, spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"])

    assert set(schema("/features/{user_id}", "get")["properties"]) == set(client.get("/features/u1").json())
    batch = client.post("/features", json={"user_ids": ["u1"]}).json()
    assert set(schema("/features", "post")["properties"]) == set(batch)
    scores = client.post("/predict", json={"user_ids": ["u1"]}).json()
    assert set(schema("/predict", "post")["properties"]) == set(scores)
    assert set(schema("/health", "get")["properties"]) == set(client.get("/health").json())


def test_the_api_key_is_documented_as_a_security_scheme_only_when_required(client, keyed_client):
    keyed = keyed_client.get("/openapi.json").json()
    assert keyed["components"]["securitySchemes"] == {
        "APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                         "description": "Required on /features and /predict when the server has a key."}}
    assert keyed["paths"]["/features/{user_id}"]["get"]["security"] == [{"APIKeyHeader": []}]
    assert "security" not in keyed["paths"]["/health"]["get"]
    assert "securitySchemes" not in client.get("/openapi.json").json().get("components", {})


def test_the_interactive_docs_are_served(keyed_client):
    response = keyed_client.get("/docs")
    assert response.status_code == 200 and "swagger-ui" in response.text and "/openapi.json" in response.text


def test_an_invalid_body_is_a_422_in_fastapis_standard_error_shape(client):
    response = client.post("/features", json={"user_ids": "u1"})
    assert response.status_code == 422
    assert response.json() == {"detail": [
        {"type": "list_type", "loc": ["body", "user_ids"], "msg": "Input should be a valid list"}]}


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
