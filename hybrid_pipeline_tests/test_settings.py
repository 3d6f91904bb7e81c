"""Specification of ``Settings.from_env``: environment -> typed settings with safe defaults."""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path

import pytest

from hybrid_pipeline.settings import DEFAULT_PII_SALT, OnlineStoreSetting, Settings


def test_an_empty_environment_gives_the_local_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    s = Settings.from_env({})

    assert s.landing_dir == tmp_path / "data" / "landing"
    assert s.lakehouse_root == str(tmp_path / "data" / "lakehouse")
    assert s.start_date == date(2024, 1, 1)
    assert s.pii_salt == DEFAULT_PII_SALT
    assert s.pii_salt_is_default is True
    assert s.engine == "polars"
    assert s.online_store.kind == "sqlite"
    assert s.online_store.sqlite_path == tmp_path / "data" / "feature_repo" / "data" / "online_store.db"
    assert s.dagster_home == tmp_path / ".dagster_home"


def test_every_setting_is_read_from_the_given_mapping(tmp_path: Path) -> None:
    env = {
        "HYBRID_LANDING_DIR": str(tmp_path / "in"),
        "HYBRID_LAKEHOUSE_ROOT": str(tmp_path / "lake"),
        "HYBRID_START_DATE": "2023-06-15",
        "HYBRID_PII_SALT": "pepper",
        "HYBRID_ENGINE": "spark",
        "HYBRID_ONLINE_STORE": "redis://localhost:6379/0",
        "DAGSTER_HOME": str(tmp_path / "dh"),
    }

    s = Settings.from_env(env)

    assert s.landing_dir == tmp_path / "in"
    assert s.lakehouse_root == str(tmp_path / "lake")
    assert s.start_date == date(2023, 6, 15)
    assert s.pii_salt == "pepper"
    assert s.pii_salt_is_default is False
    assert s.engine == "spark"
    assert s.online_store == OnlineStoreSetting("redis", "redis://localhost:6379/0", None)
    assert s.dagster_home == tmp_path / "dh"


def test_an_explicit_mapping_ignores_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_ENGINE", "not-an-engine")
    monkeypatch.setenv("HYBRID_PII_SALT", "from-process")

    s = Settings.from_env({})

    assert s.engine == "polars"
    assert s.pii_salt == DEFAULT_PII_SALT


def test_without_a_mapping_the_process_environment_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRID_ENGINE", "spark")
    monkeypatch.setenv("HYBRID_START_DATE", "2024-02-29")

    s = Settings.from_env()

    assert s.engine == "spark"
    assert s.start_date == date(2024, 2, 29)


def test_relative_paths_are_resolved_against_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    s = Settings.from_env({"HYBRID_LANDING_DIR": "land", "HYBRID_LAKEHOUSE_ROOT": "lake", "DAGSTER_HOME": "home"})

    assert s.landing_dir == tmp_path / "land"
    assert s.landing_dir.is_absolute()
    assert s.lakehouse_root == str(tmp_path / "lake")
    assert s.dagster_home == tmp_path / "home"


def test_an_object_store_lakehouse_root_is_kept_verbatim() -> None:
    s = Settings.from_env({"HYBRID_LAKEHOUSE_ROOT": "s3://bucket/lakehouse"})

    assert s.lakehouse_root == "s3://bucket/lakehouse"


@pytest.mark.parametrize("raw", ["Spark", " POLARS "])
def test_the_engine_name_is_case_and_whitespace_insensitive(raw: str) -> None:
    assert Settings.from_env({"HYBRID_ENGINE": raw}).engine == raw.strip().lower()


@pytest.mark.parametrize("raw", ["duckdb", "", "pandas"])
def test_an_unknown_engine_is_rejected(raw: str) -> None:
    with pytest.raises(ValueError, match="HYBRID_ENGINE"):
        Settings.from_env({"HYBRID_ENGINE": raw})


@pytest.mark.parametrize("raw", ["2024-13-01", "01/02/2024", "yesterday", ""])
def test_a_start_date_that_is_not_an_iso_date_is_rejected(raw: str) -> None:
    with pytest.raises(ValueError, match="HYBRID_START_DATE"):
        Settings.from_env({"HYBRID_START_DATE": raw})


def test_an_empty_pii_salt_falls_back_to_the_default_salt() -> None:
    s = Settings.from_env({"HYBRID_PII_SALT": ""})

    assert s.pii_salt == DEFAULT_PII_SALT
    assert s.pii_salt_is_default is True


def test_settings_are_immutable() -> None:
    s = Settings.from_env({})
    with pytest.raises(AttributeError):
        s.engine = "spark"  # type: ignore[misc]


