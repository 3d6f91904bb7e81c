"""File-type detection from content (magic bytes), never from the name.

Why: landing files are named by whoever dropped them; a ``.png`` may be a text
file, a renamed JPEG or garbage. Everything downstream (the bronze extension,
which extractor runs, quarantine reasons) keys off what the bytes *are*.
Magic bytes always win over the extension; the extension is only compared
afterwards to flag ``extension_mismatch``.
"""

from __future__ import annotations

import codecs
from pathlib import Path, PurePath
from typing import BinaryIO, Final, Literal

MediaType = Literal["png", "jpeg", "pdf", "txt", "unknown"]

PNG_MAGIC: Final = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC: Final = b"\xff\xd8\xff"
PDF_MAGIC: Final = b"%PDF-"

#: Extension written to the bronze store for each detected type.
BRONZE_EXTENSION: Final[dict[str, str]] = {
    "png": "png",
    "jpeg": "jpg",
    "pdf": "pdf",
    "txt": "txt",
    "unknown": "bin",
}

#: What a landing file's (lower-cased) extension claims it is.
EXTENSION_TYPES: Final[dict[str, MediaType]] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".jpe": "jpeg",
    ".pdf": "pdf",
    ".txt": "txt",
    ".text": "txt",
}

IMAGE_TYPES: Final = frozenset({"png", "jpeg"})
DOCUMENT_TYPES: Final = frozenset({"pdf", "txt"})

_CHUNK = 1 << 20


class TypeSniffer:
    """Incremental detector fed chunk by chunk.

    Why: the bronze ingest already streams every file once to hash and copy it;
    feeding the same chunks here detects the type in that single pass instead
    of re-reading the file. Binary formats are decided from the first bytes;
    text needs the whole stream (valid UTF-8 to the end, no NUL byte).
    """

    __slots__ = ("_head", "_decoder", "_text_ok", "_decided", "_size")

    def __init__(self) -> None:
        self._head = b""
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self._text_ok = True
        self._decided: MediaType | None = None
        self._size = 0

    @property
    def decided(self) -> bool:
        """True once more bytes cannot change the answer (binary magic seen)."""
        return self._decided is not None

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        self._size += len(chunk)
        if self._decided is not None:
            return
        if len(self._head) < 16:
            self._head += chunk[: 16 - len(self._head)]
            magic = _binary_magic(self._head)
            if magic is not None:
                self._decided = magic
                return
        if self._text_ok:
            if b"\x00" in chunk:
                self._text_ok = False
            else:
                try:
                    self._decoder.decode(chunk)
                except UnicodeDecodeError:
                    self._text_ok = False

    def result(self) -> MediaType:
        """The detected type of everything fed so far (``unknown`` if empty)."""
        if self._decided is not None:
            return self._decided
        if self._size == 0:
            return "unknown"
        magic = _binary_magic(self._head)
        if magic is not None:  # short files whose head was completed late
            return magic
        if not self._text_ok:
            return "unknown"
        try:
            self._decoder.decode(b"", final=True)  # a cut multi-byte sequence
        except UnicodeDecodeError:
            return "unknown"
        return "txt"


def _binary_magic(head: bytes) -> MediaType | None:
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PDF_MAGIC):
        return "pdf"
    return None


def detect_bytes(data: bytes) -> MediaType:
    """Detect the type of a complete in-memory payload."""
    sniffer = TypeSniffer()
    sniffer.feed(data)
    return sniffer.result()


def detect_stream(stream: BinaryIO, chunk_size: int = _CHUNK) -> MediaType:
    """Detect from a binary stream, reading only as far as needed."""
    sniffer = TypeSniffer()
    while not sniffer.decided:
        chunk = stream.read(chunk_size)
        if not chunk:
            break
        sniffer.feed(chunk)
    return sniffer.result()


def detect_file(path: str | Path) -> MediaType:
    """Detect the type of a file on disk from its bytes (the name is ignored)."""
    with open(path, "rb") as fh:
        return detect_stream(fh)


def type_from_name(name: str | PurePath) -> MediaType | None:
    """The type a file *name* claims, or None for an extension we don't know."""
    return EXTENSION_TYPES.get(PurePath(str(name)).suffix.lower())


def is_extension_mismatch(name: str | PurePath, detected: MediaType) -> bool:
    """True when the name's extension claims a type other than the content's.

    Why: a mismatch is a landing-contract violation worth quarantining even
    when the content is fine. Unknown or missing extensions claim nothing and
    are never a mismatch (unknown *content* is ``unsupported_type`` instead).
    """
    claimed = type_from_name(name)
    if claimed is None:
        return False
    return claimed != detected
