"""The packed online record: one value per (feature view, entity key).

Layout (all versions keep the 17-byte header so stores can order records without
decoding the body)::

    byte 0       format version (1)
    bytes 1..8   event timestamp, microseconds since the Unix epoch, + 2**63, big-endian u64
    bytes 9..16  created timestamp, the same way; 0 when there is none
    bytes 17..   body: msgpack map {feature_name: value}

The biased big-endian timestamps make a bytewise comparison of ``record[1:17]`` the
ordering "newer event_ts wins, then newer created_ts" (a missing created_ts sorts
first); the Redis backend's Lua script relies on that.

Values: ``None``, bool, int (64-bit), float (NaN/inf kept), str, bytes, lists of those,
dicts with string keys, and timestamps (``datetime``; naive means UTC; read back as
UTC-aware ``datetime``). ``date`` is stored as its ISO string, ``Decimal``/``UUID`` as
strings, sets and tuples as lists.
"""

from __future__ import annotations

import decimal
import struct
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Mapping, Optional

import msgpack

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "PackedRecord",
    "pack_record",
    "unpack_features",
    "unpack_record",
    "to_epoch_us",
    "from_epoch_us",
]

FORMAT_VERSION = 1
HEADER_SIZE = 17
_BIAS = 1 << 63
_HEADER = struct.Struct(">BQQ")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass(frozen=True, slots=True)
class PackedRecord:
    """A decoded record."""

    features: dict[str, Any]
    event_ts_us: int
    created_ts_us: Optional[int]

    @property
    def event_ts(self) -> datetime:
        return from_epoch_us(self.event_ts_us)

    @property
    def created_ts(self) -> Optional[datetime]:
        return None if self.created_ts_us is None else from_epoch_us(self.created_ts_us)


def to_epoch_us(ts: datetime | int | None) -> Optional[int]:
    """Microseconds since the epoch; a naive ``datetime`` is taken as UTC; ints pass through."""
    if ts is None:
        return None
    if isinstance(ts, bool):
        raise TypeError("a timestamp cannot be a bool")
    if isinstance(ts, int):
        return ts
    if isinstance(ts, datetime):
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=timezone.utc)
        delta = ts - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    if hasattr(ts, "to_pydatetime"):  # pandas.Timestamp
        return to_epoch_us(ts.to_pydatetime())
    raise TypeError(f"cannot use {type(ts).__name__} as a timestamp")


def from_epoch_us(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, tz=timezone.utc).replace(microsecond=us % 1_000_000)


def _default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        if obj.tzinfo is None:
            obj = obj.replace(tzinfo=timezone.utc)
        return msgpack.Timestamp.from_datetime(obj)
    if isinstance(obj, date):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    if isinstance(obj, (decimal.Decimal, uuid.UUID)):
        return str(obj)
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if hasattr(obj, "to_pydatetime"):  # pandas.Timestamp
        return _default(obj.to_pydatetime())
    raise TypeError(f"cannot pack a value of type {type(obj).__name__}: {obj!r:.80}")


_packer_options = dict(default=_default, use_bin_type=True, datetime=False)


def pack_record(
    features: Mapping[str, Any],
    event_ts: datetime | int,
    created_ts: datetime | int | None = None,
) -> bytes:
    """Pack ``features`` with their timestamps (datetimes or epoch microseconds)."""
    event_us = to_epoch_us(event_ts)
    if event_us is None:
        raise ValueError("a record needs an event timestamp")
    created_us = to_epoch_us(created_ts)
    header = _HEADER.pack(FORMAT_VERSION, event_us + _BIAS, 0 if created_us is None else created_us + _BIAS)
    body = msgpack.packb(features if type(features) is dict else dict(features), **_packer_options)
    return header + body


def _check_version(data: bytes) -> None:
    if len(data) < HEADER_SIZE or data[0] != FORMAT_VERSION:
        version = data[0] if data else None
        raise ValueError(f"not a packed online record of format {FORMAT_VERSION} (version byte {version!r})")


def unpack_features(data: bytes) -> dict[str, Any]:
    """The feature dict only (the hot path of the direct reader)."""
    if data[0] != FORMAT_VERSION:
        _check_version(data)
    return msgpack.unpackb(memoryview(data)[HEADER_SIZE:], raw=False, timestamp=3, strict_map_key=False)


def unpack_record(data: bytes) -> PackedRecord:
    _check_version(data)
    _, event_b, created_b = _HEADER.unpack_from(data)
    features = msgpack.unpackb(memoryview(data)[HEADER_SIZE:], raw=False, timestamp=3, strict_map_key=False)
    return PackedRecord(features, event_b - _BIAS, None if created_b == 0 else created_b - _BIAS)
