"""The bronze store: content-addressed, byte-exact, deduplicated, and never steered by names."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest

from hybrid_pipeline.media import demo
from hybrid_pipeline.media.store import (
    MAX_FOLDER_DEPTH,
    bronze_relpath,
    ingest_landing_media,
    load_labels,
    read_labels,
    resolve_bronze_path,
    unique_records,
)

from .conftest import make_nested_folders, remove_tree, sha256

Put = Callable[[str, bytes], Path]
WHEN = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
STORE_PATH = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.(png|jpg|pdf|txt|bin)$")


def stored_files(bronze: Path) -> list[Path]:
    return sorted(p for p in bronze.rglob("*") if p.is_file())


@pytest.fixture
def deep_docs(landing: Path) -> Iterator[list[Path]]:
    """1,200 folders nested under ``docs/`` (outermost first), removed afterwards."""
    folders = make_nested_folders(landing / "docs", 1_200)
    yield folders
    remove_tree(folders[0])


def test_each_file_is_stored_under_its_sha256_with_the_detected_extension(
    landing: Path, bronze: Path, put: Put
) -> None:
    png, jpeg, txt = demo.random_png_bytes(8, 8), demo.jpeg_bytes(), b"hello\n"
    put("images/a.png", png)
    put("images/photo.png", jpeg)  # a JPEG wearing a .png name
    put("docs/notes.txt", txt)

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01", ingested_at=WHEN)

    assert rejected == []
    by_name = {r.landing_path: r for r in records}
    assert set(by_name) == {"images/a.png", "images/photo.png", "docs/notes.txt"}
    photo = by_name["images/photo.png"]
    assert photo.sha256 == sha256(jpeg)
    assert photo.detected_type == "jpeg"
    assert photo.bronze_path == f"{sha256(jpeg)[:2]}/{sha256(jpeg)}.jpg"
    assert photo.extension_mismatch is True
    assert by_name["images/a.png"].extension_mismatch is False
    notes = by_name["docs/notes.txt"]
    assert (notes.size_bytes, notes.detected_type, notes.original_name, notes.landing_subdir) == (
        len(txt), "txt", "notes.txt", "docs")
    assert all(r.landing_date == "2024-03-01" and r.ingested_at == WHEN for r in records)
    assert all(STORE_PATH.fullmatch(r.bronze_path) for r in records)


@pytest.mark.parametrize("size", [1, 4095, (1 << 20) + 7, 3 * (1 << 20)])  # around the 1 MiB chunk
def test_stored_bytes_are_identical_to_the_landed_bytes(landing: Path, bronze: Path, put: Put, size: int) -> None:
    data = os.urandom(size)
    put("docs/blob.bin", data)

    (record,), _ = ingest_landing_media(landing, bronze, "2024-03-01")

    stored = bronze / record.bronze_path
    assert stored.read_bytes() == data
    assert record.sha256 == sha256(data) and record.size_bytes == size


def test_same_content_under_two_names_is_stored_once_and_flagged(landing: Path, bronze: Path, put: Put) -> None:
    png = demo.random_png_bytes(8, 8, seed=3)
    put("images/a.png", png)
    put("images/zz/copy_of_a.png", png)
    put("images/other.png", demo.random_png_bytes(8, 8, seed=4))

    records, _ = ingest_landing_media(landing, bronze, "2024-03-01")

    dup = next(r for r in records if r.original_name == "zz/copy_of_a.png")
    first = next(r for r in records if r.original_name == "a.png")
    assert dup.duplicate_of == "images/a.png" and first.duplicate_of is None
    assert dup.bronze_path == first.bronze_path
    assert len(records) == 3  # one record per landed file (row conservation)
    assert [r.original_name for r in unique_records(records)] == ["a.png", "other.png"]
    assert len(stored_files(bronze)) == 2


def test_reingesting_the_same_landing_stores_nothing_new(landing: Path, bronze: Path, put: Put) -> None:
    put("images/a.png", demo.random_png_bytes(8, 8))
    put("docs/b.txt", b"text")
    first, _ = ingest_landing_media(landing, bronze, "2024-03-01")
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in stored_files(bronze)}

    os.rename(landing / "images" / "a.png", landing / "images" / "renamed.png")
    second, _ = ingest_landing_media(landing, bronze, "2024-03-02")

    assert not any(r.already_in_bronze for r in first)
    assert all(r.already_in_bronze for r in second)
    assert {r.sha256 for r in second} == {r.sha256 for r in first}
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in stored_files(bronze)} == before


def test_a_zero_byte_file_is_rejected_as_empty_file(landing: Path, bronze: Path, put: Put) -> None:
    put("images/empty.png", b"")

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01")

    assert records == []
    assert [(r.landing_path, r.reason) for r in rejected] == [("images/empty.png", "empty_file")]
    assert stored_files(bronze) == []


def test_symlinks_are_rejected_and_never_followed(tmp_path: Path, landing: Path, bronze: Path, put: Put) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_bytes(b"top secret outside the landing zone\n")
    (landing / "images" / "link.png").symlink_to(secret)
    (landing / "images" / "linked_dir").symlink_to(secret.parent, target_is_directory=True)
    (landing / "images" / "dangling.png").symlink_to(tmp_path / "nowhere")
    put("images/real.png", demo.random_png_bytes(4, 4))

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01")

    assert [r.original_name for r in records] == ["real.png"]
    assert sorted((r.original_name, r.reason) for r in rejected) == [
        ("dangling.png", "symlink"), ("link.png", "symlink"), ("linked_dir", "symlink")]
    assert all(p.read_bytes() != secret.read_bytes() for p in stored_files(bronze))


def test_a_symlinked_landing_subfolder_is_rejected(tmp_path: Path, landing: Path, bronze: Path) -> None:
    outside = tmp_path / "outside_docs"
    outside.mkdir()
    (outside / "leak.txt").write_bytes(b"should never be stored")
    (landing / "docs").rmdir()
    (landing / "docs").symlink_to(outside, target_is_directory=True)

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01")

    assert records == []
    assert [(r.landing_subdir, r.reason) for r in rejected] == [("docs", "symlink")]
    assert stored_files(bronze) == []


def test_landing_names_cannot_steer_where_files_are_written(tmp_path: Path, landing: Path, bronze: Path) -> None:
    hostile = ["..%2F..%2Fescape.png", "..\\..\\escape.png", "...png", "-rf .png", "new\nline.png",
               os.fsdecode(b"caf\xe9.png")]
    for i, name in enumerate(hostile):
        (landing / "images" / name).write_bytes(demo.random_png_bytes(4, 4, seed=i))
    nested = landing / "images" / ".." / "images" / "..." / "deep"  # '..' resolves inside the landing
    nested.mkdir(parents=True)
    (nested / "x.png").write_bytes(demo.random_png_bytes(4, 4, seed=99))
    top_level_before = sorted(p.name for p in tmp_path.iterdir())

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01")

    assert rejected == []
    assert len(records) == len(hostile) + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({*top_level_before, "lakehouse"})
    root = bronze.resolve()
    for rec in records:
        assert STORE_PATH.fullmatch(rec.bronze_path)
        assert (bronze / rec.bronze_path).resolve().is_relative_to(root)
    names = {r.original_name for r in records}
    assert {"..%2F..%2Fescape.png", "..\\..\\escape.png", "new\nline.png", ".../deep/x.png"} <= names
    assert "caf\\xe9.png" in names  # undecodable bytes escaped, still valid UTF-8
    for name in names:
        name.encode("utf-8")


def test_store_paths_are_built_only_from_a_real_hash() -> None:
    with pytest.raises(ValueError):
        bronze_relpath("../../etc/passwd", "png")
    with pytest.raises(ValueError):
        bronze_relpath("A" * 64, "png")  # upper case is not what we write
    with pytest.raises(ValueError):
        resolve_bronze_path("/bronze", "../../etc/passwd")
    sha = "ab" * 32
    assert resolve_bronze_path("/bronze", f"ab/{sha}.png") == Path("/bronze/ab") / f"{sha}.png"


def test_no_temporary_files_are_left_in_the_store(landing: Path, bronze: Path, put: Put) -> None:
    for i in range(5):
        put(f"images/{i}.png", demo.random_png_bytes(4, 4, seed=i % 2))  # duplicates discard their temp

    ingest_landing_media(landing, bronze, "2024-03-01")

    assert [p for p in bronze.rglob("*") if p.name.startswith(".")] == []
    assert all(STORE_PATH.fullmatch(p.relative_to(bronze).as_posix()) for p in stored_files(bronze))


def test_a_folder_tree_deeper_than_the_limit_is_one_too_deep_reject_and_the_files_beside_it_are_stored(
    landing: Path, bronze: Path, put: Put, deep_docs: list[Path]
) -> None:
    put("docs/beside.txt", b"a good file beside the deep tree\n")
    (deep_docs[MAX_FOLDER_DEPTH - 1] / "deepest_allowed.txt").write_bytes(b"at the depth limit\n")
    (deep_docs[MAX_FOLDER_DEPTH] / "one_too_deep.txt").write_bytes(b"one level past the limit\n")
    (deep_docs[-1] / "bottom.txt").write_bytes(b"1,200 folders down\n")

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01")

    limit_path = "/".join(["d"] * MAX_FOLDER_DEPTH)
    assert sorted(r.original_name for r in records) == ["beside.txt", f"{limit_path}/deepest_allowed.txt"]
    assert [(r.landing_subdir, r.original_name, r.reason) for r in rejected] == [
        ("docs", f"{limit_path}/d", "too_deep")]
    assert rejected[0].detail == f"folder more than {MAX_FOLDER_DEPTH} levels deep; nothing in it was ingested"


def test_the_depth_limit_is_a_parameter(landing: Path, bronze: Path, put: Put) -> None:
    put("images/a/b/c.png", demo.random_png_bytes(4, 4))

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01", max_depth=1)

    assert records == []
    assert [(r.original_name, r.reason) for r in rejected] == [("a/b", "too_deep")]
    assert [r.original_name for r in ingest_landing_media(landing, bronze, "2024-03-01", max_depth=2)[0]] == [
        "a/b/c.png"]


def test_a_fifo_is_rejected_without_blocking(landing: Path, bronze: Path) -> None:
    os.mkfifo(landing / "docs" / "pipe.txt")

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01")

    assert records == []
    assert [(r.original_name, r.reason) for r in rejected] == [("pipe.txt", "not_regular_file")]


def test_labels_csv_is_read_as_labels_and_not_ingested_as_an_image(landing: Path, bronze: Path, put: Put) -> None:
    put("images/a.png", demo.random_png_bytes(4, 4))
    put("images/labels.csv", "\ufefforiginal_name,label\na.png,cat\nb.png, dog \n".encode())

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01")

    assert [r.original_name for r in records] == ["a.png"] and rejected == []
    assert read_labels(landing) == {"a.png": "cat", "b.png": "dog"}
    assert load_labels(landing, "2024-03-01") == ({"a.png": "cat", "b.png": "dog"}, [])


def test_a_symlinked_labels_file_is_refused_once_and_the_images_are_still_ingested(
    landing: Path, bronze: Path, put: Put
) -> None:
    put("images/a.png", demo.random_png_bytes(4, 4))
    (landing / "images" / "labels.csv").symlink_to("/etc/passwd")

    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01")
    labels, labels_rejected = load_labels(landing, "2024-03-01")

    assert [r.original_name for r in records] == ["a.png"]
    assert rejected == []  # the labels file is reported once, by load_labels
    assert labels == {}
    assert [(r.landing_path, r.reason, r.landing_date) for r in labels_rejected] == [
        ("images/labels.csv", "symlink", "2024-03-01")]
    with pytest.raises(ValueError, match="symlink"):
        read_labels(landing)  # the strict reader still refuses loudly


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_labels_file_that_is_not_a_regular_file_is_refused_without_blocking(
    landing: Path, bronze: Path, kind: str
) -> None:
    path = landing / "images" / "labels.csv"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.mkdir()
        (path / "hidden.png").write_bytes(demo.random_png_bytes(4, 4))

    labels, labels_rejected = load_labels(landing, "2024-03-01")
    records, rejected = ingest_landing_media(landing, bronze, "2024-03-01")

    assert labels == {}
    assert [(r.landing_path, r.reason) for r in labels_rejected] == [("images/labels.csv", "not_regular_file")]
    assert records == [] and rejected == []  # one record in all, for the name the control file owns


def test_labels_are_not_read_through_a_symlinked_images_folder(tmp_path: Path, landing: Path, put: Put) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "labels.csv").write_bytes(b"original_name,label\na.png,cat\n")
    (landing / "images").rmdir()
    (landing / "images").symlink_to(outside, target_is_directory=True)

    assert load_labels(landing, "2024-03-01") == ({}, [])  # the walk rejects the folder itself


def test_read_labels_without_a_file_is_empty_and_conflicts_are_errors(landing: Path, put: Put) -> None:
    assert read_labels(landing) == {}
    put("images/labels.csv", b"original_name,label\na.png,cat\na.png,dog\n")
    with pytest.raises(ValueError, match="labelled both"):
        read_labels(landing)
    put("images/labels.csv", b"name,class\na.png,cat\n")
    with pytest.raises(ValueError, match="expected columns"):
        read_labels(landing)


def test_missing_landing_folders_ingest_nothing_and_bad_dates_fail(tmp_path: Path, bronze: Path) -> None:
    assert ingest_landing_media(tmp_path / "nothing", bronze, "2024-03-01") == ([], [])
    with pytest.raises(ValueError):
        ingest_landing_media(tmp_path / "nothing", bronze, "03/01/2024")
