"""Names shared by the Feast store and the direct clients (kept free of Feast imports:
``import feast`` takes seconds, and the serving path must not pay it)."""

from __future__ import annotations

from typing import Any, Dict, Optional

__all__ = ["PACKED_ONLINE_STORE_TYPE", "online_store_block", "table_name"]

PACKED_ONLINE_STORE_TYPE = "hybrid_pipeline.online.store.PackedOnlineStore"
"""``online_store.type`` in ``feature_store.yaml``."""


def table_name(project: str, view: str) -> str:
    """Name of the SQLite table / Redis hash suffix of a feature view (Feast's ``<project>_<view>``)."""
    return f"{project}_{view}"


def online_store_block(url: Optional[str] = None, **options: Any) -> Dict[str, Any]:
    """The ``online_store`` mapping for ``feature_store.yaml`` (e.g. for ``write_feature_repo``).

    ``options``: ``path`` (SQLite file when ``url`` is ``sqlite``), ``key_prefix``, ``write_batch_size``.
    """
    block: Dict[str, Any] = {"type": PACKED_ONLINE_STORE_TYPE, "url": url or "sqlite"}
    block.update(options)
    return block
