"""Table maintenance keeps every table readable and time-travelable; materializations carry catalog and monitoring metadata."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.definitions import build_definitions
from hybrid_pipeline.defs.keys import DELTA_TABLES, DELTA_VIEWS, ZORDER_BY, table_of
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline_tests.conftest import make_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("maint")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        generate(GeneratorConfig(days=3, events_per_day=600, seed=11, start_date=date(2024, 1, 1)), env.landing)
        with dg.instance_for_test() as instance:
            summaries = materialize(["2024-01-01", "2024-01-02", "2024-01-03"], instance=instance, daily_only=True)
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


def test_the_maintained_tables_are_exactly_the_delta_tables_the_graph_writes(built):
    env, _ = built
    specs = build_definitions(env.settings).resolve_all_asset_specs()
    delta_assets = {spec.key for spec in specs if "delta" in spec.kinds}
    assert set(DELTA_TABLES).isdisjoint(DELTA_VIEWS)
    assert delta_assets == set(DELTA_TABLES) | set(DELTA_VIEWS)
    assert len(DELTA_TABLES) == len(set(DELTA_TABLES)) == 22
    # Every Delta table the daily runs left on disk is one the job maintains.
    root = Path(env.lakehouse.root)
    on_disk = {p.parent.relative_to(root).as_posix() for p in root.rglob("_delta_log")}
    assert on_disk and on_disk <= {table_of(k) for k in DELTA_TABLES}


def test_maintenance_compacts_and_vacuums_every_delta_table_and_keeps_z_ordered_ones_z_ordered(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch)
    lh = env.lakehouse
    for key in DELTA_TABLES:  # two small appends each, so compaction has files to merge
        for part in range(2):
            lh.append(table_of(key), pl.DataFrame({"user_id": [f"u{part}"], "event_date": [date(2024, 1, 1 + part)],
                                                    "user_key": [part], "value": [float(part)]}))
    with dg.instance_for_test() as instance:
        job = build_definitions(env.settings).resolve_job_def("lakehouse_maintenance")
        result = job.execute_in_process(instance=instance)
        assert result.success
        vacuumed = result.output_for_node("vacuum_tables")
    assert set(vacuumed) == {table_of(key) for key in DELTA_TABLES}
    for key in DELTA_TABLES:
        table = table_of(key)
        ops = [h["operation"] for h in lh.history(table)]
        assert "OPTIMIZE" in ops, table
        optimize = next(h for h in lh.history(table) if h["operation"] == "OPTIMIZE")
        strategy = optimize["operationMetrics"].get("plannerStrategy")
        assert (strategy == "zOrder") == (key in ZORDER_BY), table
        assert lh.read(table).height == 2, table


def test_time_travel_reads_a_table_as_it_was_before_a_later_landing_day(built):
    env, _ = built
    lh = env.lakehouse
    history = lh.history("silver/events")
    first_write = min(h["version"] for h in history if h["operation"] == "WRITE")
    early = lh.read("silver/events", version=first_write)
    assert set(early["landing_date"].unique().to_list()) == {"2024-01-01"}
    assert lh.read("silver/events").filter(pl.col("landing_date") == "2024-01-01").height == early.height
