"""Demo and test data for the media branch, written into a landing media folder.

Why real data: the 1,797 handwritten digits that ship inside scikit-learn give
a labelled image set with no download, so the whole chain (ingest, describe,
train) runs on something meaningful offline. Documents are generated product
descriptions, deterministic for a seed. :func:`write_broken_media` and the
``*_bytes`` helpers make one bad file per quarantine reason for tests and demos.

Layout written (the same one :func:`~hybrid_pipeline.media.store.ingest_landing_media` reads)::

    <landing_media_dir>/images/digit_00000.png ... + images/labels.csv
    <landing_media_dir>/docs/product_0000.pdf, product_0001.txt, ...
"""

from __future__ import annotations

import csv
import io
import random
import struct
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Final

import numpy as np
from PIL import Image

DIGIT_IMAGE_SIZE: Final = 32
_FIXED_DATE: Final = datetime(2024, 1, 1, tzinfo=timezone.utc)  # PDFs stay byte-identical per seed

_ADJECTIVES = ("Ergonomic", "Rustic", "Sleek", "Durable", "Compact", "Handcrafted", "Smart",
               "Lightweight", "Vintage", "Modular", "Waterproof", "Recycled")
_MATERIALS = ("Steel", "Oak", "Bamboo", "Aluminium", "Linen", "Ceramic", "Cotton", "Granite",
              "Leather", "Glass")
_PRODUCTS = ("Lamp", "Chair", "Backpack", "Kettle", "Desk", "Speaker", "Bottle", "Jacket",
             "Notebook", "Headphones", "Planter", "Watch")
_BENEFITS = ("keeps its shape after years of daily use", "fits neatly into small spaces",
             "is easy to clean with a damp cloth", "ships flat and assembles in minutes",
             "is made from responsibly sourced materials", "comes with a two-year warranty",
             "pairs well with the rest of the collection", "runs quietly and efficiently")


def write_demo_media(
    landing_media_dir: str | Path,
    seed: int = 0,
    n_docs: int = 50,
    *,
    max_images: int | None = None,
    image_size: int = DIGIT_IMAGE_SIZE,
) -> dict[str, int]:
    """Write the digit images (+ ``images/labels.csv``) and ``n_docs`` documents.

    Digits: 8x8 values 0-16 scaled to 0-255, upscaled (nearest, so no
    information is invented) to ``image_size`` square grayscale PNGs.
    Documents alternate PDF (even index) and TXT (odd). Same seed, same bytes.
    ``max_images`` caps the digits (for fast tests). Returns counts.
    """
    from sklearn.datasets import load_digits  # heavy import, only when used

    root = Path(landing_media_dir)
    images_dir = root / "images"
    docs_dir = root / "docs"
    images_dir.mkdir(parents=True, exist_ok=True)
    docs_dir.mkdir(parents=True, exist_ok=True)

    digits = load_digits()
    n_images = len(digits.images) if max_images is None else min(max_images, len(digits.images))
    rows: list[tuple[str, str]] = []
    for i in range(n_images):
        name = f"digit_{i:05d}.png"
        (images_dir / name).write_bytes(digit_png_bytes(digits.images[i], image_size))
        rows.append((name, str(int(digits.target[i]))))
    with open(images_dir / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("original_name", "label"))
        writer.writerows(rows)

    rng = random.Random(seed)
    pdfs = txts = 0
    for i in range(n_docs):
        title, body = _product_text(rng, i)
        if i % 2 == 0:
            (docs_dir / f"product_{i:04d}.pdf").write_bytes(pdf_bytes(body, title=title))
            pdfs += 1
        else:
            (docs_dir / f"product_{i:04d}.txt").write_text(f"{title}\n\n{body}\n", encoding="utf-8")
            txts += 1
    return {"images": n_images, "labels": n_images, "pdf": pdfs, "txt": txts, "docs": pdfs + txts}


def write_broken_media(landing_media_dir: str | Path) -> dict[str, str]:
    """Write one bad file per reason; returns landing path -> expected reason.

    ``empty_file`` is rejected at ingest (nothing to store); the others are
    stored in bronze and quarantined by :func:`~hybrid_pipeline.media.extract.describe_file`.
    """
    root = Path(landing_media_dir)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "docs").mkdir(parents=True, exist_ok=True)
    files = {
        "images/broken_empty.png": (b"", "empty_file"),
        "images/broken_truncated.png": (truncated_png_bytes(), "corrupt_image"),
        "images/broken_text_named.png": (b"this is plain text, not a picture\n", "extension_mismatch"),
        "images/broken_bomb.png": (bomb_png_bytes(), "decompression_bomb"),
        "docs/broken_encrypted.pdf": (encrypted_pdf_bytes(), "encrypted_pdf"),
        "docs/broken_garbage.pdf": (unreadable_pdf_bytes(), "unreadable_pdf"),
        "docs/broken_shared_stream.pdf": (complex_pdf_bytes(), "pdf_too_complex"),
        "docs/broken_random.pdf": (random_binary_bytes(), "unsupported_type"),
    }
    for rel, (data, _) in files.items():
        (root / rel).write_bytes(data)
    return {rel: reason for rel, (_, reason) in files.items()}


