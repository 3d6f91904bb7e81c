"""Media end to end: land images and documents (some broken), materialize, read the raw bytes back."""

from __future__ import annotations

import hashlib
import os
import shutil

import dagster as dg
import polars as pl
import pytest

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.media.demo import write_broken_media, write_demo_media
from hybrid_pipeline.media.store import resolve_bronze_path

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
    assert [s.partition for s in first_run] == ["media"]
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
