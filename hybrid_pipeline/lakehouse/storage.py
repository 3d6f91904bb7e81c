"""Where the lakehouse root lives: a local folder or an object store, and how to reach it.

One place for what every reader and writer of the root needs: whether a root is remote, the
delta-rs storage options for it, a filesystem for the files that are not Delta tables (bronze
media), and the check that the root is reachable before anything is written.

Object stores take the standard environment of the AWS SDKs, read by delta-rs, polars and this
module alike: ``AWS_ENDPOINT_URL`` (MinIO, Cloudflare R2, a local emulator; unset for AWS S3),
``AWS_REGION``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (or any other credential the
SDK chain finds), ``AWS_ALLOW_HTTP=true`` for a plain-HTTP endpoint. Secrets stay in the
environment and never enter storage options, because those are serialised into the Feast
registry and shown in run metadata.

Commits: delta-rs 1.x commits a version to S3 with a conditional put (``If-None-Match: *``), so
of two writers racing for the same version exactly one wins and the other retries on top of it
(no lost commit, no lock service). Its DynamoDB locking provider is gone from 1.x, and
``AWS_S3_ALLOW_UNSAFE_RENAME`` (overwrite the log entry, last writer wins) is refused here.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from typing import Any

__all__ = [
    "REMOTE_SCHEMES",
    "StorageConfigError",
    "check_root",
    "filesystem",
    "is_remote",
    "storage_options",
]

#: URI schemes delta-rs and polars open as object stores.
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "azure")
_SETTING = "HYBRID_LAKEHOUSE_ROOT"
_UNSAFE = "AWS_S3_ALLOW_UNSAFE_RENAME"
_CREDENTIALS = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY"
_checked: set[tuple[str, ...]] = set()


class StorageConfigError(ValueError):
    """The lakehouse root cannot be used as configured; the message names the setting to fix."""


def is_remote(root: str) -> bool:
    """True for an object-store URI (``s3://bucket/prefix``), False for a local path or ``file://``."""
    scheme, sep, _ = str(root).partition("://")
    if not sep:
        return False
    if scheme.lower() == "file":
        return False
    if scheme.lower() not in REMOTE_SCHEMES:
        raise StorageConfigError(
            f"{_SETTING}={root!r}: unsupported scheme {scheme!r}; use a local path or one of "
            + ", ".join(f"{s}://" for s in REMOTE_SCHEMES)
        )
    return True


def _bucket(root: str) -> str:
    rest = root.partition("://")[2]
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise StorageConfigError(f"{_SETTING}={root!r} names no bucket (expected s3://bucket/prefix)")
    return bucket


def _truthy(value: str | None) -> bool:
    return str(value or "").strip().lower() in {"1", "true", "yes", "on"}


def storage_options(
    root: str, extra: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """delta-rs storage options for ``root``: ``extra`` as given, after refusing unsafe commits.

    Nothing is added for S3: credentials, endpoint, region and ``allow_http`` come from the
    environment, which delta-rs and polars read themselves (so no secret is copied anywhere).
    """
    options = {str(k): str(v) for k, v in (extra or {}).items()}
    if not is_remote(root):
        return options
    _bucket(root)
    env = os.environ if environ is None else environ
    unsafe = {k: v for k, v in options.items() if k.lower() in {"aws_s3_allow_unsafe_rename", "allow_unsafe_rename"}}
    if _truthy(env.get(_UNSAFE)) or any(_truthy(v) for v in unsafe.values()):
        raise StorageConfigError(
            f"{_UNSAFE} is set: it lets two writers overwrite each other's Delta commit (a lost commit). "
            "Unset it; delta-rs commits to S3 with a conditional put (If-None-Match), which AWS S3, "
            "MinIO and Cloudflare R2 support."
        )
    return options


def _option(options: Mapping[str, str], environ: Mapping[str, str], keys: tuple[str, ...], env_keys: tuple[str, ...]) -> str | None:
    lowered = {k.lower(): v for k, v in options.items()}
    for key in keys:
        if lowered.get(key):
            return lowered[key]
    for key in env_keys:
        if environ.get(key):
            return environ[key]
    return None


def filesystem(uri: str, options: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None) -> tuple[Any, str]:
    """A pyarrow filesystem and the base path of ``uri`` on it (paths below are ``base/rel``).

    Local: pyarrow's own filesystem and the absolute path. S3: pyarrow's native S3 filesystem
    from the same settings as the tables (``AWS_ENDPOINT_URL``, ``AWS_REGION``, credentials by the
    SDK's chain; storage options override them), base ``bucket/prefix``. Other object stores:
    delta-rs' store behind a pyarrow ``PyFileSystem`` (base ``""``); it reads, but its writer takes
    ``bytes`` where pyarrow hands it buffers, hence pyarrow's own S3 client for S3.
    """
    if not is_remote(uri):
        from pyarrow.fs import LocalFileSystem

        local = uri[len("file://"):] if uri.startswith("file://") else uri
        return LocalFileSystem(), os.path.abspath(local)
    opts = dict(options or {})
    env = os.environ if environ is None else environ
    scheme, _, rest = uri.partition("://")
    if scheme.lower() in {"s3", "s3a"}:
        from pyarrow.fs import S3FileSystem

        kwargs: dict[str, Any] = {}
        endpoint = _option(opts, env, ("aws_endpoint_url", "aws_endpoint", "endpoint_url", "endpoint"),
                           ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"))
        region = _option(opts, env, ("aws_region", "region", "aws_default_region"), ("AWS_REGION", "AWS_DEFAULT_REGION"))
        key = _option(opts, {}, ("aws_access_key_id", "access_key_id"), ())
        secret = _option(opts, {}, ("aws_secret_access_key", "secret_access_key"), ())
        if endpoint:
            kwargs["endpoint_override"] = endpoint
        if region:
            kwargs["region"] = region
        if key and secret:
            kwargs.update(access_key=key, secret_key=secret,
                          session_token=_option(opts, {}, ("aws_session_token", "session_token"), ()))
        return S3FileSystem(**kwargs), rest.rstrip("/")
    from deltalake.fs import DeltaStorageHandler
    from pyarrow.fs import PyFileSystem

    return PyFileSystem(DeltaStorageHandler(uri, opts or None)), ""


_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


def _diagnose(root: str, error: BaseException, environ: Mapping[str, str]) -> str:
    """One sentence that names the setting to fix, from an object store's error."""
    text = str(error)
    code_match = _CODE.search(text)
    code = code_match.group(1) if code_match else ""
    endpoint = environ.get("AWS_ENDPOINT_URL") or environ.get("AWS_ENDPOINT_URL_S3") or "AWS S3 (AWS_ENDPOINT_URL unset)"
    bucket = _bucket(root)
    if code == "NoSuchBucket" or "NoSuchBucket" in text:
        return (f"{_SETTING}={root!r}: bucket {bucket!r} does not exist at {endpoint}; create it, or fix the bucket "
                "in HYBRID_LAKEHOUSE_ROOT (or AWS_ENDPOINT_URL)")
    if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken", "AuthorizationHeaderMalformed"}:
        return (f"{_CREDENTIALS}: the credentials were rejected by {endpoint} ({code}) while opening "
                f"{_SETTING}={root!r}; fix AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) or AWS_REGION")
    if code == "AccessDenied" or "403 Forbidden" in text:
        return (f"{_CREDENTIALS}: access to bucket {bucket!r} was denied by {endpoint} while opening {_SETTING}={root!r}; "
                "the credentials need list, read and write permissions on it")
    if "Connection refused" in text or "dns error" in text.lower() or "tcp connect error" in text:
        return f"AWS_ENDPOINT_URL={endpoint!r}: no object store answers there (opening {_SETTING}={root!r})"
    if "http" in text.lower() and "allow_http" in text.lower() or "URL scheme is not allowed" in text:
        return f"AWS_ALLOW_HTTP: the endpoint {endpoint} is plain HTTP; set AWS_ALLOW_HTTP=true to use it"
    first = " ".join(text.split("\n", 1)[0].split())
    return f"{_SETTING}={root!r}: the object store at {endpoint} refused the root ({code or first}); check AWS_* settings"


def check_root(root: str, options: Mapping[str, str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Fail with one :class:`StorageConfigError` naming the setting when ``root`` cannot be listed.

    Why: a wrong key or a missing bucket would otherwise surface as a stack trace from deep in
    delta-rs, after bronze may have written its first files. Listing the root needs the same
    credentials, endpoint and bucket as every later read and write. A root that passed is not
    checked again in this process (for the same endpoint and key).
    """
    if not is_remote(root):
        return
    env = os.environ if environ is None else environ
    opts = storage_options(root, options, env)
    # What the answer depends on; the secret only as a digest, so that it is not kept in memory here.
    secret = hashlib.sha256(env.get("AWS_SECRET_ACCESS_KEY", "").encode()).hexdigest()
    key = (root, env.get("AWS_ENDPOINT_URL", ""), env.get("AWS_ACCESS_KEY_ID", ""), secret, env.get("AWS_REGION", ""),
           env.get("AWS_ALLOW_HTTP", ""), hashlib.sha256(repr(sorted(opts.items())).encode()).hexdigest())
    if key in _checked:
        return
    from deltalake.fs import DeltaStorageHandler
    from pyarrow.fs import FileSelector, PyFileSystem

    fs = PyFileSystem(DeltaStorageHandler(root, opts or None))  # the client the tables use
    try:
        fs.get_file_info(FileSelector("", recursive=False, allow_not_found=True))
    except OSError as exc:
        raise StorageConfigError(_diagnose(root, exc, env)) from None
    _checked.add(key)
