"""Online feature serving API (FastAPI) over a :class:`FeatureReader`.

The reader is an :class:`hybrid_pipeline.online.OnlineReader` (``python -m hybrid_pipeline.serving``)
or a :class:`hybrid_pipeline.features.streaming.CombinedReader` (``hybrid-pipeline serve``); both
hand back records with their event timestamps, so ``event_timestamp`` is the same on either path.

Routes (``X-API-Key`` required on the data routes when an API key is configured):

* ``GET /features/{user_id}``: ``200 {"user_id", "found": true, "event_timestamp", "features"}``;
  404 when nothing is stored for the user.
* ``POST /features`` with ``{"user_ids": [...]}`` (1..``max_batch`` ids, duplicates allowed):
  one result per id, in order; unknown users get ``"found": false`` and ``"features": null``.
* ``POST /predict`` (only when a predictor is given), same body: features of the found users
  go to ``predictor(list_of_feature_dicts)`` in one call; one score per found user.
* ``GET /health`` (backend ping; 503 when it fails) and ``GET /metrics`` (Prometheus text)
  need no key.

``event_timestamp`` is the stored record's event time (ISO-8601), the one clients judge
staleness by; a combined reader dates a merged record by its oldest part.

User ids are 1-64 characters of ``[A-Za-z0-9_.:-]``. Every client mistake is answered with
a 4xx and a JSON body ``{"error": <code>, "detail": <message>}``: 400 malformed JSON, 401 bad
or missing key, 404 unknown user/route, 405 wrong method, 413 body over ``max_body_bytes``,
422 anything else that is well-formed JSON but not a valid request. A failing backend is 503.
A client that hangs up before its request is read is not a server error: it gets no answer,
one log line and a count in ``hybrid_serving_client_disconnects_total``, not in the requests.

Handlers are ``async`` and call the reader inline: a lookup is tens of microseconds on
SQLite and one round trip on Redis, cheaper than a hop to the thread pool. The predictor
runs in the thread pool (it may be a model forward pass).

Feature values are returned as JSON: NaN/inf become ``null``, timestamps ISO-8601 strings,
bytes base64.
"""

from __future__ import annotations

import base64
import hmac
import inspect
import itertools
import json
import logging
import math
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Any, Optional, Protocol, runtime_checkable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from hybrid_pipeline.online import PackedRecord

__all__ = ["MAX_BATCH", "USER_ID_PATTERN", "FeatureReader", "create_app", "valid_user_id"]

log = logging.getLogger(__name__)

MAX_BATCH = 1000
MAX_BODY_BYTES = 1 << 20
USER_ID_PATTERN = r"[A-Za-z0-9_.:-]{1,64}"
_USER_ID = re.compile(USER_ID_PATTERN)
_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075, 0.01,
                    0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)


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


