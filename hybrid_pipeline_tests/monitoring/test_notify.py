"""Alert routing: user-facing damage pages now, the rest waits for the daytime channel."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from hybrid_pipeline.monitoring.notify import (
    DAYTIME,
    PAGE,
    Alert,
    AlertRouter,
    FileNotifier,
    WebhookNotifier,
    channel_for,
)


@pytest.mark.parametrize(
    ("alert", "channel"),
    [
        (Alert("model failed", "ERROR", "run_failure", ("models/purchase_model",)), PAGE),
        (Alert("predictions failed", "ERROR", "run_failure", ("gold/predictions",)), PAGE),
        (Alert("online store stale", "ERROR", "check_failure", ("features/online_user_features",)), PAGE),
        (Alert("metrics run failed", "ERROR", "run_failure", ("gold/daily_metrics",)), DAYTIME),
        (Alert("quarantine high", "WARN", "check_failure", ("silver/events",)), DAYTIME),
        (Alert("drift warn", "WARN", "check_failure", ("models/purchase_model",)), DAYTIME),
    ],
)
def test_alerts_are_routed_by_the_damage_they_signal(alert, channel):
    assert channel_for(alert) == channel


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Recorder.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):  # silence
        pass


@pytest.fixture
def webhook():
    _Recorder.received = []
    server = HTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", _Recorder.received
    server.shutdown()


def test_webhook_receives_paging_alerts_as_json(webhook):
    url, received = webhook
    router = AlertRouter({PAGE: [WebhookNotifier(url)], DAYTIME: []})
    assert router.route(Alert("model failed", "ERROR", "run_failure", ("models/purchase_model",), run_id="r1")) == PAGE
    assert router.route(Alert("late metrics", "WARN", "freshness", ("gold/daily_metrics",))) == DAYTIME
    assert len(received) == 1
    assert received[0]["channel"] == PAGE and received[0]["run_id"] == "r1" and received[0]["assets"] == ["models/purchase_model"]


def test_file_notifier_appends_one_json_line_per_alert(tmp_path):
    path = tmp_path / "alerts" / "alerts.jsonl"
    router = AlertRouter({PAGE: [FileNotifier(path)], DAYTIME: [FileNotifier(path)]})
    router.route(Alert("a", "WARN", "check_failure", ("silver/events",)))
    router.route(Alert("b", "ERROR", "run_failure", ("models/x",)))
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    assert [(l["title"], l["channel"]) for l in lines] == [("a", DAYTIME), ("b", PAGE)]


def test_a_failing_notifier_is_reported_and_does_not_stop_the_others(tmp_path):
    path = tmp_path / "alerts.jsonl"
    router = AlertRouter({PAGE: [WebhookNotifier("http://127.0.0.1:9/unreachable", timeout_s=0.5), FileNotifier(path)]})
    with pytest.raises(RuntimeError, match="WebhookNotifier"):
        router.route(Alert("model failed", "ERROR", "run_failure", ("models/m",)))
    assert path.read_text().count("\n") == 1
