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
* A PDF's parse work is bounded by a :class:`PdfBudget` (pages, content bytes to
  parse, seconds); a document over it is ``pdf_too_complex``. A few KB can
  otherwise cost minutes: one big compressed content stream drawn by every page
  is parsed again for each page.
* :func:`describe_many` never fails the batch for one file: a file whose
  description crashes (a parser bug, the stored file gone) comes back
  ``extraction_failed`` with the exception as ``detail``.
* The perceptual hash is a 64-bit dHash of the image as displayed (EXIF
  orientation applied); ``width``/``height`` are as stored.
"""

from __future__ import annotations

import io
import math
import multiprocessing
import os
import time
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
    "pdf_too_complex",
    "unsupported_type",
    "extraction_failed",
]
QUARANTINE_REASONS: Final[tuple[str, ...]] = get_args(QuarantineReason)

DEFAULT_MAX_PIXELS: Final = 50_000_000
EXIF_ORIENTATION_TAG: Final = 0x0112
TITLE_MAX_CHARS: Final = 200
#: Files up to this size are read once into memory and parsed from there.
IN_MEMORY_LIMIT_BYTES: Final = 64 * 1024 * 1024
_PIL_FORMATS: Final = {"png": ["PNG"], "jpeg": ["JPEG"]}


@dataclass(frozen=True, slots=True)
class PdfBudget:
    """The most work describing one PDF may take; beyond it the PDF is ``pdf_too_complex``.

    Why all three: pages bound the per-page overhead; content bytes bound the
    parsing, counted once per page that draws a stream (each page parses its
    streams again, so a stream shared by 1,000 pages costs 1,000 parses) and
    measured by decoding each stream once; seconds bound whatever the other two
    do not model (form XObjects drawn over and over), checked between content
    operators. The defaults keep any one document to about ten seconds while a
    1,000-page text manual (2-4 MB of content) passes.
    """

    max_pages: int = 5_000
    max_content_bytes: int = 8 * 1024 * 1024
    max_seconds: float = 10.0


DEFAULT_PDF_BUDGET: Final = PdfBudget()


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
    pdf_budget: PdfBudget = DEFAULT_PDF_BUDGET,
) -> Description:
    """Describe one file, or say why it must be quarantined.

    ``original_name`` is the landing name (the bronze name carries the
    detected extension, so it cannot show a mismatch); pass it to get
    ``extension_mismatch``. ``include_text=False`` keeps extracted text out of
    the result (lengths and titles are still computed). ``pdf_budget`` bounds
    the work one PDF may cost (see :class:`PdfBudget`).
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
        desc = _describe_pdf(src, include_text, pdf_budget, base)
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
    pdf_budget: PdfBudget = DEFAULT_PDF_BUDGET,
    mp_context: BaseContext | None = None,
) -> list[Description]:
    """:func:`describe_file` over many files on all cores; results in input order.

    Always one :class:`Description` per path: a file whose description raises
    (even an absent file) is ``extraction_failed``, so one file cannot fail the batch.

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
    opts = (max_pixels, include_text, pdf_budget)
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


def _describe_chunk(args: tuple[list[tuple[str, str | None]], tuple[int, bool, PdfBudget]]) -> list[Description]:
    items, (max_pixels, include_text, pdf_budget) = args
    return [_describe_or_quarantine(path, name, max_pixels, include_text, pdf_budget) for path, name in items]


def _describe_or_quarantine(
    path: str, name: str | None, max_pixels: int, include_text: bool, pdf_budget: PdfBudget
) -> Description:
    """:func:`describe_file`, with any exception it raises turned into this file's quarantine record."""
    try:
        return describe_file(path, original_name=name, max_pixels=max_pixels, include_text=include_text,
                             pdf_budget=pdf_budget)
    except Exception as exc:  # noqa: BLE001 - one file must not fail the batch
        try:
            size = os.stat(path).st_size
        except OSError:
            size = 0
        return Description(path=path, ok=False, reason="extraction_failed", detail=_err(exc),
                           detected_type="unknown", size_bytes=size)


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


