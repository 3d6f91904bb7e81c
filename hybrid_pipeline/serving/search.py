"""``POST /search``: nearest documents chunks or images, by a text query or by a stored item.

Request: ``{"query": "..."} | {"item_id": "..."}``, ``collection`` (``documents`` default, or
``images``: by item only, the image model reads pixels, not text), ``k`` (an integer 1..100,
default 10) and ``filters`` (``document_types``, ``landing_date_from``, ``landing_date_to``).
Answer: the model id of the stored vectors, whether the query was truncated to the model's window
(with its token count and the window), and per hit the id (chunk id or image sha256), cosine
score, content hash, bronze path of the raw file, type, landing day, original name and chunk text.

Client errors: a body that does not validate (both or neither of query and item_id, ``k`` out of
range or not an integer, unknown fields, a text query on images) is FastAPI's 422; an unknown
item id is 404; a query model other than the stored vectors' model is 409 ``model_mismatch``;
no index yet is 503 ``index_unavailable``. The search runs in the thread pool (a forward pass
and a matrix-vector product). No Dagster or Feast import: ``serve`` stays light.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal, Optional

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, ConfigDict, Field, model_validator
from starlette.concurrency import run_in_threadpool

from hybrid_pipeline.ml.embeddings import ModelMismatchError
from hybrid_pipeline.serving.app import ApiError, _errors
from hybrid_pipeline.vectors.search import Filters, IndexUnavailableError, Searcher, SearchResult, UnknownItemError

MAX_K = 100
MAX_QUERY_CHARS = 20_000
ITEM_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
DocumentType = Literal["pdf", "txt", "png", "jpeg"]


class SearchFilters(BaseModel):
    """Only items of these raw file types, landed on or between these days (inclusive)."""

    model_config = ConfigDict(extra="forbid")
    document_types: Optional[list[DocumentType]] = Field(None, min_length=1, max_length=4)
    landing_date_from: Optional[date] = None
    landing_date_to: Optional[date] = None

    @model_validator(mode="after")
    def _ordered(self) -> SearchFilters:
        if self.landing_date_from and self.landing_date_to and self.landing_date_from > self.landing_date_to:
            raise ValueError("landing_date_from is after landing_date_to")
        return self


class SearchRequest(BaseModel):
    """Exactly one of ``query`` (documents only) and ``item_id``."""

    model_config = ConfigDict(extra="forbid")
    query: Optional[str] = Field(None, min_length=1, max_length=MAX_QUERY_CHARS,
                                 description="Text to embed; longer than the model's window is truncated (and said so).")
    item_id: Optional[str] = Field(None, pattern=ITEM_ID_PATTERN, description="A chunk id, or an image's sha256.")
    collection: Literal["documents", "images"] = "documents"
    k: Annotated[int, Field(strict=True, ge=1, le=MAX_K)] = 10
    filters: Optional[SearchFilters] = None

    @model_validator(mode="after")
    def _one_target(self) -> SearchRequest:
        if (self.query is None) == (self.item_id is None):
            raise ValueError("give exactly one of query and item_id")
        if self.query is not None and not self.query.strip():
            raise ValueError("query must contain text")
        if self.query is not None and self.collection != "documents":
            raise ValueError("a text query searches documents; images are searched by item_id")
        return self


class SearchHit(BaseModel):
    id: str
    score: float
    sha256: str
    bronze_path: Optional[str]
    detected_type: Optional[str]
    landing_date: Optional[date]
    original_name: Optional[str]
    text: Optional[str]


class SearchResponse(BaseModel):
    collection: str
    model_id: str = Field(description="Identity (name@weights hash) of the model that made the stored vectors.")
    k: int
    count: int
    truncated: bool = Field(description="The query was longer than the model's window and was cut to it.")
    query_tokens: Optional[int]
    window: Optional[int]
    results: list[SearchHit]


def _filters(f: Optional[SearchFilters]) -> Filters | None:
    if f is None:
        return None
    return Filters(types=frozenset(f.document_types) if f.document_types else None,
                   landing_from=f.landing_date_from, landing_to=f.landing_date_to)


def run_search(searcher: Searcher, body: SearchRequest) -> SearchResult:
    """The request against ``searcher``, its errors as :class:`ApiError` (never a 500 for client input)."""
    try:
        if body.query is not None:
            return searcher.search_text(body.query, k=body.k, filters=_filters(body.filters))
        return searcher.search_item(body.item_id or "", collection=body.collection, k=body.k,
                                    filters=_filters(body.filters))
    except UnknownItemError:
        raise ApiError(404, "not_found", f"no item {body.item_id!r} in the {body.collection} index",
                       item_id=body.item_id) from None
    except ModelMismatchError as exc:
        raise ApiError(409, "model_mismatch", str(exc)) from None
    except IndexUnavailableError as exc:
        raise ApiError(503, "index_unavailable", str(exc)) from None


def search_router(searcher: Searcher, dependencies: list[Any] | None = None,
                  max_body_bytes: int | None = None) -> APIRouter:
    """The ``/search`` route over ``searcher``, behind the app's key dependency."""
    router = APIRouter()
    extra = {"max_body_size": max_body_bytes} if max_body_bytes else {}

    @router.post("/search", response_model=SearchResponse, dependencies=dependencies or [],
                 responses=_errors(401, 404, 409, 413, 503), summary="Nearest document chunks or images", **extra)
    async def search(body: SearchRequest) -> dict[str, Any]:
        result = await run_in_threadpool(run_search, searcher, body)
        return {"collection": result.collection, "model_id": result.model_id, "k": body.k, "count": len(result.hits),
                "truncated": result.truncated, "query_tokens": result.query_tokens, "window": result.window,
                "results": [h.__dict__ for h in result.hits]}

    return router


def install_search(app: FastAPI, searcher: Searcher) -> FastAPI:
    """Add ``POST /search`` to an app made by :func:`~hybrid_pipeline.serving.app.create_app` (same key, same body limit)."""
    app.include_router(search_router(searcher, getattr(app.state, "auth_dependencies", None),
                                     getattr(app.state, "max_body_bytes", None)))
    app.state.searcher = searcher
    return app
