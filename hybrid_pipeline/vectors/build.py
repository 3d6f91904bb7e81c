"""Embedding runs and the index built from their tables: the pure work behind the embedding assets.

:func:`embed_incrementally` keeps the stored rows whose model and content are unchanged and
embeds the rest in batches, reporting progress and throughput; :func:`index_of` turns an
embedding table plus the bronze file records into a :class:`~hybrid_pipeline.vectors.index.VectorIndex`;
:func:`near_duplicate_pairs` finds the pairs above a cosine threshold, block by block.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import polars as pl

from hybrid_pipeline.ml.embeddings import ModelIdentity, batches, plan_incremental, vectors_of
from hybrid_pipeline.vectors.index import ITEM_COLUMNS, VectorIndex

Progress = Callable[[int, int, float], None]  # (done, total, rows per second)


@dataclass
class EmbedStats:
    """What a run did: rows embedded now, stored rows reused, dropped, truncated, failed, and throughput."""

    embedded: int = 0
    reused: int = 0
    dropped: int = 0
    truncated: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows_per_s(self) -> float:
        return round(self.embedded / self.seconds, 1) if self.seconds > 0 else 0.0


def embed_incrementally(
    current: pl.DataFrame,
    stored: pl.DataFrame,
    id_col: str,
    identity: ModelIdentity,
    embed: Callable[[pl.DataFrame], tuple[np.ndarray, dict[str, pl.Series]]],
    schema: pl.Schema,
    batch_size: int = 256,
    progress: Progress | None = None,
) -> tuple[pl.DataFrame, EmbedStats]:
    """The full embedding table for ``current`` items, recomputing only new or changed rows.

    ``embed(batch)`` returns the batch's vectors and any extra columns (e.g. token counts); a
    row whose vector is all NaN is reported in ``failed`` and left out rather than stored.
    """
    todo, keep = plan_incremental(current, stored, id_col, identity.id)
    redone = todo.join(stored.select(id_col), on=id_col, how="semi").height  # stored, but stale: embedded again
    stats = EmbedStats(reused=keep.height, dropped=stored.height - keep.height - redone)
    parts = [keep.select(list(schema)).cast(dict(schema))] if keep.height else []
    started = time.perf_counter()
    now = datetime.now(timezone.utc)
    for sl in batches(todo.height, batch_size):
        batch = todo[sl]
        vectors, extra = embed(batch)
        ok = ~np.isnan(vectors).any(axis=1)
        for bad in batch.filter(pl.Series(~ok))[id_col].to_list():
            stats.failed[bad] = "could not be embedded"
        batch = batch.filter(pl.Series(ok))
        vectors = vectors[ok]
        columns = {c: s.filter(pl.Series(ok)) for c, s in extra.items()}
        frame = batch.with_columns(
            **columns,
            model_name=pl.lit(identity.name),
            model_sha256=pl.lit(identity.weights_sha256),
            model_id=pl.lit(identity.id),
            embedding=(pl.Series(np.ascontiguousarray(vectors, dtype=np.float32)).cast(pl.List(pl.Float32()))
                       if vectors.shape[0] else pl.Series([], dtype=pl.List(pl.Float32()))),
            embedded_at=pl.lit(now),
        )
        parts.append(frame.select(list(schema)).cast(dict(schema)))
        stats.embedded += frame.height
        if progress is not None:
            elapsed = time.perf_counter() - started
            progress(sl.stop, todo.height, sl.stop / elapsed if elapsed > 0 else 0.0)
    stats.seconds = time.perf_counter() - started
    out = pl.concat(parts) if parts else pl.DataFrame(schema=schema)
    if "truncated" in out.columns:
        stats.truncated = int(out["truncated"].sum())
    return out.sort(id_col), stats


def data_version(identity: ModelIdentity, table: pl.DataFrame, id_col: str) -> str:
    """Model identity + every (id, content hash): equal exactly when the vectors would be equal."""
    h = hashlib.sha256(identity.id.encode())
    for item, content in table.select(id_col, "content_sha256").sort(id_col).iter_rows():
        h.update(f"{item}:{content};".encode())
    return h.hexdigest()[:24]


def index_of(collection: str, embeddings: pl.DataFrame, files: pl.DataFrame, id_col: str,
             texts: pl.DataFrame | None = None, **extra: object) -> VectorIndex:
    """An index of ``embeddings`` with each item's bronze file record (path, type, landing day, name)."""
    model_ids = embeddings["model_id"].unique().to_list() if embeddings.height else []
    if len(model_ids) > 1:
        raise ValueError(f"the {collection} embeddings mix models {sorted(model_ids)}: refusing to index them together")
    items = embeddings.select(pl.col(id_col).alias("id"), "sha256").join(
        files.select("sha256", "bronze_path", "detected_type", "landing_date", "original_name").unique("sha256"),
        on="sha256", how="left")
    if texts is not None:
        items = items.join(texts.select(pl.col(id_col).alias("id"), "text"), on="id", how="left")
    else:
        items = items.with_columns(text=pl.lit(None, pl.String()))
    items = items.select(list(ITEM_COLUMNS)).cast(dict(ITEM_COLUMNS))
    vectors = vectors_of(embeddings) if embeddings.height else np.empty((0, 0), dtype=np.float32)
    return VectorIndex(collection, model_ids[0] if model_ids else "", vectors, items, extra=dict(extra))


def near_duplicate_pairs(vectors: np.ndarray, ids: Sequence[str], groups: Sequence[str], threshold: float,
                         block: int = 2048) -> pl.DataFrame:
    """Pairs ``(i, j)``, ``ids[i] < ids[j]``, of cosine >= ``threshold`` between different ``groups``.

    ``groups`` keeps the overlapping chunks of one document from pairing with each other (an
    image is its own group). Block by block, so memory stays ``block x n``.
    """
    n = len(ids)
    left, right, sims = [], [], []
    if n > 1:
        v = np.ascontiguousarray(vectors, dtype=np.float32)
        group_arr = np.asarray(groups, dtype=object)
        for start in range(0, n, block):
            stop = min(start + block, n)
            s = v[start:stop] @ v[start:].T  # only j >= start: each pair once
            rows, cols = np.nonzero(s >= threshold)
            cols = cols + start
            i = rows + start
            keep = (cols > i) & (group_arr[i] != group_arr[cols])
            left.extend(i[keep].tolist())
            right.extend(cols[keep].tolist())
            sims.extend(s[rows[keep], cols[keep] - start].astype(np.float64).tolist())
    ids_arr = np.asarray(ids, dtype=object)
    a, b = ids_arr[left] if left else np.array([], dtype=object), ids_arr[right] if right else np.array([], dtype=object)
    frame = pl.DataFrame({"a": list(a), "b": list(b), "similarity": sims},
                         schema={"a": pl.String(), "b": pl.String(), "similarity": pl.Float64()})
    return frame.select(
        left_id=pl.min_horizontal("a", "b"), right_id=pl.max_horizontal("a", "b"), similarity="similarity"
    ).sort("left_id", "right_id")
