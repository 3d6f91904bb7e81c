"""Vector retrieval over the embedding tables: an exact cosine index on disk and a search API.

``from hybrid_pipeline.vectors import Searcher`` is the notebook entry point (see :mod:`.search`).
No Dagster and no Feast here, so ``serve`` can import it.
"""

from hybrid_pipeline.vectors.index import VectorIndex, exact_top_k
from hybrid_pipeline.vectors.search import Filters, Hit, SearchResult, Searcher

__all__ = ["Filters", "Hit", "SearchResult", "Searcher", "VectorIndex", "exact_top_k"]
