"""The settings a load of the ``defs`` folder runs under, and the daily partitions they fix.

``dg.load_from_defs_folder`` calls each domain's ``@dg.definitions`` function with no arguments of
ours, so the settings are handed over here: :func:`loading` sets them (and resource overrides, for
tests) around one load, :func:`current_settings` reads them, falling back to the environment, which
is read then, at load time, never at import.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from hybrid_pipeline.settings import Settings


@dataclass(frozen=True)
class _Load:
    settings: Settings
    resource_overrides: Mapping[str, Any] = field(default_factory=dict)


_CURRENT: ContextVar[_Load | None] = ContextVar("hybrid_pipeline_defs_load", default=None)


@contextmanager
def loading(settings: Settings, resource_overrides: Mapping[str, Any] | None = None) -> Iterator[None]:
    """Load the ``defs`` folder under ``settings``, with ``resource_overrides`` replacing resources by key."""
    token = _CURRENT.set(_Load(settings, dict(resource_overrides or {})))
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_settings() -> Settings:
    """The settings of the load in progress; the environment's when none was given."""
    load = _CURRENT.get()
    return load.settings if load is not None else Settings.from_env()


def resource_overrides() -> Mapping[str, Any]:
    """Resources that replace the project's ones in the load in progress (none outside :func:`loading`)."""
    load = _CURRENT.get()
    return load.resource_overrides if load is not None else {}


def daily_partitions(settings: Settings) -> dg.DailyPartitionsDefinition:
    """One partition per landing day from ``HYBRID_START_DATE``; ``end_offset=1`` includes today,
    so a file landed today can be processed today."""
    return dg.DailyPartitionsDefinition(start_date=settings.start_date.isoformat(), end_offset=1, timezone="UTC")
