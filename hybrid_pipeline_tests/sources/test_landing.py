"""Specification of landing-zone discovery, raw reading and ingest-once (``sources.landing``)."""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pytest

from hybrid_pipeline.sources.landing import (
    BRONZE_SCHEMA,
    LANDED_FILES_SCHEMA,
    LandedFile,
    RejectedFile,
    collect_landing,
    discover_event_files,
    file_sha256,
    ingested_files,
    landed_dates,
    read_records,
)

DAY = "2024-01-01"
NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LATER = datetime(2024, 1, 5, tzinfo=timezone.utc)


@pytest.fixture
def landing(tmp_path: Path) -> Path:
    return tmp_path / "landing"


def put(landing: Path, day: str, name: str, data: bytes | str) -> Path:
    path = landing / "events" / day / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def landed(path: Path, fmt: str | None) -> LandedFile:
    return LandedFile(path, path.name, file_sha256(path), path.stat().st_size, fmt)


def one_file(landing: Path, name: str) -> LandedFile:
    (file,) = [f for f in discover_event_files(landing, DAY) if f.path.name == name]
    return file


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


# -- discovery ------------------------------------------------------------------------


def test_landed_dates_lists_only_date_folders_oldest_first(landing: Path) -> None:
    put(landing, "2024-01-02", "a.jsonl", "{}\n")
    put(landing, "2024-01-01", "a.jsonl", "{}\n")
    (landing / "events" / "not-a-date").mkdir()
    (landing / "events" / "2024-01-03.jsonl").write_text("{}\n")

    assert landed_dates(landing) == ["2024-01-01", "2024-01-02"]


def test_an_absent_landing_zone_has_no_dates_and_no_files(landing: Path) -> None:
    assert landed_dates(landing) == []
    assert discover_event_files(landing, DAY) == []


def test_discovery_lists_regular_files_in_name_order_with_hash_size_and_format(landing: Path) -> None:
    put(landing, DAY, "b.csv", "a\n1\n")
    put(landing, DAY, "a.jsonl", '{"a":1}\n')
    put(landing, DAY, "c.PARQUET", b"PAR1")
    put(landing, DAY, "d.txt", "hello")

    files = discover_event_files(landing, DAY)

    assert [f.relative_name for f in files] == [f"events/{DAY}/{n}" for n in ("a.jsonl", "b.csv", "c.PARQUET", "d.txt")]
    assert [f.source_format for f in files] == ["jsonl", "csv", "parquet", None]
    assert files[0].sha256 == hashlib.sha256(b'{"a":1}\n').hexdigest()
    assert files[0].size_bytes == 8


@pytest.mark.parametrize(("suffix", "fmt"), [(".json", "jsonl"), (".ndjson", "jsonl"), (".JSONL", "jsonl")])
def test_json_lines_are_recognised_under_every_usual_extension(landing: Path, suffix: str, fmt: str) -> None:
    put(landing, DAY, f"a{suffix}", '{"a":1}\n')

    assert [f.source_format for f in discover_event_files(landing, DAY)] == [fmt]


def test_discovery_ignores_symlinks_dotfiles_and_folders(landing: Path, tmp_path: Path) -> None:
    real = put(landing, DAY, "real.jsonl", '{"a":1}\n')
    outside = tmp_path / "secret.jsonl"
    outside.write_text('{"secret":1}\n')
    os.symlink(outside, real.parent / "link-out.jsonl")
    os.symlink(real, real.parent / "link-in.jsonl")
    put(landing, DAY, ".partial.jsonl", '{"a":1}\n')
    (real.parent / "nested").mkdir()

    assert [f.path.name for f in discover_event_files(landing, DAY)] == ["real.jsonl"]


# -- reading records ------------------------------------------------------------------


