"""Near-duplicate pairs against a brute-force pair scan; incremental runs' accounting."""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl

from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.ml.embeddings import ModelIdentity
from hybrid_pipeline.vectors.build import embed_incrementally, near_duplicate_pairs


def test_near_duplicate_pairs_equal_a_brute_force_scan_across_blocks_and_skip_same_group() -> None:
    rng = np.random.default_rng(3)
    base = rng.normal(size=(40, 16)).astype(np.float32)
    v = np.concatenate([base, base[:15] + 0.05 * rng.normal(size=(15, 16)).astype(np.float32)])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    ids = [f"id{i:03d}" for i in range(len(v))][::-1]  # ids not in row order
    groups = [str(i % 7) for i in range(len(v))]
    got = near_duplicate_pairs(v, ids, groups, 0.95, block=8)
    want = sorted((min(ids[i], ids[j]), max(ids[i], ids[j])) for i, j in itertools.combinations(range(len(v)), 2)
                  if float(v[i] @ v[j]) >= 0.95 and groups[i] != groups[j])
    assert list(zip(got["left_id"], got["right_id"])) == want and len(want) > 5
    assert (got["similarity"] >= 0.95).all()


def test_incremental_accounting_counts_reused_reembedded_dropped_and_failed_rows() -> None:
    schema = catalog.GOLD_IMAGE_EMBEDDINGS.schema
    ident = ModelIdentity("m", "0" * 64)

    def embed(batch: pl.DataFrame):  # noqa: ANN202 - "bad" cannot be embedded
        out = np.ones((batch.height, 4), dtype=np.float32) / 2
        out[np.array(batch["sha256"].to_list()) == "bad"] = np.nan
        return out, {}

    first = pl.DataFrame({"sha256": ["a", "b", "gone"], "content_sha256": ["a", "b", "gone"]})
    stored, stats = embed_incrementally(first, pl.DataFrame(schema=schema), "sha256", ident, embed, schema)
    assert stats.embedded == 3 and stored["embedding"].to_list()[0] == [0.5] * 4
    second = pl.DataFrame({"sha256": ["a", "b", "bad"], "content_sha256": ["a", "b2", "bad"]})
    out, stats = embed_incrementally(second, stored, "sha256", ident, embed, schema, batch_size=1)
    assert (stats.reused, stats.embedded, stats.dropped) == (1, 1, 1)  # a kept, b re-embedded, gone dropped
    assert stats.failed == {"bad": "could not be embedded"} and out["sha256"].to_list() == ["a", "b"]
    assert out.schema == schema
