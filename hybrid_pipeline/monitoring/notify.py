"""Alerts routed by urgency through pluggable notifiers (log, file, webhook).

Routing is by damage, not by source: anything touching models, predictions or online
features pages at once (users see it); analytics delays and WARN checks go to the daytime
channel (a person reads it in working hours).
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

PAGE = "page"
DAYTIME = "daytime"
# Asset key prefixes whose failures reach users directly.
PAGING_PREFIXES = ("models/", "gold/predictions", "features/online", "features/streaming", "gold/user_features")


@dataclass(frozen=True)
class Alert:
    title: str
    severity: str  # "ERROR" | "WARN"
    kind: str  # "run_failure" | "check_failure" | "freshness"
    assets: tuple[str, ...] = ()
    run_id: str | None = None
    details: dict = field(default_factory=dict)
    at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())


class Notifier(Protocol):
    def send(self, channel: str, alert: Alert) -> None: ...


class LogNotifier:
    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("hybrid_pipeline.alerts")

    def send(self, channel: str, alert: Alert) -> None:
        level = logging.ERROR if channel == PAGE else logging.WARNING
        self.logger.log(level, "[%s] %s %s", channel, alert.title, json.dumps(asdict(alert), default=str))


class FileNotifier:
    """Appends one JSON line per alert (a durable inbox any tool can tail)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def send(self, channel: str, alert: Alert) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"channel": channel, **asdict(alert)}, default=str) + "\n")


class WebhookNotifier:
    """POSTs the alert as JSON (Slack/PagerDuty-style endpoints, or any HTTP receiver)."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url
        self.timeout_s = timeout_s

    def send(self, channel: str, alert: Alert) -> None:
        body = json.dumps({"channel": channel, **asdict(alert)}, default=str).encode()
        req = urllib.request.Request(self.url, data=body, headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # noqa: S310 - configured URL
            if resp.status >= 300:
                raise RuntimeError(f"webhook answered {resp.status}")


def channel_for(alert: Alert) -> str:
    """Page when users are affected; everything else waits for working hours."""
    touches_users = any(a.startswith(PAGING_PREFIXES) for a in alert.assets)
    if touches_users and alert.severity == "ERROR":
        return PAGE
    if alert.kind == "run_failure" and touches_users:
        return PAGE
    return DAYTIME


class AlertRouter:
    """Sends each alert to the notifiers of its channel; one failing notifier never hides the others."""

    def __init__(self, channels: dict[str, list[Notifier]]) -> None:
        self.channels = channels

    def route(self, alert: Alert) -> str:
        channel = channel_for(alert)
        errors = []
        for notifier in self.channels.get(channel, []):
            try:
                notifier.send(channel, alert)
            except Exception as exc:  # noqa: BLE001 - report every notifier's failure together
                errors.append(f"{type(notifier).__name__}: {exc}")
        if errors:
            raise RuntimeError(f"alert delivery failed on {channel}: {'; '.join(errors)}")
        return channel
