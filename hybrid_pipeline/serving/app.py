"""Online feature serving API (FastAPI) over a :class:`FeatureReader`.

The reader is an :class:`hybrid_pipeline.online.OnlineReader` (``python -m hybrid_pipeline.serving``)
or a :class:`hybrid_pipeline.features.streaming.CombinedReader` (``hybrid-pipeline serve``); both
hand back records with their event timestamps, so ``event_timestamp`` is the same on either path.

Routes (``X-API-Key`` required on the data routes when an API key is configured):

* ``GET /features/{user_id}``: ``200 {"user_id", "found": true, "event_timestamp", "features"}``;
  404 when nothing is stored for the user.
* ``POST /features`` with ``{"user_ids": [...]}`` (1..``MAX_BATCH`` ids, duplicates allowed):
  one result per id, in order; unknown users get ``"found": false`` and ``"features": null``.
* ``POST /predict`` (only when a predictor is given), same body: features of the found users
  go to ``predictor(list_of_feature_dicts)`` in one call; one score per found user.
* Both ``POST`` routes take an optional ``"request": {"amount": 12.5, "request_time": ...}`` beside
  ``"user_ids"`` (its fields apply to every id): each result then carries the on-demand features
  (:mod:`hybrid_pipeline.features.on_demand`, the code Feast's on-demand view runs in training)
  under ``"on_demand"``, with the names training uses, and ``/predict`` hands them to the predictor
  inside each feature dict. ``request_time`` defaults to the time the server received the request.
  A field the on-demand view needs that the request lacks is a 422 naming it
  (``loc: ["body", "request", "amount"]``); a row whose computation raises gets nulls and is
  counted in ``hybrid_serving_on_demand_errors_total``, never a 500.
* ``GET /health`` (backend ping; 503 when it fails) and ``GET /metrics`` (Prometheus text)
  need no key.

``/openapi.json`` describes every route with its request and response models (Swagger UI at
``/docs``); FastAPI validates requests against the same models.

``event_timestamp`` is the stored record's event time (ISO-8601), the one clients judge
staleness by; a combined reader dates a merged record by its oldest part.

User ids are 1-64 characters of ``[A-Za-z0-9_.:-]``. A request that does not validate (body not
JSON, wrong shape, unknown fields, an invalid user id, an empty or oversized batch) is a 422 with
FastAPI's standard body ``{"detail": [{"type", "loc", "msg", ...}]}``, ``loc`` pointing at the
offending field or list index (the offending ``input`` is not echoed back). Other client errors
are ``{"error": <code>, "detail": <message>}``: 400 a body the JSON parser gives up on (nested too
deeply, a number too long), 401 bad or missing key, 404 unknown user/route, 405 wrong method, 413
body over ``max_body_bytes`` (plain text ``Content Too Large`` when the declared Content-Length is
already over it). A failing backend is 503. The key is checked before the path and body are
validated; only a body sent as JSON that is not JSON at all is refused (422) before the key, as
FastAPI parses it first.

A client that hangs up before its request is read is not a server error: it gets no answer,
one log line and a count in ``hybrid_serving_client_disconnects_total``, not in the requests.

Metrics are prometheus-client ``Counter``/``Histogram`` objects on a registry of the app's own, so
two apps in one process count their own requests. (In prometheus-client's multiprocess mode,
``PROMETHEUS_MULTIPROC_DIR`` set before it is first imported, values are kept per process and
metric name instead; ``import feast`` sets that variable, which is one reason ``serve`` never
imports Feast.)

Handlers are ``async`` and call the reader inline: a lookup is tens of microseconds on
SQLite and one round trip on Redis, cheaper than a hop to the thread pool. The predictor
runs in the thread pool (it may be a model forward pass).

Feature values are returned as JSON: NaN/inf become ``null``, timestamps ISO-8601 strings,
bytes base64.
"""

import base64
import hmac
import inspect
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime, timezone
from typing import Annotated, Any, Literal, Optional, Protocol, runtime_checkable

