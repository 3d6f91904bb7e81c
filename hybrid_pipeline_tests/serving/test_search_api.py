"""POST /search: exact neighbours, filters, truncation, and every bad input a 4xx (never a 500)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hybrid_pipeline.ml.embeddings import default_text_model_dir, shared_text_embedder
from hybrid_pipeline.serving import create_app
from hybrid_pipeline.vectors import Searcher, VectorIndex, exact_top_k
from hybrid_pipeline.vectors.index import ITEM_COLUMNS

from .conftest import API_KEY, VIEW, TestClient

TEXTS = ["waterproof hiking boots for wet trails", "stainless steel electric kettle", "a cotton t-shirt, size M",
         "trail running shoes with grippy soles", "noise cancelling headphones", "cast iron frying pan"]


def _items(ids: list[str], types: list[str], texts: list[str | None]) -> pl.DataFrame:
    n = len(ids)
    return pl.DataFrame({"id": ids, "sha256": [f"{i:064x}" for i in range(n)],
                         "bronze_path": [f"{i:02x}/{i:064x}.{t}" for i, t in enumerate(types)], "detected_type": types,
                         "landing_date": [date(2024, 1, 1 + i) for i in range(n)],
                         "original_name": [f"doc{i}.{t}" for i, t in enumerate(types)], "text": texts},
                        schema=ITEM_COLUMNS)


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vectors")
    embedder = shared_text_embedder(str(default_text_model_dir()))
    types = ["pdf", "txt", "pdf", "txt", "pdf", "txt"]
    VectorIndex("documents", embedder.identity.id, embedder.embed(TEXTS),
                _items([f"c{i}" for i in range(len(TEXTS))], types, TEXTS)).save(root / "documents")
    rng = np.random.default_rng(0)
    v = rng.normal(size=(8, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    VectorIndex("images", "pixels-4x4@x", v, _items([f"{i:064x}" for i in range(8)], ["png"] * 8, [None] * 8)
                ).save(root / "images")
    return root


@pytest.fixture
def client(reader, index_dir):
    app = create_app(reader, VIEW, searcher=Searcher(index_dir, default_text_model_dir()))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_a_text_query_returns_the_brute_force_cosine_ranking_with_bronze_paths(client, index_dir):
    r = client.post("/search", json={"query": "shoes for hiking in the rain", "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    index = VectorIndex.load(index_dir / "documents")
    q = shared_text_embedder(str(default_text_model_dir())).embed(["shoes for hiking in the rain"])[0]
    rows, scores = exact_top_k(index.vectors, q, 3)
    assert [h["id"] for h in body["results"]] == [f"c{i}" for i in rows.tolist()]
    assert np.allclose([h["score"] for h in body["results"]], scores, atol=1e-5)
    assert body["results"][0]["bronze_path"].endswith(".pdf") and body["model_id"] == index.model_id
    assert body["truncated"] is False and body["count"] == 3


def test_filters_by_type_and_landing_day(client):
    r = client.post("/search", json={"query": "kitchen", "k": 10, "filters": {
        "document_types": ["txt"], "landing_date_from": "2024-01-02", "landing_date_to": "2024-01-04"}})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert {h["id"] for h in hits} == {"c1", "c3"}


def test_a_query_longer_than_the_window_is_truncated_and_said_so(client):
    r = client.post("/search", json={"query": "boots " * 2000, "k": 2})
    body = r.json()
    assert r.status_code == 200 and body["truncated"] is True and body["query_tokens"] > body["window"]


def test_search_by_item_excludes_the_item_and_unknown_items_are_404(client):
    r = client.post("/search", json={"item_id": "c0", "k": 2})
    assert r.status_code == 200 and "c0" not in [h["id"] for h in r.json()["results"]]
    assert r.json()["results"][0]["id"] == "c3"  # the other shoes
    r = client.post("/search", json={"item_id": f"{3:064x}", "collection": "images", "k": 8})
    assert r.status_code == 200 and r.json()["count"] == 7
    r = client.post("/search", json={"item_id": "nope", "k": 2})
    assert r.status_code == 404 and r.json()["error"] == "not_found"


@pytest.mark.parametrize("body", [
    {"query": "x", "k": 0}, {"query": "x", "k": 101}, {"query": "x", "k": 2.5}, {"query": "x", "k": "3"},
    {"query": "x", "k": True}, {"query": "x", "k": None}, {"k": 3}, {"query": "x", "item_id": "c1"},
    {"query": ""}, {"query": "   "}, {"query": "x", "collection": "images"}, {"query": "x", "extra": 1},
    {"item_id": "../etc/passwd"}, {"query": "x", "filters": {"document_types": ["exe"]}},
    {"query": "x", "filters": {"landing_date_from": "2024-02-01", "landing_date_to": "2024-01-01"}},
    {"query": "x" * 20_001}, [], "text",
])
def test_bad_requests_are_422_without_echo(client, body):
    r = client.post("/search", json=body)
    assert r.status_code == 422, r.text
    assert all("input" not in e for e in r.json()["detail"])


def test_odd_text_is_searched_not_a_500(client):
    import json

    for q, status in [("\ud800 lone surrogate", 422), ("é 日本 ✓ \x00", 200), ("Q" * 19_000, 200)]:
        body = json.dumps({"query": q, "k": 1})  # a lone surrogate is valid JSON (as an escape), not valid text
        r = client.post("/search", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text


def test_a_query_model_other_than_the_stored_one_is_409_and_no_index_is_503(reader, index_dir, tmp_path):
    import shutil

    mixed = tmp_path / "mixed"
    shutil.copytree(index_dir, mixed)
    other = VectorIndex.load(mixed / "documents")
    other.model_id = "another-model@0123456789abcdef"
    other.save(mixed / "documents")
    with TestClient(create_app(reader, VIEW, searcher=Searcher(mixed, default_text_model_dir())),
                    raise_server_exceptions=False) as c:
        r = c.post("/search", json={"query": "boots"})
        assert r.status_code == 409 and r.json()["error"] == "model_mismatch"
        assert "another-model" in r.json()["detail"]
        assert c.post("/search", json={"item_id": "c1"}).status_code == 200  # by item: no query model involved
    with TestClient(create_app(reader, VIEW, searcher=Searcher(tmp_path / "none")), raise_server_exceptions=False) as c:
        r = c.post("/search", json={"query": "boots"})
        assert r.status_code == 503 and r.json()["error"] == "index_unavailable"


def test_the_search_route_takes_the_apps_api_key(reader, index_dir):
    app = create_app(reader, VIEW, api_key=API_KEY, searcher=Searcher(index_dir, default_text_model_dir()))
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.post("/search", json={"item_id": "c1"}).status_code == 401
        assert c.post("/search", json={"item_id": "c1"}, headers={"X-API-Key": API_KEY}).status_code == 200
        assert "/search" in c.get("/openapi.json").json()["paths"]
