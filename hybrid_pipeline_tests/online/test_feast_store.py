"""PackedOnlineStore through Feast's own API, on SQLite and on a real Redis.

Each test generates a Feast repo (``hybrid_pipeline.features.repo``) over a small Delta
table, selects our store by class path in ``feature_store.yaml`` and applies it.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import polars as pl
import pytest

from hybrid_pipeline.online import OnlineReader, OnlineWriter, online_store_block

from .conftest import REDIS_URL, delete_prefix

feast = pytest.importorskip("feast")

from hybrid_pipeline.features.repo import FeatureTableSpec, apply_feature_repo, write_feature_repo  # noqa: E402
from hybrid_pipeline.online.store import PackedOnlineStore, PackedOnlineStoreConfig, backend_for_config  # noqa: E402

UTC = timezone.utc
T0 = datetime(2024, 3, 1, tzinfo=UTC)
USERS = [f"u{i}" for i in range(10)]
FEATURES = {
    "clicks": "Int64",
    "revenue": "Float64",
    "ctr": "Float32",
    "segment": "String",
    "recent_products": "Array(String)",
    "is_member": "Bool",
}
REFS = [f"user_features:{name}" for name in FEATURES]


def feature_rows() -> list[dict]:
    """Two snapshots per user (day 1 and day 3); the last two users only have day 1."""
    rows = []
    for i, user in enumerate(USERS):
        for day in (1, 3) if i < 8 else (1,):
            rows.append(
                {
                    "user_id": user,
                    "event_timestamp": T0 + timedelta(days=day, hours=i),
                    "clicks": i * 100 + day,
                    "revenue": None if i % 4 == 0 else i * 1.25 + day,
                    "ctr": 0.5 if i % 2 else 0.125,  # exact in float32
                    "segment": f"seg-{day}-{i % 3}",
                    "recent_products": [f"p{i}-{k}" for k in range(i % 3)],
                    "is_member": i % 2 == 0,
                }
            )
    return rows


def latest_by_user(rows: list[dict]) -> dict[str, dict]:
    best: dict[str, dict] = {}
    for r in sorted(rows, key=lambda r: r["event_timestamp"]):
        best[r["user_id"]] = r
    return best


@dataclass
class Repo:
    store: "feast.FeatureStore"
    rows: list[dict]
    kind: str

    @property
    def reader(self) -> OnlineReader:
        return OnlineReader.from_feature_store(self.store)

    def online(self, users: list[str], refs=REFS) -> list[dict]:
        """get_online_features, one dict per user (features only)."""
        out = self.store.get_online_features(features=refs, entity_rows=[{"user_id": u} for u in users]).to_dict()
        names = [r.split(":")[1] for r in refs]
        return [{n: out[n][i] for n in names} for i in range(len(users))]


def make_repo(root: Path, kind: str, prefix: str, specs_extra=(), rows=None) -> Repo:
    rows = feature_rows() if rows is None else rows
    table = str(root / "lake" / "user_features")
    pl.DataFrame(rows, schema_overrides={"ctr": pl.Float32}).write_delta(table)
    spec = FeatureTableSpec(
        name="user_features",
        delta_uri=table,
        entity_key="user_id",
        timestamp_field="event_timestamp",
        features=FEATURES,
    )
    block = (
        online_store_block("sqlite", path="data/online_packed.db")
        if kind == "sqlite"
        else online_store_block(REDIS_URL, key_prefix=prefix)
    )
    repo = write_feature_repo(root / "repo", "hybrid_online_test", [spec, *specs_extra], block)
    return Repo(apply_feature_repo(repo), rows, kind)


@pytest.fixture(params=["sqlite", "redis"])
def repo(request, tmp_path: Path):
    prefix = f"hybrid-test-feast-{uuid.uuid4().hex[:12]}"
    if request.param == "redis":
        client = request.getfixturevalue("redis_client")
    r = make_repo(tmp_path, request.param, prefix)
    yield r
    if request.param == "redis":
        delete_prefix(client, prefix)


def expected_features(row: dict) -> dict:
    return {name: row[name] for name in FEATURES}


# --------------------------------------------------------------------------- selection


def test_feature_store_yaml_selects_our_store_by_class_path(repo):
    config = repo.store.config
    assert isinstance(config.online_store, PackedOnlineStoreConfig)
    assert type(repo.store._get_provider().online_store) is PackedOnlineStore
    assert backend_for_config(config).spec.kind == repo.kind
    if repo.kind == "sqlite":  # relative paths resolve against the repo, like Feast's own store
        assert backend_for_config(config).path == str(Path(config.repo_path) / "data" / "online_packed.db")


# --------------------------------------------------------------------------- materialize


def test_materialize_then_get_online_features_returns_each_users_latest_row(repo):
    repo.store.materialize(T0, T0 + timedelta(days=10))
    latest = latest_by_user(repo.rows)
    users = [*USERS, "ghost"]
    got = repo.online(users)
    assert got[:-1] == [expected_features(latest[u]) for u in USERS]
    assert got[-1] == {name: None for name in FEATURES}


def test_materialize_window_decides_what_is_online(repo):
    repo.store.materialize(T0, T0 + timedelta(days=2))  # day-3 rows are outside the window
    day1 = latest_by_user([r for r in repo.rows if r["event_timestamp"] < T0 + timedelta(days=2)])
    assert repo.online(USERS) == [expected_features(day1[u]) for u in USERS]
    repo.store.materialize(T0 + timedelta(days=2), T0 + timedelta(days=10))  # incremental: the newer day replaces
    latest = latest_by_user(repo.rows)
    assert repo.online(USERS) == [expected_features(latest[u]) for u in USERS]


def test_each_entity_is_one_packed_record_not_one_row_per_feature(repo):
    repo.store.materialize(T0, T0 + timedelta(days=10))
    backend = backend_for_config(repo.store.config)
    assert backend.count("hybrid_online_test_user_features") == len(USERS)


# --------------------------------------------------------------------------- write_to_online_store


def push(repo: Repo, user: str, ts: datetime, clicks: int, segment: str) -> None:
    frame = pd.DataFrame(
        {
            "user_id": [user],
            "event_timestamp": [ts],
            "clicks": [clicks],
            "revenue": [1.0],
            "ctr": [0.25],
            "segment": [segment],
            "recent_products": [["x"]],
            "is_member": [True],
        }
    )
    repo.store.write_to_online_store("user_features", frame)


def test_written_values_come_back_and_a_newer_event_ts_wins(repo):
    push(repo, "w1", T0 + timedelta(hours=1), 1, "first")
    assert repo.online(["w1"]) == [
        {"clicks": 1, "revenue": 1.0, "ctr": 0.25, "segment": "first", "recent_products": ["x"], "is_member": True}
    ]
    push(repo, "w1", T0 + timedelta(hours=2), 2, "newer")
    assert repo.online(["w1"], ["user_features:clicks", "user_features:segment"]) == [
        {"clicks": 2, "segment": "newer"}
    ]


def test_an_older_write_is_ignored(repo):
    push(repo, "w1", T0 + timedelta(hours=5), 5, "current")
    push(repo, "w1", T0 + timedelta(hours=1), 1, "late, older event")
    assert repo.online(["w1"], ["user_features:clicks", "user_features:segment"]) == [
        {"clicks": 5, "segment": "current"}
    ]
    record = PackedOnlineStore.read_record(repo.store.config, repo.store.get_feature_view("user_features"), "w1")
    assert record.event_ts == T0 + timedelta(hours=5)


def test_materializing_older_offline_rows_does_not_overwrite_a_newer_push(repo):
    push(repo, "u1", T0 + timedelta(days=30), 999, "pushed from the stream")
    repo.store.materialize(T0, T0 + timedelta(days=10))
    assert repo.online(["u1"], ["user_features:clicks", "user_features:segment"]) == [
        {"clicks": 999, "segment": "pushed from the stream"}
    ]


def test_feasts_async_api_reads_and_writes_too(repo):
    import asyncio

    frame = pd.DataFrame({"user_id": ["a1"], "event_timestamp": [T0], "clicks": [7], "revenue": [0.5], "ctr": [0.5],
                          "segment": ["async"], "recent_products": [["z"]], "is_member": [False]})

    async def roundtrip():
        await repo.store.write_to_online_store_async("user_features", frame)
        return await repo.store.get_online_features_async(
            features=["user_features:clicks", "user_features:segment"], entity_rows=[{"user_id": "a1"}]
        )

    assert asyncio.run(roundtrip()).to_dict() == {"user_id": ["a1"], "clicks": [7], "segment": ["async"]}


# --------------------------------------------------------------------------- direct access == Feast


def test_the_direct_reader_returns_what_feast_returns(repo):
    repo.store.materialize(T0, T0 + timedelta(days=10))
    users = [*USERS, "ghost", USERS[3]]
    via_feast = repo.online(users)
    direct = repo.reader.get("user_features", users)
    assert direct[-2] is None
    assert [d for d in direct if d is not None] == [f for f in via_feast if f["clicks"] is not None]
    assert direct == [None if f["clicks"] is None else f for f in via_feast]


def test_frames_written_directly_are_read_by_feast(repo):
    frame = pl.DataFrame(feature_rows(), schema_overrides={"ctr": pl.Float32})
    writer = OnlineWriter.from_feature_store(repo.store)
    assert writer.write_frame("user_features", frame, "user_id", "event_timestamp") == len(USERS)
    latest = latest_by_user(repo.rows)
    assert repo.online(USERS) == [expected_features(latest[u]) for u in USERS]


def test_float32_values_read_like_feast_reads_them(repo):
    frame = pl.DataFrame(
        {"user_id": ["f"], "event_timestamp": [T0], "clicks": [1], "revenue": [math.pi], "ctr": [0.1],
         "segment": ["s"], "recent_products": [["p"]], "is_member": [False]},
        schema_overrides={"ctr": pl.Float32},
    )
    OnlineWriter.from_feature_store(repo.store).write_frame("user_features", frame, "user_id", "event_timestamp")
    via_feast = repo.online(["f"])[0]
    assert via_feast["revenue"] == math.pi
    assert via_feast["ctr"] == pytest.approx(0.1, rel=1e-6)
    assert repo.reader.get("user_features", ["f"])[0] == via_feast


# --------------------------------------------------------------------------- lifecycle


def test_removing_a_view_drops_its_records_and_teardown_clears_the_store(repo):
    push(repo, "w1", T0, 1, "x")
    fv = repo.store.get_feature_view("user_features")
    repo.store.apply([], objects_to_delete=[fv], partial=False)
    assert OnlineReader.from_feature_store(repo.store).get("user_features", ["w1"]) == [None]
    repo.store.teardown()
    if repo.kind == "sqlite":
        assert not (Path(repo.store.config.repo_path) / "data" / "online_packed.db").exists()


def test_int64_entity_keys_are_stored_under_their_decimal_string(tmp_path: Path):
    table = str(tmp_path / "lake" / "accounts")
    pl.DataFrame({"account_id": [7, 42], "ts": [T0, T0], "balance": [1.5, 2.5]}).write_delta(table)
    spec = FeatureTableSpec(name="accounts", delta_uri=table, entity_key="account_id", timestamp_field="ts",
                            features={"balance": "Float64"}, entity_value_type="int64")
    repo = write_feature_repo(tmp_path / "repo", "ints", [spec], online_store_block("sqlite"))
    store = apply_feature_repo(repo)
    store.materialize(T0 - timedelta(days=1), T0 + timedelta(days=1))
    assert store.get_online_features(features=["accounts:balance"], entity_rows=[{"account_id": 42}]).to_dict()[
        "balance"
    ] == [2.5]
    assert OnlineReader.from_feature_store(store).get("accounts", ["42", "7", "8"]) == [
        {"balance": 2.5}, {"balance": 1.5}, None,
    ]