from fastapi import FastAPI, Path, Request, Response, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.security import APIKeyHeader
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from hybrid_pipeline.features import on_demand as on_demand_mod
from hybrid_pipeline.features.on_demand import OnDemandSpec
from hybrid_pipeline.online import PackedRecord

__all__ = [
    "MAX_BATCH",
    "USER_ID_PATTERN",
    "BatchFeatureRecord",
    "ErrorBody",
    "FeatureReader",
    "FeatureRecord",
    "FeaturesResponse",
    "Health",
    "PredictResponse",
    "Score",
    "ServingMetrics",
    "UserIdsRequest",
    "create_app",
    "request_model",
    "valid_user_id",
]

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_BODY_BYTES = 1 << 20
USER_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"
_USER_ID = re.compile(USER_ID_PATTERN)
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
                    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)

UserId = Annotated[str, StringConstraints(pattern=f"^{USER_ID_PATTERN}$")]
"""A user id as the API accepts it (the pattern is anchored: pydantic searches, it does not match)."""


def valid_user_id(value: Any) -> bool:
    return type(value) is str and _USER_ID.fullmatch(value) is not None


@runtime_checkable
class FeatureReader(Protocol):
    """What the app reads through. Records, not bare feature dicts, so every reader serves an event time."""

    def get_records(self, view: str, entity_ids: Sequence[str]) -> list[Optional[PackedRecord]]:
        """One record per id, in order (``None`` where nothing is stored)."""
        ...

    def ping(self) -> bool:
        """Whether the backend answers (``/health``)."""
        ...


# --------------------------------------------------------------------------- request and response models


class FeatureRecord(BaseModel):
    """One user's features as stored online."""

    user_id: str
    found: bool
    event_timestamp: Optional[str] = Field(
        description="Event time of the stored record (ISO-8601), the one to judge staleness by; null when not found.")
    features: Optional[dict[str, Any]] = Field(description="Feature values by name; null when not found.")


class BatchFeatureRecord(FeatureRecord):
    """One user's features in a batch answer, with the on-demand features when the request had a `request` object."""

    on_demand: Optional[dict[str, Any]] = Field(
        default=None, description="On-demand (request-time) features by name; only when the request had a "
        "`request` object.")


class FeaturesResponse(BaseModel):
    feature_view: str
    found_count: int
    missing_count: int
    results: list[BatchFeatureRecord] = Field(description="One result per requested id, in request order.")


class Score(BaseModel):
    user_id: str
    found: bool
    score: Optional[float] = Field(description="The model's score; null when the user has no features.")
    on_demand: Optional[dict[str, Any]] = Field(
        default=None, description="On-demand (request-time) features the model was given; only when the "
        "request had a `request` object.")


