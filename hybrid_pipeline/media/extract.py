"""Describe stored media files: image and document metadata, or a quarantine reason.

Why: silver ``media_metadata`` needs one row per file either way; bad content is
data (a quarantine row with a reason), not an exception that kills the run. So
:func:`describe_file` never raises for what is *in* a file; it returns a
:class:`Description` with ``ok``/``reason``/``detail``.

Decisions:

* The type comes from the bytes (magic wins). A file whose original name
  claims another type is still **fully described as what it really is**, but
  comes back ``ok=False, reason="extension_mismatch"`` (the landing contract
  was broken; a person should look) with ``extension_mismatch=True``. A content
  problem (corrupt, bomb, encrypted...) outranks the mismatch as ``reason``;
  the ``extension_mismatch`` flag still records it.
* Decompression bombs are refused from the header (``Image.open`` is lazy)
  before any pixel is decoded. Pillow also refuses above twice its own global
  ``Image.MAX_IMAGE_PIXELS`` (~179 MP); raise that too if you need a higher
  ``max_pixels``.
* Corrupt images: ``Image.verify()`` (structure, checksums) and then a full
  ``load()`` on a fresh handle (truncated pixel data).
* Encrypted PDFs are quarantined even when an empty password would open them:
  we hold no passwords and must not guess.
* The perceptual hash is a 64-bit dHash of the image as displayed (EXIF
  orientation applied); ``width``/``height`` are as stored.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any, Final, Literal, get_args

import numpy as np
from PIL import Image, ImageOps

from hybrid_pipeline.media.detect import (
    MediaType,
    detect_bytes,
    detect_file,
    is_extension_mismatch,
    type_from_name,
)

_Source = Callable[[], "io.BytesIO | Path"]  # a fresh handle per parse

QuarantineReason = Literal[
    "empty_file",
    "corrupt_image",
    "extension_mismatch",
    "decompression_bomb",
    "encrypted_pdf",
    "unreadable_pdf",
    "unsupported_type",
]
QUARANTINE_REASONS: Final[tuple[str, ...]] = get_args(QuarantineReason)

DEFAULT_MAX_PIXELS: Final = 50_000_000
EXIF_ORIENTATION_TAG: Final = 0x0112
TITLE_MAX_CHARS: Final = 200
#: Files up to this size are read once into memory and parsed from there.
IN_MEMORY_LIMIT_BYTES: Final = 64 * 1024 * 1024
_PIL_FORMATS: Final = {"png": ["PNG"], "jpeg": ["JPEG"]}


@dataclass(frozen=True, slots=True)
class Description:
    """What one file is. Image fields are None for documents and vice versa."""

    path: str
    ok: bool
    reason: QuarantineReason | None
    detail: str | None
    detected_type: MediaType
    size_bytes: int
    extension_mismatch: bool = False
    # images
    width: int | None = None
    height: int | None = None
    mode: str | None = None
    format: str | None = None
    perceptual_hash: str | None = None
    exif_orientation: int | None = None
    # documents
    page_count: int | None = None
    text_length: int | None = None
    title: str | None = None
    text: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def describe_file(
    path: str | Path,
    *,
    original_name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    include_text: bool = True,
) -> Description:
    """Describe one file, or say why it must be quarantined.

    ``original_name`` is the landing name (the bronze name carries the
    detected extension, so it cannot show a mismatch); pass it to get
    ``extension_mismatch``. ``include_text=False`` keeps extracted text out of
    the result (lengths and titles are still computed).
    Raises only for the file being absent/unreadable (``OSError``).
    """
    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        return Description(path=str(p), ok=False, reason="empty_file", detail="zero bytes",
                           detected_type="unknown", size_bytes=0)
    # Small files are read once and parsed from memory (3 image passes, 1 syscall).
    data = p.read_bytes() if size <= IN_MEMORY_LIMIT_BYTES else None
    src: _Source = (lambda: io.BytesIO(data)) if data is not None else (lambda: p)
    detected = detect_bytes(data) if data is not None else detect_file(p)
    mismatch = bool(original_name) and is_extension_mismatch(original_name or "", detected)
    base: dict[str, Any] = {"path": str(p), "size_bytes": size, "extension_mismatch": mismatch,
                            "detected_type": detected}
    if detected in ("png", "jpeg"):
        desc = _describe_image(src, detected, max_pixels, base)
    elif detected == "pdf":
        desc = _describe_pdf(src, include_text, base)
    elif detected == "txt":
        desc = _describe_txt(data if data is not None else p.read_bytes(), include_text, base)
    else:
        desc = _quarantine(base, "unsupported_type", "content matches no supported type (png, jpeg, pdf, utf-8 text)")
    if desc.ok and mismatch:
        claimed = type_from_name(original_name or "")
        return Description(
            **{**desc.to_dict(), "ok": False, "reason": "extension_mismatch",
               "detail": f"name {original_name!r} says {claimed}, content is {detected}"}
        )
    return desc


def describe_many(
    paths: Sequence[str | Path],
    *,
    original_names: Sequence[str | None] | None = None,
    workers: int | None = None,
    chunksize: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    include_text: bool = True,
    mp_context: BaseContext | None = None,
) -> list[Description]:
    """:func:`describe_file` over many files on all cores; results in input order.

    Why a process pool: decoding and hashing are CPU-bound and hold the GIL.
    Work goes out in chunks (default: about 4 per worker, at most 256 files)
    so per-task overhead stays small. ``workers`` defaults to the CPUs this
    process may use; ``workers<=1`` (or a single file) runs in-process. The
    default start method is ``spawn``: safe under a threaded host (Dagster,
    torch), where ``fork`` can deadlock.
    """
    n = len(paths)
    names: Sequence[str | None] = original_names if original_names is not None else [None] * n
    if len(names) != n:
        raise ValueError(f"{len(names)} original_names for {n} paths")
    items = [(str(p), name) for p, name in zip(paths, names)]
    opts = (max_pixels, include_text)
    workers = available_cpus() if workers is None else workers
    if workers <= 1 or n <= 1:
        return _describe_chunk((items, opts))
    workers = min(workers, n)
    if chunksize is None:
        chunksize = max(1, min(256, math.ceil(n / (workers * 4))))
    chunks = [(items[i : i + chunksize], opts) for i in range(0, n, chunksize)]
    ctx = mp_context or multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        out: list[Description] = []
        for part in pool.map(_describe_chunk, chunks):
            out.extend(part)
    return out


def available_cpus() -> int:
    """CPUs this process may run on (respects affinity/cgroup pinning where visible)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def dhash(image: Image.Image, hash_size: int = 8) -> str:
    """Difference hash: 64 bits (for ``hash_size=8``) as 16 hex chars.

    Why dHash: robust to scaling, brightness and compression, cheap, and
    near-duplicates differ in few bits (compare with :func:`hash_distance`).
    """
    gray = image.convert("L").resize(
        (hash_size + 1, hash_size), Image.Resampling.LANCZOS, reducing_gap=3.0
    )
    px = np.asarray(gray, dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).ravel()
    value = int.from_bytes(np.packbits(bits).tobytes(), "big")
    return f"{value:0{(hash_size * hash_size + 3) // 4}x}"