def test_json_lines_keep_each_line_as_payload_with_its_1_based_line_number(landing: Path) -> None:
    put(landing, DAY, "a.jsonl", '{"a":1}\n{"a":2}\n{"a":3}\n')

    records = read_records(one_file(landing, "a.jsonl"))

    assert records.rows() == [('{"a":1}', 1), ('{"a":2}', 2), ('{"a":3}', 3)]
    assert records.schema == pl.Schema({"payload": pl.String(), "line_number": pl.Int64()})


def test_blank_lines_are_skipped_but_line_numbers_stay_those_of_the_file(landing: Path) -> None:
    put(landing, DAY, "a.jsonl", b'\xef\xbb\xbf{"a":1}\r\n\n   \n{"a":2}\r\n{"a":3}')

    records = read_records(one_file(landing, "a.jsonl"))

    assert records.rows() == [('{"a":1}', 1), ('{"a":2}', 4), ('{"a":3}', 5)]


def test_a_malformed_json_line_is_kept_verbatim_for_silver_to_quarantine(landing: Path) -> None:
    put(landing, DAY, "a.jsonl", '{"a":1}\n{"a":\n')

    assert read_records(one_file(landing, "a.jsonl"))["payload"].to_list() == ['{"a":1}', '{"a":']


def test_csv_rows_become_json_payloads_and_the_first_record_is_line_2(landing: Path) -> None:
    put(landing, DAY, "a.csv", "event_id,user_id,session_duration\ne1,u1,1.5\ne2,,a while\n")

    records = read_records(one_file(landing, "a.csv"))

    assert records["line_number"].to_list() == [2, 3]
    assert [json.loads(p) for p in records["payload"]] == [
        {"event_id": "e1", "user_id": "u1", "session_duration": "1.5"},
        {"event_id": "e2", "user_id": None, "session_duration": "a while"},
    ]


def test_csv_line_numbers_follow_the_file_when_a_quoted_field_spans_lines(landing: Path) -> None:
    put(landing, DAY, "a.csv", 'event_id,note\ne1,"two\nlines"\ne2,x\n')

    assert read_records(one_file(landing, "a.csv"))["line_number"].to_list() == [2, 4]


def test_parquet_rows_become_json_payloads_numbered_from_1_with_iso_timestamps(landing: Path) -> None:
    path = landing / "events" / DAY / "a.parquet"
    path.parent.mkdir(parents=True)
    pl.DataFrame(
        {
            "event_id": ["e1", "e2"],
            "aware": [datetime(2024, 1, 1, 10, tzinfo=timezone.utc), None],
            "naive": [datetime(2024, 1, 1, 10, 30), datetime(2024, 1, 1, 11)],
            "session_duration": [1.5, 2.0],
        }
    ).write_parquet(path)

    records = read_records(one_file(landing, "a.parquet"))

    assert records["line_number"].to_list() == [1, 2]
    first, second = (json.loads(p) for p in records["payload"])
    assert first["event_id"] == "e1"
    assert datetime.fromisoformat(first["aware"]) == datetime(2024, 1, 1, 10, tzinfo=timezone.utc)
    assert datetime.fromisoformat(first["naive"]) == datetime(2024, 1, 1, 10, 30)
    assert first["session_duration"] == 1.5
    assert second["aware"] is None


@pytest.mark.parametrize(
    ("name", "data", "reason"),
    [
        ("empty.jsonl", b"", "empty_file"),
        ("blank.jsonl", b" \n\n\r\n", "empty_file"),
        ("header-only.csv", b"event_id,user_id\n", "empty_file"),
        ("empty.csv", b"", "empty_file"),
        ("nul.jsonl", b'{"a":1}\x00\n', "binary_content"),
        ("nul.csv", b"a,b\n1,\x00\n", "binary_content"),
        ("latin1.jsonl", '{"a":"café"}\n'.encode("latin-1"), "invalid_encoding"),
        ("latin1.csv", "a\ncafé\n".encode("latin-1"), "invalid_encoding"),
        ("notes.txt", b"hello", "unsupported_format"),
        ("events.xml", b"<a/>", "unsupported_format"),
        ("garbage.parquet", b"this is not parquet at all", "unreadable_parquet"),
    ],
)
def test_an_unreadable_file_is_rejected_with_a_specific_reason(landing: Path, name: str, data: bytes, reason: str) -> None:
    put(landing, DAY, name, data)

    with pytest.raises(RejectedFile) as caught:
        read_records(one_file(landing, name))

    assert caught.value.reason == reason
    assert str(caught.value).startswith(reason)


