"""Feast protos <-> the plain Python values kept in packed records.

Entity keys are stored as strings so the direct reader needs no Feast objects: a single
join key is stored as its value (``"u123"``, ``"42"`` for an int key, hex for bytes);
several join keys as ``name=value`` pairs sorted by name and joined with ``|``.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from feast.protos.feast.types.EntityKey_pb2 import EntityKey as EntityKeyProto
from feast.protos.feast.types.Value_pb2 import Value as ValueProto
from feast.value_type import ValueType

__all__ = [
    "entity_key_to_str",
    "proto_to_python",
    "python_to_proto",
    "value_type_of",
]

# Feast's sentinel for a null timestamp inside unix_timestamp(_list)_val
_NULL_TS = -9223372036854775808

_SCALAR_ATTRS = frozenset({"string_val", "int64_val", "int32_val", "double_val", "float_val", "bool_val", "bytes_val"})
_LIST_ATTRS = frozenset(
    {"string_list_val", "int64_list_val", "int32_list_val", "double_list_val", "float_list_val", "bool_list_val",
     "bytes_list_val"}
)


def _scalar_key_str(value: ValueProto) -> str:
    attr = value.WhichOneof("val")
    if attr is None:
        raise ValueError("an entity key value is null")
    v = getattr(value, attr)
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, (str, int)):
        return str(v)
    raise ValueError(f"unsupported entity key value type {attr}")


def entity_key_to_str(entity_key: EntityKeyProto) -> str:
    """The string under which the record of ``entity_key`` is stored."""
    keys = entity_key.join_keys
    values = entity_key.entity_values
    if len(keys) == 1:
        return _scalar_key_str(values[0])
    pairs = sorted(zip(keys, values), key=lambda kv: kv[0])
    return "|".join(f"{k}={_scalar_key_str(v)}" for k, v in pairs)


def _ts(seconds: int) -> Optional[datetime]:
    return None if seconds == _NULL_TS else datetime.fromtimestamp(seconds, tz=timezone.utc)


def proto_to_python(value: ValueProto) -> Any:
    """A Feast ``Value`` as a packable Python value (None for null)."""
    attr = value.WhichOneof("val")
    if attr is None or attr == "null_val":
        return None
    if attr in _SCALAR_ATTRS:
        return getattr(value, attr)
    if attr in _LIST_ATTRS:
        return list(getattr(value, attr).val)
    if attr == "unix_timestamp_val":
        return _ts(value.unix_timestamp_val)
    if attr == "unix_timestamp_list_val":
        return [_ts(v) for v in value.unix_timestamp_list_val.val]
    if attr == "json_val":  # keep the JSON text; Feast parses it on the way out
        return value.json_val
    if attr == "json_list_val":
        return list(value.json_list_val.val)
    from feast.type_map import feast_value_type_to_python_type

    return feast_value_type_to_python_type(value)


_DIRECT = {
    ValueType.STRING: ("string_val", str),
    ValueType.INT64: ("int64_val", int),
    ValueType.INT32: ("int32_val", int),
    ValueType.DOUBLE: ("double_val", float),
    ValueType.FLOAT: ("float_val", float),
    ValueType.BOOL: ("bool_val", bool),
    ValueType.BYTES: ("bytes_val", bytes),
    ValueType.JSON: ("json_val", str),
}
_DIRECT_LISTS = {
    ValueType.STRING_LIST: ("string_list_val", str),
    ValueType.INT64_LIST: ("int64_list_val", int),
    ValueType.INT32_LIST: ("int32_list_val", int),
    ValueType.DOUBLE_LIST: ("double_list_val", float),
    ValueType.FLOAT_LIST: ("float_list_val", float),
    ValueType.BOOL_LIST: ("bool_list_val", bool),
    ValueType.BYTES_LIST: ("bytes_list_val", bytes),
    ValueType.JSON_LIST: ("json_list_val", str),
}


def _seconds(v: Any) -> int:
    if v is None:
        return _NULL_TS
    if isinstance(v, datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=timezone.utc)
        return int(v.timestamp())
    return int(v)


def python_to_proto(value: Any, value_type: ValueType) -> ValueProto:
    """A stored Python value as a Feast ``Value`` of the declared ``value_type``."""
    if value is None:
        return ValueProto()
    direct = _DIRECT.get(value_type)
    if direct is not None:
        attr, cast = direct
        if value_type is ValueType.JSON and not isinstance(value, str):
            import json

            value = json.dumps(value)
        proto = ValueProto()
        setattr(proto, attr, value if type(value) is cast else cast(value))
        return proto
    direct = _DIRECT_LISTS.get(value_type)
    if direct is not None:
        attr, cast = direct
        proto = ValueProto()
        getattr(proto, attr).val.extend(v if type(v) is cast else cast(v) for v in value)
        return proto
    if value_type is ValueType.UNIX_TIMESTAMP:
        return ValueProto(unix_timestamp_val=_seconds(value))
    if value_type is ValueType.UNIX_TIMESTAMP_LIST:
        proto = ValueProto()
        proto.unix_timestamp_list_val.val.extend(_seconds(v) for v in value)
        return proto
    from feast.type_map import python_values_to_proto_values

    return python_values_to_proto_values([value], value_type)[0]


def value_type_of(field: Any) -> ValueType:
    """The ``ValueType`` of a Feast ``Field``."""
    return field.dtype.to_value_type()