# --------------------------------------------------------------------------- byte builders


def digit_png_bytes(values_0_16: np.ndarray, size: int = DIGIT_IMAGE_SIZE) -> bytes:
    """One sklearn digit (values 0-16) as a grayscale PNG of ``size`` x ``size``."""
    arr = np.clip(np.rint(np.asarray(values_0_16, dtype=np.float64) * (255.0 / 16.0)), 0, 255)
    img = Image.fromarray(arr.astype(np.uint8), mode="L").resize((size, size), Image.Resampling.NEAREST)
    return _png(img)


def random_png_bytes(width: int = 16, height: int = 16, seed: int = 0, mode: str = "L") -> bytes:
    """A valid PNG of random pixels (incompressible, so sizes are realistic)."""
    rng = np.random.default_rng(seed)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    shape = (height, width) if channels == 1 else (height, width, channels)
    return _png(Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode=mode))


def jpeg_bytes(width: int = 24, height: int = 16, orientation: int | None = None, seed: int = 0) -> bytes:
    """A valid RGB JPEG, with an EXIF orientation tag when given."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), mode="RGB")
    buf = io.BytesIO()
    if orientation is None:
        img.save(buf, format="JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        img.save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def truncated_png_bytes() -> bytes:
    """A real PNG cut in the middle of its pixel data."""
    data = random_png_bytes(64, 64, seed=1)
    return data[: len(data) // 2]


def bomb_png_bytes(width: int = 10_000, height: int = 10_000) -> bytes:
    """A PNG header claiming ``width`` x ``height`` (100 MP by default) with no real pixels.

    Tiny on disk; decoding it would allocate gigabytes. Any honest header
    check refuses it before decoding.
    """
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    packer = zlib.compressobj()
    idat = packer.compress(b"\x00" * (width + 1)) + packer.flush(zlib.Z_SYNC_FLUSH)  # one row, unfinished
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def pdf_bytes(text: str, title: str | None = None) -> bytes:
    """A small text PDF (one or more pages), byte-identical for the same input."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_creation_date(_FIXED_DATE)
    if title:
        pdf.set_title(title)
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    if title:
        pdf.set_font("Helvetica", style="B", size=14)
        pdf.multi_cell(0, 8, title, new_x="LMARGIN", new_y="NEXT")
        pdf.set_font("Helvetica", size=11)
    pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def encrypted_pdf_bytes(user_password: str = "secret") -> bytes:
    """A valid PDF encrypted with a user password (RC4-128: no crypto library needed)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    writer.append(PdfReader(io.BytesIO(pdf_bytes("confidential", title="Secret"))))
    writer.encrypt(user_password=user_password, owner_password=user_password + "-owner",
                   algorithm="RC4-128")
    buf = io.BytesIO()
    writer.write(buf)
    return buf.getvalue()


def unreadable_pdf_bytes() -> bytes:
    """Starts like a PDF (so it is detected as one) but has no readable structure."""
    return b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R\nthis file was cut off"


def complex_pdf_bytes(pages: int = 16, content_bytes: int = 1 << 20) -> bytes:
    """A PDF of a few KB whose ``pages`` pages all draw one shared content stream.

    The stream holds ``content_bytes`` of repeated text operators, compressed to
    almost nothing. A parser that reads each page's content in turn parses it
    ``pages`` times: a second or more per page for 1 MiB, from a file of a few KB.
    """
    operator = b"BT /F1 12 Tf 72 720 Td (Hi) Tj ET\n"
    stream = zlib.compress(operator * max(1, content_bytes // len(operator)), 9)
    first_page = 4
    font = first_page + pages
    kids = " ".join(f"{first_page + i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n%b\nendstream" % (len(stream), stream),
        *(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 3 0 R "
            f"/Resources << /Font << /F1 {font} 0 R >> >> >>".encode()
            for _ in range(pages)
        ),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%b\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def random_binary_bytes(n: int = 256, seed: int = 0) -> bytes:
    """Bytes matching no supported type (includes NUL and invalid UTF-8)."""
    data = np.random.default_rng(seed).integers(0, 256, size=n, dtype=np.uint8).tobytes()
    return b"\x00\xff" + data


# --------------------------------------------------------------------------- internals


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _product_text(rng: random.Random, index: int) -> tuple[str, str]:
    name = f"{rng.choice(_ADJECTIVES)} {rng.choice(_MATERIALS)} {rng.choice(_PRODUCTS)}"
    title = f"Product P-{index:05d}: {name}"
    price = rng.randint(5, 500) + rng.choice((0.0, 0.49, 0.99))
    sentences = [f"The {name.lower()} {b}." for b in rng.sample(_BENEFITS, k=rng.randint(2, 4))]
    sentences.append(f"Price: {price:.2f} EUR. Stock keeping unit SKU-{rng.randint(10000, 99999)}.")
    return title, " ".join(sentences)