class ApiError(Exception):
    """A client error with a stable code (becomes a JSON 4xx)."""

    def __init__(self, status: int, error: str, detail: str, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.error = error
        self.detail = detail
        self.extra = extra


# --------------------------------------------------------------------------- JSON


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


def _json_response(payload: Any, status: int = 200, headers: Optional[dict] = None) -> Response:
    body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def _error_response(status: int, error: str, detail: str, headers: Optional[dict] = None, **extra: Any) -> Response:
    return _json_response({"error": error, "detail": detail, **_jsonable(extra)}, status, headers)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- metrics


class _Counter:
    """A labelled counter kept in this app's memory."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, labelvalues: tuple[str, ...] = (), amount: float = 1.0) -> None:
        self.values[labelvalues] = self.values.get(labelvalues, 0.0) + amount

    def family(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labelvalues, value in list(self.values.items()):
            family.add_metric(labelvalues, value)
        return family


class _Histogram:
    """A labelled histogram kept in this app's memory (per-bucket counts, sum)."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float], labelnames: Sequence[str] = ()) -> None:
        self.name, self.documentation, self.labelnames = name, documentation, tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        self.values: dict[tuple[str, ...], list] = {}  # labels -> [counts per bucket (last: +Inf), sum]

    def child(self, labelvalues: tuple[str, ...] = ()) -> list:
        state = self.values.get(labelvalues)
        if state is None:
            state = self.values[labelvalues] = [[0] * (len(self.bounds) + 1), 0.0]
        return state

    def observe_child(self, state: list, value: float) -> None:
        state[0][bisect_left(self.bounds, value)] += 1  # first bucket whose upper bound is >= value
        state[1] += value

    def observe(self, value: float, labelvalues: tuple[str, ...] = ()) -> None:
        self.observe_child(self.child(labelvalues), value)

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for labelvalues, (counts, total) in list(self.values.items()):
            cumulative = list(itertools.accumulate(counts))
            family.add_metric(labelvalues, list(zip(self._les, cumulative)), total)
        return family


class _Metrics:
    """The metrics of ONE app, in its own :class:`CollectorRegistry`.

    The values live in this object, not in ``prometheus_client`` metric objects: when
    ``PROMETHEUS_MULTIPROC_DIR`` is set before ``prometheus_client`` is first imported
    (``import feast`` sets it), every ``Counter``/``Histogram`` of the process keeps its
    value in a per-process file keyed by metric name and labels, so two apps in one process
    (or an app and a test) would count each other's requests. A collector over plain
    in-memory values counts this app's requests only, whatever mode the process is in.
    Updates happen on the event loop thread; a lock still guards them against other threads.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = _Counter(
            "hybrid_serving_requests", "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
        )
        self.latency = _Histogram(
            "hybrid_serving_request_duration_seconds", "HTTP request latency (server side) by route and method.",
            _LATENCY_BUCKETS, ["route", "method"],
        )
        self.predict_latency = _Histogram(
            "hybrid_serving_predict_duration_seconds", "Predictor call latency.", _LATENCY_BUCKETS,
        )
        self.lookups = _Counter("hybrid_serving_feature_lookups", "Entity lookups by result.", ["result"])
        self.disconnects = _Counter(
            "hybrid_serving_client_disconnects",
            "Requests the client hung up on before they were read, by route and method.", ["route", "method"],
        )
        self.batch_sizes = _Histogram(
            "hybrid_serving_batch_size", "User ids per batch request.", _BATCH_BUCKETS, ["route"],
        )
        self._metrics = (self.requests, self.latency, self.predict_latency, self.lookups, self.batch_sizes,
                         self.disconnects)
        self._lock = threading.Lock()
        self._latency_children: dict[tuple[str, str], list] = {}
        self.registry.register(self)

    def collect(self):  # noqa: ANN201 - the prometheus_client Collector protocol
        with self._lock:
            return [m.family() for m in self._metrics]

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method)
        with self._lock:
            child = self._latency_children.get(key)
            if child is None:
                child = self.latency.child(key)
                if len(self._latency_children) < 1000:  # label values are bounded (route templates, methods)
                    self._latency_children[key] = child
            self.latency.observe_child(child, seconds)
            self.requests.inc((route, method, str(status)))

    def count_disconnect(self, route: str, method: str) -> None:
        with self._lock:
            self.disconnects.inc((route, method))

    def observe_predict(self, seconds: float) -> None:
        with self._lock:
            self.predict_latency.observe(seconds)

    def observe_batch_size(self, route: str, size: int) -> None:
        with self._lock:
            self.batch_sizes.observe(size, (route,))

    def count_lookups(self, found: int, missing: int) -> None:
        with self._lock:
            if found:
                self.lookups.inc(("found",), found)
            if missing:
                self.lookups.inc(("missing",), missing)


class _MetricsMiddleware:
    """Pure ASGI middleware: request count and latency labelled by the matched route template.

    A client that hangs up while its request is read (Starlette's ``ClientDisconnect``) is
    counted as a disconnect instead: nobody is left to answer, and it is not a server error.
    """

    def __init__(self, app: Any, metrics: _Metrics, router: Any):
        self.app = app
        self.metrics = metrics
        self.router = router

    def _template(self, scope) -> str:
        """The matched route's path template (bounded label values), found like the router does."""
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

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        method = scope.get("method", "")
        hung_up = False
        try:
            await self.app(scope, receive, send_status)
        except ClientDisconnect:
            hung_up = True
            log.info("client disconnected before its request was read: %s %s", method, scope.get("path", ""))
        finally:
            route = self._template(scope)
            if hung_up:
                self.metrics.count_disconnect(route, method)
            else:
                self.metrics.record(route, method, status, time.perf_counter() - start)


# --------------------------------------------------------------------------- request parsing


async def _read_json(request: Request, max_body_bytes: int) -> Any:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise ApiError(400, "invalid_request", "Content-Length is not a number") from None
        if declared > max_body_bytes:
            raise ApiError(413, "body_too_large", f"request body is over {max_body_bytes} bytes")
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise ApiError(413, "body_too_large", f"request body is over {max_body_bytes} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body.strip():
        raise ApiError(400, "invalid_json", 'request body is empty; send {"user_ids": [...]}')
    try:
        return json.loads(body)
    except RecursionError:
        raise ApiError(400, "invalid_json", "request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError, huge ints, bad UTF-8
        raise ApiError(400, "invalid_json", f"request body is not valid JSON: {_short(str(exc), 120)}") from None


def _user_ids_from(payload: Any, max_batch: int) -> list[str]:
    if not isinstance(payload, dict):
        raise ApiError(422, "invalid_request", f'body must be a JSON object {{"user_ids": [...]}}, got {type(payload).__name__}')
    extra = [k for k in payload if k != "user_ids"]
    if extra:
        raise ApiError(422, "invalid_request", f"unknown fields {_short(extra)}; the body takes only 'user_ids'")
    if "user_ids" not in payload:
        raise ApiError(422, "invalid_request", "'user_ids' is required")
    ids = payload["user_ids"]
    if not isinstance(ids, list):
        raise ApiError(422, "invalid_request", f"'user_ids' must be a list of strings, got {type(ids).__name__}")
    if not ids:
        raise ApiError(422, "empty_batch", "'user_ids' is empty; send 1 to %d ids" % max_batch)
    if len(ids) > max_batch:
        raise ApiError(422, "batch_too_large", f"'user_ids' has {len(ids)} ids; at most {max_batch} per request")
    bad = [i for i, u in enumerate(ids) if not valid_user_id(u)]
    if bad:
        first = ids[bad[0]]
        raise ApiError(
            422, "invalid_user_id",
            f"{len(bad)} invalid user ids (first at index {bad[0]}: {_short(first, 40)}); a user id is 1-64 "
            "characters of letters, digits and _ . : -",
            invalid_indexes=bad[:20],
        )
    return ids


# --------------------------------------------------------------------------- app


def create_app(
    reader: FeatureReader,
    feature_view: str,
    api_key: Optional[str] = None,
    predictor: Optional[Callable[[list[dict]], Sequence[Any]]] = None,
    *,
    max_batch: int = MAX_BATCH,
    max_body_bytes: int = MAX_BODY_BYTES,
    title: str = "hybrid_pipeline feature serving",
    telemetry: Optional[dict] = None,
) -> FastAPI:
    """Build the serving app.

    Args:
        reader: a :class:`FeatureReader` (``OnlineReader``, ``CombinedReader``); one without
            ``get_records`` is refused here rather than served without event timestamps.
        feature_view: the feature view served.
        api_key: when set, ``X-API-Key`` must equal it on ``/features`` and ``/predict``.
        predictor: ``predictor(list of feature dicts) -> one score per dict``; enables
            ``POST /predict``. Sync (run in the thread pool) or async.
        max_batch: most ids per batch request (default 1000).
        max_body_bytes: largest accepted request body (413 above).
        telemetry: FastAPI's native OpenTelemetry settings (``FastAPI(telemetry=...)``); default
            FastAPI's (spans/metrics on the global OpenTelemetry providers, no-ops unless configured).
    """
    if not isinstance(feature_view, str) or not feature_view:
        raise ValueError("feature_view must be a non-empty string")
    if api_key is not None and not api_key:
        raise ValueError("api_key must be None (no auth) or a non-empty string")
    if not isinstance(reader, FeatureReader):
        raise TypeError(f"reader must have get_records(view, ids) and ping() (a FeatureReader), "
                        f"got {type(reader).__name__}")
    metrics = _Metrics()
    key_bytes = api_key.encode("utf-8") if api_key else None
    view = feature_view

    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None,
                  telemetry=telemetry)  # type: ignore[arg-type]
    app.state.metrics_registry = metrics.registry
    app.state.reader = reader
    app.state.feature_view = feature_view
    app.add_middleware(_MetricsMiddleware, metrics=metrics, router=app.router)

    # ---- errors: every client mistake is a JSON 4xx; surprises are a JSON 500, logged

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        headers = {"WWW-Authenticate": "API-Key"} if exc.status == 401 else None
        return _error_response(exc.status, exc.error, exc.detail, headers, **exc.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail),
                               getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return _error_response(422, "invalid_request", "request does not validate",
                               errors=[{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()])

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unhandled error serving %s %s", request.method, request.url.path)
        return _error_response(500, "internal_error", "internal server error")

    # ---- helpers

    def check_key(request: Request) -> None:
        if key_bytes is None:
            return
        given = request.headers.get("x-api-key")
        if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), key_bytes):
            raise ApiError(401, "unauthorized", "missing or wrong X-API-Key header")

    def lookup(ids: list[str]) -> list[tuple[Optional[dict], Optional[str]]]:
        """(features, event_timestamp ISO) per id."""
        try:
            records = reader.get_records(view, ids)
            out: list[tuple[Optional[dict], Optional[str]]] = [
                (None, None) if r is None else (r.features, r.event_ts.isoformat()) for r in records
            ]
        except Exception as exc:
            log.exception("online store lookup failed")
            raise ApiError(503, "store_unavailable", f"online store lookup failed: {type(exc).__name__}") from None
        found = sum(1 for f, _ in out if f is not None)
        metrics.count_lookups(found, len(out) - found)
        return out

    # ---- routes

    async def health(request: Request):
        try:
            ok = bool(reader.ping())
        except Exception as exc:
            log.warning("health check failed: %s", exc)
            ok = False
        if not ok:
            return _json_response({"status": "unavailable", "feature_view": view}, 503)
        return _json_response({"status": "ok", "feature_view": view, "predict": predictor is not None})

    async def prometheus_metrics(request: Request):
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def features_one(request: Request):
        check_key(request)
        user_id = request.path_params["user_id"]
        if not valid_user_id(user_id):
            raise ApiError(422, "invalid_user_id",
                           f"invalid user id {_short(user_id, 40)}; a user id is 1-64 characters of letters, digits "
                           "and _ . : -")
        features, event_ts = lookup([user_id])[0]
        if features is None:
            raise ApiError(404, "not_found", f"no features for user {user_id!r} in {view!r}", user_id=user_id)
        return _json_response(
            {"user_id": user_id, "found": True, "event_timestamp": event_ts, "features": _features_json(features)}
        )

    async def features_batch(request: Request):
        check_key(request)
        ids = _user_ids_from(await _read_json(request, max_body_bytes), max_batch)
        metrics.observe_batch_size("/features", len(ids))
        rows = lookup(ids)
        results = [
            {"user_id": u, "found": f is not None, "event_timestamp": ts, "features": _features_json(f)}
            for u, (f, ts) in zip(ids, rows)
        ]
        found = sum(1 for r in results if r["found"])
        return _json_response({"feature_view": view, "found_count": found, "missing_count": len(ids) - found,
                               "results": results})

    if predictor is not None:
        is_async = inspect.iscoroutinefunction(predictor) or inspect.iscoroutinefunction(
            getattr(predictor, "__call__", None))

        async def predict(request: Request):
            check_key(request)
            ids = _user_ids_from(await _read_json(request, max_body_bytes), max_batch)
            metrics.observe_batch_size("/predict", len(ids))
            rows = lookup(ids)
            found_rows = [f for f, _ in rows if f is not None]
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
                    return _error_response(500, "prediction_failed", "the model failed on this batch")
                finally:
                    metrics.observe_predict(time.perf_counter() - start)
                if len(scores) != len(found_rows):
                    log.error("predictor returned %d scores for %d rows", len(scores), len(found_rows))
                    return _error_response(500, "prediction_failed", "the model returned a wrong number of scores")
            it = iter(scores)
            results = [
                {"user_id": u, "found": f is not None, "score": _jsonable(next(it)) if f is not None else None}
                for u, (f, _) in zip(ids, rows)
            ]
            return _json_response({"feature_view": view, "found_count": len(found_rows),
                                   "missing_count": len(ids) - len(found_rows), "results": results})

    # Plain Starlette routes: FastAPI's dependency solving would cost more than the lookup.
    app.add_route("/health", health, methods=["GET"])
    app.add_route("/metrics", prometheus_metrics, methods=["GET"])
    app.add_route("/features/{user_id}", features_one, methods=["GET"])
    app.add_route("/features", features_batch, methods=["POST"])
    if predictor is not None:
        app.add_route("/predict", predict, methods=["POST"])

    return app