class PredictResponse(BaseModel):
    feature_view: str
    found_count: int
    missing_count: int
    results: list[Score] = Field(description="One result per requested id, in request order.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    feature_view: str
    predict: bool = Field(description="Whether POST /predict is served.")


class ErrorBody(BaseModel):
    """Every error answer but a request that does not validate (that is FastAPI's 422 body)."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(description="A stable code, e.g. not_found, unauthorized, store_unavailable.")
    detail: str


class UserIdsRequest(BaseModel):
    """User ids to look up (duplicates allowed); answered one result per id, in order."""

    model_config = ConfigDict(extra="forbid")
    user_ids: list[UserId] = Field(min_length=1, max_length=MAX_BATCH,
                                   description=f"1 to {MAX_BATCH} ids of 1-64 characters of A-Z a-z 0-9 _ . : -")


_REQUEST_TYPES: dict[str, Any] = {"Float64": float, "Float32": float, "Int64": int, "Int32": int, "String": str,
                                   "Bool": bool, "UnixTimestamp": datetime}


def request_model(spec: OnDemandSpec) -> type[BaseModel]:
    """The ``"request"`` object of an on-demand view: its request fields, required unless serving defaults them."""
    fields: dict[str, Any] = {}
    for name, dtype in spec.request_fields.items():
        kind = _REQUEST_TYPES[dtype]
        annotated = Annotated[kind, Field(allow_inf_nan=False)] if kind is float else kind
        if name in spec.defaulted_fields:
            fields[name] = (Optional[annotated], Field(default=None, description=(
                "default: when the server received the request" if name == "request_time" else "optional")))
        else:
            fields[name] = (annotated, Field(description=f"required by the on-demand view {spec.name}"))
    return create_model("OnDemandRequest", __config__=ConfigDict(extra="forbid"), **fields)


_AUTO: Any = object()


class ApiError(Exception):
    """A client or backend error with a stable code (becomes an :class:`ErrorBody`)."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.extra = extra


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses (413: JSON, or plain text from the body limit)."""
    return {status: {"description": "Request body over the size limit."} if status == 413 else {"model": ErrorBody}
            for status in statuses}


# --------------------------------------------------------------------------- JSON values


def _jsonable(value: Any) -> Any:
    t = type(value)
    if t is str or t is int or t is bool or value is None:
        return value
    if t is float:
        return value if math.isfinite(value) else None
    if t is list or t is tuple:
        return [_jsonable(v) for v in value]
    if t is dict:
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, datetime) or isinstance(value, date):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, int):
        return int(value)
    if hasattr(value, "tolist"):  # numpy
        return _jsonable(value.tolist())
    if isinstance(value, (set, frozenset)):
        return [_jsonable(v) for v in value]
    return str(value)


def _features_json(features: Optional[dict]) -> Optional[dict]:
    if features is None:
        return None
    out = {}
    for k, v in features.items():
        t = type(v)
        out[k] = v if (t is str or t is int or t is bool or v is None or (t is float and math.isfinite(v))) \
            else _jsonable(v)
    return out


# --------------------------------------------------------------------------- metrics


class ServingMetrics:
    """The metrics of ONE app, registered on its own :class:`CollectorRegistry` (``/metrics`` renders it)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "hybrid_serving_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "hybrid_serving_request_duration_seconds", "HTTP request latency (server side) by route and method.",
            ["route", "method"], buckets=_LATENCY_BUCKETS, registry=self.registry,
        )
        self.predict_latency = Histogram(
            "hybrid_serving_predict_duration_seconds", "Predictor call latency.", buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.lookups = Counter("hybrid_serving_feature_lookups", "Entity lookups by result.", ["result"],
                               registry=self.registry)
        self.disconnects = Counter(
            "hybrid_serving_client_disconnects",
            "Requests the client hung up on before they were read, by route and method.", ["route", "method"],
            registry=self.registry,
        )
        self.batch_sizes = Histogram(
            "hybrid_serving_batch_size", "User ids per batch request.", ["route"], buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.on_demand_errors = Counter(
            "hybrid_serving_on_demand_errors", "Rows whose on-demand features raised (served as nulls), by view.",
            ["view"], registry=self.registry,
        )


class _MetricsMiddleware:
    """Pure ASGI middleware: request count and latency labelled by the matched route template.

    A client that hangs up while its request body is read is counted as a disconnect instead:
    nobody is left to answer, and it is not a server error. FastAPI turns the hang-up into a 400
    for nobody, so it is recognised here by the ``http.disconnect`` message before the body ended.
    """

    def __init__(self, app: Any, metrics: ServingMetrics, router: Any):
        self.app = app
        self.metrics = metrics
        self.router = router

    def _template(self, scope) -> str:
        """The matched route's path template (bounded label values): the route FastAPI matched, else
        (documentation routes, unmatched paths) found like the router does."""
        matched = scope.get("route")
        if matched is not None:
            return matched.path
        partial = None
        for route in self.router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path
            if match is Match.PARTIAL and partial is None:
                partial = route.path
        return partial or "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        body_read = False
        hung_up = False

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        async def receive_watched():
            nonlocal body_read, hung_up
            message = await receive()
            if message["type"] == "http.request":
                body_read = body_read or not message.get("more_body", False)
            elif message["type"] == "http.disconnect" and not body_read:
                hung_up = True
            return message

        method = scope.get("method", "")
        try:
            await self.app(scope, receive_watched, send_status)
        finally:
            route = self._template(scope)
            if hung_up:
                log.info("client disconnected before its request was read: %s %s", method, scope.get("path", ""))
                self.metrics.disconnects.labels(route, method).inc()
            else:
                self.metrics.latency.labels(route, method).observe(time.perf_counter() - start)
                self.metrics.requests.labels(route, method, str(status)).inc()


# --------------------------------------------------------------------------- app


def create_app(
    reader: FeatureReader,
    feature_view: str,
    api_key: Optional[str] = None,
    predictor: Optional[Callable[[list[dict]], Sequence[Any]]] = None,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    title: str = "hybrid_pipeline feature serving",
    telemetry: Optional[dict] = None,
    on_demand: Optional[OnDemandSpec] = _AUTO,
    searcher: Optional[Any] = None,
) -> FastAPI:
    """Build the serving app.

    Args:
        reader: a :class:`FeatureReader` (``OnlineReader``, ``CombinedReader``); one without
            ``get_records`` is refused here rather than served without event timestamps.
        feature_view: the feature view served.
        api_key: when set, ``X-API-Key`` must equal it on ``/features`` and ``/predict``.
        predictor: ``predictor(list of feature dicts) -> one score per dict``; enables
            ``POST /predict``. Sync (run in the thread pool) or async.
        max_body_bytes: largest accepted request body (413 above).
        telemetry: FastAPI's native OpenTelemetry settings (``FastAPI(telemetry=...)``); default
            FastAPI's (spans/metrics on the global OpenTelemetry providers, no-ops unless configured).
        on_demand: the on-demand view computed for a ``"request"`` object; default
            ``user_request_features`` when it reads ``feature_view``, else none (``"request"`` refused).
        searcher: a :class:`hybrid_pipeline.vectors.Searcher`; enables ``POST /search``
            (:mod:`hybrid_pipeline.serving.search`, behind the same key and body limit).
    """
    if not isinstance(feature_view, str) or not feature_view:
        raise ValueError("feature_view must be a non-empty string")
    if api_key is not None and not api_key:
        raise ValueError("api_key must be None (no auth) or a non-empty string")
    if not isinstance(reader, FeatureReader):
        raise TypeError(f"reader must have get_records(view, ids) and ping() (a FeatureReader), "
                        f"got {type(reader).__name__}")
    metrics = ServingMetrics()
    view = feature_view
    if on_demand is _AUTO:
        on_demand = on_demand_mod.USER_REQUEST_FEATURES if view in on_demand_mod.USER_REQUEST_FEATURES.inputs else None
    body_model: type[BaseModel] = UserIdsRequest
    if on_demand is not None:
        body_model = create_model(
            "UserIdsWithRequest", __base__=UserIdsRequest,
            request=(Optional[request_model(on_demand)], Field(
                default=None, description=f"Request fields of the on-demand view {on_demand.name}; they apply to "
                "every id. With it, each result carries the on-demand features.")))

    app = FastAPI(title=title, telemetry=telemetry)  # type: ignore[arg-type]
    app.state.metrics_registry = metrics.registry
    app.state.reader = reader
    app.state.feature_view = feature_view
    app.add_middleware(_MetricsMiddleware, metrics=metrics, router=app.router)

    # ---- errors: client mistakes are JSON 4xx (422: FastAPI's own body); surprises a JSON 500, logged

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "API-Key"} if exc.status == 401 else None
        return JSONResponse({"error": exc.error, "detail": exc.detail, **exc.extra}, exc.status, headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}
        return JSONResponse({"error": codes.get(exc.status_code, "http_error"), "detail": str(exc.detail)},
                            exc.status_code, getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 body minus the echo of each offending ``input``: FastAPI's own handler answers
        500 when that input has no JSON form (``NaN``, a lone surrogate, both valid in a request body)
        and would send back whatever was sent (up to ``max_body_bytes``)."""
        errors = [{k: v for k, v in error.items() if k != "input"} for error in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, 422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error serving %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal_error", "detail": "internal server error"}, 500)

    # ---- helpers

    keyed: list[Any] = []
    if api_key:
        key_bytes = api_key.encode("utf-8")
        key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                                  description="Required on /features and /predict when the server has a key.")

        async def require_key(given: Annotated[Optional[str], Security(key_header)]) -> None:
            if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key_bytes):
                raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header")

        keyed = [Security(require_key)]

    def lookup(ids: list[str]) -> list[Optional[PackedRecord]]:
        try:
            records = reader.get_records(view, ids)
        except Exception as exc:
            log.exception("online store lookup failed")
            raise ApiError(503, "store_unavailable", f"online store lookup failed: {type(exc).__name__}") from None
        found = sum(1 for r in records if r is not None)
        if found:
            metrics.lookups.labels("found").inc(found)
        if len(records) - found:
            metrics.lookups.labels("missing").inc(len(records) - found)
        return records

    # The on-demand inputs need each view's own record (the stream's own time, not a merged record's):
    # a reader that wraps another one (CombinedReader.reader) is read underneath, one lookup per view.
    wrapped = getattr(reader, "reader", None)
    inputs_reader = wrapped if isinstance(wrapped, FeatureReader) else reader

    def on_demand_features(ids: list[str], records: list[Optional[PackedRecord]], request: BaseModel,
                           received: datetime) -> list[dict[str, Any]]:
        """The on-demand features of every id (one :func:`~hybrid_pipeline.features.on_demand.compute_rows`
        call), from the request's fields, the records read already and the other views the view reads."""
        assert on_demand is not None
        fields = request.model_dump()
        if fields.get("request_time") is None:
            fields["request_time"] = received
        others = [v for v in on_demand.inputs if v != view]
        try:
            stored = {v: inputs_reader.get_records(v, ids) for v in others}
            streaming = inputs_reader.get_records(on_demand_mod.STREAMING_VIEW, ids)
        except Exception as exc:
            log.exception("online store lookup failed")
            raise ApiError(503, "store_unavailable", f"online store lookup failed: {type(exc).__name__}") from None
        rows = []
        for i, record in enumerate(records):
            parts = {v: (None if recs[i] is None else recs[i].features) for v, recs in stored.items()}
            parts[view] = None if record is None else record.features
            stream = streaming[i]
            rows.append(on_demand_mod.serving_row(on_demand, fields, parts,
                                                  None if stream is None else stream.event_ts))
        out, errors = on_demand_mod.compute_rows(rows, on_demand)
        if errors:
            metrics.on_demand_errors.labels(on_demand.name).inc(errors)
            log.warning("%s raised for %d of %d rows; served as nulls", on_demand.name, errors, len(rows))
        return out

    def record_json(user_id: str, record: Optional[PackedRecord]) -> dict[str, Any]:
        if record is None:
            return {"user_id": user_id, "found": False, "event_timestamp": None, "features": None}
        return {"user_id": user_id, "found": True, "event_timestamp": record.event_ts.isoformat(),
                "features": _features_json(record.features)}

    # ---- routes

    @app.get("/health", response_model=Health, responses={503: {"model": Health}},
             summary="Whether the online store answers")
    async def health(response: Response) -> dict[str, Any]:
        try:
            ok = bool(reader.ping())
        except Exception as exc:
            log.warning("health check failed: %s", exc)
            ok = False
        if not ok:
            response.status_code = 503
        return {"status": "ok" if ok else "unavailable", "feature_view": view, "predict": predictor is not None}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics of this app",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition format."}})
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    user_id_param = Path(pattern=f"^{USER_ID_PATTERN}$", description="1-64 characters of A-Z a-z 0-9 _ . : -")

    @app.get("/features/{user_id}", response_model=FeatureRecord, response_model_exclude_unset=True, dependencies=keyed,
             responses=_errors(401, 404, 503), summary="One user's online features")
    async def features_one(user_id: Annotated[str, user_id_param]) -> dict[str, Any]:
        record = lookup([user_id])[0]
        if record is None:
            raise ApiError(404, "not_found", f"no features for user {user_id!r} in {view!r}", user_id=user_id)
        return record_json(user_id, record)

    @app.post("/features", response_model=FeaturesResponse, response_model_exclude_unset=True, dependencies=keyed,
              max_body_size=max_body_bytes,
              responses=_errors(401, 413, 503), summary="Online features of a batch of users")
    async def features_batch(body: body_model) -> dict[str, Any]:  # type: ignore[valid-type]
        received = datetime.now(timezone.utc)
        ids = body.user_ids
        metrics.batch_sizes.labels("/features").observe(len(ids))
        records = lookup(ids)
        found = sum(1 for r in records if r is not None)
        results = [record_json(u, r) for u, r in zip(ids, records)]
        request = getattr(body, "request", None)
        if request is not None:
            for result, extra in zip(results, on_demand_features(ids, records, request, received)):
                result["on_demand"] = _features_json(extra)
        return {"feature_view": view, "found_count": found, "missing_count": len(ids) - found, "results": results}

    if predictor is not None:
        is_async = inspect.iscoroutinefunction(predictor) or inspect.iscoroutinefunction(
            getattr(predictor, "__call__", None))

        @app.post("/predict", response_model=PredictResponse, response_model_exclude_unset=True, dependencies=keyed,
                  max_body_size=max_body_bytes,
                  responses=_errors(401, 413, 500, 503), summary="Model scores of a batch of users")
        async def predict(body: body_model) -> dict[str, Any]:  # type: ignore[valid-type]
            received = datetime.now(timezone.utc)
            ids = body.user_ids
            metrics.batch_sizes.labels("/predict").observe(len(ids))
            records = lookup(ids)
            request = getattr(body, "request", None)
            extras = on_demand_features(ids, records, request, received) if request is not None else None
            if extras is None:
                found_rows = [r.features for r in records if r is not None]
            else:
                found_rows = [{**r.features, **extra} for r, extra in zip(records, extras) if r is not None]
            scores: list[Any] = []
            if found_rows:
                start = time.perf_counter()
                try:
                    if is_async:
                        raw = await predictor(found_rows)  # type: ignore[misc]
                    else:
                        raw = await run_in_threadpool(predictor, found_rows)
                    scores = list(raw.tolist() if hasattr(raw, "tolist") else raw)
                except Exception:
                    log.exception("predictor failed")
                    raise ApiError(500, "prediction_failed", "the model failed on this batch") from None
                finally:
                    metrics.predict_latency.observe(time.perf_counter() - start)
                if len(scores) != len(found_rows):
                    log.error("predictor returned %d scores for %d rows", len(scores), len(found_rows))
                    raise ApiError(500, "prediction_failed", "the model returned a wrong number of scores")
            it = iter(scores)
            results = [{"user_id": u, "found": r is not None, "score": _jsonable(next(it)) if r is not None else None}
                       for u, r in zip(ids, records)]
            if extras is not None:
                for result, extra in zip(results, extras):
                    result["on_demand"] = _features_json(extra)
            return {"feature_view": view, "found_count": len(found_rows),
                    "missing_count": len(ids) - len(found_rows), "results": results}

    app.state.auth_dependencies = keyed  # routes added later (POST /search) sit behind the same key
    app.state.max_body_bytes = max_body_bytes
    if searcher is not None:
        from hybrid_pipeline.serving.search import install_search

        install_search(app, searcher)
    return app
