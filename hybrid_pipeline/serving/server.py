"""Running the serving app with uvicorn.

``python -m hybrid_pipeline.serving --project P --view V [--url redis://...] [--port 8000]``
serves one feature view from the packed online store (``--url`` defaults to
``HYBRID_ONLINE_STORE``, then ``sqlite``; the API key to ``HYBRID_SERVING_API_KEY``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Optional, Sequence

__all__ = ["build_app", "main", "run_server"]


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning",
               access_log: bool = False, freeze_gc: bool = True, **uvicorn_options: Any) -> None:
    """Serve ``app`` with uvicorn until interrupted (uvloop/httptools when installed).

    ``freeze_gc`` moves everything allocated so far (imports, the app, the reader) out of the
    cyclic garbage collector's reach, so full collections during serving stay short.
    """
    import gc

    import uvicorn

    if freeze_gc:
        gc.collect()
        gc.freeze()

    uvicorn.run(app, host=host, port=int(port), log_level=log_level, access_log=access_log, **uvicorn_options)


def build_app(url: Optional[str], project: str, feature_view: str, *, sqlite_path: Optional[str] = None,
              key_prefix: Optional[str] = None, api_key: Optional[str] = None, predictor: Any = None):
    """An app over ``OnlineReader.from_url(url, project)`` (``HYBRID_ONLINE_STORE`` syntax)."""
    from hybrid_pipeline.online import DEFAULT_KEY_PREFIX, DEFAULT_SQLITE_PATH, OnlineReader
    from hybrid_pipeline.serving.app import create_app

    reader = OnlineReader.from_url(url, project, sqlite_path=sqlite_path or DEFAULT_SQLITE_PATH,
                                   key_prefix=key_prefix or DEFAULT_KEY_PREFIX)
    return create_app(reader, feature_view, api_key=api_key, predictor=predictor)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hybrid_pipeline.serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("HYBRID_ONLINE_STORE", "sqlite"))
    parser.add_argument("--sqlite-path", default=None, help="SQLite file when --url is plain 'sqlite'")
    parser.add_argument("--key-prefix", default=None)
    parser.add_argument("--project", required=True)
    parser.add_argument("--view", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    app = build_app(args.url, args.project, args.view, sqlite_path=args.sqlite_path, key_prefix=args.key_prefix,
                    api_key=os.environ.get("HYBRID_SERVING_API_KEY") or None)
    run_server(app, args.host, args.port, log_level=args.log_level)
