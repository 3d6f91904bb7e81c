"""Search the embedding indexes by text or by item: the Python API behind ``POST /search``.

```python
from hybrid_pipeline.vectors import Searcher, Filters
s = Searcher.from_settings()                       # HYBRID_VECTOR_INDEX, HYBRID_TEXT_EMBEDDING_MODEL
s.search_text("waterproof hiking boots", k=5, filters=Filters(types=frozenset({"pdf"})))
s.search_item("<chunk id or image sha256>", collection="images", k=10)
```

A text query is embedded with the model named by the settings; if that model's identity is not
the one the stored vectors were made with, the search is refused (:class:`ModelMismatchError`)
instead of comparing vectors of two different spaces. A query longer than the model's window is
truncated by the model, and the result says so (``truncated``, ``query_tokens``, ``window``).
An index rewritten on disk (after an embedding run) is picked up by the next search.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

from hybrid_pipeline.ml.embeddings import ModelMismatchError
from hybrid_pipeline.vectors.index import VectorIndex

Collection = Literal["documents", "images"]
COLLECTIONS: tuple[Collection, ...] = ("documents", "images")


class UnknownItemError(KeyError):
    """The item id is in no index of the collection."""


class IndexUnavailableError(RuntimeError):
    """No index was written for the collection yet."""


@dataclass(frozen=True)
class Filters:
    """Restrict results to detected file types and/or a landing-day range (inclusive)."""

    types: frozenset[str] | None = None
    landing_from: date | None = None
    landing_to: date | None = None


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    sha256: str
    bronze_path: str
    detected_type: str
    landing_date: date | None
    original_name: str | None
    text: str | None


@dataclass(frozen=True)
class SearchResult:
    collection: str
    model_id: str
    hits: list[Hit]
    truncated: bool = False
    query_tokens: int | None = None
    window: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Searcher:
    """Indexes of ``index_dir/<collection>`` and a lazily loaded text embedder."""

    def __init__(self, index_dir: str | Path, text_model_dir: str | Path | None = None, device: str = "cpu") -> None:
        self.index_dir = Path(index_dir)
        self.text_model_dir = str(text_model_dir) if text_model_dir is not None else None
        self.device = device
        self._lock = threading.Lock()
        self._loaded: dict[str, VectorIndex] = {}

    @classmethod
    def from_settings(cls, settings: Any = None) -> Searcher:
        """The searcher the pipeline's settings describe (``Settings.from_env()`` when none given)."""
        from hybrid_pipeline.ml.embeddings import resolve_text_model_dir
        from hybrid_pipeline.settings import Settings

        settings = settings or Settings.from_env()
        return cls(settings.vector_index_dir, resolve_text_model_dir(settings.text_embedding_model))

    def index(self, collection: str) -> VectorIndex:
        """The current index of ``collection``, reloaded when a newer version was written."""
        if collection not in COLLECTIONS:
            raise ValueError(f"collection must be one of {COLLECTIONS}, got {collection!r}")
        directory = self.index_dir / collection
        version = VectorIndex.current_version(directory)
        if version is None:
            raise IndexUnavailableError(f"no {collection} index yet under {directory} (materialize the embedding assets)")
        with self._lock:
            cached = self._loaded.get(collection)
            if cached is None or cached.version != version:
                cached = VectorIndex.load(directory)
                self._loaded[collection] = cached
            return cached

    def text_embedder(self):  # noqa: ANN201 - TextEmbedder, imported lazily (torch)
        from hybrid_pipeline.ml.embeddings import default_text_model_dir, shared_text_embedder

        return shared_text_embedder(self.text_model_dir or str(default_text_model_dir()), self.device)

    def search_text(self, query: str, k: int = 10, filters: Filters | None = None) -> SearchResult:
        """Chunks nearest to ``query``, embedded with the same model version as the stored vectors."""
        if not query or not query.strip():
            raise ValueError("query must contain text")
        index = self.index("documents")
        embedder = self.text_embedder()
        if embedder.identity.id != index.model_id:
            raise ModelMismatchError(
                f"the query model {embedder.identity.id} is not the model the stored document vectors were made "
                f"with ({index.model_id}): re-embed the documents (materialize gold/document_embeddings) or set "
                "HYBRID_TEXT_EMBEDDING_MODEL to that model")
        tokens = embedder.token_counts([query])[0]
        vector = embedder.embed([query])[0]
        result = self._search(index, vector, k, filters, None)
        return SearchResult(result.collection, result.model_id, result.hits, truncated=tokens > embedder.window,
                            query_tokens=tokens, window=embedder.window)

    def search_item(self, item_id: str, collection: Collection = "documents", k: int = 10,
                    filters: Filters | None = None) -> SearchResult:
        """Items nearest to a stored item (itself excluded): similar chunks, or similar images."""
        index = self.index(collection)
        row = index.row_of(item_id)
        if row is None:
            raise UnknownItemError(f"no item {item_id!r} in the {collection} index")
        return self._search(index, index.vectors[row], k, filters, row)

    @staticmethod
    def _search(index: VectorIndex, vector: Any, k: int, filters: Filters | None, exclude: int | None) -> SearchResult:
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        f = filters or Filters()
        mask = index.mask(f.types, f.landing_from, f.landing_to)
        rows, scores = index.search(vector, k, mask, exclude)
        items = index.items[rows.tolist()].to_dicts() if rows.size else []
        hits = [Hit(id=it["id"], score=float(s), sha256=it["sha256"], bronze_path=it["bronze_path"],
                    detected_type=it["detected_type"], landing_date=it["landing_date"],
                    original_name=it["original_name"], text=it["text"]) for it, s in zip(items, scores.tolist())]
        return SearchResult(index.collection, index.model_id, hits)


__all__ = ["COLLECTIONS", "Filters", "Hit", "IndexUnavailableError", "ModelMismatchError", "SearchResult",
           "Searcher", "UnknownItemError"]
