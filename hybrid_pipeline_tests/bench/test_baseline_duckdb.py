"""The DuckDB baseline does exactly the polars baseline's work: the same eight tables, row for row.

Run on a small generated landing zone with a high dirt rate (every kind of dirt the generator
makes, JSON lines, CSV and Parquet days, same-day and cross-day duplicates) plus hand-written
edge lines (blank lines, non-objects, a braced line that is not JSON, timestamps with and
without offsets), so a rule that one side applies differently shows as a differing table.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import polars as pl
import pytest

from hybrid_pipeline.sources.generator import GeneratorConfig, generate

BENCH = Path(__file__).resolve().parents[2] / "bench"
SALT = "a-salt-longer-than-nothing"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _edge_lines(landing: Path) -> None:
    base = {"event_id": "edge-1", "user_id": "u-edge", "session_id": "s-edge", "event_type": "view",
            "timestamp": "2024-01-02T10:00:00.5+02:00", "product_id": "p1", "session_duration": 3.5,
            "revenue": None, "user_segment": "new", "email": "  Edge@Example.COM "}
    rows = [
        base,
        {**base, "event_id": "edge-2", "timestamp": "2024-01-02 23:30:00"},  # space, no offset: UTC
        {**base, "event_id": "edge-3", "timestamp": "2024-01-02T01:00:00-0530"},
        {**base, "event_id": "edge-4", "event_type": "purchase", "revenue": "12.345"},
        {**base, "event_id": "edge-5", "session_duration": "-1"},
        {**base, "event_id": "edge-6", "revenue": 5.0},  # revenue on a view
        {**base, "event_id": "edge-7", "email": None},
        {**base, "event_id": "edge-1", "user_id": "u-other"},  # same-file repeat
    ]
    lines = [json.dumps(r) for r in rows] + ["", "   ", "[1, 2]", '{"event_id": }', "not json", "{"]
    (landing / "events" / "2024-01-02" / "events-zz-edge.jsonl").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("baselines")
    landing = root / "landing"
    generate(GeneratorConfig(days=7, events_per_day=600, seed=11, dirty_rate=0.15,
                             start_date=__import__("datetime").date(2024, 1, 1)), landing)
    _edge_lines(landing)
    _load("baseline_polars").main(landing, root / "polars", SALT)
    _load("baseline_duckdb").main(landing, root / "duckdb", SALT)
    return root / "polars", root / "duckdb"


def test_duckdb_baseline_writes_the_polars_baselines_tables(outputs: tuple[Path, Path]) -> None:
    polars_out, duckdb_out = outputs
    assert _load("baseline_duckdb").differences(polars_out, duckdb_out) == {}


def test_the_comparison_sees_a_difference(outputs: tuple[Path, Path], tmp_path: Path) -> None:
    """The equality above is not vacuous: the sample exercises every rule, and one changed value shows."""
    polars_out, duckdb_out = outputs
    silver = pl.read_delta(str(polars_out / "silver"))
    quarantine = pl.read_delta(str(polars_out / "quarantine"))
    assert {"edge-1", "edge-2", "edge-3", "edge-4"} <= set(silver["event_id"])
    assert not {"edge-5", "edge-6"} & set(silver["event_id"])
    assert pl.read_delta(str(polars_out / "duplicates")).height > 0
    assert quarantine["payload"].is_in(["[1, 2]", '{"event_id": }', "not json", "{"]).sum() == 4
    assert {"csv", "parquet"} <= {Path(f).suffix[1:] for f in silver["source_file"].unique()}

    changed = tmp_path / "changed"
    for name in _load("baseline_duckdb").TABLES:
        table = pl.read_delta(str(duckdb_out / name))
        if name == "dim_user":
            table = table.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("x")).otherwise(pl.col("email_hash")).alias("email_hash"))
        table.write_delta(str(changed / name))
    assert set(_load("baseline_duckdb").differences(polars_out, changed)) == {"dim_user"}
