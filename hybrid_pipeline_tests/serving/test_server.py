"""The app behind a real uvicorn server on loopback: clients that hang up or stall are not server errors."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hybrid_pipeline.serving import create_app
from hybrid_pipeline.serving.server import build_server

from .conftest import VIEW

HEADER_TIMEOUT = 1.0
PARSERS = ["h11", "httptools"]


@contextmanager
def serving(app, **options) -> Iterator[int]:
    """Run ``app`` on a free 127.0.0.1 port in a thread (logs go to the root logger); yields the port."""
    server = build_server(app, "127.0.0.1", 0, log_config=None, **options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "the server did not stop"


def samples(port: int) -> dict[tuple[str, tuple], float]:
    """``/metrics`` as {(sample name, sorted labels): value}."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"not true within {seconds}s"
        time.sleep(0.02)


def closed_by_server(sock: socket.socket) -> bool:
    """Block (up to the socket's timeout) until the server closes the connection; True when it did."""
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("http", PARSERS)
def test_a_client_hanging_up_mid_body_is_counted_as_a_disconnect_not_a_server_error(reader, caplog, http):
    caplog.set_level(logging.INFO)
    with serving(create_app(reader, VIEW), http=http) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /features HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                         b"Content-Length: 1000\r\n\r\n" + b'{"user_ids": ["u1", ')

        def accounted() -> bool:
            return any(name in ("hybrid_serving_client_disconnects_total", "hybrid_serving_requests_total")
                       and dict(labels).get("route") == "/features" for name, labels in samples(port))

        wait_until(accounted)
        metrics = samples(port)

    server_errors = {k: v for k, v in metrics.items()
                     if k[0] == "hybrid_serving_requests_total" and dict(k[1])["status"].startswith("5")}
    assert server_errors == {}
    disconnects = ("hybrid_serving_client_disconnects_total", (("method", "POST"), ("route", "/features")))
    assert metrics[disconnects] == 1
    assert [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR] == []  # no traceback
    assert [r.getMessage() for r in caplog.records if "disconnect" in r.getMessage()] == [
        "client disconnected before its request was read: POST /features"
    ]


@pytest.mark.parametrize("http", PARSERS)
def test_a_client_that_never_finishes_its_headers_is_cut_off_after_the_header_timeout(reader, http):
    with serving(create_app(reader, VIEW), header_timeout=HEADER_TIMEOUT, http=http) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /features/u1 HTTP/1.1\r\nHost: te")
            start = time.monotonic()
            assert closed_by_server(sock)
            assert HEADER_TIMEOUT * 0.8 <= time.monotonic() - start < HEADER_TIMEOUT + 2


@pytest.mark.parametrize("http", PARSERS)
def test_a_kept_alive_connection_has_the_same_bound_for_its_next_request(reader, http):
    with serving(create_app(reader, VIEW), header_timeout=HEADER_TIMEOUT, http=http) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: test\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            sock.sendall(b"GET /features/u1 HTTP/1.1\r\nHo")
            start = time.monotonic()
            assert closed_by_server(sock)
            assert time.monotonic() - start < HEADER_TIMEOUT + 2


@pytest.mark.parametrize("http", PARSERS)
def test_the_header_timeout_does_not_cut_a_request_whose_headers_arrived(reader, http):
    body = b'{"user_ids": ["u1"]}'
    with serving(create_app(reader, VIEW), header_timeout=HEADER_TIMEOUT, http=http) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b"POST /features HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            time.sleep(HEADER_TIMEOUT + 0.5)  # the body is late; the headers were not
            sock.sendall(body)
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
