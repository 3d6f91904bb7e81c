"""Specification of the lakehouse catalog: every Delta table declared once, consistently.

The graph-level guarantees (every Delta asset writes a catalog table, tables on disk have the
declared columns, maintenance covers each) are in ``hybrid_pipeline_tests/defs/test_maintenance_and_metadata.py``.
"""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path

import pytest

from hybrid_pipeline.lakehouse import Lakehouse, catalog
from hybrid_pipeline.lakehouse.catalog import TABLES, Table

LAYERS = ("bronze", "silver", "gold", "features")


def test_every_table_is_declared_once_as_layer_slash_name() -> None:
    names = [t.name for t in TABLES]
    assert len(names) == len(set(names)) == 26
    for t in TABLES:
        layer, _, name = t.name.partition("/")
        assert t.layer in LAYERS, t.name
        assert layer == t.layer and name and "/" not in name, t.name
        assert t.key_path == (t.layer, name), t.name


def test_every_table_the_module_declares_is_in_tables() -> None:
    declared = [value for value in vars(catalog).values() if isinstance(value, Table)]
    assert sorted(t.name for t in declared) == sorted(t.name for t in TABLES)


def test_a_table_is_found_by_its_name_and_an_unknown_name_is_refused() -> None:
    assert catalog.table("silver/events") is catalog.SILVER_EVENTS
    with pytest.raises(KeyError, match="silver/nope"):
        catalog.table("silver/nope")


def test_every_table_has_a_schema_a_description_an_owning_team_and_a_retention() -> None:
    for t in TABLES:
        assert len(t.schema) > 0 and t.description, t.name
        assert t.owner in (catalog.DATA_PLATFORM, catalog.ANALYTICS, catalog.ML_PLATFORM), t.name
        assert t.retention >= timedelta(days=1), t.name


def test_partition_and_z_order_columns_are_columns_of_the_table() -> None:
    for t in TABLES:
        assert set(t.partition_by) <= set(t.schema), t.name
        assert set(t.zorder_by) <= set(t.schema), t.name


def test_the_large_lookup_tables_are_z_ordered_on_their_keys() -> None:
    zordered = {t.name: t.zorder_by for t in TABLES if t.zorder_by}
    assert zordered == {
        "silver/events": ("user_id", "event_date"),
        "gold/fact_events": ("user_key", "event_date"),
        "gold/user_features": ("user_id", "event_date"),
    }


# -- personal data -----------------------------------------------------------------------------


def test_no_table_classed_none_or_pseudonymised_has_an_email_column_in_clear() -> None:
    for t in TABLES:
        assert t.pii in ("none", "pseudonymised", "raw"), t.name
        if t.pii != "raw":
            assert "email" not in t.schema, t.name


def test_a_table_is_pseudonymised_exactly_when_it_carries_the_email_hash() -> None:
    for t in TABLES:
        assert (t.pii == "pseudonymised") == ("email_hash" in t.schema), t.name


def test_tables_holding_raw_payloads_are_classed_raw() -> None:
    for t in TABLES:
        if "payload" in t.schema:
            assert t.pii == "raw", t.name


# -- one definition ----------------------------------------------------------------------------