def test_a_rejection_carries_its_detail_in_the_message() -> None:
    exc = RejectedFile("invalid_encoding", "not UTF-8 at byte 6")

    assert (exc.reason, exc.detail, str(exc)) == ("invalid_encoding", "not UTF-8 at byte 6", "invalid_encoding: not UTF-8 at byte 6")
    assert str(RejectedFile("empty_file")) == "empty_file"


def test_an_empty_parquet_file_is_rejected_as_empty(landing: Path) -> None:
    path = landing / "events" / DAY / "a.parquet"
    path.parent.mkdir(parents=True)
    pl.DataFrame(schema={"event_id": pl.String}).write_parquet(path)

    with pytest.raises(RejectedFile) as caught:
        read_records(landed(path, "parquet"))

    assert caught.value.reason == "empty_file"


# -- collect_landing: one landing day into bronze rows ----------------------------------


def test_collect_landing_turns_every_record_into_a_bronze_row_with_lineage(landing: Path) -> None:
    a = put(landing, DAY, "a.jsonl", jsonl({"event_id": "e1"}, {"event_id": "e2"}))
    put(landing, DAY, "b.csv", "event_id\ne3\n")

    batch = collect_landing(landing, DAY, {}, NOW)

    assert batch.records.schema == pl.Schema(BRONZE_SCHEMA)
    assert batch.records.select("source_file", "source_format", "line_number").rows() == [
        (f"events/{DAY}/a.jsonl", "jsonl", 1),
        (f"events/{DAY}/a.jsonl", "jsonl", 2),
        (f"events/{DAY}/b.csv", "csv", 2),
    ]
    assert set(batch.records["landing_date"]) == {DAY}
    assert set(batch.records["ingested_at"]) == {NOW}
    assert batch.records["file_sha256"][0] == hashlib.sha256(a.read_bytes()).hexdigest()
    assert json.loads(batch.records["payload"][2]) == {"event_id": "e3"}
    assert batch.files.schema == pl.Schema(LANDED_FILES_SCHEMA)
    assert batch.files.select("source_file", "status", "reason", "records").rows() == [
        (f"events/{DAY}/a.jsonl", "ingested", None, 2),
        (f"events/{DAY}/b.csv", "ingested", None, 1),
    ]


def test_rejected_files_are_logged_with_their_reason_and_do_not_stop_the_others(landing: Path) -> None:
    put(landing, DAY, "a.jsonl", jsonl({"event_id": "e1"}))
    put(landing, DAY, "b.jsonl", b"")
    put(landing, DAY, "c.parquet", b"garbage")
    put(landing, DAY, "d.txt", "hi")
    put(landing, DAY, "e.jsonl", b"\x00\x01")

    batch = collect_landing(landing, DAY, {}, NOW)

    assert batch.records.height == 1
    log = {Path(r["source_file"]).name: r for r in batch.files.iter_rows(named=True)}
    assert log["a.jsonl"]["status"] == "ingested"
    assert {n: (log[n]["status"], log[n]["reason"].split(":")[0]) for n in ("b.jsonl", "c.parquet", "d.txt", "e.jsonl")} == {
        "b.jsonl": ("rejected", "empty_file"),
        "c.parquet": ("rejected", "unreadable_parquet"),
        "d.txt": ("rejected", "unsupported_format"),
        "e.jsonl": ("rejected", "binary_content"),
    }
    assert all(log[n]["records"] == 0 for n in ("b.jsonl", "c.parquet", "d.txt", "e.jsonl"))


