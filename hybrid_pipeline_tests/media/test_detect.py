"""File types come from magic bytes; names only matter for the mismatch flag."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybrid_pipeline.media import demo
from hybrid_pipeline.media.detect import TypeSniffer, detect_bytes, detect_file, is_extension_mismatch


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (demo.random_png_bytes(4, 4), "png"),
        (demo.jpeg_bytes(8, 8), "jpeg"),
        (demo.pdf_bytes("hello"), "pdf"),
        ("plain text, ünïcödé ✓\n".encode(), "txt"),
        (demo.random_binary_bytes(), "unknown"),
        (b"", "unknown"),
    ],
)
def test_each_type_is_recognised_from_its_bytes(data: bytes, expected: str) -> None:
    assert detect_bytes(data) == expected


def test_magic_bytes_win_over_the_extension(tmp_path: Path) -> None:
    path = tmp_path / "report.pdf"
    path.write_bytes(demo.random_png_bytes(4, 4))
    assert detect_file(path) == "png"
    assert is_extension_mismatch(path.name, "png")


def test_text_must_be_valid_utf8_without_nul_bytes() -> None:
    assert detect_bytes(b"abc\x00def") == "unknown"
    assert detect_bytes(b"caf\xe9 latin-1") == "unknown"
    assert detect_bytes("café".encode()) == "txt"
    assert detect_bytes("\ufeffwith a BOM".encode()) == "txt"


def test_sniffer_accepts_a_character_split_across_chunks_but_not_a_cut_one() -> None:
    encoded = "né".encode()  # 'é' is two bytes
    whole = TypeSniffer()
    whole.feed(encoded[:2])
    whole.feed(encoded[2:])
    assert whole.result() == "txt"
    cut = TypeSniffer()
    cut.feed(encoded[:2])
    assert cut.result() == "unknown"


def test_sniffer_recognises_magic_fed_in_tiny_chunks() -> None:
    data = demo.random_png_bytes(4, 4)
    sniffer = TypeSniffer()
    for i in range(0, len(data), 3):
        sniffer.feed(data[i : i + 3])
    assert sniffer.result() == "png"


@pytest.mark.parametrize(
    ("name", "detected", "mismatch"),
    [
        ("a.png", "png", False),
        ("A.JPG", "jpeg", False),
        ("a.jpeg", "jpeg", False),
        ("a.png", "jpeg", True),
        ("a.png", "txt", True),
        ("README", "txt", False),  # no extension claims nothing
        ("archive.tar.gz", "unknown", False),  # an extension we don't know claims nothing
    ],
)
def test_extension_mismatch(name: str, detected: str, mismatch: bool) -> None:
    assert is_extension_mismatch(name, detected) is mismatch  # type: ignore[arg-type]
