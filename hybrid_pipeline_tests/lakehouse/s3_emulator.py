"""A local S3-compatible endpoint for the object-storage tests and the storage benchmark.

It is an EMULATOR, not AWS S3: moto's server mode (``moto[server]`` from PyPI), run in a child
process on a free port of 127.0.0.1, its state in memory and gone when it stops. It speaks the
S3 REST API that delta-rs, polars and boto3 use, including conditional writes (a PUT with
``If-None-Match: *`` on an existing key answers 412), which is how delta-rs commits a version.

Why a child process: delta-rs' Python filesystem handler holds the GIL while it waits for an
answer, so a server thread in the same process would never get to answer it.

Why one request at a time: moto checks ``If-None-Match`` and then stores the object in two
steps; S3 does both atomically. Serialising the requests (one lock around moto's WSGI app, the
connections still concurrent) gives the emulator S3's atomicity, so a test of two racing
writers tests delta-rs, not a race inside the emulator.

``python -m hybrid_pipeline_tests.lakehouse.s3_emulator --port N`` runs the server alone;
``INITIAL_NO_AUTH_ACTION_COUNT=k`` in its environment makes moto check credentials after the
first ``k`` requests (moto's own switch), for the wrong-credentials tests.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

REGION = "us-east-1"
ACCESS_KEY = "emulator-key"
SECRET_KEY = "emulator-secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Emulator:
    """A moto S3 server in a child process; ``env(bucket, prefix)`` gives the pipeline's settings for it."""

    def __init__(self, auth_free_requests: int | None = None) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        if auth_free_requests is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_free_requests)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "hybrid_pipeline_tests.lakehouse.s3_emulator", "--port", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the S3 emulator exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the S3 emulator did not start within 30 s") from None
                time.sleep(0.1)

    def env(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        """The standard AWS variables that point a client at this endpoint."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": REGION,
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
            "AWS_ALLOW_HTTP": "true",
        }

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
        """A boto3 S3 client of this endpoint (for making buckets and looking inside them)."""
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                            aws_access_key_id=access_key, aws_secret_access_key=secret_key)

    def new_bucket(self) -> str:
        name = f"lake-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` in ``bucket``."""
        paginator = self.client().get_paginator("list_objects_v2")
        return [o["Key"] for page in paginator.paginate(Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextmanager
def s3_emulator(auth_free_requests: int | None = None) -> Iterator[S3Emulator]:
    emulator = S3Emulator(auth_free_requests)
    try:
        yield emulator
    finally:
        emulator.stop()


def _serve(port: int) -> None:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = DomainDispatcherApplication(create_backend_app)
    lock = threading.Lock()

    def serialised(environ: dict[str, Any], start_response: Any) -> Any:
        with lock:
            return list(app(environ, start_response))

    make_server("127.0.0.1", port, serialised, threaded=True, request_handler=MotoRequestHandler).serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="moto's S3 emulator, one request at a time")
    parser.add_argument("--port", type=int, required=True)
    _serve(parser.parse_args().port)
