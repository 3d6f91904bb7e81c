"""Demo data: the real sklearn digits, deterministic documents, and one broken file per reason."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from hybrid_pipeline.media import demo
from hybrid_pipeline.media.extract import describe_many
from hybrid_pipeline.media.store import ingest_landing_media, read_labels


def test_demo_writes_all_1797_digits_with_labels_and_the_documents(tmp_path: Path) -> None:
    counts = demo.write_demo_media(tmp_path, seed=0, n_docs=6)

    assert counts == {"images": 1797, "labels": 1797, "pdf": 3, "txt": 3, "docs": 6}
    images = sorted((tmp_path / "images").glob("*.png"))
    assert len(images) == 1797
    with Image.open(images[0]) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "L", (32, 32))
        assert max(im.getdata()) <= 255 and max(im.getdata()) > 200  # 0-16 scaled up to 0-255
    labels = read_labels(tmp_path)
    assert len(labels) == 1797 and set(labels.values()) == {str(d) for d in range(10)}
    with open(tmp_path / "images" / "labels.csv", newline="") as fh:
        assert next(csv.reader(fh)) == ["original_name", "label"]
    assert len(list((tmp_path / "docs").glob("*.pdf"))) == 3
    assert len(list((tmp_path / "docs").glob("*.txt"))) == 3


def test_demo_documents_are_deterministic_for_a_seed(tmp_path: Path) -> None:
    def docs(folder: str, seed: int) -> dict[str, bytes]:
        demo.write_demo_media(tmp_path / folder, seed=seed, n_docs=4, max_images=2)
        return {p.name: p.read_bytes() for p in sorted((tmp_path / folder).rglob("*")) if p.is_file()}

    assert docs("a", 7) == docs("b", 7)
    assert docs("a", 7) != docs("c", 8)


def test_broken_media_end_to_end_get_their_expected_reasons(tmp_path: Path) -> None:
    landing, bronze = tmp_path / "landing", tmp_path / "bronze"
    expected = demo.write_broken_media(landing)

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01")
    descriptions = describe_many([bronze / r.bronze_path for r in records],
                                 original_names=[r.original_name for r in records], workers=1)

    got = {r.landing_path: r.reason for r in rejected}
    got.update({r.landing_path: d.reason for r, d in zip(records, descriptions)})
    assert got == expected
