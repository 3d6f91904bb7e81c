"""The Dagster instance the CLI runs against: DAGSTER_HOME, and a clear error for a bad one.

The instance is whatever ``$DAGSTER_HOME/dagster.yaml`` says: SQLite under DAGSTER_HOME (the
project's ``dagster.yaml``), or PostgreSQL (``deploy/dagster.postgres.yaml``, URL in
``DAGSTER_PG_URL``). Dagster itself reports a missing variable or an unreachable server deep in a
stack trace, after minutes of retries; :func:`open_instance` checks first and says which setting
is wrong in one line.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import yaml

if TYPE_CHECKING:
    import dagster as dg

PG_CONNECT_TIMEOUT_S = 5


class InstanceConfigError(RuntimeError):
    """The instance's configuration cannot work; the message names the setting to fix."""


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME defaults to ./.dagster_home, seeded with the project's dagster.yaml."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").resolve()))).resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    project_yaml = Path("dagster.yaml")
    if not (home / "dagster.yaml").exists() and project_yaml.exists():
        shutil.copy(project_yaml, home / "dagster.yaml")
    return home


def postgres_url_setting(config: dict[str, Any]) -> tuple[str | None, str | None]:
    """``(environment variable, literal URL)`` of the instance's PostgreSQL storage, ``(None, None)`` if none."""
    storage = (config or {}).get("storage") or {}
    postgres = storage.get("postgres") if isinstance(storage, dict) else None
    if not isinstance(postgres, dict):
        return None, None
    url = postgres.get("postgres_url")
    if isinstance(url, dict) and "env" in url:
        return str(url["env"]), None
    if isinstance(url, str):
        return None, url
    return None, None  # postgres_db: host/user/... given field by field; Dagster checks those itself


def check_postgres_url(url: str | None, setting: str) -> None:
    """Refuse an unset, malformed or unreachable PostgreSQL URL, naming ``setting``."""
    if not url or not url.strip():
        raise InstanceConfigError(
            f"{setting} is not set, but $DAGSTER_HOME/dagster.yaml keeps the Dagster instance on PostgreSQL: "
            f"set it to postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE (see deploy/README.md)"
        )
    parts = urlsplit(url.strip())
    if parts.scheme.split("+")[0] not in {"postgresql", "postgres"} or not parts.hostname or not parts.path.strip("/"):
        raise InstanceConfigError(
            f"{setting} is not a PostgreSQL URL: expected postgresql://USER[:PASSWORD]@HOST:PORT/DATABASE, "
            f"got {parts.scheme or '?'}://{parts.hostname or ''}{parts.path}"
        )
    import psycopg2

    where = f"{parts.hostname}:{parts.port or 5432}/{parts.path.strip('/')}"
    dsn = "postgresql://" + url.strip().split("://", 1)[1]  # libpq takes no SQLAlchemy driver suffix
    try:
        psycopg2.connect(dsn, connect_timeout=PG_CONNECT_TIMEOUT_S).close()
    except psycopg2.Error as exc:
        reason = (str(exc).strip().splitlines() or ["connection refused"])[0]
        raise InstanceConfigError(f"{setting}: cannot connect to PostgreSQL at {where}: {reason}") from None


def check_instance_config(home: Path, env: dict[str, str] | None = None) -> None:
    """Check what Dagster would otherwise fail on late: the instance's PostgreSQL URL."""
    path = home / "dagster.yaml"
    if not path.exists():
        return
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InstanceConfigError(f"{path} is not valid YAML: {exc}") from None
    variable, literal = postgres_url_setting(config)
    env = os.environ if env is None else env
    if variable:
        check_postgres_url(env.get(variable), variable)
    elif literal:
        check_postgres_url(literal, f"storage.postgres.postgres_url in {path}")


def open_instance() -> dg.DagsterInstance:
    """The DAGSTER_HOME instance, after :func:`check_instance_config` (raises :class:`InstanceConfigError`)."""
    import dagster as dg

    check_instance_config(ensure_dagster_home())
    return dg.DagsterInstance.get()


def pools_of(defs: dg.Definitions) -> set[str]:
    """Every pool a step of ``defs`` declares (``gpu``, ``silver_writer``, ...)."""
    return {node.pool for job in defs.resolve_all_job_defs() for node in job.all_node_defs if getattr(node, "pool", None)}


def ensure_pools(instance: dg.DagsterInstance, pools: Iterable[str]) -> None:
    """Create each pool's slot rows before any run claims a slot.

    Dagster creates a pool's rows when a step first claims it. On PostgreSQL two runs doing that at
    the same moment collide on the row's unique key, and the loser's run fails (its aborted
    transaction cannot fall back to an update): two processes launching their first runs at once
    hit exactly that. Created here, one pool after another, the rows exist before either run asks.
    """
    import sqlalchemy.exc

    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return
    for pool in sorted(set(pools) - {limit.name for limit in storage.get_pool_limits()}):
        try:
            storage.initialize_concurrency_limit_to_default(pool)
        except sqlalchemy.exc.SQLAlchemyError:
            # Another process created the rows between our read and our insert; they must exist now.
            if pool not in {limit.name for limit in storage.get_pool_limits()}:
                raise
