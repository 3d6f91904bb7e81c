"""Request-time ("on-demand") features: ONE definition that training and serving both run.

Feast's on-demand feature view ``user_request_features`` (generated into the Feast repo by
:mod:`hybrid_pipeline.features.repo` from :data:`USER_REQUEST_FEATURES`) calls
:func:`transform_python` on the rows of ``get_historical_features``; the serving API
(``POST /features`` and ``POST /predict`` with a ``"request"`` object) calls
:func:`compute_rows` on the online records. Both end in :func:`compute_row`, so a model is
served exactly the values it was trained on. No Feast, Dagster, pandas or pyarrow import here:
``serve`` imports this module.

Features (``request_time`` is the request's time, UTC; naive timestamps are taken as UTC):

* ``seconds_since_last_event``: ``request_time`` minus the user's newest event timestamp
  (``last_event_at`` of the ``user_activity`` view; when serving, the newest of that and the
  streaming record's time, see :func:`newest_event_at`); null when the user has none.
  Negative when the request is dated before that event (a client-supplied ``request_time``).
* ``request_hour``: the UTC hour (0-23) of ``request_time``.
* ``amount_vs_avg_order``: the request's ``amount`` over the user's average purchase revenue
  (``revenue_30d / purchases_30d``); null when the user made no purchase in 30 days, the
  average is 0, or ``amount`` is null/NaN.

A row whose computation raises gets nulls for every output (never the whole batch); callers
count those rows (serving: ``hybrid_serving_on_demand_errors_total``).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "ACTIVITY_VIEW",
    "OnDemandSpec",
    "REQUEST_SOURCE",
    "STREAMING_VIEW",
    "USER_REQUEST_FEATURES",
    "compute_row",
    "compute_rows",
    "newest_event_at",
    "serving_row",
    "transform_python",
]

ACTIVITY_VIEW = "user_activity"
"""The feature view holding each user's newest event timestamp (``last_event_at``)."""
STREAMING_VIEW = "user_streaming_features"
"""The streaming view (``hybrid_pipeline.features.streaming.VIEW``); its record time is the newest
micro-batch commit that carried the user's events, so serving counts it as an event time."""
REQUEST_SOURCE = "user_request"


