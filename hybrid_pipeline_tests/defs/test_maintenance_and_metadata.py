"""Table maintenance keeps every table readable and time-travelable; materializations carry catalog and monitoring metadata.

The lakehouse catalog is held to the graph and to the disk here: every Delta asset writes a
catalog table, every table a run leaves on disk is declared with exactly the columns, types and
partitioning it has, and maintenance compacts and vacuums each with its own retention.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.dagster_support.keys import DELTA_VIEWS, key_of
from hybrid_pipeline.dagster_support.metadata import table_metadata
from hybrid_pipeline.definitions import build_definitions
from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.media.demo import write_broken_media, write_demo_media
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline_tests.conftest import make_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("maint")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        generate(GeneratorConfig(days=3, events_per_day=600, seed=11, start_date=date(2024, 1, 1)), env.landing)
        write_demo_media(env.landing / "media", seed=11, n_docs=4, max_images=12)
        write_broken_media(env.landing / "media")
        with dg.instance_for_test() as instance:
            summaries = materialize(["2024-01-01", "2024-01-02", "2024-01-03"], instance=instance, daily_only=True)
            summaries += materialize([], instance=instance)  # the media pipeline (not partitioned)
            assert [s.partition for s in summaries][-2:] == ["media", "embeddings"]
            assert all(s.ok for s in summaries)
            yield env, instance


def test_every_table_materialization_carries_schema_row_count_and_gold_carries_column_lineage(built):
    env, instance = built
    repo = build_definitions(env.settings).get_repository_def()
    event_assets = [
        k
        for k, a in repo.assets_defs_by_key.items()
        if a.partitions_def is not None and k.path[0] != "features" and a.group_names_by_key[k] != "models"
    ]
    assert len(event_assets) == 12
    for key in event_assets:
        event = instance.get_latest_materialization_event(key)
        assert event is not None, key
        meta = event.asset_materialization.metadata
        assert "dagster/column_schema" in meta and "dagster/row_count" in meta, key
        assert meta["dagster/column_schema"].schema.columns, key
        # Monitoring: throughput and resource use of the step that wrote it.
        assert meta["run/wall_s"].value > 0 and meta["run/peak_rss_mb"].value > 0, key
        assert meta["run/rows_per_s"].value >= 0, key
        if key.path[0] == "gold" and key.path[1] != "user_labels":
            lineage = meta["dagster/column_lineage"].column_lineage
            source = ["gold", "user_landing_summary"] if key.path[1] == "dim_user" else ["silver", "events"]
            assert all(dep.asset_key == dg.AssetKey(source) for deps in lineage.deps_by_column.values() for dep in deps), key


def test_maintenance_compacts_zorders_and_vacuums_without_changing_any_table(built):
    env, instance = built
    lh = env.lakehouse
    before = {t: lh.read(t).sort(lh.read(t).columns) for t in ("silver/events", "gold/fact_events", "gold/daily_metrics")}
    files_before = len(lh.delta("silver/events").file_uris())
    version_before = lh.version("silver/events")
    job = build_definitions(env.settings).resolve_job_def("lakehouse_maintenance")
    assert job.execute_in_process(instance=instance).success
    assert len(lh.delta("silver/events").file_uris()) <= files_before
    ops = [h["operation"] for h in lh.history("silver/events", limit=3)]
    assert "OPTIMIZE" in ops
    for table, df in before.items():
        assert lh.read(table).sort(df.columns).equals(df), table
    # Time travel to the pre-maintenance version still works: vacuum kept files within retention.
    assert lh.read("silver/events", version=version_before).height == before["silver/events"].height


def test_every_delta_asset_of_the_graph_writes_a_catalog_table_its_owner_owns(built):
    env, _ = built
    specs = {spec.key: spec for spec in build_definitions(env.settings).resolve_all_asset_specs()}
    delta_assets = {key for key, spec in specs.items() if "delta" in spec.kinds}
    table_keys = {key_of(t) for t in catalog.TABLES}
    assert table_keys.isdisjoint(DELTA_VIEWS)
    assert delta_assets == table_keys | set(DELTA_VIEWS)
    for table in catalog.TABLES:
        assert table.owner in specs[key_of(table)].owners, table.name


def stored_tables(env) -> set[str]:  # noqa: ANN001 - PipelineEnv
    root = Path(env.lakehouse.root)
    return {p.parent.relative_to(root).as_posix() for p in root.rglob("_delta_log")}


def test_every_table_the_runs_left_on_disk_is_a_catalog_table(built):
    env, _ = built
    on_disk = stored_tables(env)
    assert on_disk <= {t.name for t in catalog.TABLES}
    # All but the two that need the feature store and a trained model (covered elsewhere: the
    # training set in lakehouse/test_catalog.py; predictions build their frame from the catalog schema).
    assert {t.name for t in catalog.TABLES} - on_disk == {"features/training_set", "gold/predictions"}


def test_every_stored_table_has_exactly_the_catalogs_columns_types_and_partitioning(built):
    env, _ = built
    lh = env.lakehouse
    drift = {}
    for name in sorted(stored_tables(env)):
        table = catalog.table(name)
        stored = dict(lh.scan(name).collect_schema())
        columns = {c: (stored.get(c), table.schema.get(c)) for c in stored.keys() | table.schema.keys()
                   if stored.get(c) != table.schema.get(c)}  # column: (stored type, declared type)
        partitions = tuple(lh.delta(name).metadata().partition_columns)
        if columns or partitions != table.partition_by:
            drift[name] = {"columns": columns, "partition_by": (partitions, table.partition_by)}
    assert drift == {}


EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def email_rows(df: pl.DataFrame) -> int:
    strings = [c for c, t in df.schema.items() if t == pl.String]
    if not strings or not df.height:
        return 0
    return df.select(pl.any_horizontal(pl.col(c).str.contains(EMAIL.pattern) for c in strings).sum()).item() or 0


def test_no_email_address_is_stored_in_clear_outside_the_tables_classed_raw(built):
    env, _ = built
    lh = env.lakehouse
    found = {name: email_rows(lh.read(name)) for name in stored_tables(env)}
    assert found["bronze/events"] > 0  # the landed payloads do hold addresses: the probe sees them
    leaks = {name: n for name, n in found.items() if n and catalog.table(name).pii != "raw"}
    assert leaks == {}


def test_a_materialization_given_its_catalog_table_records_the_declared_schema_and_catalog_entries(built):
    env, _ = built
    lh = env.lakehouse
    table = catalog.SILVER_EVENTS
    meta = table_metadata(lh.uri(table.name), table, 10, lh.version(table.name))
    columns = [(c.name, c.type) for c in meta["dagster/column_schema"].columns]
    assert columns == [(c, str(t)) for c, t in table.schema.items()]
    assert meta["dagster/table_name"] == "silver/events"
    assert meta["catalog/owner"] == "team:data-platform"
    assert meta["catalog/pii"] == "pseudonymised"
    assert meta["catalog/retention_days"] == 7
    assert meta["table_files"] > 0 and meta["dagster/row_count"] == 10
    plain = table_metadata(lh.uri(table.name), dict(table.schema), 10, lh.version(table.name))
    assert not any(k.startswith("catalog/") or k == "dagster/table_name" for k in plain)


def append_two_small_files_to_every_table(lh) -> None:  # noqa: ANN001 - Lakehouse
    for table in catalog.TABLES:  # two small appends each, so compaction has files to merge
        for part in range(2):
            lh.append(table.name, pl.DataFrame({"user_id": [f"u{part}"], "event_date": [date(2024, 1, 1 + part)],
                                                "user_key": [part], "value": [float(part)]}))


def test_maintenance_compacts_and_vacuums_every_catalog_table_and_keeps_z_ordered_ones_z_ordered(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch)
    lh = env.lakehouse
    append_two_small_files_to_every_table(lh)
    with dg.instance_for_test() as instance:
        job = build_definitions(env.settings).resolve_job_def("lakehouse_maintenance")
        result = job.execute_in_process(instance=instance)
        assert result.success
        vacuumed = result.output_for_node("vacuum_tables")
    assert set(vacuumed) == {t.name for t in catalog.TABLES}
    for table in catalog.TABLES:
        optimize = next((h for h in lh.history(table.name) if h["operation"] == "OPTIMIZE"), None)
        assert optimize is not None, table.name
        strategy = optimize["operationMetrics"].get("plannerStrategy")
        assert (strategy == "zOrder") == bool(table.zorder_by), table.name
        assert vacuumed[table.name] == 0, table.name  # the compacted files are inside the 7-day retention
        assert lh.read(table.name).height == 2, table.name
        assert lh.read(table.name, version=0).height == 1, table.name  # still time-travelable


def test_vacuum_applies_each_tables_own_retention(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch)
    lh = env.lakehouse
    append_two_small_files_to_every_table(lh)
    short = catalog.GOLD_DAILY_METRICS
    monkeypatch.setattr(
        catalog, "TABLES", tuple(dataclasses.replace(t, retention=timedelta(0)) if t is short else t for t in catalog.TABLES)
    )
    with dg.instance_for_test() as instance:
        job = build_definitions(env.settings).resolve_job_def("lakehouse_maintenance")
        vacuumed = job.execute_in_process(instance=instance).output_for_node("vacuum_tables")
    # No retention: the two files compaction replaced are deleted at once, and old versions with them.
    assert vacuumed[short.name] == 2
    with pytest.raises(FileNotFoundError):
        lh.read(short.name, version=0)
    assert lh.read(short.name).height == 2
    assert {name: n for name, n in vacuumed.items() if n} == {short.name: 2}


def test_time_travel_reads_a_table_as_it_was_before_a_later_landing_day(built):
    env, _ = built
    lh = env.lakehouse
    history = lh.history("silver/events")
    first_write = min(h["version"] for h in history if h["operation"] == "WRITE")
    early = lh.read("silver/events", version=first_write)
    assert set(early["landing_date"].unique().to_list()) == {"2024-01-01"}
    assert lh.read("silver/events").filter(pl.col("landing_date") == "2024-01-01").height == early.height


def test_every_catalog_table_gets_an_optimize_and_a_vacuum_commit_in_its_delta_history(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch)
    lh = env.lakehouse
    append_two_small_files_to_every_table(lh)
    # No retention anywhere, so each vacuum has the compacted-away files to delete and commits.
    monkeypatch.setattr(catalog, "TABLES", tuple(dataclasses.replace(t, retention=timedelta(0)) for t in catalog.TABLES))
    with dg.instance_for_test() as instance:
        job = build_definitions(env.settings).resolve_job_def("lakehouse_maintenance")
        assert job.execute_in_process(instance=instance).success
    for table in catalog.TABLES:
        operations = [h["operation"] for h in lh.history(table.name)]
        assert "OPTIMIZE" in operations, (table.name, operations)
        assert {"VACUUM START", "VACUUM END"} <= set(operations), (table.name, operations)
        assert lh.read(table.name).height == 2, table.name