def test_a_landing_day_without_files_gives_empty_frames_of_the_bronze_schemas(landing: Path) -> None:
    batch = collect_landing(landing, DAY, {}, NOW)

    assert batch.records.height == 0 and batch.files.height == 0
    assert batch.records.schema == pl.Schema(BRONZE_SCHEMA)
    assert batch.files.schema == pl.Schema(LANDED_FILES_SCHEMA)


def test_the_same_content_twice_in_one_day_is_ingested_once(landing: Path) -> None:
    put(landing, DAY, "a.jsonl", jsonl({"event_id": "e1"}))
    put(landing, DAY, "b.jsonl", jsonl({"event_id": "e1"}))

    batch = collect_landing(landing, DAY, {}, NOW)

    assert batch.records["source_file"].to_list() == [f"events/{DAY}/a.jsonl"]
    assert batch.files.select("status", "reason").rows() == [
        ("ingested", None),
        ("already_ingested", "same content earlier in this landing day"),
    ]


def test_ingested_files_is_a_ledger_of_bronze_by_content_hash(landing: Path) -> None:
    put(landing, DAY, "a.jsonl", jsonl({"x": 1}, {"x": 2}))
    put(landing, "2024-01-02", "b.jsonl", jsonl({"x": 3}))
    bronze = pl.concat(
        [collect_landing(landing, DAY, {}, NOW).records, collect_landing(landing, "2024-01-02", {}, LATER).records]
    )

    ledger = ingested_files(bronze.lazy())

    a_hash = file_sha256(landing / "events" / DAY / "a.jsonl")
    b_hash = file_sha256(landing / "events" / "2024-01-02" / "b.jsonl")
    assert ledger == {a_hash: (DAY, 2, NOW), b_hash: ("2024-01-02", 1, LATER)}


def test_a_rerun_of_the_same_day_reads_nothing_and_logs_the_original_ingest(landing: Path) -> None:
    put(landing, DAY, "a.jsonl", jsonl({"x": 1}, {"x": 2}, {"x": 3}))
    first = collect_landing(landing, DAY, {}, NOW)

    rerun = collect_landing(landing, DAY, ingested_files(first.records.lazy()), LATER)

    assert rerun.records.height == 0
    assert rerun.files.select("status", "reason", "records", "ingested_at").rows() == [("ingested", None, 3, NOW)]


def test_a_renamed_redrop_into_another_day_is_already_ingested(landing: Path) -> None:
    content = jsonl({"x": 1}, {"x": 2})
    put(landing, DAY, "a.jsonl", content)
    first = collect_landing(landing, DAY, {}, NOW)
    put(landing, "2024-01-03", "renamed.jsonl", content)
    put(landing, "2024-01-03", "new.jsonl", jsonl({"x": 9}))

    later = collect_landing(landing, "2024-01-03", ingested_files(first.records.lazy()), LATER)

    assert later.records["source_file"].to_list() == ["events/2024-01-03/new.jsonl"]
    log = {Path(r["source_file"]).name: r for r in later.files.iter_rows(named=True)}
    assert log["renamed.jsonl"]["status"] == "already_ingested"
    assert log["renamed.jsonl"]["reason"] == f"same content ingested on {DAY}"
    assert log["renamed.jsonl"]["records"] == 0
    assert log["new.jsonl"]["status"] == "ingested"
    assert log["new.jsonl"]["records"] == 1


def test_a_rejected_file_is_rejected_again_on_a_rerun_rather_than_marked_ingested(landing: Path) -> None:
    put(landing, DAY, "bad.parquet", b"garbage")
    first = collect_landing(landing, DAY, {}, NOW)

    rerun = collect_landing(landing, DAY, ingested_files(first.records.lazy()), LATER)

    assert rerun.files["status"].to_list() == ["rejected"]
