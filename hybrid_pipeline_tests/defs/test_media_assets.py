"""Media end to end: land images and documents (some broken, some hostile), materialize, read the raw bytes back."""

from __future__ import annotations

import hashlib
import os
import shutil

import dagster as dg
import polars as pl
import pytest

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.media.demo import complex_pdf_bytes, write_broken_media, write_demo_media
from hybrid_pipeline.media.store import MAX_FOLDER_DEPTH, resolve_bronze_path
from hybrid_pipeline_tests.media.conftest import make_nested_folders, remove_tree

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def media_run(tmp_path_factory):
    from hybrid_pipeline_tests.conftest import make_env

    root = tmp_path_factory.mktemp("media")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        landing = env.landing / "media"
        write_demo_media(landing, seed=1, n_docs=6, max_images=60)
        broken = write_broken_media(landing)
        images = landing / "images"
        first = sorted(p for p in images.glob("*.png") if not p.name.startswith("broken"))[0]
        shutil.copy(first, images / "same-bytes-other-name.png")  # a duplicate under another name
        (images / "..%2F..%2Fescape.png").write_bytes(first.read_bytes()[:-1] + b"\x00")  # a hostile name
        os.symlink("/etc/passwd", images / "link.png")
        with dg.instance_for_test() as instance:
            first_run = materialize([], instance=instance)
            second_run = materialize([], instance=instance)
            yield env, broken, first, first_run, second_run


def test_media_runs_succeed_and_a_rerun_adds_nothing(media_run):
    env, _, _, first_run, second_run = media_run
    assert [s.partition for s in first_run] == ["media", "embeddings"]
    assert first_run[0].ok and second_run[0].ok
    assert second_run[0].rows["bronze/media_files"] == first_run[0].rows["bronze/media_files"]
    assert second_run[0].rows["silver/media_metadata"] == first_run[0].rows["silver/media_metadata"]


def test_same_content_under_two_names_is_stored_once(media_run):
    env, _, first, *_ = media_run
    files = env.lakehouse.read("bronze/media_files")
    assert files["sha256"].n_unique() == files.height
    landed = env.lakehouse.read("bronze/media_landed")
    dup = landed.filter(pl.col("original_name").str.contains("same-bytes-other-name"))
    assert dup["status"].to_list() == ["duplicate"]


def test_every_broken_file_is_quarantined_with_its_reason(media_run):
    env, broken, *_ = media_run
    q = env.lakehouse.read("silver/media_quarantine")
    by_name = dict(zip(q["original_name"].to_list(), q["reason"].to_list(), strict=True))
    for rel, reason in broken.items():
        name = rel.split("/", 1)[1]
        matches = [r for n, r in by_name.items() if n.endswith(name)]
        assert matches == [reason], (rel, by_name)
    assert any(r == "symlink" for r in by_name.values())


def test_no_landing_name_escapes_the_bronze_media_store(media_run):
    env, *_ = media_run
    store = os.path.realpath(env.lakehouse.path("bronze", "media"))
    for path in env.lakehouse.read("bronze/media_files")["bronze_path"].to_list():
        full = os.path.realpath(resolve_bronze_path(store, path))
        assert full.startswith(store + os.sep)
    assert not (env.root / "escape.png").exists() and not (env.root / "lakehouse" / "escape.png").exists()


def test_manifest_paths_open_as_the_original_bytes_with_labels_and_splits(media_run):
    env, _, first, *_ = media_run
    manifest = env.lakehouse.read("gold/image_training_manifest")
    assert manifest.height >= 55  # 60 digits, minus none: duplicates collapse by content
    assert set(manifest["split"].unique().to_list()) <= {"train", "validation", "test"}
    store = env.lakehouse.path("bronze", "media")
    for row in manifest.head(20).iter_rows(named=True):
        data = resolve_bronze_path(store, row["bronze_path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == row["sha256"]
    first_sha = hashlib.sha256(first.read_bytes()).hexdigest()
    assert first_sha in manifest["sha256"].to_list()
    assert env.lakehouse.read("silver/document_text").height == 6


def test_collection_stats_count_stored_files_and_bytes(media_run):
    env, *_ = media_run
    stats = env.lakehouse.read("gold/media_collection_stats")
    files = env.lakehouse.read("bronze/media_files")
    total = stats.filter(pl.col("dimension") == "all").row(0, named=True)
    assert total["files"] == files.height and total["bytes"] == files["size_bytes"].sum()
    by_type = dict(stats.filter(pl.col("dimension") == "detected_type").select("value", "files").iter_rows())
    assert by_type.get("png", 0) >= 60


# --------------------------------------------------------------------------- a hostile landing


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """Good files beside a 1,200-deep folder tree, a labels file linked to /etc/passwd and a
    tiny PDF whose pages all draw one huge stream; the media run twice."""
    from hybrid_pipeline_tests.conftest import make_env

    root = tmp_path_factory.mktemp("hostile_media")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        landing = env.landing / "media"
        write_demo_media(landing, seed=2, n_docs=4, max_images=8)
        (landing / "images" / "labels.csv").unlink()
        (landing / "images" / "labels.csv").symlink_to("/etc/passwd")
        folders = make_nested_folders(landing / "docs", 1_200)
        (folders[2] / "three_down.txt").write_bytes(b"A document three folders down\n")
        (folders[-1] / "bottom.txt").write_bytes(b"A document 1,200 folders down\n")
        (landing / "docs" / "shared_stream.pdf").write_bytes(complex_pdf_bytes())
        try:
            with dg.instance_for_test() as instance:
                first_run = materialize([], instance=instance)
                second_run = materialize([], instance=instance)
                yield env, first_run, second_run
        finally:
            remove_tree(folders[0])


def test_a_hostile_landing_does_not_fail_the_media_run_and_the_good_files_are_described(hostile_run):
    env, first_run, second_run = hostile_run
    assert [s.partition for s in first_run] == ["media", "embeddings"]
    assert first_run[0].ok and second_run[0].ok, (first_run[0].failed_steps, second_run[0].failed_steps)
    described = set(env.lakehouse.read("silver/media_metadata")["original_name"].to_list())
    assert {f"digit_{i:05d}.png" for i in range(8)} <= described
    assert {"product_0000.pdf", "product_0001.txt", "d/d/d/three_down.txt"} <= described
    assert env.lakehouse.read("silver/media_metadata")["label"].null_count() == len(described)  # no labels file read


def test_each_hostile_input_is_one_quarantine_record_with_its_reason(hostile_run):
    env, *_ = hostile_run
    q = env.lakehouse.read("silver/media_quarantine")
    rows = sorted(zip(q["stage"].to_list(), q["original_name"].to_list(), q["reason"].to_list(), strict=True))
    assert rows == [
        ("extraction", "shared_stream.pdf", "pdf_too_complex"),
        ("landing", "/".join(["d"] * (MAX_FOLDER_DEPTH + 1)), "too_deep"),
        ("landing", "labels.csv", "symlink"),
    ]


def test_rerunning_a_hostile_landing_duplicates_no_row(hostile_run):
    env, first_run, second_run = hostile_run
    for table in ("bronze/media_files", "bronze/media_landed", "silver/media_metadata", "silver/media_quarantine"):
        assert second_run[0].rows[table] == first_run[0].rows[table] == env.lakehouse.read(table).height, table
    assert env.lakehouse.read("bronze/media_files")["sha256"].is_duplicated().sum() == 0
