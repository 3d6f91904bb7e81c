"""Delta -> tensors: streaming equals a direct read, versions are pinned, nulls are loud."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from deltalake import DeltaTable, write_deltalake

from hybrid_pipeline.lakehouse import Lakehouse
from hybrid_pipeline.ml.tabular import (
    DeltaTensorSource,
    _column_numpy,
    compute_standardization,
    delta_standardization,
    iter_delta_batches,
    load_tensors,
    pin_version,
    tensor_batches,
)

FEATURES = ["id", "f32", "f64", "i64", "flag"]


def frame(n: int, offset: int = 0, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "id": np.arange(offset, offset + n, dtype=np.int64),
        "f32": rng.normal(size=n).astype(np.float32),
        "f64": rng.uniform(-5, 5, size=n),
        "i64": rng.integers(0, 100, size=n),
        "flag": rng.integers(0, 2, size=n).astype(bool),
        "label": rng.integers(0, 2, size=n).astype(np.int32),
        "day": np.where(np.arange(n) % 2 == 0, "2024-01-01", "2024-01-02"),
    })


@pytest.fixture
def lake(tmp_path: Path) -> tuple[Lakehouse, str]:
    lh = Lakehouse(str(tmp_path / "lakehouse"))
    lh.append("gold/training", frame(1000), partition_by=["day"])  # v0
    lh.append("gold/training", frame(300, offset=1000, seed=1))   # v1
    return lh, lh.uri("gold/training")


def direct(uri: str, version: int | None = None) -> pl.DataFrame:
    return pl.read_delta(uri, version=version).sort("id")


def stacked(batches) -> tuple[np.ndarray, np.ndarray]:
    X = torch.cat([b.X for b in batches]).numpy()
    y = torch.cat([b.y for b in batches]).numpy()
    order = np.argsort(X[:, 0], kind="stable")
    return X[order], y[order]


def test_streaming_equals_a_direct_read(lake) -> None:
    _, uri = lake
    batches = list(iter_delta_batches(uri, FEATURES, "label", batch_rows=128))
    X, y = stacked(batches)
    expected = direct(uri)

    assert all(b.X.dtype == torch.float32 and b.X.is_contiguous() for b in batches)
    assert [b.X.shape[0] for b in batches] == [128] * 10 + [20]  # re-cut to exactly batch_rows
    assert X.shape == (1300, len(FEATURES))
    np.testing.assert_array_equal(
        X, expected.select(FEATURES).cast(pl.Float32).to_numpy()
    )
    np.testing.assert_array_equal(y, expected["label"].cast(pl.Float32).to_numpy())


def test_a_pinned_version_reads_the_old_snapshot(lake) -> None:
    lh, uri = lake
    old = load_tensors(uri, FEATURES, "label", version=0)

    assert old.X.shape[0] == 1000
    assert sorted(old.X[:, 0].tolist()) == direct(uri, 0)["id"].cast(pl.Float64).to_list()
    assert pin_version(uri) == 1


def test_a_source_pins_its_version_when_built(lake) -> None:
    lh, uri = lake
    source = DeltaTensorSource(uri, FEATURES, "label", batch_rows=500)
    lh.append("gold/training", frame(50, offset=5000, seed=2))  # v2 lands after the source was built

    assert source.version == 1 and lh.version("gold/training") == 2
    assert sum(b.X.shape[0] for b in source()) == 1300  # both epochs see v1
    assert sum(b.X.shape[0] for b in source()) == 1300
    assert source.lineage()["version"] == 1
    assert source.load().X.shape == (1300, len(FEATURES))


def test_order_is_deterministic_across_reads(lake) -> None:
    _, uri = lake
    a = torch.cat([b.X for b in iter_delta_batches(uri, FEATURES, "label", batch_rows=100)])
    b = torch.cat([b.X for b in iter_delta_batches(uri, FEATURES, "label", batch_rows=100)])
    assert torch.equal(a, b)


def test_filter_is_pushed_into_the_scan(lake) -> None:
    _, uri = lake
    got = load_tensors(uri, ["id"], "label", filter=pc.field("day") == "2024-01-01")
    assert got.X.shape[0] == direct(uri).filter(pl.col("day") == "2024-01-01").height


def test_escaped_partition_paths_read_through_delta_rs(tmp_path: Path) -> None:
    # partition values with spaces/colons are percent-escaped in file paths: the native
    # local filesystem shortcut is skipped and delta-rs's own handler resolves them
    lh = Lakehouse(str(tmp_path))
    df = pl.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "label": [0, 1, 0, 1],
                       "p": ["a b", "c:d", "plain", "a b"]})
    lh.append("gold/escaped", df, partition_by=["p"])

    got = load_tensors(lh.uri("gold/escaped"), ["x"], "label")

    assert sorted(got.X[:, 0].tolist()) == [1.0, 2.0, 3.0, 4.0]


def test_tables_with_deletion_vectors_are_read_by_the_delta_rs_engine(tmp_path: Path) -> None:
    # pyarrow datasets refuse the deletionVectors reader feature; DeltaTable.scan reads it
    uri = str(tmp_path / "dv")
    write_deltalake(uri, frame(500).to_arrow(), configuration={"delta.enableDeletionVectors": "true"})
    assert "deletionVectors" in (DeltaTable(uri).protocol().reader_features or [])

    X, y = stacked(list(iter_delta_batches(uri, FEATURES, "label", batch_rows=64)))
    expected = direct(uri)
    np.testing.assert_array_equal(X, expected.select(FEATURES).cast(pl.Float32).to_numpy())
    np.testing.assert_array_equal(y, expected["label"].cast(pl.Float32).to_numpy())
    only_day_one = load_tensors(uri, ["id"], "label", filter=pc.field("day") == "2024-01-01")
    assert only_day_one.X.shape == (250, 1)


def test_no_label_column_gives_features_only(lake) -> None:
    _, uri = lake
    b = next(iter_delta_batches(uri, ["f32"], None, batch_rows=64))
    assert b.y is None and b.X.shape == (64, 1)


def test_nulls_raise_unless_imputed(tmp_path: Path) -> None:
    lh = Lakehouse(str(tmp_path))
    lh.append("gold/n", pl.DataFrame({"a": [1.0, None, 3.0], "b": [1, None, 2], "label": [0, 1, 0]}))
    uri = lh.uri("gold/n")

    with pytest.raises(ValueError, match="'a' has 1 null"):
        load_tensors(uri, ["a", "b"], "label")
    got = load_tensors(uri, ["a", "b"], "label", fill_null=-1.0)
    assert got.X.tolist() == [[1.0, 1.0], [-1.0, -1.0], [3.0, 2.0]]


def test_unknown_columns_are_named(lake) -> None:
    _, uri = lake
    with pytest.raises(KeyError, match="nope"):
        load_tensors(uri, ["f32", "nope"], "label")


def test_float_columns_without_nulls_are_viewed_not_copied() -> None:
    arr = pa.array(np.arange(10, dtype=np.float32))
    view = _column_numpy(arr, "x", None)
    assert view.ctypes.data == arr.buffers()[1].address


def test_standardization_in_one_pass_matches_numpy(lake) -> None:
    _, uri = lake
    stats = delta_standardization(uri, ["f32", "f64", "i64"], batch_rows=97)
    full = direct(uri).select("f32", "f64", "i64").to_numpy().astype(np.float64)

    assert stats.count == 1300
    np.testing.assert_allclose(stats.mean, full.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.std, full.std(axis=0), rtol=1e-6)
    z = stats.apply(torch.from_numpy(full.astype(np.float32)))
    assert z.mean(0).abs().max() < 1e-4 and (z.std(0, unbiased=False) - 1).abs().max() < 1e-4


def test_constant_features_get_unit_scale() -> None:
    X = torch.ones(10, 2)
    X[:, 1] = torch.arange(10.0)
    stats = compute_standardization(b for b in tensor_batches(X, None, 3)())
    assert stats.std[0] == 1.0 and stats.mean[0] == 1.0
    restored = type(stats).from_dict(stats.to_dict())
    np.testing.assert_array_equal(restored.std, stats.std)


def test_snapshot_is_a_real_delta_version(lake) -> None:
    _, uri = lake
    assert DeltaTable(uri, version=0).version() == 0
