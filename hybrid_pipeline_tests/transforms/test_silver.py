"""Specification of bronze -> silver (``transforms.silver.clean_events`` and its steps)."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import date, datetime, timezone
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_pipeline.sources.generator import GeneratorConfig, generate
from hybrid_pipeline.sources.landing import collect_landing, landed_dates
from hybrid_pipeline.transforms.contract import STRING_FIELDS, silver_schema
from hybrid_pipeline.transforms.silver import (
    DISPLACED_SCHEMA,
    DUPLICATES_SCHEMA,
    QUARANTINE_SCHEMA,
    SilverBatch,
    clean_events,
    hash_emails,
    in_source_order,
    ndjson_bytes,
    parse_timestamps,
    sorts_before,
    unknown_fields,
)

from .factories import DAY, DROP, EXISTING_SCHEMA, SOURCE, bronze, line, no_existing, record

SALT = "test-salt"
UTC = timezone.utc


def clean(payloads: list[str], existing: pl.LazyFrame | None = None, salt: str = SALT) -> SilverBatch:
    return clean_events(bronze(payloads), no_existing() if existing is None else existing, salt)


def hmac_hex(salt: str, text: str) -> str:
    return hmac.new(salt.encode(), text.encode(), hashlib.sha256).hexdigest()


def accounted(batch: SilverBatch) -> int:
    return batch.events.height + batch.quarantine.height + batch.duplicates.height


# -- the happy path -------------------------------------------------------------------


def test_a_valid_record_becomes_one_typed_silver_row_with_lineage() -> None:
    batch = clean([line(event_type="purchase", revenue=19.99, timestamp="2024-03-01T10:15:00Z")])

    assert batch.quarantine.height == 0 and batch.duplicates.height == 0
    assert batch.events.schema == pl.Schema(silver_schema())
    assert batch.events.row(0, named=True) == {
        "event_id": "e1",
        "user_id": "u1",
        "session_id": "s1",
        "event_type": "purchase",
        "timestamp": datetime(2024, 3, 1, 10, 15, tzinfo=UTC),
        "event_date": date(2024, 3, 1),
        "hour": 10,
        "product_id": "p1",
        "session_duration": 1.5,
        "revenue": 19.99,
        "user_segment": "new",
        "email_hash": hmac_hex(SALT, "user1@example.com"),
        "landing_date": DAY,
        "source_file": SOURCE,
        "line_number": 1,
    }


def test_numbers_sent_as_text_are_typed_as_numbers() -> None:
    batch = clean([line(session_duration=" 2.5 ", event_type="purchase", revenue="10")])

    assert batch.events.select("session_duration", "revenue").row(0) == (2.5, 10.0)


def test_the_event_date_and_hour_are_those_of_the_utc_timestamp() -> None:
    batch = clean([line(timestamp="2024-03-01T23:30:00-02:00")])

    assert batch.events.select("timestamp", "event_date", "hour").row(0) == (
        datetime(2024, 3, 2, 1, 30, tzinfo=UTC),
        date(2024, 3, 2),
        1,
    )


def test_events_are_ordered_by_date_then_time() -> None:
    batch = clean(
        [
            line(event_id="late", timestamp="2024-03-02T00:00:01Z"),
            line(event_id="early", timestamp="2024-02-28T12:00:00Z"),
            line(event_id="mid", timestamp="2024-03-01T08:00:00Z"),
        ]
    )

    assert batch.events["event_id"].to_list() == ["early", "mid", "late"]


# -- timestamps -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2024-03-01T10:00:00Z", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T10:00:00.250Z", datetime(2024, 3, 1, 10, 0, 0, 250_000, tzinfo=UTC)),
        ("2024-03-01T10:00:00.123456Z", datetime(2024, 3, 1, 10, 0, 0, 123_456, tzinfo=UTC)),
        ("2024-03-01T12:00:00+02:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T12:00:00+0200", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T05:00:00-05:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T10:00:00+00:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T10:00:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01 10:00:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01 12:00:00+02:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T10:00Z", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01T10:00", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("2024-03-01", datetime(2024, 3, 1, tzinfo=UTC)),
        ("  2024-03-01T10:00:00Z ", datetime(2024, 3, 1, 10, tzinfo=UTC)),
        ("31/02/2024 25:61", None),
        ("2024-02-30T10:00:00Z", None),
        ("yesterday", None),
    ],
)
def test_iso_8601_text_is_parsed_to_utc_and_anything_else_to_null(text: str, expected: datetime | None) -> None:
    assert pl.select(parse_timestamps(pl.lit(text))).item() == expected


def test_timestamps_with_different_offsets_for_the_same_instant_land_equal_in_silver() -> None:
    texts = ["2024-03-01T10:00:00Z", "2024-03-01T11:00:00+01:00", "2024-03-01 10:00:00", "2024-03-01T06:00:00-04:00"]

    batch = clean([line(event_id=f"e{i}", timestamp=t) for i, t in enumerate(texts)])

    assert set(batch.events["timestamp"].to_list()) == {datetime(2024, 3, 1, 10, tzinfo=UTC)}


# -- quarantine: every dirty case has a specific reason ---------------------------------


DIRTY_CASES = [
    ("truncated_json", line(event_id="bad")[:40], "malformed_json"),
    ("not_json", "this is not json", "malformed_json"),
    ("json_array", "[1, 2, 3]", "malformed_json"),
    ("json_scalar", '"just a string"', "malformed_json"),
    ("two_objects_on_a_line", '{"event_id": "x"} {"event_id": "y"}', "malformed_json"),
    ("trailing_garbage", line(event_id="bad") + "xyz", "malformed_json"),
    ("bad_timestamp", line(event_id="bad", timestamp="31/02/2024 25:61"), "invalid_timestamp"),
    ("impossible_date", line(event_id="bad", timestamp="2024-02-30T10:00:00Z"), "invalid_timestamp"),
    ("empty_timestamp", line(event_id="bad", timestamp=""), "invalid_timestamp"),
    ("epoch_timestamp", line(event_id="bad", timestamp=1709287200), "invalid_timestamp"),
    ("missing_timestamp", line(event_id="bad", timestamp=DROP), "missing_value:timestamp"),
    ("null_timestamp", line(event_id="bad", timestamp=None), "missing_value:timestamp"),
    ("missing_user_id", line(event_id="bad", user_id=DROP), "missing_value:user_id"),
    ("null_user_id", line(event_id="bad", user_id=None), "missing_value:user_id"),
    ("empty_user_id", line(event_id="bad", user_id=""), "empty_value:user_id"),
    ("missing_event_id", line(event_id=DROP), "missing_value:event_id"),
    ("missing_session_id", line(event_id="bad", session_id=DROP), "missing_value:session_id"),
    ("missing_event_type", line(event_id="bad", event_type=DROP), "missing_value:event_type"),
    ("text_duration", line(event_id="bad", session_duration="a while"), "invalid_type:session_duration"),
    ("nan_duration", line(event_id="bad", session_duration="NaN"), "invalid_type:session_duration"),
    ("infinite_duration", line(event_id="bad", session_duration="inf"), "invalid_type:session_duration"),
    ("object_duration", line(event_id="bad", session_duration={"s": 1}), "invalid_type:session_duration"),
    ("text_revenue", line(event_id="bad", event_type="purchase", revenue="ten"), "invalid_type:revenue"),
    ("negative_duration", line(event_id="bad", session_duration=-1), "out_of_range:session_duration"),
    ("week_long_duration", line(event_id="bad", session_duration=8 * 86_400), "out_of_range:session_duration"),
    ("unknown_event_type", line(event_id="bad", event_type="hover"), "invalid_value:event_type"),
    ("upper_case_event_type", line(event_id="bad", event_type="VIEW"), "invalid_value:event_type"),
    ("negative_revenue", line(event_id="bad", event_type="purchase", revenue=-19.99), "negative_value:revenue"),
    ("revenue_on_a_view", line(event_id="bad", revenue=5.0), "revenue_only_on_purchase"),
    ("purchase_without_revenue", line(event_id="bad", event_type="purchase"), "purchase_has_revenue"),
]


@pytest.mark.parametrize(("payload", "reason"), [c[1:] for c in DIRTY_CASES], ids=[c[0] for c in DIRTY_CASES])
def test_a_dirty_record_is_quarantined_verbatim_with_its_specific_reason(payload: str, reason: str) -> None:
    batch = clean([line(event_id="good"), payload])

    assert batch.events["event_id"].to_list() == ["good"]
    assert batch.duplicates.height == 0
    assert batch.quarantine.schema == pl.Schema(QUARANTINE_SCHEMA)
    assert batch.quarantine.select("line_number", "payload", "reason").rows() == [(2, payload, reason)]
    assert batch.quarantine.select("landing_date", "source_file").row(0) == (DAY, SOURCE)
    details = batch.quarantine["details"][0]
    assert details == "not a single JSON object" if reason == "malformed_json" else reason in details.split(";")


@pytest.mark.parametrize("field", STRING_FIELDS)
@pytest.mark.parametrize("value", [{"nested": "object"}, ["an", "array"]], ids=["object", "array"])
def test_an_object_or_array_in_a_text_field_is_an_invalid_type(field: str, value: object) -> None:
    batch = clean([line(event_id="good"), json.dumps({**record(event_id="bad"), field: value})])

    assert batch.events["event_id"].to_list() == ["good"]
    assert batch.quarantine.select("line_number", "reason").rows() == [(2, f"invalid_type:{field}")]


def test_a_record_breaking_several_rules_lists_every_reason_in_details() -> None:
    batch = clean([line(event_id="good"), line(event_id="bad", user_id=None, event_type="hover")])

    (row,) = batch.quarantine.iter_rows(named=True)
    assert row["reason"] in {"missing_value:user_id", "invalid_value:event_type"}
    assert set(row["details"].split(";")) == {"missing_value:user_id", "invalid_value:event_type"}


def test_reasons_counts_the_quarantine_by_reason() -> None:
    batch = clean(
        [
            line(event_id="good"),
            "nope",
            "{broken",
            line(event_id="x1", event_type="hover"),
            line(event_id="x2", timestamp="never"),
        ]
    )

    assert batch.reasons() == {"invalid_timestamp": 1, "invalid_value:event_type": 1, "malformed_json": 2}


# -- deduplication --------------------------------------------------------------------


def test_within_a_batch_the_first_record_by_file_and_line_is_kept() -> None:
    frame = pl.concat(
        [
            bronze([line(event_id="dup", user_id="second")], source_file="events/2024-03-01/b.jsonl", first_line=1),
            bronze([line(event_id="dup", user_id="third")], source_file="events/2024-03-01/a.jsonl", first_line=9),
            bronze([line(event_id="dup", user_id="first")], source_file="events/2024-03-01/a.jsonl", first_line=3),
        ]
    )

    batch = clean_events(frame, no_existing(), SALT)

    assert batch.events.select("user_id", "source_file", "line_number").rows() == [
        ("first", "events/2024-03-01/a.jsonl", 3)
    ]
    assert batch.duplicates.schema == pl.Schema(DUPLICATES_SCHEMA)
    assert batch.duplicates.select("source_file", "line_number", "kept_source_file", "kept_line_number").rows() == [
        ("events/2024-03-01/a.jsonl", 9, "events/2024-03-01/a.jsonl", 3),
        ("events/2024-03-01/b.jsonl", 1, "events/2024-03-01/a.jsonl", 3),
    ]
    assert set(batch.duplicates["kept_landing_date"]) == {DAY}


@pytest.mark.parametrize(
    ("files", "lines", "ordered"),
    [
        (["a", "a", "b"], [1, 2, 1], True),
        (["a", "b", "a"], [1, 1, 2], False),  # a file seen again later
        (["a", "a"], [2, 1], False),
        (["a", None], [1, 2], False),  # unknown lineage is never taken as ordered
        (["a"], [7], True),
    ],
)
def test_source_order_is_file_then_strictly_increasing_line(files: list, lines: list, ordered: bool) -> None:
    frame = pl.DataFrame({"source_file": files, "line_number": lines}, schema={"source_file": pl.String, "line_number": pl.Int64})
    assert in_source_order(frame) is ordered


def test_payloads_become_one_ndjson_document_with_inner_line_breaks_as_spaces() -> None:
    payloads = pl.Series(["{}", '{"a":\n1}', '{"b": "é"}', '{"c": 3}'])

    assert bytes(ndjson_bytes(payloads)) == '{}\n{"a": 1}\n{"b": "é"}\n{"c": 3}\n'.encode()
    assert bytes(ndjson_bytes(payloads.slice(2, 2))) == '{"b": "é"}\n{"c": 3}\n'.encode()  # an offset into the buffer
    with pytest.raises(ValueError, match="null"):
        ndjson_bytes(pl.Series(["{}", None]))


def test_a_record_already_in_silver_is_a_duplicate_pointing_at_the_kept_record() -> None:
    existing = pl.LazyFrame(
        {"event_id": ["e1"], "landing_date": ["2024-02-28"], "source_file": ["events/2024-02-28/x.jsonl"], "line_number": [7]},
        schema_overrides={"line_number": pl.Int64},
    )

    batch = clean([line(event_id="e1"), line(event_id="e2"), line(event_id="e1")], existing=existing)

    assert batch.events["event_id"].to_list() == ["e2"]
    assert batch.duplicates.select("event_id", "line_number", "kept_landing_date", "kept_source_file", "kept_line_number").rows() == [
        ("e1", 1, "2024-02-28", "events/2024-02-28/x.jsonl", 7),
        ("e1", 3, "2024-02-28", "events/2024-02-28/x.jsonl", 7),
    ]


def test_a_later_days_record_in_silver_is_displaced_by_this_earlier_day() -> None:
    later = "events/2024-03-05/x.jsonl"
    existing = pl.LazyFrame(
        {"event_id": ["e1"], "landing_date": ["2024-03-05"], "source_file": [later], "line_number": [7], "event_date": [date(2024, 3, 5)]},
        schema_overrides={"line_number": pl.Int64},
    )

    batch = clean([line(event_id="e1"), line(event_id="e2"), line(event_id="e1")], existing=existing)

    assert batch.events.select("event_id", "line_number").sort("event_id").rows() == [("e1", 1), ("e2", 2)]
    assert batch.duplicates.select("event_id", "line_number", "kept_landing_date", "kept_line_number").rows() == [
        ("e1", 3, DAY, 1)
    ]
    assert batch.displaced.schema == pl.Schema(DISPLACED_SCHEMA)
    assert batch.displaced.rows() == [("e1", "2024-03-05", later, 7, date(2024, 3, 5), DAY, SOURCE, 1)]


def test_an_earlier_days_record_displaces_nothing() -> None:
    existing = pl.LazyFrame(
        {"event_id": ["e1"], "landing_date": ["2024-02-28"], "source_file": ["events/2024-02-28/x.jsonl"], "line_number": [7]},
        schema_overrides={"line_number": pl.Int64},
    )

    batch = clean([line(event_id="e1")], existing=existing)

    assert batch.events.height == 0 and batch.displaced.height == 0
    assert batch.duplicates["kept_landing_date"].to_list() == ["2024-02-28"]


@pytest.mark.parametrize(
    ("left", "right", "before"),
    [
        (("2024-03-01", "z.jsonl", 9), ("2024-03-02", "a.jsonl", 1), True),  # the landing day decides first
        (("2024-03-02", "a.jsonl", 9), ("2024-03-02", "b.jsonl", 1), True),  # then the file
        (("2024-03-02", "a.jsonl", 2), ("2024-03-02", "a.jsonl", 10), True),  # then the line (as a number)
        (("2024-03-02", "a.jsonl", 2), ("2024-03-02", "a.jsonl", 2), False),
        (("2024-03-03", "a.jsonl", 1), ("2024-03-02", "z.jsonl", 9), False),
    ],
)
def test_ownership_order_is_landing_day_then_file_then_line(left: tuple, right: tuple, before: bool) -> None:
    frame = pl.DataFrame([(*left, *right)], schema=["l_day", "l_file", "l_line", "r_day", "r_file", "r_line"], orient="row")
    assert frame.select(sorts_before(["l_day", "l_file", "l_line"], ["r_day", "r_file", "r_line"])).item() is before


def test_an_invalid_record_does_not_claim_its_event_id_from_a_later_valid_one() -> None:
    batch = clean([line(event_id="e1", event_type="hover"), line(event_id="e1")])

    assert batch.events.select("event_id", "line_number").rows() == [("e1", 2)]
    assert batch.quarantine["line_number"].to_list() == [1]
    assert batch.duplicates.height == 0


def test_cleaning_the_same_batch_twice_gives_the_same_result() -> None:
    payloads = [line(event_id="a"), line(event_id="b"), line(event_id="a"), "junk", line(event_id="c", user_id=None)]

    first, second = clean(payloads), clean(payloads)

    assert first.events.equals(second.events)
    assert first.quarantine.equals(second.quarantine)
    assert first.duplicates.equals(second.duplicates)


# -- PII ------------------------------------------------------------------------------


def test_emails_are_hashed_with_a_salted_hmac_sha256_of_the_normalised_address() -> None:
    batch = clean([line(email="  User1@Example.COM ")])

    assert batch.events["email_hash"].to_list() == [hmac_hex(SALT, "user1@example.com")]


def test_the_same_address_in_any_case_or_padding_gets_the_same_hash() -> None:
    emails = pl.Series(["a@x.com", "A@X.COM", " a@x.com\t", "b@x.com", None])

    hashes = hash_emails(emails, SALT).to_list()

    assert hashes[0] == hashes[1] == hashes[2]
    assert hashes[3] != hashes[0]
    assert hashes[4] is None
    assert all(len(h) == 64 for h in hashes[:4])


def test_a_different_salt_gives_a_different_hash() -> None:
    emails = pl.Series(["a@x.com"])

    assert hash_emails(emails, "salt-1")[0] != hash_emails(emails, "salt-2")[0]
    assert hash_emails(emails, "salt-1")[0] == hash_emails(emails, "salt-1")[0]


def test_no_raw_email_reaches_silver_events() -> None:
    batch = clean([line(event_id=f"e{i}", email=f"person{i}@example.com") for i in range(5)] + [line(event_id="n", email=None)])

    assert "email" not in batch.events.columns
    text = batch.events.select(pl.col(pl.String)).write_csv()
    assert "@" not in text and "example.com" not in text
    assert batch.events.filter(pl.col("event_id") == "n")["email_hash"].to_list() == [None]


# -- schema drift ---------------------------------------------------------------------


def test_unknown_fields_are_reported_as_drift_with_counts_and_the_records_kept() -> None:
    batch = clean(
        [
            line(event_id="a", campaign="autumn-sale"),
            line(event_id="b", campaign="spring", coupon="X1"),
            line(event_id="c", campaign=None),
            line(event_id="d"),
        ]
    )

    assert batch.drift == {"campaign": 2, "coupon": 1}
    assert sorted(batch.events["event_id"]) == ["a", "b", "c", "d"]
    assert "campaign" not in batch.events.columns


def _drift_oracle(payloads: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for p in payloads:
        for k, v in json.loads(p).items():
            if k not in {"event_id", "user_id", "session_id", "event_type", "timestamp", "product_id",
                         "session_duration", "revenue", "user_segment", "email"} and v is not None:
                counts[k] = counts.get(k, 0) + 1
    return dict(sorted(counts.items()))


def test_drift_counts_stay_exact_past_the_sample_of_learnt_names() -> None:
    # Every record carries an extra column (as a CSV file does); beyond the two-record sample
    # come values of other JSON types, a name never seen in the sample, a nested object whose
    # keys share a contract name, and a quote-colon inside a value.
    payloads = [
        line(event_id="a", campaign=None),
        line(event_id="b", campaign="x"),
        line(event_id="c", campaign=7),
        line(event_id="d", campaign={"user_id": "nested"}),
        line(event_id="e", campaign=None, coupon="X1"),
        line(event_id="f", campaign=[1, 2], meta={"campaign": None}),
        line(event_id="g", campaign='say \"hi\": there'),
        line(event_id="h", campaign=None),
    ]

    frame = bronze(payloads)
    assert unknown_fields(frame, sample=2) == _drift_oracle(payloads) == {"campaign": 5, "coupon": 1, "meta": 1}


def test_a_batch_without_unknown_fields_reports_no_drift() -> None:
    assert clean([line(event_id="a"), "not json"]).drift == {}


# -- records that leave fields out ---------------------------------------------------


@pytest.mark.parametrize("field", ["email", "revenue"])
def test_an_optional_field_left_out_of_every_record_is_read_as_null(field: str) -> None:
    batch = clean([line(event_id="a", **{field: DROP}), line(event_id="b", **{field: DROP})])

    assert batch.quarantine.height == 0
    assert batch.events["email_hash" if field == "email" else field].to_list() == [None, None]


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(line(user_id=DROP), "missing_value:user_id"), ("{}", "missing_value:event_id"), ('{"event_id": "x"}', "missing_value:user_id")],
    ids=["lone_record_without_user_id", "empty_object", "only_an_event_id"],
)
def test_a_batch_of_only_incomplete_records_is_quarantined_not_a_crash(payload: str, reason: str) -> None:
    batch = clean([payload])

    assert batch.events.height == 0
    assert batch.quarantine.select("reason").rows() == [(reason,)]


@pytest.mark.parametrize(
    "dirty",
    [
        line(event_id="bad", session_duration=[1]),
        line(event_id="bad", event_type="purchase", revenue=[5]),
        line(event_id="bad", user_id=[1]),
    ],
    ids=["array_session_duration", "array_revenue", "array_user_id"],
)
def test_an_array_where_other_records_carry_a_number_or_object_is_an_invalid_type(dirty: str) -> None:
    good = line(event_id="good", event_type="purchase", revenue=3.0)
    odd = line(event_id="odd", user_id={"a": 1})

    batch = clean([good, odd, dirty])

    assert batch.events["event_id"].to_list() == ["good"]
    assert batch.quarantine["reason"].str.starts_with("invalid_type:").all()
    assert batch.quarantine.height == 2


# -- known crashes on dirty input (bugs) ------------------------------------------------


def _renamed(event_id: str) -> str:
    rec = record(event_id=event_id)
    rec["userId"] = rec.pop("user_id")
    return json.dumps(rec)


@pytest.mark.parametrize(
    ("payloads", "drift"),
    [
        ([line(event_id="good"), _renamed("r1"), _renamed("r2")], {"userId": 2}),
        ([line(event_id="good"), '{"campaign": "x"}'], {"campaign": 1}),
    ],
    ids=["user_id_renamed_to_userId", "record_of_only_an_unknown_field"],
)
def test_a_renamed_or_unknown_only_record_is_drift_and_quarantine_not_a_crash(payloads: list[str], drift: dict) -> None:
    batch = clean(payloads)

    assert batch.drift == drift
    assert batch.events["event_id"].to_list() == ["good"]
    assert batch.quarantine.height == len(payloads) - 1


@pytest.mark.parametrize(
    ("first", "second"),
    [(True, 3), ({"a": 1}, 3), ([1], {"a": 1}), (2.5, [1])],
    ids=["bool_then_int", "object_then_int", "array_then_object", "float_then_array"],
)
def test_an_unknown_field_with_mixed_json_types_is_drift_not_a_crash(first: object, second: object) -> None:
    batch = clean([line(event_id="a", campaign=first), line(event_id="b", campaign=second)])

    assert batch.drift == {"campaign": 2}
    assert batch.events.height == 2


def test_an_object_and_an_array_of_objects_in_a_text_field_are_both_quarantined() -> None:
    batch = clean(
        [line(event_id="good"), line(event_id="a", user_id={"k": "x"}), line(event_id="b", user_id=[{"k": 1}])]
    )

    assert batch.quarantine["reason"].to_list() == ["invalid_type:user_id", "invalid_type:user_id"]


# -- row conservation -----------------------------------------------------------------


def test_every_generated_bronze_row_is_kept_quarantined_or_counted_as_a_duplicate(tmp_path: Path) -> None:
    generate(GeneratorConfig(days=2, events_per_day=2000, seed=5, dirty_rate=0.2, start_date=date(2024, 1, 1)), tmp_path)
    existing = no_existing()
    now = datetime(2024, 2, 1, tzinfo=UTC)

    for day in landed_dates(tmp_path):
        records = collect_landing(tmp_path, day, {}, now).records
        batch = clean_events(records, existing, SALT)

        assert accounted(batch) == records.height
        assert batch.quarantine["reason"].null_count() == 0
        assert batch.events["event_id"].is_unique().all()
        assert {"malformed_json", "invalid_timestamp", "missing_value:timestamp", "missing_value:user_id",
                "invalid_type:session_duration", "invalid_value:event_type", "negative_value:revenue"} <= set(batch.reasons())  # fmt: skip
        assert batch.drift.get("campaign", 0) > 0
        existing = pl.concat([existing, batch.events.lazy().select("event_id", "landing_date", "source_file", "line_number")])
    assert batch.duplicates.filter(pl.col("kept_landing_date") == "2024-01-01").height > 0


_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\n"), max_size=20)
_scalar = st.one_of(st.none(), st.booleans(), _text, st.integers(-(10**6), 10**6), st.floats(allow_nan=False, allow_infinity=False))
# Any JSON value in a contract field; arrays of objects have their own test above.
_json_value = st.one_of(
    _scalar, st.lists(_scalar, max_size=3), st.dictionaries(_text, _scalar, max_size=3)
)
_FIELDS = list(record())


@st.composite
def dirty_line(draw: st.DrawFn, event_id: str) -> str:
    """A payload line broken in one of the ways real landings are."""
    kind = draw(st.sampled_from(["noise", "truncate", "drop", "scalar", "object", "timestamp", "event_type", "revenue", "extra"]))
    if kind == "noise":
        return draw(_text.filter(lambda s: s.strip() != ""))
    if kind == "truncate":
        text = line(event_id=event_id)
        return text[: draw(st.integers(1, len(text) - 1))]
    field = draw(st.sampled_from(_FIELDS))
    if kind == "drop":
        return line(event_id=event_id, **{field: DROP}) if field != "event_id" else line(event_id=DROP)
    if kind == "scalar":
        return json.dumps({**record(event_id=event_id), field: draw(_json_value)})
    if kind == "object":
        text_field = draw(st.sampled_from([f for f in STRING_FIELDS if f != "event_id"]))
        return line(event_id=event_id, **{text_field: {"k": draw(_text)}})
    if kind == "timestamp":
        return line(event_id=event_id, timestamp=draw(_text))
    if kind == "event_type":
        return line(event_id=event_id, event_type=draw(st.sampled_from(["view", "click", "add_to_cart", "purchase", "hover", ""])))
    if kind == "revenue":
        return line(
            event_id=event_id,
            event_type=draw(st.sampled_from(["view", "purchase"])),
            revenue=draw(st.one_of(st.none(), st.floats(-100, 100, allow_nan=False))),
        )
    return line(event_id=event_id, **{draw(st.sampled_from(["campaign", "coupon"])): draw(_text)})


@st.composite
def mixed_batch(draw: st.DrawFn) -> tuple[list[str], list[str]]:
    """A batch that always holds at least one valid record, plus dirty lines and repeated ids."""
    n = draw(st.integers(1, 25))
    ids = [f"e{draw(st.integers(0, 12))}" for _ in range(n)]
    payloads = [line(event_id="anchor")]
    for event_id in ids:
        payloads.append(draw(st.one_of(st.just(line(event_id=event_id)), dirty_line(event_id))))
    existing_ids = draw(st.lists(st.sampled_from([f"e{i}" for i in range(13)]), max_size=4, unique=True))
    return draw(st.permutations(payloads)), existing_ids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_batch())
def test_row_conservation_holds_for_random_mixtures_of_valid_and_dirty_lines(case: tuple[list[str], list[str]]) -> None:
    payloads, existing_ids = case
    existing = pl.LazyFrame(
        {
            "event_id": existing_ids,
            "landing_date": ["2024-02-01"] * len(existing_ids),
            "source_file": ["events/2024-02-01/old.jsonl"] * len(existing_ids),
            "line_number": list(range(1, len(existing_ids) + 1)),
        },
        schema=EXISTING_SCHEMA,
    )

    batch = clean(payloads, existing=existing)

    assert accounted(batch) == len(payloads)
    assert batch.quarantine.filter(pl.col("reason").is_null() | (pl.col("reason") == "")).height == 0
    placed = pl.concat(
        [batch.events.select("line_number"), batch.quarantine.select("line_number"), batch.duplicates.select("line_number")]
    )["line_number"]
    assert sorted(placed.to_list()) == list(range(1, len(payloads) + 1))  # each line in exactly one place
    assert batch.events["event_id"].is_unique().all()
    assert not set(batch.events["event_id"]) & set(existing_ids)
    assert batch.duplicates["kept_line_number"].null_count() == 0
