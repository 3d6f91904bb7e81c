"""Embedding assets end to end: chunks, incremental embeddings, model changes, indexes, near-duplicates."""

from __future__ import annotations

import io
from pathlib import Path

import dagster as dg
import numpy as np
import polars as pl
import pytest
from PIL import Image

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.defs.embeddings.assets import (
    DOCUMENT_EMBEDDINGS,
    DOCUMENT_VECTORS_VIEW_KEY,
    IMAGE_EMBEDDINGS,
    LEAKAGE_CHECK,
    MEDIA_NEAR_DUPLICATES,
    SHARE_CHECK,
)
from hybrid_pipeline.media.demo import write_demo_media
from hybrid_pipeline.ml.embeddings import ModelMismatchError, default_text_model_dir, vectors_of
from hybrid_pipeline.vectors import Filters, Searcher, exact_top_k

pytestmark = pytest.mark.integration


def _meta(instance: dg.DagsterInstance, key: dg.AssetKey) -> dict:
    event = instance.get_latest_materialization_event(key)
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def _renamed_model_copy(dest: Path) -> Path:
    """The packaged model with identical weights but different weight-file bytes (safetensors metadata).

    A safetensors file is an 8-byte little-endian header length, a JSON header, then the tensors'
    bytes at offsets relative to the header's end: a header with other metadata moves nothing.
    """
    import json
    import struct

    src = default_text_model_dir()
    for p in src.rglob("*"):
        target = dest / p.relative_to(src)
        if p.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif p.name != "model.safetensors":
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(p)
    raw = (src / "model.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + size])
    header["__metadata__"] = {**header.get("__metadata__", {}), "copy": "b"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    (dest / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + size:])
    return dest


def _run_asset(env, instance, key: dg.AssetKey):
    from hybrid_pipeline.definitions import build_definitions

    defs = dg.Definitions.merge(build_definitions(env.settings),
                                dg.Definitions(jobs=[dg.define_asset_job("one_asset", selection=[key])]))
    return defs.resolve_job_def("one_asset").execute_in_process(instance=instance, raise_on_error=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from hybrid_pipeline_tests.conftest import make_env

    root = tmp_path_factory.mktemp("emb")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        landing = env.landing / "media"
        write_demo_media(landing, seed=3, n_docs=5, max_images=30)
        (landing / "docs" / "empty.txt").write_text("   \n\t \n", encoding="utf-8")
        out: dict = {"env": env}
        with dg.instance_for_test() as instance:
            out["first"] = materialize([], instance=instance)
            out["first_doc"] = _meta(instance, DOCUMENT_EMBEDDINGS)
            out["first_img"] = _meta(instance, IMAGE_EMBEDDINGS)
            out["first_table"] = env.lakehouse.read("gold/document_embeddings")
            out["second"] = materialize([], instance=instance)
            out["second_doc"] = _meta(instance, DOCUMENT_EMBEDDINGS)
            out["second_img"] = _meta(instance, IMAGE_EMBEDDINGS)
            # one more document, and a near-copy of an image (other bytes, same picture brightened)
            (landing / "docs" / "new.txt").write_text("Trail runner\n\n" + "Grippy sole for wet rock. " * 80, encoding="utf-8")
            first_png = sorted((landing / "images").glob("*.png"))[0]
            pixels = np.asarray(Image.open(first_png).convert("L"), dtype=np.int16)
            buf = io.BytesIO()
            Image.fromarray(np.clip(pixels + 2, 0, 255).astype(np.uint8), mode="L").save(buf, format="PNG")
            (landing / "images" / "near_copy.png").write_bytes(buf.getvalue())
            out["third"] = materialize([], instance=instance)
            out["third_doc"] = _meta(instance, DOCUMENT_EMBEDDINGS)
            out["third_img"] = _meta(instance, IMAGE_EMBEDDINGS)
            out["third_table"] = env.lakehouse.read("gold/document_embeddings")
            out["near"] = env.lakehouse.read("gold/media_near_duplicates")
            out["near_copy_sha"] = __import__("hashlib").sha256((landing / "images" / "near_copy.png").read_bytes()).hexdigest()
            out["first_png_sha"] = __import__("hashlib").sha256(first_png.read_bytes()).hexdigest()
            out["vectors_run"] = _run_asset(env, instance, DOCUMENT_VECTORS_VIEW_KEY)
            out["searcher"] = Searcher.from_settings(env.settings)
            out["search_before"] = out["searcher"].search_text("grippy sole for wet rock", k=3)
            # another model (same weights, other bytes): every chunk is re-embedded, images are not
            mp.setenv("HYBRID_TEXT_EMBEDDING_MODEL", str(_renamed_model_copy(root / "model_b")))
            out["fourth"] = materialize([], instance=instance)
            out["fourth_doc"] = _meta(instance, DOCUMENT_EMBEDDINGS)
            out["fourth_img"] = _meta(instance, IMAGE_EMBEDDINGS)
        yield out


def test_every_run_succeeds_and_the_embedding_run_follows_the_media_run(runs):
    for name in ("first", "second", "third", "fourth"):
        assert [s.partition for s in runs[name]] == ["media", "embeddings"]
        assert all(s.ok for s in runs[name]), [s.failed_steps for s in runs[name]]


def test_chunks_cover_each_document_and_empty_documents_have_none(runs):
    lh = runs["env"].lakehouse
    chunks, texts = lh.read("silver/document_chunks"), lh.read("silver/document_text")
    assert set(chunks["sha256"]) == set(texts.filter(pl.col("text").str.strip_chars() != "")["sha256"])
    assert chunks["chunk_id"].n_unique() == chunks.height
    for sha, text in texts.select("sha256", "text").iter_rows():
        mine = chunks.filter(pl.col("sha256") == sha).sort("chunk_index")
        if mine.height:
            assert mine["start_char"][0] == 0 and mine["end_char"][-1] == len(text)


def test_a_rerun_embeds_nothing_and_a_new_document_exactly_its_chunks(runs):
    first, second, third = runs["first_doc"], runs["second_doc"], runs["third_doc"]
    assert first["embedded_now"] == first["dagster/row_count"] > 0 and first["reused"] == 0
    assert second["embedded_now"] == 0 and second["reused"] == first["dagster/row_count"]
    new_ids = set(runs["third_table"]["chunk_id"]) - set(runs["first_table"]["chunk_id"])
    assert third["embedded_now"] == len(new_ids) > 0 and third["reused"] == first["dagster/row_count"]
    kept = runs["third_table"].filter(~pl.col("chunk_id").is_in(list(new_ids)))
    assert kept.sort("chunk_id").equals(runs["first_table"].sort("chunk_id"))  # unchanged rows were not recomputed
    assert runs["second_img"]["embedded_now"] == 0 and runs["third_img"]["embedded_now"] == 1
    assert first["embed_rows_per_s"] > 0 and "run/rows_per_s" in first


def test_a_model_change_reembeds_every_chunk_and_changes_the_identity(runs):
    third, fourth = runs["third_doc"], runs["fourth_doc"]
    assert fourth["embedded_now"] == third["dagster/row_count"] and fourth["reused"] == 0
    assert fourth["model_sha256"] != third["model_sha256"] and fourth["model_id"] != third["model_id"]
    assert fourth["data_version_hash"] != third["data_version_hash"]
    assert runs["fourth_img"]["embedded_now"] == 0  # the image model did not change
    table = runs["env"].lakehouse.read("gold/document_embeddings")
    assert set(table["model_id"]) == {fourth["model_id"]}
    # same weights, so the same vectors: only the identity moved
    a = table.sort("chunk_id")
    b = runs["third_table"].sort("chunk_id")
    assert np.allclose(vectors_of(a), vectors_of(b), atol=1e-5)


def test_a_query_model_other_than_the_stored_vectors_model_is_refused(runs):
    searcher = Searcher(runs["env"].settings.vector_index_dir)  # the packaged model; the index now holds model_b's
    with pytest.raises(ModelMismatchError, match="re-embed"):
        searcher.search_text("boots")


def test_text_search_returns_the_brute_force_neighbours_with_their_bronze_paths(runs):
    result = runs["search_before"]
    table = runs["third_table"]
    searcher = runs["searcher"]
    query = searcher.text_embedder().embed(["grippy sole for wet rock"])[0]
    rows, _ = exact_top_k(vectors_of(table), query, 3)
    assert [h.id for h in result.hits] == [table["chunk_id"][int(i)] for i in rows]
    assert result.hits[0].original_name.endswith("new.txt") and result.hits[0].bronze_path.endswith(".txt")
    assert result.truncated is False and result.query_tokens < result.window


def test_near_duplicates_find_the_near_copy_and_the_checks_report_share_and_leakage(runs):
    near = runs["near"]
    pair = near.filter(pl.col("collection") == "images").filter(
        pl.col("left_sha256").is_in([runs["near_copy_sha"]]) | pl.col("right_sha256").is_in([runs["near_copy_sha"]]))
    assert runs["first_png_sha"] in set(pair["left_sha256"]) | set(pair["right_sha256"])
    checks = {name: (passed, sev) for s in runs["third"] for name, passed, sev in s.checks}
    assert f"{MEDIA_NEAR_DUPLICATES.to_user_string()}:{SHARE_CHECK}" in checks
    leak_name = f"gold/image_training_manifest:{LEAKAGE_CHECK}"
    assert leak_name in checks and checks[leak_name][1] == "WARN"
    cross = near.filter(pl.col("cross_split"))
    assert checks[leak_name][0] == (cross.height == 0)


def test_image_search_by_item_excludes_the_item_and_honours_type_filters(runs):
    searcher = runs["searcher"]
    result = searcher.search_item(runs["first_png_sha"], collection="images", k=3)
    assert runs["first_png_sha"] not in [h.id for h in result.hits]
    assert result.hits[0].id == runs["near_copy_sha"] and result.hits[0].score > 0.98
    assert searcher.search_item(runs["first_png_sha"], collection="images", k=3,
                                filters=Filters(types=frozenset({"jpeg"}))).hits == []


def test_the_feast_view_declares_the_vector_field_and_serves_every_chunks_vector(runs):
    from feast import FeatureStore

    from hybrid_pipeline.vectors.feast_view import DOCUMENT_VECTORS_VIEW, vector_repo_dir

    assert runs["vectors_run"].success
    table = runs["third_table"].sort("chunk_id")
    store = FeatureStore(repo_path=str(vector_repo_dir(runs["env"].settings.feature_repo_dir)))
    field = {f.name: f for f in store.get_feature_view(DOCUMENT_VECTORS_VIEW).features}["embedding"]
    assert field.vector_index and field.vector_length == 384 and field.vector_search_metric == "COSINE"
    ids = table["chunk_id"].to_list()
    got = store.get_online_features(features=[f"{DOCUMENT_VECTORS_VIEW}:embedding", f"{DOCUMENT_VECTORS_VIEW}:model_id"],
                                    entity_rows=[{"chunk_id": i} for i in ids]).to_dict()
    assert np.allclose(np.array(got["embedding"], dtype=np.float32), vectors_of(table), atol=1e-6)
    assert set(got["model_id"]) == set(table["model_id"])
