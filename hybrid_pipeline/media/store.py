"""Content-addressed bronze store for landed media files.

Why: bronze keeps files *as received*, but the landing names are untrusted
(they can collide, be renamed, or try ``../`` tricks). Storing each file under
its sha256 makes a re-dropped or renamed file land once, makes the bronze path
a pure function of the bytes (never of the landing name), and lets every later
layer cite an immutable identifier.

Layout: ``<bronze_media_root>/<sha256[:2]>/<sha256>.<ext>`` where ``ext`` comes
from the *detected* type (see :mod:`hybrid_pipeline.media.detect`). The root is a
local folder or an object-store prefix (``s3://bucket/prefix/bronze/media``, reached
through :mod:`hybrid_pipeline.lakehouse.storage`, like the Delta tables): a file is
hashed in a private staging folder, then put at its address in one PUT, so the
bucket never holds a partial file. Readers that need paths (decoders, the torch
dataset) get them from :func:`local_media_root`.

Duplicates: :func:`ingest_landing_media` returns **one record per landed
file** (so landed == records + rejected, the row-conservation law), and marks a
file whose bytes were already seen earlier in the same batch with
``duplicate_of`` (the landing path of the first one). The bronze
``media_files`` table should hold one row per sha256: write
:func:`unique_records` and MERGE on ``sha256`` (insert when not matched), so a
re-drop on a later day (``already_in_bronze=True``) does not add a second row.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import os
import re
import stat
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date, datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Final, Iterable, Iterator, Literal, NamedTuple

from hybrid_pipeline.media.detect import (
    BRONZE_EXTENSION,
    MediaType,
    TypeSniffer,
    is_extension_mismatch,
)

#: Landing sub-folders that hold media, in ingest order.
LANDING_SUBDIRS: Final = ("images", "docs")
#: Control file with labels for the images (``original_name,label``); not media.
LABELS_FILE: Final = "labels.csv"
#: Deepest folder (levels below ``images/`` or ``docs/``) whose files are ingested. A deeper
#: folder is rejected as ``too_deep`` with everything in it: landings are a few levels deep, and
#: a tree thousands of levels deep only costs file descriptors and time.
MAX_FOLDER_DEPTH: Final = 32

RejectReason = Literal["symlink", "empty_file", "not_regular_file", "read_error", "too_deep"]

_CHUNK: Final = 1 << 20
_SHA256_RE: Final = re.compile(r"^[0-9a-f]{64}$")
_BRONZE_PATH_RE: Final = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{64})\.(png|jpg|pdf|txt|bin)$")
_O_NOFOLLOW: Final = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_NONBLOCK: Final = getattr(os, "O_NONBLOCK", 0)
_O_DIRECTORY: Final = getattr(os, "O_DIRECTORY", 0)


@dataclass(frozen=True, slots=True)
class MediaRecord:
    """One landed file that made it into the bronze store.

    ``original_name`` is the path relative to its landing sub-folder, kept
    verbatim for lineage (undecodable bytes are backslash-escaped) and never
    used to build a path. ``bronze_path`` is relative to the bronze media root.
    """

    sha256: str
    size_bytes: int
    detected_type: MediaType
    original_name: str
    landing_subdir: str
    landing_date: str
    ingested_at: datetime
    bronze_path: str
    extension_mismatch: bool
    #: Landing path (``images/a.png``) of the first file with the same bytes in this batch.
    duplicate_of: str | None
    #: The bytes were already in bronze before this run (a re-drop or an earlier duplicate).
    already_in_bronze: bool

    @property
    def landing_path(self) -> str:
        return f"{self.landing_subdir}/{self.original_name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RejectedFile:
    """A landed entry that was not stored, with the reason (nothing is dropped silently)."""

    original_name: str
    landing_subdir: str
    landing_date: str
    reason: RejectReason
    detail: str

    @property
    def landing_path(self) -> str:
        return f"{self.landing_subdir}/{self.original_name}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bronze_relpath(sha256: str, detected_type: str) -> str:
    """Bronze path (relative, POSIX) for some content; the only way paths are built.

    Why: validating the hash here means no caller can smuggle a name-derived
    string into a store path.
    """
    if not _SHA256_RE.fullmatch(sha256):
        raise ValueError(f"not a lower-case sha256 hex digest: {sha256!r}")
    ext = BRONZE_EXTENSION.get(detected_type)
    if ext is None:
        raise ValueError(f"unknown detected type: {detected_type!r}")
    return f"{sha256[:2]}/{sha256}.{ext}"


class _RemoteStore:
    """The bronze media prefix in an object store, through the lakehouse's own filesystem."""

    def __init__(self, uri: str, storage_options: Mapping[str, str] | None) -> None:
        from hybrid_pipeline.lakehouse.storage import filesystem

        self.uri = uri.rstrip("/")
        self.fs, self.base = filesystem(self.uri, storage_options)

    def _key(self, rel: str) -> str:
        return f"{self.base}/{rel}" if self.base else rel

    def size(self, rel: str) -> int | None:
        """Bytes stored at ``rel``, None when nothing is."""
        from pyarrow.fs import FileType

        info = self.fs.get_file_info(self._key(rel))
        return int(info.size) if info.type == FileType.File else None

    def upload(self, local: str, rel: str) -> None:
        """Put the local file at ``rel`` (one object PUT: the object appears whole or not at all)."""
        with open(local, "rb") as src, self.fs.open_output_stream(self._key(rel)) as dst:
            while chunk := src.read(_CHUNK):
                dst.write(chunk)

    def download(self, rel: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        with self.fs.open_input_stream(self._key(rel)) as src, open(local, "wb") as dst:  # FileNotFoundError: absent
            while chunk := src.read(_CHUNK):
                dst.write(chunk)


def _is_remote(root: str | Path) -> bool:
    from hybrid_pipeline.lakehouse.storage import is_remote

    return isinstance(root, str) and is_remote(root)


@contextmanager
def local_media_root(
    bronze_media_root: str | Path,
    bronze_paths: Sequence[str],
    storage_options: Mapping[str, str] | None = None,
) -> Iterator[Path]:
    """A local folder that holds ``bronze_paths`` under their store paths, for readers that open files.

    Local store: the store itself (nothing copied). Object store: a private temporary folder the
    files are downloaded into (each path validated first), deleted on exit; it is a read copy,
    never where bronze lives. A path the bucket does not hold is left absent, so its reader
    fails on that one file exactly as it would on a local store.
    """
    if not _is_remote(bronze_media_root):
        yield Path(bronze_media_root)
        return
    store = _RemoteStore(str(bronze_media_root), storage_options)
    with tempfile.TemporaryDirectory(prefix="hybrid-media-read-") as tmp:
        local = Path(tmp)
        for rel in dict.fromkeys(bronze_paths):
            target = resolve_bronze_path(local, rel)
            try:
                store.download(rel, target)
            except FileNotFoundError:
                target.unlink(missing_ok=True)
        yield local


def resolve_bronze_path(bronze_media_root: str | Path, bronze_path: str) -> Path:
    """Absolute path of a stored file, refusing anything that is not a store path.

    Why: manifests and tables are data; a tampered ``bronze_path`` must not
    make a reader open files outside the store.
    """
    if not _BRONZE_PATH_RE.fullmatch(bronze_path):
        raise ValueError(f"not a bronze media path: {bronze_path!r}")
    return Path(bronze_media_root) / PurePosixPath(bronze_path)


def ingest_landing_media(
    landing_media_dir: str | Path,
    bronze_media_root: str | Path,
    landing_date: str,
    *,
    ingested_at: datetime | None = None,
    max_depth: int = MAX_FOLDER_DEPTH,
    storage_options: Mapping[str, str] | None = None,
) -> tuple[list[MediaRecord], list[RejectedFile]]:
    """Copy every file under ``images/`` and ``docs/`` into the bronze store.

    Walks the tree depth-first in sorted name order (deterministic output),
    without recursion, opening every directory and file relative to its
    parent's descriptor with ``O_NOFOLLOW``, so a symlink (file or folder, or
    one swapped in during the walk) is rejected with reason ``symlink`` and
    never followed. A folder more than ``max_depth`` levels below its landing
    sub-folder is not opened: it is one ``too_deep`` reject, whatever it holds.
    Each file is streamed once: hashed, type-sniffed and written to a temp file
    in the store root, then atomically ``os.replace``-d to its content address
    (or discarded if that address already holds the same number of bytes).

    ``landing_date`` is the partition key (``YYYY-MM-DD``); ``ingested_at``
    defaults to now (UTC), one value for the whole batch.

    Returns ``(records, rejected)``; ``images/labels.csv`` is a control file
    (see :func:`load_labels`, which also reports it when it is refused) and
    appears in neither, whatever it is.

    An object-store root (``s3://...``, with ``storage_options`` for delta-rs' object store)
    stages each file in a private temporary folder and puts it at its address unless an
    object of the same size is already there.
    """
    date.fromisoformat(landing_date)  # fail fast on a bad partition key
    if _is_remote(bronze_media_root):
        remote = _RemoteStore(str(bronze_media_root), storage_options)
        with tempfile.TemporaryDirectory(prefix="hybrid-media-staging-") as staging:
            return _ingest(Path(landing_media_dir), Path(staging), landing_date, ingested_at, max_depth, remote)
    root = Path(bronze_media_root)
    root.mkdir(parents=True, exist_ok=True)
    return _ingest(Path(landing_media_dir), root, landing_date, ingested_at, max_depth, None)


def _ingest(
    landing: Path,
    root: Path,
    landing_date: str,
    ingested_at: datetime | None,
    max_depth: int,
    remote: _RemoteStore | None,
) -> tuple[list[MediaRecord], list[RejectedFile]]:
    """The walk of :func:`ingest_landing_media`; ``root`` is the store, or the staging folder of ``remote``."""
    when = ingested_at or datetime.now(timezone.utc)
    records: list[MediaRecord] = []
    rejected: list[RejectedFile] = []
    first_seen: dict[str, str] = {}

    for subdir in LANDING_SUBDIRS:
        sub_path = landing / subdir
        try:
            sub_fd = os.open(sub_path, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if sub_path.is_symlink() or exc.errno == errno.ELOOP:
                rejected.append(RejectedFile(subdir, subdir, landing_date, "symlink",
                                             "landing sub-folder is a symlink; not followed"))
            elif exc.errno == errno.ENOTDIR:
                rejected.append(RejectedFile(subdir, subdir, landing_date, "not_regular_file",
                                             "expected a folder"))
            else:
                rejected.append(RejectedFile(subdir, subdir, landing_date, "read_error", str(exc)))
            continue

        def on_file(dir_fd: int, name: str, rel: str, subdir: str = subdir) -> None:
            outcome = _store_one(dir_fd, name, root, remote)
            if isinstance(outcome, _Reject):
                rejected.append(RejectedFile(rel, subdir, landing_date, outcome.reason, outcome.detail))
                return
            sha, size, detected, existed = outcome
            landing_path = f"{subdir}/{rel}"
            dup = first_seen.setdefault(sha, landing_path)
            records.append(
                MediaRecord(
                    sha256=sha,
                    size_bytes=size,
                    detected_type=detected,
                    original_name=rel,
                    landing_subdir=subdir,
                    landing_date=landing_date,
                    ingested_at=when,
                    bronze_path=bronze_relpath(sha, detected),
                    extension_mismatch=is_extension_mismatch(rel, detected),
                    duplicate_of=None if dup == landing_path else dup,
                    already_in_bronze=existed,
                )
            )

        def on_reject(rel: str, reason: RejectReason, detail: str, subdir: str = subdir) -> None:
            rejected.append(RejectedFile(rel, subdir, landing_date, reason, detail))

        control_files = {LABELS_FILE} if subdir == "images" else set()
        try:
            _walk(sub_fd, on_file, on_reject, max_depth=max_depth, skip=control_files)
        finally:
            os.close(sub_fd)
    return records, rejected


def unique_records(records: Iterable[MediaRecord]) -> list[MediaRecord]:
    """One record per sha256 (the first landed), for the bronze ``media_files`` table."""
    seen: set[str] = set()
    out: list[MediaRecord] = []
    for rec in records:
        if rec.sha256 not in seen:
            seen.add(rec.sha256)
            out.append(rec)
    return out


def load_labels(landing_media_dir: str | Path, landing_date: str) -> tuple[dict[str, str], list[RejectedFile]]:
    """Read ``images/labels.csv`` for a run: ``(labels, rejected)``.

    Why not just :func:`read_labels`: the labels file is landing input like any
    other file, so a symlinked, non-regular or unreadable one is refused as one
    reject (``symlink``, ``not_regular_file``, ``read_error``) and the run goes
    on with no labels from it, instead of failing every image with it.
    Malformed *contents* still raise ``ValueError`` (see :func:`read_labels`).
    """
    path = Path(landing_media_dir) / "images" / LABELS_FILE
    outcome = _read_labels_bytes(Path(landing_media_dir))
    if outcome is None:
        return {}, []
    if isinstance(outcome, _Reject):
        return {}, [RejectedFile(LABELS_FILE, "images", landing_date, outcome.reason, outcome.detail)]
    return _parse_labels(outcome, path), []


def read_labels(landing_media_dir: str | Path) -> dict[str, str]:
    """Read ``images/labels.csv`` (``original_name,label``) into name -> label.

    Returns ``{}`` when the file is absent. Raises ``ValueError`` for a
    malformed header or a name given two different labels (a labelling
    contract error that a person must resolve, not a data row to guess at),
    and for a file that is refused (a symlink, not a regular file, unreadable).
    The file is opened without following symlinks, like every landing file.
    """
    path = Path(landing_media_dir) / "images" / LABELS_FILE
    outcome = _read_labels_bytes(Path(landing_media_dir))
    if outcome is None:
        return {}
    if isinstance(outcome, _Reject):
        raise ValueError(f"{path} refused ({outcome.reason}): {outcome.detail}")
    return _parse_labels(outcome, path)


# --------------------------------------------------------------------------- internals


def _display_name(name: str) -> str:
    """Landing name as a valid UTF-8 string (undecodable bytes backslash-escaped)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _read_labels_bytes(landing_media_dir: Path) -> bytes | _Reject | None:
    """The labels file's bytes, a reject, or None when there is no file to read.

    ``images/`` is opened without following a symlink too (a symlinked, missing or unreadable
    ``images/`` gives None: the walk reports the folder itself), and the file with
    ``O_NONBLOCK`` so a FIFO named ``labels.csv`` is refused instead of blocking the run.
    """
    try:
        images_fd = os.open(landing_media_dir / "images", os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC)
    except OSError:
        return None
    try:
        fd = os.open(LABELS_FILE, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK, dir_fd=images_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _Reject("symlink", "symbolic link; not followed")
        return _Reject("read_error", str(exc))
    finally:
        os.close(images_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _Reject("not_regular_file", f"mode {stat.filemode(st.st_mode)}")
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return fh.read()
    except OSError as exc:
        return _Reject("read_error", str(exc))
    finally:
        os.close(fd)


def _parse_labels(data: bytes, path: Path) -> dict[str, str]:
    text = data.decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    fields = [f.strip() for f in (reader.fieldnames or [])]
    if "original_name" not in fields or "label" not in fields:
        raise ValueError(f"{path}: expected columns original_name,label; got {fields}")
    reader.fieldnames = fields
    labels: dict[str, str] = {}
    for lineno, row in enumerate(reader, start=2):
        name = (row.get("original_name") or "").strip()
        label = (row.get("label") or "").strip()
        if not name:
            continue
        if not label:
            raise ValueError(f"{path}:{lineno}: empty label for {name!r}")
        if labels.setdefault(name, label) != label:
            raise ValueError(
                f"{path}:{lineno}: {name!r} labelled both {labels[name]!r} and {label!r}"
            )
    return labels


def _walk(
    top_fd: int,
    on_file: Callable[[int, str, str], None],
    on_reject: Callable[[str, RejectReason, str], None],
    *,
    max_depth: int,
    skip: set[str],
) -> None:
    """Visit the tree under ``top_fd`` depth-first in sorted name order, with an explicit stack.

    Why a stack and not recursion: a hostile landing can nest folders thousands deep, which
    would exhaust Python's recursion limit and fail the whole batch. Only the folders on the
    current path are held open, so at most ``max_depth`` descriptors. ``skip`` holds paths
    (relative to the top) that belong to someone else and are neither files nor rejects here.
    """
    stack: list[tuple[int, str, int, Iterator[os.DirEntry[str]]]] = [
        (top_fd, "", 0, iter(_sorted_entries(top_fd)))
    ]
    try:
        while stack:
            dir_fd, prefix, depth, entries = stack[-1]
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                if dir_fd != top_fd:
                    os.close(dir_fd)
                continue
            rel = prefix + _display_name(entry.name)
            if rel in skip:
                continue
            try:
                if entry.is_symlink():
                    on_reject(rel, "symlink", "symbolic link; not followed")
                    continue
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError as exc:
                on_reject(rel, "read_error", str(exc))
                continue
            if not is_dir:
                on_file(dir_fd, entry.name, rel)
                continue
            if depth >= max_depth:
                on_reject(rel, "too_deep", f"folder more than {max_depth} levels deep; nothing in it was ingested")
                continue
            try:
                child = os.open(entry.name, os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC,
                                dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    on_reject(rel, "symlink", "became a symlink during the walk; not followed")
                else:
                    on_reject(rel, "read_error", str(exc))
                continue
            try:
                children = _sorted_entries(child)
            except OSError as exc:
                os.close(child)
                on_reject(rel, "read_error", str(exc))
                continue
            stack.append((child, rel + "/", depth + 1, iter(children)))
    finally:
        for dir_fd, *_ in stack:
            if dir_fd != top_fd:
                os.close(dir_fd)


def _sorted_entries(dir_fd: int) -> list[os.DirEntry[str]]:
    with os.scandir(dir_fd) as it:
        return sorted(it, key=lambda e: e.name)


class _Stored(NamedTuple):
    sha256: str
    size: int
    detected: MediaType
    existed: bool


class _Reject(NamedTuple):
    reason: RejectReason
    detail: str


def _store_one(dir_fd: int, name: str, root: Path, remote: _RemoteStore | None = None) -> _Stored | _Reject:
    """Stream one landing file into the store; ``(sha, size, type, existed)`` or a reject.

    With ``remote``, ``root`` is a staging folder: the staged file is put at its address in the
    object store (unless the same number of bytes is there already) and then removed."""
    try:
        fd = os.open(name, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC | _O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return _Reject("symlink", "symbolic link; not followed")
        return _Reject("read_error", str(exc))
    with os.fdopen(fd, "rb", buffering=0) as src:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return _Reject("not_regular_file", f"mode {stat.filemode(st.st_mode)}")
        if st.st_size == 0:
            return _Reject("empty_file", "zero bytes")
        hasher = hashlib.sha256()
        sniffer = TypeSniffer()
        size = 0
        read_failure: str | None = None
        tmp_fd, tmp_name = tempfile.mkstemp(dir=root, prefix=".incoming-", suffix=".part")
        try:
            with os.fdopen(tmp_fd, "wb") as dst:
                while True:
                    try:
                        chunk = src.read(_CHUNK)
                    except OSError as exc:  # the landing file, not the store, failed
                        read_failure = str(exc)
                        break
                    if not chunk:
                        break
                    size += len(chunk)
                    hasher.update(chunk)
                    sniffer.feed(chunk)
                    dst.write(chunk)
                os.fchmod(dst.fileno(), 0o644)
            if read_failure is not None or size == 0:  # size 0: truncated after fstat
                os.unlink(tmp_name)
                return _Reject("read_error", read_failure) if read_failure else _Reject("empty_file", "zero bytes")
            sha = hasher.hexdigest()
            detected = sniffer.result()
            if remote is not None:
                rel = bronze_relpath(sha, detected)
                existed = remote.size(rel) == size
                if not existed:
                    remote.upload(tmp_name, rel)
                os.unlink(tmp_name)
                return _Stored(sha, size, detected, existed)
            target = root / bronze_relpath(sha, detected)
            try:
                existed = target.stat().st_size == size
            except FileNotFoundError:
                existed = False
            if existed:
                os.unlink(tmp_name)
            else:
                target.parent.mkdir(exist_ok=True)
                os.replace(tmp_name, target)
            return _Stored(sha, size, detected, existed)
        except BaseException:  # store-side failures (disk full...) propagate; no temp left
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
