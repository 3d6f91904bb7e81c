"""Describing files: one test per extractor and one per quarantine reason."""

from __future__ import annotations

import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hybrid_pipeline.media import demo, extract
from hybrid_pipeline.media.extract import (
    QUARANTINE_REASONS,
    Description,
    PdfBudget,
    describe_file,
    describe_many,
    dhash,
    hash_distance,
)

HEX64 = re.compile(r"^[0-9a-f]{16}$")


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def scene(size: int = 64, flip: bool = False) -> Image.Image:
    """A smooth picture (gradient and a disc) so resizing keeps its structure."""
    y, x = np.mgrid[0:size, 0:size] / size
    arr = 200 * x + 40 * np.sin(6 * y)
    arr[(x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.05] = 20
    if flip:
        arr = arr[:, ::-1]
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- extractors


def test_png_is_described_with_size_mode_format_and_hash(tmp_path: Path) -> None:
    path = write(tmp_path, "a.png", demo.random_png_bytes(20, 10, mode="RGB"))

    d = describe_file(path, original_name="a.png")

    assert (d.ok, d.reason, d.detected_type) == (True, None, "png")
    assert (d.width, d.height, d.mode, d.format) == (20, 10, "RGB", "PNG")
    assert d.perceptual_hash is not None and HEX64.fullmatch(d.perceptual_hash)
    assert d.exif_orientation is None and d.page_count is None
    assert d.size_bytes == path.stat().st_size


def test_jpeg_is_described_with_its_exif_orientation(tmp_path: Path) -> None:
    path = write(tmp_path, "photo.jpg", demo.jpeg_bytes(24, 16, orientation=6))

    d = describe_file(path, original_name="photo.jpg")

    assert d.ok and (d.format, d.mode, d.width, d.height) == ("JPEG", "RGB", 24, 16)
    assert d.exif_orientation == 6
    # the hash is of the image as displayed (rotated), not as stored
    with Image.open(path) as im:
        rotated = im.transpose(Image.Transpose.ROTATE_270)
        assert d.perceptual_hash == dhash(rotated)


def test_perceptual_hash_is_close_for_near_duplicates_and_far_for_different_images() -> None:
    original = scene(64)
    resized_recompressed = Image.open(io.BytesIO(_jpeg(scene(64).resize((160, 160)))))
    different = scene(64, flip=True)

    assert hash_distance(dhash(original), dhash(resized_recompressed)) <= 6
    assert hash_distance(dhash(original), dhash(different)) >= 20


def test_pdf_is_described_with_pages_title_and_text(tmp_path: Path) -> None:
    path = write(tmp_path, "p.pdf", demo.pdf_bytes("A sturdy oak desk.", title="Product P-1"))

    d = describe_file(path, original_name="p.pdf")

    assert (d.ok, d.detected_type, d.page_count, d.title) == (True, "pdf", 1, "Product P-1")
    assert d.text is not None and "A sturdy oak desk." in d.text
    assert d.text_length == len(d.text)
    assert d.width is None


def test_a_long_pdf_counts_all_its_pages(tmp_path: Path) -> None:
    text = "\n".join(f"Line {i} of a long product manual." for i in range(150))
    path = write(tmp_path, "long.pdf", demo.pdf_bytes(text))

    d = describe_file(path)

    assert d.ok and d.page_count is not None and d.page_count >= 3
    assert d.title is None  # no metadata title
    assert d.text is not None and "Line 149 of" in d.text
    assert d.text.count("\f") == d.page_count - 1  # pages separated by form feeds


def test_txt_is_described_with_its_first_line_as_title(tmp_path: Path) -> None:
    body = "\n  Trail Backpack 30L  \nWaterproof, light, and roomy.\n"
    path = write(tmp_path, "t.txt", body.encode())

    d = describe_file(path, original_name="t.txt")

    assert (d.ok, d.detected_type, d.title, d.text, d.text_length) == (True, "txt", "Trail Backpack 30L", body, len(body))


def test_text_can_be_left_out_of_the_result(tmp_path: Path) -> None:
    path = write(tmp_path, "t.txt", b"Title\nbody\n")

    d = describe_file(path, include_text=False)

    assert d.text is None and d.text_length == 11 and d.title == "Title"


# --------------------------------------------------------------------------- quarantine reasons

QUARANTINE_CASES: dict[str, tuple[str, bytes, dict[str, int]]] = {
    "empty_file": ("empty.png", b"", {}),
    "corrupt_image": ("cut.png", demo.truncated_png_bytes(), {}),
    "extension_mismatch": ("notes.png", b"just some text\n", {}),
    "decompression_bomb": ("bomb.png", demo.bomb_png_bytes(10_000, 10_000), {}),
    "encrypted_pdf": ("secret.pdf", demo.encrypted_pdf_bytes(), {}),
    "unreadable_pdf": ("broken.pdf", demo.unreadable_pdf_bytes(), {}),
    "pdf_too_complex": ("shared_stream.pdf", demo.complex_pdf_bytes(), {}),
    "unsupported_type": ("noise.pdf", demo.random_binary_bytes(), {}),
}


def test_every_quarantine_reason_has_a_case() -> None:
    # extraction_failed is what describe_many records when describing a file raised; see its own test
    assert set(QUARANTINE_CASES) == set(QUARANTINE_REASONS) - {"extraction_failed"}


@pytest.mark.parametrize("reason", sorted(QUARANTINE_CASES))
def test_bad_content_is_quarantined_with_its_reason_and_never_raises(tmp_path: Path, reason: str) -> None:
    name, data, opts = QUARANTINE_CASES[reason]
    path = write(tmp_path, name, data)

    d = describe_file(path, original_name=name, **opts)

    assert (d.ok, d.reason) == (False, reason)
    assert d.detail


def test_an_extension_mismatch_is_still_described_as_what_the_bytes_are(tmp_path: Path) -> None:
    path = write(tmp_path, "x.jpg", demo.jpeg_bytes(24, 16))
    stored_as = write(tmp_path, "stored.jpg", path.read_bytes())

    d = describe_file(stored_as, original_name="holiday.png")

    assert (d.ok, d.reason, d.extension_mismatch) == (False, "extension_mismatch", True)
    assert (d.detected_type, d.format, d.width, d.height) == ("jpeg", "JPEG", 24, 16)
    assert d.perceptual_hash is not None
    assert describe_file(stored_as, original_name="holiday.jpeg").ok


def test_a_content_problem_outranks_an_extension_mismatch(tmp_path: Path) -> None:
    path = write(tmp_path, "cut.png", demo.truncated_png_bytes())

    d = describe_file(path, original_name="cut.jpg")

    assert (d.reason, d.extension_mismatch) == ("corrupt_image", True)


def test_a_truncated_jpeg_fails_the_full_decode(tmp_path: Path) -> None:
    data = demo.jpeg_bytes(64, 64)
    path = write(tmp_path, "cut.jpg", data[: len(data) * 2 // 3])

    d = describe_file(path)

    assert (d.ok, d.reason) == (False, "corrupt_image")
    assert d.detail is not None and d.detail.startswith("load:")


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path: Path) -> None:
    small = write(tmp_path, "small.png", demo.random_png_bytes(20, 10))

    d = describe_file(small, max_pixels=199)

    assert (d.ok, d.reason, d.width, d.height) == (False, "decompression_bomb", 20, 10)
    assert describe_file(small, max_pixels=200).ok
    # the 100 MP header has no pixel data: had it been decoded it would be corrupt_image instead
    bomb = write(tmp_path, "bomb.png", demo.bomb_png_bytes(10_000, 10_000))
    assert describe_file(bomb, max_pixels=100_000_000).reason == "corrupt_image"
    assert describe_file(bomb).reason == "decompression_bomb"


def test_a_huge_header_beyond_pillows_own_limit_is_still_a_bomb(tmp_path: Path) -> None:
    bomb = write(tmp_path, "bomb.png", demo.bomb_png_bytes(60_000, 60_000))

    assert describe_file(bomb, max_pixels=10**12).reason == "decompression_bomb"


# --------------------------------------------------------------------------- bounded work


def test_a_tiny_pdf_whose_pages_all_draw_one_huge_stream_is_too_complex_and_refused_quickly(tmp_path: Path) -> None:
    data = demo.complex_pdf_bytes(pages=16, content_bytes=1 << 20)  # 16 pages x 1 MiB of text operators
    path = write(tmp_path, "manual.pdf", data)

    began = time.perf_counter()
    d = describe_file(path, original_name="manual.pdf")
    seconds = time.perf_counter() - began

    assert len(data) < 8_000
    assert (d.ok, d.reason, d.page_count) == (False, "pdf_too_complex", 16)
    assert d.detail is not None and "bytes of content" in d.detail
    assert seconds < 5.0  # a correctness bound: parsing the stream once per page takes far longer


def test_a_stream_shared_by_pages_counts_once_per_page_against_the_content_budget(tmp_path: Path) -> None:
    budget = PdfBudget(max_content_bytes=30_000)
    two = write(tmp_path, "two.pdf", demo.complex_pdf_bytes(pages=2, content_bytes=10_000))
    four = write(tmp_path, "four.pdf", demo.complex_pdf_bytes(pages=4, content_bytes=10_000))

    assert describe_file(two, pdf_budget=budget).ok
    assert describe_file(four, pdf_budget=budget).reason == "pdf_too_complex"


def test_a_pdf_over_its_page_or_time_budget_is_too_complex(tmp_path: Path) -> None:
    text = "\n".join(f"Line {i} of a long product manual." for i in range(150))
    path = write(tmp_path, "long.pdf", demo.pdf_bytes(text))
    pages = describe_file(path).page_count
    assert pages is not None and pages >= 3

    over_pages = describe_file(path, pdf_budget=PdfBudget(max_pages=pages - 1))
    over_time = describe_file(path, pdf_budget=PdfBudget(max_seconds=0.0))

    assert (over_pages.reason, over_pages.detail) == ("pdf_too_complex", f"{pages} pages > limit {pages - 1}")
    assert (over_time.reason, over_time.detail) == ("pdf_too_complex", "not done after the 0 s budget")


def test_a_crash_while_describing_one_file_quarantines_only_that_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def parser_bug(*args: object, **kwargs: object) -> Description:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(extract, "_describe_image", parser_bug)
    doc = write(tmp_path, "doc.txt", b"Doc\nbody\n")
    image = write(tmp_path, "a.png", demo.random_png_bytes(4, 4))
    gone = tmp_path / "gone.pdf"  # vanished from the store

    out = describe_many([doc, image, gone], workers=1)

    assert [(d.ok, d.reason) for d in out] == [(True, None), (False, "extraction_failed"), (False, "extraction_failed")]
    assert out[1].detail == "RecursionError: maximum recursion depth exceeded"
    assert out[1].size_bytes == image.stat().st_size
    assert out[2].detail is not None and out[2].detail.startswith("FileNotFoundError")
    assert [d.path for d in out] == [str(doc), str(image), str(gone)]


# --------------------------------------------------------------------------- parallel


def test_describe_many_on_two_processes_equals_sequential_in_input_order(tmp_path: Path) -> None:
    paths: list[Path] = []
    names: list[str | None] = []
    for i in range(24):
        paths.append(write(tmp_path, f"img{i}.png", demo.random_png_bytes(8 + i, 8, seed=i)))
        names.append(f"img{i}.png")
    for reason, (name, data, _) in QUARANTINE_CASES.items():
        paths.append(write(tmp_path, f"q_{reason}_{name}", data))
        names.append(name)
    paths.append(write(tmp_path, "doc.txt", b"Doc\nbody"))
    names.append(None)

    sequential = describe_many(paths, original_names=names, workers=1)
    parallel = describe_many(paths, original_names=names, workers=2, chunksize=4)

    assert parallel == sequential
    assert [d.path for d in parallel] == [str(p) for p in paths]
    assert all(isinstance(d, Description) for d in parallel)
    assert sum(d.ok for d in parallel) == 25


def test_describe_many_wants_one_name_per_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        describe_many([tmp_path / "a", tmp_path / "b"], original_names=["a"], workers=1)


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()
