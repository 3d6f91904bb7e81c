"""The exact index returns the brute-force cosine neighbours, honours filters and reloads new versions."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from hybrid_pipeline.vectors.index import ITEM_COLUMNS, VectorIndex, exact_top_k


def _index(n: int = 500, dim: int = 24, seed: int = 1) -> VectorIndex:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    items = pl.DataFrame({
        "id": [f"i{i}" for i in range(n)], "sha256": [f"s{i}" for i in range(n)],
        "bronze_path": [f"ab/s{i}.txt" for i in range(n)], "detected_type": ["pdf" if i % 3 else "txt" for i in range(n)],
        "landing_date": [date(2024, 1, 1 + i % 10) for i in range(n)], "original_name": [f"f{i}" for i in range(n)],
        "text": [f"t{i}" for i in range(n)]}, schema=ITEM_COLUMNS)
    return VectorIndex("documents", "m@1", v, items)


def test_search_returns_exactly_the_brute_force_cosine_neighbours() -> None:
    index = _index()
    rng = np.random.default_rng(2)
    for _ in range(20):
        q = rng.normal(size=index.dim).astype(np.float32) * 3.0  # not unit length: cosine anyway
        rows, scores = index.search(q, 10)
        ref_rows, ref_scores = exact_top_k(index.vectors, q, 10)
        assert rows.tolist() == ref_rows.tolist()
        assert np.allclose(scores, ref_scores, atol=1e-5)


def test_filters_restrict_to_types_and_landing_days_and_the_item_itself_is_excluded() -> None:
    index = _index()
    q = index.vectors[5]
    mask = index.mask(frozenset({"txt"}), date(2024, 1, 3), date(2024, 1, 4))
    rows, _ = index.search(q, 500, mask, exclude_row=None)
    items = index.items[rows.tolist()]
    assert set(items["detected_type"]) == {"txt"}
    assert items["landing_date"].min() >= date(2024, 1, 3) and items["landing_date"].max() <= date(2024, 1, 4)
    allowed = np.flatnonzero(mask)
    ref, _ = exact_top_k(index.vectors[allowed], q, 5)
    assert index.search(q, 5, mask)[0].tolist() == allowed[ref].tolist()
    rows, scores = index.search(q, 3, exclude_row=5)
    assert 5 not in rows.tolist() and scores[0] < 0.9999
    assert index.search(q, 10, np.zeros(len(index), dtype=bool))[0].size == 0


def test_saved_versions_load_back_and_a_reader_sees_the_newest(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        VectorIndex.load(tmp_path)
    first = _index(seed=1)
    first.save(tmp_path)
    loaded = VectorIndex.load(tmp_path)
    assert loaded.model_id == "m@1" and np.array_equal(loaded.vectors, first.vectors)
    assert loaded.items.equals(first.items) and loaded.version == first.version
    for seed in (2, 3, 4):
        _index(seed=seed).save(tmp_path)
    assert np.array_equal(VectorIndex.load(tmp_path).vectors, _index(seed=4).vectors)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 2  # old versions are removed


def test_a_query_of_the_wrong_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="dimensions"):
        _index().search(np.ones(5, dtype=np.float32), 3)


def test_an_empty_index_answers_no_hits(tmp_path: Path) -> None:
    empty = VectorIndex("documents", "m@1", np.empty((0, 0), dtype=np.float32), pl.DataFrame(schema=ITEM_COLUMNS))
    empty.save(tmp_path)
    rows, scores = VectorIndex.load(tmp_path).search(np.ones(384, dtype=np.float32), 10, exclude_row=None)
    assert rows.size == 0 and scores.size == 0
