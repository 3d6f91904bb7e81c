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

DEFAULT_PII_SALT = "hybrid-pipeline-local-salt"


@dataclass(frozen=True)
class Settings:
    landing_dir: Path
    lakehouse_root: str
    start_date: date
    pii_salt: str
    engine: str
    online_store: str
    dagster_home: Path
    feature_repo_dir: Path = Path("./data/feature_repo").resolve()
    redis_url: str = "redis://127.0.0.1:6379/0"
    alert_webhook_url: str | None = None
    alert_file: Path | None = None

    @property
    def pii_salt_is_default(self) -> bool:
        return self.pii_salt == DEFAULT_PII_SALT

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
        return cls(
            landing_dir=Path(env.get("HYBRID_LANDING_DIR", "./data/landing")).resolve(),
            lakehouse_root=root,
            start_date=start,
            pii_salt=env.get("HYBRID_PII_SALT") or DEFAULT_PII_SALT,
            engine=engine,
            online_store=env.get("HYBRID_ONLINE_STORE", "sqlite"),
            dagster_home=Path(env.get("DAGSTER_HOME", "./.dagster_home")).resolve(),
            feature_repo_dir=Path(env.get("HYBRID_FEATURE_REPO", "./data/feature_repo")).resolve(),
            redis_url=env.get("HYBRID_REDIS_URL", "redis://127.0.0.1:6379/0"),
            alert_webhook_url=env.get("HYBRID_ALERT_WEBHOOK") or None,
            alert_file=Path(env["HYBRID_ALERT_FILE"]).resolve() if env.get("HYBRID_ALERT_FILE") else None,
        )