def hash_distance(a: str, b: str) -> int:
    """Hamming distance between two hex hashes of the same length."""
    if len(a) != len(b):
        raise ValueError("hashes have different lengths")
    return (int(a, 16) ^ int(b, 16)).bit_count()


# --------------------------------------------------------------------------- internals


def _describe_chunk(args: tuple[list[tuple[str, str | None]], tuple[int, bool]]) -> list[Description]:
    items, (max_pixels, include_text) = args
    return [
        describe_file(path, original_name=name, max_pixels=max_pixels, include_text=include_text)
        for path, name in items
    ]


def _quarantine(base: dict[str, Any], reason: QuarantineReason, detail: str, **fields: Any) -> Description:
    return Description(ok=False, reason=reason, detail=detail, **base, **fields)


def _err(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def _describe_image(src: _Source, detected: str, max_pixels: int, base: dict[str, Any]) -> Description:
    formats = _PIL_FORMATS[detected]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # 1. header only: dimensions, before any pixel is decoded; 2. structure/checksums
        try:
            im = Image.open(src(), formats=formats)
        except Image.DecompressionBombError as exc:
            return _quarantine(base, "decompression_bomb", _err(exc))
        except Exception as exc:  # noqa: BLE001 - any decoder error means bad content
            return _quarantine(base, "corrupt_image", _err(exc))
        with im:
            width, height = im.size
            dims: dict[str, Any] = {"width": width, "height": height, "format": im.format}
            if width * height > max_pixels:
                return _quarantine(
                    base, "decompression_bomb",
                    f"{width}x{height} = {width * height} pixels > limit {max_pixels}", **dims,
                )
            try:
                im.verify()
            except Exception as exc:  # noqa: BLE001
                return _quarantine(base, "corrupt_image", f"verify: {_err(exc)}", **dims)
        # 3. full decode on a fresh handle (verify() leaves the image unusable)
        try:
            with Image.open(src(), formats=formats) as im:
                im.load()
                orientation = im.getexif().get(EXIF_ORIENTATION_TAG)
                mode = im.mode
                phash = dhash(ImageOps.exif_transpose(im))
        except Exception as exc:  # noqa: BLE001
            return _quarantine(base, "corrupt_image", f"load: {_err(exc)}", **dims)
    return Description(
        ok=True, reason=None, detail=None, **base, **dims, mode=mode, perceptual_hash=phash,
        exif_orientation=int(orientation) if isinstance(orientation, int) else None,
    )


def _describe_pdf(src: _Source, include_text: bool, base: dict[str, Any]) -> Description:
    from pypdf import PdfReader  # imported here: only documents pay for it

    try:
        reader = PdfReader(src(), strict=False)
        encrypted = reader.is_encrypted
    except Exception as exc:  # noqa: BLE001
        return _quarantine(base, "unreadable_pdf", _err(exc))
    if encrypted:
        return _quarantine(base, "encrypted_pdf", "PDF is encrypted; no password is held")
    try:
        pages = reader.pages
        page_count = len(pages)
        text = "\n".join(page.extract_text() or "" for page in pages)
        meta = reader.metadata
        raw_title = meta.title if meta is not None else None
    except Exception as exc:  # noqa: BLE001
        return _quarantine(base, "unreadable_pdf", _err(exc))
    if page_count == 0:
        return _quarantine(base, "unreadable_pdf", "PDF has no pages", page_count=0)
    title = str(raw_title).strip()[:TITLE_MAX_CHARS] if raw_title else None
    return Description(
        ok=True, reason=None, detail=None, **base, page_count=page_count,
        text_length=len(text), title=title or None, text=text if include_text else None,
    )


def _describe_txt(data: bytes, include_text: bool, base: dict[str, Any]) -> Description:
    text = data.decode("utf-8-sig")  # detection already proved valid UTF-8
    title = next((line.strip() for line in text.splitlines() if line.strip()), None)
    return Description(
        ok=True, reason=None, detail=None, **base, page_count=None, text_length=len(text),
        title=title[:TITLE_MAX_CHARS] if title else None, text=text if include_text else None,
    )