def test_the_schema_names_of_the_transform_modules_are_the_catalogs_schemas() -> None:
    from hybrid_pipeline.engines import shared
    from hybrid_pipeline.media import stats
    from hybrid_pipeline.sources import landing
    from hybrid_pipeline.transforms import contract, features, gold, media_tables, silver

    assert landing.BRONZE_SCHEMA is catalog.BRONZE_EVENTS.schema
    assert landing.LANDED_FILES_SCHEMA is catalog.BRONZE_LANDED_FILES.schema
    assert contract.silver_schema() == catalog.SILVER_EVENTS.schema
    assert silver.QUARANTINE_SCHEMA is catalog.SILVER_EVENTS_QUARANTINE.schema
    assert silver.DUPLICATES_SCHEMA is catalog.SILVER_EVENTS_DUPLICATES.schema
    assert gold.DAILY_METRICS_SCHEMA is catalog.GOLD_DAILY_METRICS.schema
    assert features.FEATURES_SCHEMA is catalog.GOLD_USER_FEATURES.schema
    assert features.LABELS_SCHEMA is catalog.GOLD_USER_LABELS.schema
    assert shared.FACT_EVENTS_SCHEMA is catalog.GOLD_FACT_EVENTS.schema
    assert shared.DIM_USER_SCHEMA is catalog.GOLD_DIM_USER.schema
    assert shared.USER_LANDING_SUMMARY_SCHEMA is catalog.GOLD_USER_LANDING_SUMMARY.schema
    assert stats.MEDIA_FILES_SCHEMA is catalog.BRONZE_MEDIA_FILES.schema
    assert stats.COLLECTION_STATS_SCHEMA is catalog.GOLD_MEDIA_COLLECTION_STATS.schema
    assert media_tables.LANDED_SCHEMA is catalog.BRONZE_MEDIA_LANDED.schema
    assert media_tables.LABELS_SCHEMA is catalog.BRONZE_MEDIA_LABELS.schema
    assert media_tables.QUARANTINE_SCHEMA is catalog.SILVER_MEDIA_QUARANTINE.schema


def test_silver_schema_hands_out_a_copy_the_caller_may_change() -> None:
    from hybrid_pipeline.transforms.contract import silver_schema

    mine = silver_schema()
    mine["extra"] = mine["event_id"]
    assert "extra" not in catalog.SILVER_EVENTS.schema


def test_the_training_set_is_the_labels_keys_and_label_beside_every_feature() -> None:
    from hybrid_pipeline.transforms.features import FEATURE_COLUMNS

    schema = catalog.FEATURES_TRAINING_SET.schema
    assert list(schema) == ["user_id", "event_timestamp", "purchased_next_7d", *FEATURE_COLUMNS]
    for column, dtype in schema.items():
        source = catalog.GOLD_USER_LABELS if column in catalog.GOLD_USER_LABELS.schema else catalog.GOLD_USER_FEATURES
        assert dtype == source.schema[column], column


def test_the_lakehouse_package_is_a_pure_library_without_dagster() -> None:
    package = Path(catalog.__file__).parent
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert "dagster" not in roots, path.name


# -- a table written outside the daily runs ----------------------------------------------------


@pytest.mark.integration
def test_the_training_set_as_built_through_feast_and_stored_has_the_catalogs_columns(tmp_path: Path) -> None:
    """The one catalog table the daily-run test in defs cannot see: it needs 8 days and the feature store."""
    from hybrid_pipeline.ml.training_set import FEATURES_TABLE, LABELS_TABLE, TRAINING_SET_TABLE, build_training_set
    from hybrid_pipeline_tests.ml.purchase_data import START, land, silver_events

    lh = Lakehouse(str(tmp_path / "lakehouse"))
    land(lh, silver_events(10, events_per_day=300), START + timedelta(days=9))
    built = build_training_set(lh, lh.version(LABELS_TABLE), lh.version(FEATURES_TABLE))
    assert built.rows.height > 0  # rows retrieved through Feast, not the empty-set shortcut

    assert TRAINING_SET_TABLE == catalog.FEATURES_TRAINING_SET.name
    lh.replace_where(TRAINING_SET_TABLE, built.rows, "true")  # as the features/training_set asset writes it
    assert dict(lh.scan(TRAINING_SET_TABLE).collect_schema()) == dict(catalog.FEATURES_TRAINING_SET.schema)


def test_the_tables_a_model_is_reproduced_from_keep_their_versions_longer_than_the_rest():
    from hybrid_pipeline.lakehouse import catalog

    model_inputs = {catalog.GOLD_USER_FEATURES, catalog.GOLD_USER_LABELS, catalog.FEATURES_TRAINING_SET,
                    catalog.GOLD_IMAGE_TRAINING_MANIFEST}
    assert all(t.retention == catalog.MODEL_INPUT_RETENTION for t in model_inputs)
    assert catalog.MODEL_INPUT_RETENTION > catalog.DEFAULT_RETENTION
    assert all(t.retention == catalog.DEFAULT_RETENTION for t in catalog.TABLES if t not in model_inputs)
