"""Embedding models: identity from the weights, offline loading, CPU determinism, truncation, incremental plans."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image

from hybrid_pipeline.ml.embeddings import (
    DEFAULT_TEXT_MODEL_NAME,
    PixelEmbedder,
    default_text_model_dir,
    plan_incremental,
    resolve_text_model_dir,
    shared_text_embedder,
    text_model_identity,
)


@pytest.fixture(scope="module")
def embedder():
    return shared_text_embedder(str(default_text_model_dir()))  # one load per process, shared with other modules


def test_the_packaged_model_is_the_default_and_its_identity_is_name_and_weights_hash() -> None:
    path = resolve_text_model_dir(None)
    assert path == default_text_model_dir() and (path / "model.safetensors").is_file()
    ident = text_model_identity(path)
    assert ident.name == DEFAULT_TEXT_MODEL_NAME and len(ident.weights_sha256) == 64
    assert ident.id == f"{DEFAULT_TEXT_MODEL_NAME}@{ident.weights_sha256[:16]}"
    assert text_model_identity(path) == ident


def test_changed_weights_change_the_identity(tmp_path: Path) -> None:
    src = default_text_model_dir()
    for name in ("config.json", "modules.json"):
        shutil.copy(src / name, tmp_path / name)
    (tmp_path / "model.safetensors").write_bytes(b"weights one")
    first = text_model_identity(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights two")
    assert text_model_identity(tmp_path).weights_sha256 != first.weights_sha256


def test_a_setting_that_is_no_model_directory_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="HYBRID_TEXT_EMBEDDING_MODEL"):
        resolve_text_model_dir(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="HYBRID_TEXT_EMBEDDING_MODEL"):
        resolve_text_model_dir(str(tmp_path))  # a directory, but no model in it
    with pytest.raises(ValueError, match="HYBRID_TEXT_EMBEDDING_MODEL"):
        resolve_text_model_dir("sentence-transformers/all-MiniLM-L6-v2")  # a hub id is never fetched


def test_text_embeddings_are_deterministic_on_cpu_unit_length_and_batch_independent(embedder) -> None:
    texts = ["waterproof hiking boots", "a stainless steel kettle", "hiking shoes that keep water out", "é 日本 ✓"]
    a, b = embedder.embed(texts), embedder.embed(texts)
    assert a.shape == (4, embedder.dim) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.allclose(embedder.embed(texts[:1])[0], a[0], atol=1e-5)
    sims = a @ a.T
    assert sims[0, 2] > sims[0, 1]  # meaning, not spelling


def test_a_text_longer_than_the_window_is_counted_so_truncation_can_be_reported(embedder) -> None:
    short, long = embedder.token_counts(["two words", "word " * 1000])
    assert short < embedder.window < long
    huge_token = "Q" * 20_000  # one "word" of 20k characters: truncated, never an error
    assert embedder.embed([huge_token]).shape == (1, embedder.dim)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_pixel_embeddings_are_deterministic_and_near_duplicates_score_near_one(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (32, 32))
    (tmp_path / "a.png").write_bytes(_png(img))
    (tmp_path / "b.png").write_bytes(_png(np.clip(img + 3, 0, 255)))  # brightness shift: a near-duplicate
    (tmp_path / "c.png").write_bytes(_png(rng.integers(0, 256, (32, 32))))
    (tmp_path / "flat.png").write_bytes(_png(np.full((8, 8), 7)))
    model = PixelEmbedder()
    v = model.embed_paths([tmp_path / n for n in ("a.png", "b.png", "c.png", "flat.png")])
    assert np.array_equal(v, model.embed_paths([tmp_path / n for n in ("a.png", "b.png", "c.png", "flat.png")]))
    assert v[0] @ v[1] > 0.99 and abs(v[0] @ v[2]) < 0.5
    assert not np.isnan(v).any() and np.allclose(v[3], 0)  # a flat image has no direction, and no NaN
    assert PixelEmbedder().identity == model.identity != PixelEmbedder(size=8).identity


def test_incremental_plan_reembeds_exactly_changed_content_and_everything_on_a_model_change() -> None:
    current = pl.DataFrame({"chunk_id": ["a", "b", "c", "d"], "content_sha256": ["1", "2", "3x", "4"]})
    stored = pl.DataFrame({"chunk_id": ["a", "b", "c", "gone"], "content_sha256": ["1", "2", "3", "9"],
                           "model_id": ["m@1"] * 4})
    todo, keep = plan_incremental(current, stored, "chunk_id", "m@1")
    assert sorted(todo["chunk_id"]) == ["c", "d"] and sorted(keep["chunk_id"]) == ["a", "b"]
    todo, keep = plan_incremental(current, stored, "chunk_id", "m@2")
    assert sorted(todo["chunk_id"]) == ["a", "b", "c", "d"] and keep.height == 0