@dataclass(frozen=True)
class OnDemandSpec:
    """An on-demand feature view as data: what it reads, what it needs from the request, what it returns.

    Attributes:
        name: the Feast on-demand feature view name (also the prefix of its feature refs).
        inputs: feature view -> the stored features it reads.
        request_fields: request field -> Feast type name (the ``RequestSource`` schema).
        defaulted_fields: request fields serving fills in itself when absent (``request_time``:
            the time the server received the request); all others are required.
        outputs: output feature -> Feast type name, in order.
        udf: the row function (``compute_row``) serving calls.
        udf_ref: ``"module:function"`` of Feast's python-mode UDF (column lists in and out).
        request_source: name of the Feast ``RequestSource`` holding ``request_fields``.
        input_versions: content versions of the input views (set by the catalog); part of :meth:`version`.
    """

    name: str
    inputs: Mapping[str, Sequence[str]]
    request_fields: Mapping[str, str]
    defaulted_fields: tuple[str, ...]
    outputs: Mapping[str, str]
    udf: Callable[[Mapping[str, Any]], dict[str, Any]] = field(repr=False, compare=False, default=None)  # type: ignore[assignment]
    udf_ref: str = ""
    request_source: str = REQUEST_SOURCE
    description: str = ""
    input_versions: Mapping[str, str] = field(default_factory=dict)

    def udf_source(self) -> str:
        """The UDF as Feast stores it (``udf_string``): a self-contained function that imports and calls
        :attr:`udf_ref`. Feast 0.67 rebuilds a UDF by executing this text (not from the pickled
        function), so it must not depend on module globals; the docstring carries :meth:`version`,
        so a change of the code is a change Feast's diff sees."""
        module, _, function = self.udf_ref.partition(":")
        return (f"def {function}(inputs):\n"
                f"    \"\"\"{self.name} version {self.version(self.input_versions)}: {module}.{function}\"\"\"\n"
                f"    from {module} import {function} as run\n\n"
                f"    return run(inputs)\n")

    @property
    def required_fields(self) -> tuple[str, ...]:
        return tuple(f for f in self.request_fields if f not in self.defaulted_fields)

    def feature_refs(self) -> list[str]:
        return [f"{self.name}:{o}" for o in self.outputs]

    def version(self, input_versions: Mapping[str, str] | None = None) -> str:
        """Content hash of the definition: inputs (and their views' versions), request schema,
        outputs and the transformation's source code. A change to any of them is a new version."""
        payload = {
            "name": self.name,
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "input_versions": dict(input_versions or {}),
            "request": dict(self.request_fields),
            "outputs": dict(self.outputs),
            "code": transformation_source(),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _utc(value: Any) -> datetime | None:
    """A timestamp (datetime, pandas Timestamp, ISO string, epoch seconds) as an aware UTC datetime; None/NaT -> None."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "to_pydatetime"):  # pandas.Timestamp (NaT's to_pydatetime is NaT)
        if value != value:  # NaT
            return None
        value = value.to_pydatetime()
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, tz=timezone.utc)
    if not isinstance(value, datetime):
        raise TypeError(f"not a timestamp: {type(value).__name__}")
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _input(row: Mapping[str, Any], view: str, name: str) -> Any:
    """A feature by its short name, or by Feast's full name (``<view>__<name>``)."""
    if name in row:
        return row[name]
    return row.get(f"{view}__{name}")


def compute_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The on-demand features of one row of inputs (stored features + request fields).

    ``row`` holds ``request_time`` (required), ``amount``, ``last_event_at``, ``revenue_30d``
    and ``purchases_30d`` (missing or null allowed; Feast's ``<view>__<feature>`` names too).
    """
    request_time = _utc(row.get("request_time"))
    if request_time is None:
        raise ValueError("request_time is required")
    last_event = _utc(_input(row, ACTIVITY_VIEW, "last_event_at"))
    seconds = None if last_event is None else (request_time - last_event) / _ONE_SECOND
    revenue = _number(_input(row, "user_features", "revenue_30d"))
    purchases = _number(_input(row, "user_features", "purchases_30d"))
    amount = _number(row.get("amount"))
    average = revenue / purchases if revenue is not None and purchases else None
    ratio = amount / average if amount is not None and average else None
    return {"seconds_since_last_event": seconds, "request_hour": request_time.hour, "amount_vs_avg_order": ratio}


_ONE_SECOND = datetime(1970, 1, 1, 0, 0, 1) - datetime(1970, 1, 1)


def _null_row(spec: OnDemandSpec) -> dict[str, Any]:
    return dict.fromkeys(spec.outputs)


def compute_rows(rows: Sequence[Mapping[str, Any]], spec: OnDemandSpec | None = None) -> tuple[list[dict[str, Any]], int]:
    """:func:`compute_row` over ``rows``; a row that raises gets nulls. Returns (outputs, rows that raised)."""
    spec = spec or USER_REQUEST_FEATURES
    udf = spec.udf
    out: list[dict[str, Any]] = []
    errors = 0
    for row in rows:
        try:
            out.append(udf(row))
        except Exception:  # noqa: BLE001 - one bad row must not fail the batch; it is counted
            errors += 1
            out.append(_null_row(spec))
    return out, errors


def newest_event_at(*timestamps: Any) -> datetime | None:
    """The newest of several event timestamps (None ignored): the stored view's and the stream's."""
    known = [t for t in (_utc(v) for v in timestamps) if t is not None]
    return max(known) if known else None


def serving_row(spec: OnDemandSpec, request: Mapping[str, Any], stored: Mapping[str, Mapping[str, Any] | None],
                streaming_event_at: Any = None) -> dict[str, Any]:
    """One entity's UDF inputs when serving: the request's fields, the stored features ``spec`` reads
    (``stored``: view -> that view's online features, None when the user has none) and, for
    ``last_event_at``, the newest of the stored value and the streaming record's time.

    Training has no streaming view: there ``last_event_at`` is the ``user_activity`` value alone.
    """
    row = dict(request)
    for view, features in spec.inputs.items():
        values = stored.get(view) or {}
        for name in features:
            row[name] = values.get(name)
    if "last_event_at" in row and streaming_event_at is not None:
        row["last_event_at"] = newest_event_at(row["last_event_at"], streaming_event_at)
    return row


def transform_python(inputs: dict[str, list[Any]]) -> dict[str, Any]:
    """Feast's python-mode UDF of ``user_request_features`` (column lists in, column lists out):
    :func:`compute_rows` on the rows."""
    spec = USER_REQUEST_FEATURES
    columns = {name: values for name, values in inputs.items() if name in _UDF_INPUTS}
    n = len(next(iter(inputs.values()))) if inputs else 0
    rows = [{name: values[i] for name, values in columns.items()} for i in range(n)]
    out, errors = compute_rows(rows, spec)
    if errors:
        log.warning("%s: %d of %d rows raised; their features are null", spec.name, errors, n)
    return {name: [r[name] for r in out] for name in spec.outputs}


_UDF_INPUTS = frozenset({"request_time", "amount", "last_event_at", "revenue_30d", "purchases_30d",
                         f"{ACTIVITY_VIEW}__last_event_at", "user_features__revenue_30d", "user_features__purchases_30d"})


def transformation_source() -> str:
    """The source text of every function the transformation runs (what the versions hash)."""
    parts = [inspect.getsource(f) for f in (_utc, _number, _input, compute_row, compute_rows, transform_python)]
    return "\n".join(parts)


USER_REQUEST_FEATURES = OnDemandSpec(
    name="user_request_features",
    inputs={ACTIVITY_VIEW: ("last_event_at",), "user_features": ("revenue_30d", "purchases_30d")},
    request_fields={"request_time": "UnixTimestamp", "amount": "Float64"},
    defaulted_fields=("request_time",),
    outputs={"seconds_since_last_event": "Float64", "request_hour": "Int64", "amount_vs_avg_order": "Float64"},
    udf=compute_row,
    udf_ref="hybrid_pipeline.features.on_demand:transform_python",
    description="Request-time features: seconds since the user's newest event, the request's UTC hour, and the "
    "request amount over the user's average order (hybrid_pipeline.features.on_demand).",
)
