"""Feature store end to end: gold features -> Feast registry -> point-in-time training set."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from hybrid_pipeline.cli import materialize
from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline.transforms.features import FEATURE_COLUMNS
from hybrid_pipeline_tests.conftest import make_env

pytestmark = pytest.mark.integration
DAYS = 10


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("features")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(root, mp)
        generate(GeneratorConfig(days=DAYS, events_per_day=1500, seed=5, start_date=date(2024, 1, 1)), env.landing)
        with dg.instance_for_test() as instance:
            summaries = materialize([f"2024-01-{d:02d}" for d in range(1, DAYS + 1)], instance=instance, models=False)
            yield env, root / "feature_repo", summaries, instance


def test_all_runs_succeed_and_the_training_set_is_built(built):
    _, _, summaries, _ = built
    assert [s.partition for s in summaries][-2:] == ["features", f"online 2024-01-{DAYS:02d}"]
    assert all(s.ok for s in summaries), [(s.partition, s.failed_steps) for s in summaries if not s.ok]
    assert summaries[-2].rows["features/training_set"] > 0


def test_user_features_are_end_of_day_rows_with_windows_consistent_with_silver(built):
    env, *_ = built
    feats = env.lakehouse.read("gold/user_features")
    silver = env.lakehouse.read("silver/events")
    row = feats.filter(pl.col("events_1d") > 0).sort("user_id", "event_date").row(0, named=True)
    day_events = silver.filter((pl.col("user_id") == row["user_id"]) & (pl.col("event_date") == row["event_date"]))
    assert row["events_1d"] == day_events.height
    week = silver.filter(
        (pl.col("user_id") == row["user_id"])
        & (pl.col("event_date") <= row["event_date"])
        & (pl.col("event_date") > row["event_date"] - pl.duration(days=7))
    )
    assert row["events_7d"] == week.height
    assert row["total_events"] == silver.filter(
        (pl.col("user_id") == row["user_id"]) & (pl.col("event_date") <= row["event_date"])
    ).height
    assert (feats["event_timestamp"].dt.hour() == 23).all()
    assert feats.select(pl.struct("user_id", "event_date").n_unique()).item() == feats.height


def known_at_oracle(labels: pl.DataFrame, feats: pl.DataFrame, as_known_at: bool) -> pl.DataFrame:
    """Per label, the newest feature row of its user at or before the label timestamp, within
    the 30-day TTL, and (as known at) created at or before it too; nulls without one."""
    candidates = labels.join(feats.rename({"event_timestamp": "fts"}), on="user_id", how="inner").filter(
        (pl.col("fts") <= pl.col("event_timestamp")) & (pl.col("fts") >= pl.col("event_timestamp") - pl.duration(days=30))
        & ((pl.col("created_timestamp") <= pl.col("event_timestamp")) if as_known_at else pl.lit(True))
    )
    best = candidates.sort("fts").group_by("user_id", "event_timestamp").last()
    return labels.join(best.select("user_id", "event_timestamp", *FEATURE_COLUMNS), on=["user_id", "event_timestamp"],
                       how="left").sort("user_id", "event_timestamp")


def test_training_set_rows_are_as_known_at_each_label_by_default(built):
    env, *_ = built
    training = env.lakehouse.read("features/training_set")
    labels = env.lakehouse.read("gold/user_labels")
    assert training.height == labels.height
    feats = env.lakehouse.read("gold/user_features")
    # late events rewrote rows after their day: as-known-at retrieval must matter on this data
    assert (feats["created_timestamp"] > feats["event_timestamp"]).any()
    expected = known_at_oracle(labels, feats, as_known_at=True)
    got = training.sort("user_id", "event_timestamp")
    for col in ("total_events", "events_7d", "revenue_30d", "recent_event_types", "days_since_last_purchase"):
        assert got[col].to_list() == expected[col].to_list(), col
    assert got["purchased_next_7d"].to_list() == expected["purchased_next_7d"].to_list()


def test_training_set_records_its_retrieval_and_the_setting_chooses_it(built):
    from hybrid_pipeline.ml.training_set import build_training_set

    env, _, _, instance = built
    meta = instance.get_latest_materialization_event(dg.AssetKey(["features", "training_set"])).asset_materialization.metadata
    assert meta["retrieval"].value == "as_known_at"
    commit = env.lakehouse.history("features/training_set", limit=1)[0]
    assert commit["hybrid.retrieval"] == "as_known_at" and commit["hybrid.content_sha256"] == meta["content_sha256"].value
    # HYBRID_TRAINING_AS_KNOWN_AT=false: a plain point-in-time join of the same versions
    versions = meta["source_versions"].value
    plain = build_training_set(env.lakehouse, versions["gold/user_labels"], versions["gold/user_features"], as_known_at=False)
    assert plain.retrieval == "point_in_time"
    labels, feats = env.lakehouse.read("gold/user_labels"), env.lakehouse.read("gold/user_features")
    expected = known_at_oracle(labels, feats, as_known_at=False)
    assert plain.rows.sort("user_id", "event_timestamp")["total_events"].to_list() == expected["total_events"].to_list()
    assert plain.content_sha256 != meta["content_sha256"].value  # late rows leak into the plain join


def test_training_set_records_the_source_versions_it_read(built):
    env, _, _, instance = built
    event = instance.get_latest_materialization_event(dg.AssetKey(["features", "training_set"]))
    meta = event.asset_materialization.metadata
    versions = meta["source_versions"].value
    assert set(versions) == {"gold/user_features", "gold/user_labels"}
    assert versions["gold/user_features"] == env.lakehouse.version("gold/user_features")
    assert len(meta["content_sha256"].value) == 64


def test_the_training_set_is_retrieved_through_the_key_index_of_the_version_it_read(built):
    env, _, _, instance = built
    meta = instance.get_latest_materialization_event(dg.AssetKey(["features", "training_set"])).asset_materialization.metadata
    index = meta["key_index"].value
    assert index["version"] == meta["source_versions"].value["gold/user_features"]
    assert index["rows"] == env.lakehouse.read("gold/user_features").height
    view = instance.get_latest_materialization_event(dg.AssetKey(["features", "user_features"])).asset_materialization
    assert view.metadata["key_index"].value["rows"] > 0  # the feature view asset builds it after each write


def _file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_rebuilding_the_training_set_leaves_every_file_of_the_generated_repo_as_it_was(built):
    from hybrid_pipeline.definitions import FEATURES_JOB, build_definitions

    env, repo, _, instance = built
    key = dg.AssetKey(["features", "training_set"])
    before = _file_hashes(repo)
    job = build_definitions(env.settings).resolve_job_def(FEATURES_JOB).get_subset(asset_selection={key})
    result = job.execute_in_process(instance=instance, raise_on_error=False)

    assert result.success
    assert _file_hashes(repo) == before  # definitions, feature_store.yaml, registry.db, online store, key indexes
    meta = instance.get_latest_materialization_event(key).asset_materialization.metadata
    assert meta["key_index"].value["reused"] is True  # the index the feature view asset built for that version
    assert "version=None" in (repo / "feature_definitions.py").read_text()  # the repo follows the latest version


def test_feast_cli_lists_the_generated_feature_views(built):
    _, repo, _, _ = built
    out = subprocess.run(
        [sys.executable, "-m", "feast.cli.cli", "feature-views", "list"], cwd=repo, capture_output=True, text=True, timeout=180
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "user_features" in out.stdout


def _resources(root):
    from hybrid_pipeline.dagster_support.resources import FeatureStoreResource

    return FeatureStoreResource(repo_dir=str(root / "feature_repo"))


def test_online_store_serves_each_users_newest_features_through_feast_and_directly(built):
    env, repo, summaries, _ = built
    assert summaries[-1].partition == f"online 2024-01-{DAYS:02d}" and summaries[-1].ok
    fs = _resources(repo.parent)
    newest = env.lakehouse.read("gold/user_features").sort("event_timestamp").group_by("user_id").last()
    users = sorted(newest["user_id"].to_list())[:5]
    reader = fs.reader()
    try:
        direct = reader.get("user_features", users)
    finally:
        reader.close()
    expected = {r["user_id"]: r for r in newest.iter_rows(named=True)}
    for uid, got in zip(users, direct, strict=True):
        assert got["total_events"] == expected[uid]["total_events"]
        assert got["recent_event_types"] == expected[uid]["recent_event_types"]
    feast_rows = fs.store().get_online_features(
        features=["user_features:total_events", "user_features:events_7d"], entity_rows=[{"user_id": u} for u in users]
    ).to_dict()
    assert feast_rows["total_events"] == [expected[u]["total_events"] for u in users]


def _run_skew_check(env, instance):
    from hybrid_pipeline.definitions import ONLINE_JOB, build_definitions

    job = build_definitions(env.settings).resolve_job_def(ONLINE_JOB)
    check = dg.AssetCheckKey(dg.AssetKey(["features", "online_user_features"]), "online_matches_offline")
    result = job.get_subset(asset_check_selection={check}, asset_selection=set()).execute_in_process(
        tags={"dagster/partition": f"2024-01-{DAYS:02d}"}, instance=instance, raise_on_error=False)
    [evaluation] = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    return evaluation


def test_the_registry_holds_the_on_demand_view_and_each_views_versioned_name(built):
    from hybrid_pipeline.features import catalog

    env, repo, _, instance = built
    meta = instance.get_latest_materialization_event(dg.AssetKey(["features", "feast_registry"])).asset_materialization.metadata
    versions = meta["view_versions"].value
    assert meta["on_demand_feature_views"].value == ["user_request_features"]
    assert set(meta["versioned_views"].value) == {catalog.versioned_name(v, versions[v])
                                                  for v in ("user_features", "user_activity")}
    assert meta["versions_in_use"].value == []  # no model trained in this run
    training = instance.get_latest_materialization_event(dg.AssetKey(["features", "training_set"])).asset_materialization
    assert training.metadata["feature_view_versions"].value == {"user_features": versions["user_features"]}
    for key, view in (("user_activity", "user_activity"), ("user_request_features", "user_request_features")):
        event = instance.get_latest_materialization_event(dg.AssetKey(["features", key])).asset_materialization
        assert event.metadata["content_version"].value == versions[view]


def test_skew_check_covers_the_on_demand_features_and_the_newest_event(built):
    from hybrid_pipeline.features import catalog

    env, repo, _, instance = built
    passed = _run_skew_check(env, instance)
    assert passed.passed and passed.metadata["on_demand_mismatches"].value == 0
    assert passed.metadata["entities_compared"].value > 0
    # a newer event time online than offline: seconds_since_last_event would be served skewed
    fs = _resources(repo.parent)
    reader = fs.reader()
    try:
        users = sorted(env.lakehouse.read("gold/user_features")["user_id"].unique().to_list())
        records = reader.get_records(catalog.ACTIVITY_VIEW, users)
    finally:
        reader.close()
    shifted = [(u, {"last_event_at": r.event_ts + timedelta(seconds=1)}, r.event_ts_us + 1_000_000, None)
               for u, r in zip(users, records) if r is not None]
    writer = fs.writer()
    try:
        writer.write_records(catalog.ACTIVITY_VIEW, shifted)
    finally:
        writer.close()
    failed = _run_skew_check(env, instance)
    assert not failed.passed and failed.metadata["on_demand_mismatches"].value > 0
    assert failed.metadata["mismatches"].value == 0  # the stored features still agree
    restored = [(u, {"last_event_at": r.event_ts}, r.event_ts_us, None) for u, r in zip(users, records) if r is not None]
    from hybrid_pipeline.online import OnlineWriter  # a newer record is never replaced by an older one: drop, rewrite

    backend = OnlineWriter.from_url(fs.online_url(), catalog.PROJECT)
    try:
        backend.backend.drop_table(backend.table(catalog.ACTIVITY_VIEW))
        backend.write_records(catalog.ACTIVITY_VIEW, restored)
    finally:
        backend.close()
    assert _run_skew_check(env, instance).metadata["on_demand_mismatches"].value == 0


def test_skew_check_fails_when_online_values_differ_from_offline(built):
    from hybrid_pipeline.definitions import ONLINE_JOB, build_definitions

    env, repo, _, instance = built
    fs = _resources(repo.parent)
    newest = env.lakehouse.read("gold/user_features").sort("event_timestamp").group_by("user_id").last()
    tampered = newest.with_columns(pl.col("total_events") + 1000, pl.col("event_timestamp") + pl.duration(seconds=1))
    writer = fs.writer()
    try:
        writer.write_frame("user_features", tampered, "user_id", "event_timestamp", features=FEATURE_COLUMNS)
    finally:
        writer.close()
    job = build_definitions(env.settings).resolve_job_def(ONLINE_JOB)
    checks_only = job.get_subset(asset_check_selection={dg.AssetCheckKey(dg.AssetKey(["features", "online_user_features"]), "online_matches_offline")}, asset_selection=set())
    result = checks_only.execute_in_process(tags={"dagster/partition": f"2024-01-{DAYS:02d}"}, instance=instance, raise_on_error=False)
    [evaluation] = [e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    assert not evaluation.passed and evaluation.metadata["mismatches"].value > 0


def test_serve_command_answers_feature_lookups_over_http(built):
    import os
    import socket
    import time

    import requests

    env, repo, _, _ = built
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hybrid_pipeline.cli", "serve", "--port", str(port)],
        env={**os.environ, "HYBRID_FEATURE_REPO": str(repo), "HYBRID_SERVING_API_KEY": "k"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if requests.get(f"{base}/health", timeout=1).ok:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        newest = env.lakehouse.read("gold/user_features").sort("event_timestamp").group_by("user_id").last()
        user = newest.row(0, named=True)
        assert requests.get(f"{base}/features/{user['user_id']}", timeout=5).status_code == 401
        resp = requests.get(f"{base}/features/{user['user_id']}", headers={"X-API-Key": "k"}, timeout=5)
        assert resp.status_code == 200
        # What the store holds (an earlier test may have overwritten it on purpose), served as is.
        reader = _resources(repo.parent).reader()
        try:
            stored = reader.get("user_features", [user["user_id"]])[0]
        finally:
            reader.close()
        assert resp.json()["features"]["total_events"] == stored["total_events"]
        assert requests.get(f"{base}/features/nobody", headers={"X-API-Key": "k"}, timeout=5).status_code == 404
        assert "requests" in requests.get(f"{base}/metrics", timeout=5).text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
