"""Property tests: no client input makes the server answer 500."""

from __future__ import annotations

import json
import re
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_pipeline.serving import USER_ID_PATTERN, create_app, valid_user_id

from .conftest import VIEW, TestClient, mean_clicks_predictor

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# URLs carry no lone surrogates; everything else goes, control characters and emoji included.
any_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=80)
near_valid = st.text(st.sampled_from("aZ09_.:-/ é%?#\x00"), min_size=0, max_size=70)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=25,
)


@pytest.fixture
def fuzz_client(reader):
    with TestClient(create_app(reader, VIEW, api_key="k", predictor=mean_clicks_predictor),
                    raise_server_exceptions=False, headers={"X-API-Key": "k"}) as client:
        yield client


def assert_json_4xx_or_ok(response) -> None:
    assert response.status_code < 500, response.text
    body = response.json()  # every answer is JSON
    if response.status_code == 422:  # FastAPI's validation error body
        assert body["detail"] and all(e["loc"] and e["msg"] and e["type"] for e in body["detail"])
    elif response.status_code >= 400:
        assert body["error"] and body["detail"]


def post_json(client, route: str, body: bytes):
    return client.post(route, content=body, headers={"content-type": "application/json"})


@FUZZ
@given(user_id=any_text | near_valid)
def test_random_single_ids_never_give_a_500(fuzz_client, user_id):
    response = fuzz_client.get("/features/" + quote(user_id, safe=""), follow_redirects=False)
    if 300 <= response.status_code < 400:  # "" → redirect from /features/ to /features
        return
    assert_json_4xx_or_ok(response)
    if response.status_code == 200:
        assert valid_user_id(user_id) and response.json()["user_id"] == user_id


@FUZZ
@given(user_ids=st.lists(any_text | near_valid | st.text(max_size=5), min_size=1, max_size=30))
def test_random_id_batches_are_accepted_exactly_when_every_id_is_valid(fuzz_client, user_ids):
    response = fuzz_client.post("/features", json={"user_ids": user_ids})
    assert_json_4xx_or_ok(response)
    all_valid = all(re.fullmatch(USER_ID_PATTERN, u) and u.isascii() for u in user_ids)
    assert (response.status_code == 200) == bool(all_valid)
    if all_valid:
        assert [r["user_id"] for r in response.json()["results"]] == user_ids


@FUZZ
@given(payload=json_values | st.fixed_dictionaries({"user_ids": json_values}))
def test_random_json_bodies_never_give_a_500(fuzz_client, payload):
    body = json.dumps(payload).encode()
    for route in ("/features", "/predict"):
        assert_json_4xx_or_ok(post_json(fuzz_client, route, body))


@FUZZ
@given(body=st.binary(max_size=200))
def test_random_bytes_never_give_a_500(fuzz_client, body):
    for route in ("/features", "/predict"):
        assert_json_4xx_or_ok(post_json(fuzz_client, route, body))
