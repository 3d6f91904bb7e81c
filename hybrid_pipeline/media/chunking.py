"""Documents -> overlapping text chunks, the unit that is embedded and searched.

A chunk is a character window ``[start, end)`` of the document's extracted text. Windows are
at most ``size`` characters, consecutive windows share exactly ``overlap`` characters, and
together they cover every character. A window ends on whitespace when there is some in its
second part (so words are not cut), otherwise it is cut hard at ``size``: a single huge
"word" (a base64 blob, a run of digits) still becomes chunks of bounded length.

A chunk id is derived from the document's content hash, the chunking parameters and the
window, so it is the same on every rerun and machine, and a changed document (a new content
hash) or new parameters give new ids instead of silently reusing old ones.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

import polars as pl

DEFAULT_CHUNK_SIZE = 800  # characters: ~200 word pieces, inside a 256-token sentence-transformers window
DEFAULT_CHUNK_OVERLAP = 160

CHUNK_SCHEMA = pl.Schema(
    {
        "chunk_id": pl.String(),
        "sha256": pl.String(),  # the document's content hash
        "chunk_index": pl.Int64(),
        "page": pl.Int64(),  # 1-based page of the chunk's first character (form feeds separate pages)
        "start_char": pl.Int64(),
        "end_char": pl.Int64(),
        "text": pl.String(),
        "content_sha256": pl.String(),  # hash of the chunk's text
        "chunk_size": pl.Int64(),
        "chunk_overlap": pl.Int64(),
    }
)


@dataclass(frozen=True)
class Chunk:
    """One window of a document's text."""

    index: int
    start: int
    end: int
    text: str
    page: int


def check_params(size: int, overlap: int) -> None:
    """Refuse chunking parameters that could not make progress, naming the setting."""
    if not isinstance(size, int) or size < 2:
        raise ValueError(f"chunk_size must be an integer >= 2, got {size!r}")
    if not isinstance(overlap, int) or overlap < 0 or overlap >= size:
        raise ValueError(f"chunk_overlap must be an integer in [0, chunk_size={size}), got {overlap!r}")


def chunk_text(text: str, size: int = DEFAULT_CHUNK_SIZE, overlap: int = DEFAULT_CHUNK_OVERLAP) -> list[Chunk]:
    """Split ``text`` into windows of at most ``size`` characters sharing ``overlap`` with the next.

    Empty or whitespace-only text has no chunks (there is nothing to embed).
    """
    check_params(size, overlap)
    if not text or not text.strip():
        return []
    n = len(text)
    page_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\f"]
    chunks: list[Chunk] = []
    start = 0
    while True:
        end = min(start + size, n)
        if end < n:
            # end on whitespace in the window's second half, but always past the overlap so the next start moves on
            floor = max(start + overlap + 1, start + size // 2)
            cut = max((text.rfind(ws, floor, end) for ws in (" ", "\n", "\t", "\f")), default=-1)
            if cut >= floor:
                end = cut + 1
        page = _page_of(page_starts, start)
        chunks.append(Chunk(len(chunks), start, end, text[start:end], page))
        if end >= n:
            return chunks
        start = end - overlap


def _page_of(page_starts: list[int], offset: int) -> int:
    import bisect

    return bisect.bisect_right(page_starts, offset)


def chunk_id(document_sha256: str, size: int, overlap: int, start: int, end: int) -> str:
    """Stable id of a window: the document's content hash, the parameters and the offsets."""
    return hashlib.sha256(f"{document_sha256}:{size}:{overlap}:{start}:{end}".encode()).hexdigest()[:32]


def chunk_documents(
    documents: Iterable[tuple[str, str | None]],
    size: int = DEFAULT_CHUNK_SIZE,
    overlap: int = DEFAULT_CHUNK_OVERLAP,
) -> tuple[pl.DataFrame, list[str]]:
    """Chunks of ``(sha256, text)`` documents as a frame of :data:`CHUNK_SCHEMA`, and the shas without text."""
    check_params(size, overlap)
    rows: dict[str, list] = {c: [] for c in CHUNK_SCHEMA}
    empty: list[str] = []
    for sha, text in documents:
        chunks = chunk_text(text or "", size, overlap)
        if not chunks:
            empty.append(sha)
        for c in chunks:
            rows["chunk_id"].append(chunk_id(sha, size, overlap, c.start, c.end))
            rows["sha256"].append(sha)
            rows["chunk_index"].append(c.index)
            rows["page"].append(c.page)
            rows["start_char"].append(c.start)
            rows["end_char"].append(c.end)
            rows["text"].append(c.text)
            rows["content_sha256"].append(hashlib.sha256(c.text.encode("utf-8", "surrogatepass")).hexdigest())
            rows["chunk_size"].append(size)
            rows["chunk_overlap"].append(overlap)
    return pl.DataFrame(rows, schema=CHUNK_SCHEMA), empty
