"""Environment -> typed settings.

Read only when resources and definitions are built (never at import time), so tests and
tools can point the same code at another lakehouse by changing the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Literal

DEFAULT_PII_SALT = "hybrid-pipeline-local-salt"
DEFAULT_FEATURE_REPO = "./data/feature_repo"


@dataclass(frozen=True)
class OnlineStoreSetting:
    """``HYBRID_ONLINE_STORE``, parsed once: which backend, and the URL every client opens.

    The Dagster assets, the stream push, the Feast repo and ``serve`` all take the store from
    here, so they cannot disagree on where it is. Plain ``sqlite`` (the default) is
    ``<feature repo>/data/online_store.db``, the file the generated Feast repo names as well;
    a relative SQLite path resolves against the working directory, like the other settings.
    """

    kind: Literal["sqlite", "redis"]
    url: str
    """``sqlite:///<absolute path>`` or the Redis URL as given (``redis://``, ``rediss://``, ``unix://``)."""
    sqlite_path: Path | None
    """The SQLite file (absolute); ``None`` for Redis."""

    @classmethod
    def parse(cls, value: str | None, feature_repo_dir: Path | str) -> OnlineStoreSetting:
        """``value`` in ``HYBRID_ONLINE_STORE`` syntax: ``sqlite`` (or empty), ``sqlite:///x.db``, ``redis://...``."""
        from hybrid_pipeline.online.backends import DEFAULT_SQLITE_PATH, parse_online_url

        default_path = Path(feature_repo_dir).resolve() / DEFAULT_SQLITE_PATH
        try:
            spec = parse_online_url(value, default_path, base_dir=Path.cwd())
        except ValueError as exc:
            raise ValueError(f"HYBRID_ONLINE_STORE: {exc}") from None
        if spec.kind == "redis":
            return cls("redis", spec.target, None)
        path = Path(spec.target).resolve()
        return cls("sqlite", f"sqlite://{path}", path)

    def __str__(self) -> str:
        return self.url


_KNOWN_AT_VALUES: dict[str, bool | None] = {
    "auto": None, "": None, "true": True, "1": True, "on": True, "false": False, "0": False, "off": False,
}


@dataclass(frozen=True)
class Settings:
    landing_dir: Path
    lakehouse_root: str
    start_date: date
    pii_salt: str
    engine: str
    online_store: OnlineStoreSetting
    dagster_home: Path
    feature_repo_dir: Path = Path(DEFAULT_FEATURE_REPO).resolve()
    redis_url: str = "redis://127.0.0.1:6379/0"
    alert_webhook_url: str | None = None
    alert_file: Path | None = None
    text_embedding_model: str | None = None
    """``HYBRID_TEXT_EMBEDDING_MODEL``: a sentence-transformers model directory (None: the packaged all-MiniLM-L6-v2)."""
    vector_index_override: Path | None = None
    training_as_known_at: bool | None = None
    """``HYBRID_TRAINING_AS_KNOWN_AT`` (``auto`` default, ``true``, ``false``): whether training sets are
    retrieved as known at each label's timestamp (Feast's ``filter_by_created_timestamp``); ``None``
    (auto): on for feature tables that late events rewrite (``hybrid_pipeline.ml.training_set``)."""

    @property
    def vector_index_dir(self) -> Path:
        """``HYBRID_VECTOR_INDEX``, default ``<feature repo>/data/vector_index``: where the embedding indexes live."""
        return self.vector_index_override or self.feature_repo_dir / "data" / "vector_index"

    @property
    def pii_salt_is_default(self) -> bool:
        return self.pii_salt == DEFAULT_PII_SALT

    @property
    def model_registry_uri(self) -> str:
        """MLflow tracking and registry URI: ``<lakehouse root's parent>/mlflow/mlflow.db`` for a local
        lakehouse, ``$DAGSTER_HOME/mlflow/mlflow.db`` for an object-store one (the string only: nothing
        is created). Here so that ``serve`` can find the production model without importing Dagster."""
        root = str(self.lakehouse_root)
        base = self.dagster_home if "://" in root else Path(root).resolve().parent
        return f"sqlite:///{(base / 'mlflow' / 'mlflow.db').resolve()}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        engine = env.get("HYBRID_ENGINE", "polars").strip().lower()
        if engine not in {"polars", "spark"}:
            raise ValueError(f"HYBRID_ENGINE must be 'polars' or 'spark', got {engine!r}")
        raw_start = env.get("HYBRID_START_DATE", "2024-01-01")
        try:
            start = date.fromisoformat(raw_start)
        except ValueError as exc:
            raise ValueError(f"HYBRID_START_DATE must be YYYY-MM-DD, got {raw_start!r}") from exc
        root = env.get("HYBRID_LAKEHOUSE_ROOT", "./data/lakehouse")
        if "://" not in root:
            root = str(Path(root).resolve())
        feature_repo_dir = Path(env.get("HYBRID_FEATURE_REPO", DEFAULT_FEATURE_REPO)).resolve()
        raw_known_at = env.get("HYBRID_TRAINING_AS_KNOWN_AT", "auto").strip().lower()
        if raw_known_at not in _KNOWN_AT_VALUES:
            raise ValueError(f"HYBRID_TRAINING_AS_KNOWN_AT must be auto, true or false, got {raw_known_at!r}")
        return cls(
            landing_dir=Path(env.get("HYBRID_LANDING_DIR", "./data/landing")).resolve(),
            lakehouse_root=root,
            start_date=start,
            pii_salt=env.get("HYBRID_PII_SALT") or DEFAULT_PII_SALT,
            engine=engine,
            online_store=OnlineStoreSetting.parse(env.get("HYBRID_ONLINE_STORE"), feature_repo_dir),
            dagster_home=Path(env.get("DAGSTER_HOME", "./.dagster_home")).resolve(),
            feature_repo_dir=feature_repo_dir,
            redis_url=env.get("HYBRID_REDIS_URL", "redis://127.0.0.1:6379/0"),
            alert_webhook_url=env.get("HYBRID_ALERT_WEBHOOK") or None,
            alert_file=Path(env["HYBRID_ALERT_FILE"]).resolve() if env.get("HYBRID_ALERT_FILE") else None,
            text_embedding_model=env.get("HYBRID_TEXT_EMBEDDING_MODEL") or None,
            vector_index_override=Path(env["HYBRID_VECTOR_INDEX"]).resolve() if env.get("HYBRID_VECTOR_INDEX") else None,
            training_as_known_at=_KNOWN_AT_VALUES[raw_known_at],
        )