def _describe_pdf(src: _Source, include_text: bool, budget: PdfBudget, base: dict[str, Any]) -> Description:
    from pypdf import PdfReader  # imported here: only documents pay for it
    from pypdf.errors import LimitReachedError

    work = _PdfWork(budget)
    try:
        reader = PdfReader(src(), strict=False)
        encrypted = reader.is_encrypted
    except Exception as exc:  # noqa: BLE001
        return _quarantine(base, "unreadable_pdf", _err(exc))
    if encrypted:
        return _quarantine(base, "encrypted_pdf", "PDF is encrypted; no password is held")
    page_count: int | None = None
    try:
        pages = reader.pages
        page_count = len(pages)
        work.check_pages(page_count)
        work.measure_content(pages)
        # a form feed between pages (as pdftotext writes): chunks take their page number from it
        text = "\f".join(work.extract_text(page) for page in pages)
        meta = reader.metadata
        raw_title = meta.title if meta is not None else None
    except _OverBudget as exc:
        return _quarantine(base, "pdf_too_complex", str(exc), page_count=page_count)
    except LimitReachedError as exc:  # one of pypdf's own limits (stream, array or dictionary size)
        return _quarantine(base, "pdf_too_complex", _err(exc), page_count=page_count)
    except Exception as exc:  # noqa: BLE001
        return _quarantine(base, "unreadable_pdf", _err(exc))
    if page_count == 0:
        return _quarantine(base, "unreadable_pdf", "PDF has no pages", page_count=0)
    title = str(raw_title).strip()[:TITLE_MAX_CHARS] if raw_title else None
    return Description(
        ok=True, reason=None, detail=None, **base, page_count=page_count,
        text_length=len(text), title=title or None, text=text if include_text else None,
    )


class _OverBudget(Exception):
    """A PDF needs more work than its :class:`PdfBudget` allows."""


class _PdfWork:
    """One document's work so far, checked against its budget (raises :class:`_OverBudget`)."""

    def __init__(self, budget: PdfBudget) -> None:
        self.budget = budget
        self.deadline = time.monotonic() + budget.max_seconds

    def check_time(self, *_: Any) -> None:
        """Raise once the time budget is spent; also a pypdf operator visitor."""
        if time.monotonic() >= self.deadline:
            raise _OverBudget(f"not done after the {self.budget.max_seconds:g} s budget")

    def check_pages(self, page_count: int) -> None:
        if page_count > self.budget.max_pages:
            raise _OverBudget(f"{page_count} pages > limit {self.budget.max_pages}")

    def measure_content(self, pages: Sequence[Any]) -> None:
        """Add up the content bytes the pages make the parser read, before it reads any.

        A stream counts once per page that draws it (each page parses it again)
        but is decoded once: sizes are kept per object, and pypdf keeps the
        decoded bytes for the extraction that follows.
        """
        from pypdf.generic import ArrayObject, IndirectObject, StreamObject

        sizes: dict[Any, int] = {}
        total = 0
        for number, page in enumerate(pages, start=1):
            self.check_time()
            if "/Contents" not in page:
                continue
            raw = page.raw_get("/Contents")
            resolved = raw.get_object()
            parts = list(resolved) if isinstance(resolved, ArrayObject) else [raw]
            for part in parts:
                key = (part.idnum, part.generation) if isinstance(part, IndirectObject) else id(part)
                if key not in sizes:
                    stream = part.get_object()
                    sizes[key] = len(stream.get_data()) if isinstance(stream, StreamObject) else 0
                total += sizes[key]
                if total > self.budget.max_content_bytes:
                    raise _OverBudget(
                        f"pages 1-{number} draw more than {self.budget.max_content_bytes} bytes of content "
                        "to parse (a stream drawn by several pages counts once per page)"
                    )

    def extract_text(self, page: Any) -> str:
        """The page's text, checking the time budget before every content operator."""
        self.check_time()
        return page.extract_text(visitor_operand_before=self.check_time) or ""


def _describe_txt(data: bytes, include_text: bool, base: dict[str, Any]) -> Description:
    text = data.decode("utf-8-sig")  # detection already proved valid UTF-8
    title = next((line.strip() for line in text.splitlines() if line.strip()), None)
    return Description(
        ok=True, reason=None, detail=None, **base, page_count=None, text_length=len(text),
        title=title[:TITLE_MAX_CHARS] if title else None, text=text if include_text else None,
    )
