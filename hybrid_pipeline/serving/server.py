"""Running the serving app with uvicorn.

``python -m hybrid_pipeline.serving --project P --view V [--url redis://...] [--port 8000]``
serves one feature view from the packed online store (``--url`` defaults to the
``HYBRID_ONLINE_STORE`` setting and is read the same way; the API key to ``HYBRID_SERVING_API_KEY``).

A client has ``header_timeout`` seconds (default 10) to finish sending a request's headers,
counted from when the connection opens or its previous response completes; then the
connection is closed. uvicorn has no such limit: ``timeout_keep_alive`` starts only after a
response and stops at the first byte of the next request, so a client that never finishes
its headers would hold a connection (and a file descriptor) for as long as it likes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence

if TYPE_CHECKING:
    from fastapi import FastAPI

    from hybrid_pipeline.settings import Settings

__all__ = ["DEFAULT_HEADER_TIMEOUT", "build_app", "build_server", "header_timeout_protocol", "main", "pipeline_app",
           "run_server"]

DEFAULT_HEADER_TIMEOUT = 10.0
HTTP_PARSERS = ("auto", "h11", "httptools")


class _HeaderTimeout(asyncio.Protocol):
    """Mixin for a uvicorn HTTP protocol (h11 or httptools): closes a connection whose request headers are late.

    The clock runs while the connection waits for a request: from ``connection_made``, and
    from a completed response when no further request is already parsed. It stops when a
    request's headers are complete, which is when uvicorn starts a new request cycle, or when
    the connection is handed to a WebSocket protocol.
    """

    header_timeout: float = DEFAULT_HEADER_TIMEOUT
    _header_timer: Optional[asyncio.TimerHandle] = None
    # Set by uvicorn's protocol classes.
    cycle: Any
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    logger: logging.Logger
    client: Optional[tuple[str, int]]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_header_clock()

    def data_received(self, data: bytes) -> None:
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle or self.transport.get_protocol() is not self:  # headers complete, or upgraded
            self._stop_header_clock()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]  # defined by uvicorn's protocol classes
        if self.cycle.response_complete and not self.transport.is_closing():  # no request waiting
            self._start_header_clock()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._stop_header_clock()
        super().connection_lost(exc)

    def _start_header_clock(self) -> None:
        self._stop_header_clock()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_late)

    def _stop_header_clock(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.info("closing a connection from %s: no complete request headers within %ss",
                             self.client, self.header_timeout)
            self.transport.close()


def header_timeout_protocol(header_timeout: float = DEFAULT_HEADER_TIMEOUT,
                            http: str = "auto") -> type[asyncio.Protocol]:
    """uvicorn's ``http`` protocol class (``auto``: httptools when installed, else h11) with a header-read timeout."""
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    if http not in HTTP_PARSERS:
        raise ValueError(f"http must be one of {HTTP_PARSERS}, got {http!r}")
    if not header_timeout > 0:
        raise ValueError(f"header_timeout must be a positive number of seconds, got {header_timeout!r}")
    base = import_from_string(HTTP_PROTOCOLS[http])
    return type(f"HeaderTimeout{base.__name__}", (_HeaderTimeout, base), {"header_timeout": float(header_timeout)})


def build_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning",
                 access_log: bool = False, header_timeout: float = DEFAULT_HEADER_TIMEOUT, http: str = "auto",
                 **uvicorn_options: Any) -> Any:
    """A ``uvicorn.Server`` for ``app``, not started (``run_server`` runs one; tests stop theirs)."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=int(port), log_level=log_level, access_log=access_log,
                            http=header_timeout_protocol(header_timeout, http), **uvicorn_options)
    return uvicorn.Server(config)


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning",
               access_log: bool = False, freeze_gc: bool = True, header_timeout: float = DEFAULT_HEADER_TIMEOUT,
               **uvicorn_options: Any) -> None:
    """Serve ``app`` with uvicorn until interrupted (uvloop/httptools when installed).

    ``freeze_gc`` moves everything allocated so far (imports, the app, the reader) out of the
    cyclic garbage collector's reach, so full collections during serving stay short.
    """
    import gc

    server = build_server(app, host, port, log_level=log_level, access_log=access_log,
                          header_timeout=header_timeout, **uvicorn_options)
    if freeze_gc:
        gc.collect()
        gc.freeze()
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it shut down on
        pass
    if not server.started:  # e.g. the port is taken: uvicorn logged why (uvicorn.run's exit status)
        raise SystemExit(3)


def build_app(url: str, project: str, feature_view: str, *, key_prefix: Optional[str] = None,
              api_key: Optional[str] = None, predictor: Any = None) -> FastAPI:
    """An app over ``OnlineReader.from_url(url, project)``; ``url`` as resolved by
    :class:`~hybrid_pipeline.settings.OnlineStoreSetting` (e.g. ``Settings.online_store.url``)."""
    from hybrid_pipeline.online import DEFAULT_KEY_PREFIX, OnlineReader
    from hybrid_pipeline.serving.app import create_app

    reader = OnlineReader.from_url(url, project, key_prefix=key_prefix or DEFAULT_KEY_PREFIX)
    return create_app(reader, feature_view, api_key=api_key, predictor=predictor)


def pipeline_app(settings: Settings, *, api_key: Optional[str] = None, predictor: Any = None) -> FastAPI:
    """The app ``hybrid-pipeline serve`` runs: the pipeline's ``user_features`` with the streaming
    counts merged in, read straight from the settings' online store (no Dagster, no Feast)."""
    from hybrid_pipeline.features import catalog
    from hybrid_pipeline.features.streaming import CombinedReader
    from hybrid_pipeline.online import OnlineReader
    from hybrid_pipeline.serving.app import create_app

    reader = CombinedReader(OnlineReader.from_url(settings.online_store.url, catalog.PROJECT))
    return create_app(reader, catalog.USER_FEATURES_VIEW, api_key=api_key, predictor=predictor)


def main(argv: Optional[Sequence[str]] = None) -> None:
    from hybrid_pipeline.settings import OnlineStoreSetting, Settings

    parser = argparse.ArgumentParser(prog="python -m hybrid_pipeline.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=None,
                        help="online store, HYBRID_ONLINE_STORE syntax (default: the HYBRID_ONLINE_STORE setting)")
    parser.add_argument("--key-prefix", default=None)
    parser.add_argument("--project", required=True)
    parser.add_argument("--view", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="warning")
    parser.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT,
                        help="seconds a client has to send a request's headers (default %(default)s)")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    store = OnlineStoreSetting.parse(args.url, settings.feature_repo_dir) if args.url else settings.online_store
    app = build_app(store.url, args.project, args.view, key_prefix=args.key_prefix,
                    api_key=os.environ.get("HYBRID_SERVING_API_KEY") or None)
    run_server(app, args.host, args.port, log_level=args.log_level, header_timeout=args.header_timeout)