# --------------------------------------------------------------------------- HYBRID_ONLINE_STORE


@pytest.mark.parametrize("raw", [None, "", "sqlite", " SQLite "])
def test_plain_sqlite_is_the_file_in_the_feature_repo(tmp_path: Path, raw: str | None) -> None:
    env = {"HYBRID_FEATURE_REPO": str(tmp_path / "repo")} | ({} if raw is None else {"HYBRID_ONLINE_STORE": raw})

    store = Settings.from_env(env).online_store

    db = tmp_path / "repo" / "data" / "online_store.db"
    assert store == OnlineStoreSetting("sqlite", f"sqlite://{db}", db)


def test_a_sqlite_url_names_its_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)

    assert Settings.from_env({"HYBRID_ONLINE_STORE": "sqlite:///x.db"}).online_store.sqlite_path == Path("/x.db")
    # A relative file resolves against the working directory, as the other path settings do.
    relative = Settings.from_env({"HYBRID_ONLINE_STORE": "sqlite://stores/x.db"}).online_store
    assert relative == OnlineStoreSetting("sqlite", f"sqlite://{tmp_path}/stores/x.db", tmp_path / "stores" / "x.db")


def test_a_redis_url_is_kept_as_given() -> None:
    store = Settings.from_env({"HYBRID_ONLINE_STORE": "redis://host:6379/0"}).online_store

    assert (store.kind, store.url, store.sqlite_path) == ("redis", "redis://host:6379/0", None)
    assert str(store) == "redis://host:6379/0"


@pytest.mark.parametrize("raw", ["postgres://db/x", "memcached", "sqlite://", "http://redis:6379"])
def test_an_unknown_online_store_is_rejected_naming_the_variable(raw: str) -> None:
    with pytest.raises(ValueError, match=rf"^HYBRID_ONLINE_STORE: .*{re.escape(repr(raw))}"):
        Settings.from_env({"HYBRID_ONLINE_STORE": raw})


def test_every_reader_of_plain_sqlite_opens_the_same_file(tmp_path: Path) -> None:
    """Settings, the feature catalog (Feast repo) and the Dagster feature-store resource agree on the default file."""
    from hybrid_pipeline.dagster_support.resources import FeatureStoreResource
    from hybrid_pipeline.features import catalog
    from hybrid_pipeline.online import DEFAULT_SQLITE_PATH, BackendSpec, parse_online_url

    repo = tmp_path / "repo"
    settings = Settings.from_env({"HYBRID_FEATURE_REPO": str(repo)})
    url = settings.online_store.url

    assert catalog.online_sqlite_path(str(repo)) == str(settings.online_store.sqlite_path)
    assert catalog.online_url("sqlite", str(repo)) == url
    assert catalog.online_store_config("sqlite", str(repo))["url"] == url
    assert FeatureStoreResource(repo_dir=str(repo)).online_url() == url  # the resource's own default
    assert FeatureStoreResource(repo_dir=str(repo), online_store=url).online_url() == url
    # The Feast online store reads plain ``sqlite`` as its default path (DEFAULT_SQLITE_PATH) under the repo.
    feast_default = parse_online_url("sqlite", DEFAULT_SQLITE_PATH, repo)
    assert feast_default == BackendSpec("sqlite", str(settings.online_store.sqlite_path))


@pytest.mark.parametrize("root", ["lake", "s3://bucket/lake"])
def test_the_model_registry_is_where_the_model_assets_register(tmp_path: Path, root: str) -> None:
    from hybrid_pipeline.defs.resources import model_resources

    settings = Settings.from_env({"HYBRID_LAKEHOUSE_ROOT": str(tmp_path / root) if "://" not in root else root,
                                  "DAGSTER_HOME": str(tmp_path / "home")})

    assert model_resources(settings)["model_registry"].tracking_uri == settings.model_registry_uri
    assert settings.model_registry_uri.startswith(f"sqlite:///{tmp_path}/")


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("auto", None), ("TRUE", True), ("on", True),
                                               ("false", False), (" 0 ", False)])
def test_training_as_known_at_is_auto_unless_set(raw: str | None, expected: bool | None) -> None:
    env = {} if raw is None else {"HYBRID_TRAINING_AS_KNOWN_AT": raw}
    assert Settings.from_env(env).training_as_known_at is expected


def test_an_unknown_training_as_known_at_value_names_the_setting() -> None:
    with pytest.raises(ValueError, match="HYBRID_TRAINING_AS_KNOWN_AT"):
        Settings.from_env({"HYBRID_TRAINING_AS_KNOWN_AT": "sometimes"})
