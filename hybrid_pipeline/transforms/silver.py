"""Bronze records -> typed, validated, deduplicated silver events (plus what was set aside).

Every bronze record ends in exactly one of three places, which is what makes row
conservation checkable: ``events`` (valid, and the owner of its event_id), ``quarantine``
(with a reason) or ``duplicates`` (a valid record whose event_id another record owns).

Ownership is a rule of the data: of all valid records carrying an event_id, the first in
(landing day, source file, line) order is kept. A landing day processed after a later one
therefore takes back the events it shares with it (``SilverBatch.displaced``).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandera.errors
import polars as pl

from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.transforms.contract import (
    CONTRACT_FIELDS,
    NUMERIC_FIELDS,
    STRING_FIELDS,
    TypedEvent,
    reason_for,
    silver_schema,
)

LINEAGE = ("landing_date", "source_file", "line_number", "file_sha256")
# Other landing days' stored records of the given event_ids (event_id, landing_date, source_file,
# line_number[, event_date]): how dedup asks without reading all of silver (lakehouse.event_index).
ExistingLookup = Callable[[pl.Series], pl.DataFrame]
# Which record of an event_id silver keeps: the first in this order, whatever order days arrive in.
OWNERSHIP_ORDER = ("landing_date", "source_file", "line_number")
_TS_FORMATS_WITH_OFFSET = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z")
_TS_FORMATS_NAIVE = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d")

QUARANTINE_SCHEMA = catalog.SILVER_EVENTS_QUARANTINE.schema
DUPLICATES_SCHEMA = catalog.SILVER_EVENTS_DUPLICATES.schema
# A silver row of a later landing day that an earlier day, processed after it, takes over.
DISPLACED_SCHEMA: dict[str, pl.DataType] = {
    "event_id": pl.String(),
    "landing_date": pl.String(),
    "source_file": pl.String(),
    "line_number": pl.Int64(),
    "event_date": pl.Date(),
    "kept_landing_date": pl.String(),
    "kept_source_file": pl.String(),
    "kept_line_number": pl.Int64(),
}


@dataclass
class SilverBatch:
    events: pl.DataFrame
    quarantine: pl.DataFrame
    duplicates: pl.DataFrame
    drift: dict[str, int] = field(default_factory=dict)  # unknown field -> records carrying it
    # silver rows of later landing days that this batch owns (see ``deduplicate``)
    displaced: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DISPLACED_SCHEMA))

    def reasons(self) -> dict[str, int]:
        counts = self.quarantine.group_by("reason").len().sort("reason")
        return dict(zip(counts["reason"].to_list(), counts["len"].to_list(), strict=True))


def parse_timestamps(raw: pl.Expr) -> pl.Expr:
    """ISO-8601 text -> UTC timestamp; text without an offset is taken as UTC."""
    text = raw.str.strip_chars().str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
    with_offset = [
        text.str.to_datetime(f, strict=False, time_unit="us").dt.convert_time_zone("UTC")
        for f in _TS_FORMATS_WITH_OFFSET
    ]
    naive = [
        text.str.to_datetime(f, strict=False, time_unit="us").dt.replace_time_zone("UTC")
        for f in _TS_FORMATS_NAIVE
    ]
    return pl.coalesce([*with_offset, *naive])




def ndjson_bytes(payloads: pl.Series) -> memoryview:
    """The payloads as one NDJSON document, one object per line, without copying them again.

    It is the Arrow data buffer of ``payload + "\n"`` (one pass): joining into a Python string
    and encoding it cost three passes and two copies of a day's text. A raw line break can only
    be whitespace between JSON tokens, so it becomes a space.
    """
    if payloads.null_count():
        raise ValueError("a payload to decode is null")
    if payloads.str.contains("\n", literal=True).any():
        payloads = payloads.str.replace_all("\n", " ", literal=True)
    lines = (payloads + "\n").rechunk().to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    start, end = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return memoryview(lines.buffers()[2])[start:end]


def _read_objects(good: pl.DataFrame) -> pl.DataFrame:
    return pl.read_ndjson(io.BytesIO(ndjson_bytes(good["payload"])), schema={f: pl.String for f in CONTRACT_FIELDS})


def _keys_present(names) -> pl.Expr:  # noqa: ANN001 - an iterable of key names
    return pl.sum_horizontal([pl.lit(0, pl.Int32)] + [pl.col("payload").str.contains(f'"{n}":', literal=True).cast(pl.Int32) for n in names])


def _count_one_by_one(payloads: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for payload in payloads:
        # The json module is exact for any JSON types and nesting.
        for key, value in json.loads(payload).items():
            if key not in CONTRACT_FIELDS and value is not None:
                counts[key] = counts.get(key, 0) + 1
    return counts


def unknown_fields(good: pl.DataFrame, sample: int = 1000) -> dict[str, int]:
    """Fields outside the contract and how many records carry them (schema drift).

    Every key ends in a quote and a colon, so counting those never undercounts a record's
    keys; a record whose count the contract's keys explain carries no other field. The rest
    can be every record (a CSV or Parquet file with an extra column), so the unknown names are
    learnt from a sample, the records those names explain too are counted in one typed pass,
    and only what is left (new names, nested objects, quotes inside values) is decoded one by
    one. The count is exact.
    """
    keys = pl.col("payload").str.count_matches(r'"\s*:')
    suspects = (
        good.select("payload", keys.alias("_keys"), _keys_present(CONTRACT_FIELDS).alias("_present"))
        .filter(pl.col("_keys") > pl.col("_present"))
    )
    if suspects.is_empty():
        return {}
    names = sorted(_count_one_by_one(suspects["payload"].head(sample).to_list()))
    explained = pl.col("_keys") <= pl.col("_present") + _keys_present(names)
    typed = suspects.filter(explained)
    counts = _count_one_by_one(suspects.filter(~explained)["payload"].to_list())
    if names and typed.height:
        # Any JSON value reads as text under a String schema; null stays null.
        frame = pl.read_ndjson(io.BytesIO(ndjson_bytes(typed["payload"])), schema={n: pl.String for n in names})
        for n in names:
            counts[n] = counts.get(n, 0) + int(frame[n].is_not_null().sum())
    return {k: v for k, v in sorted(counts.items()) if v}


def decode_payloads(bronze: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """Split bronze into decoded records (contract fields as text) and malformed ones.

    A payload is well formed when it is exactly one JSON object. Fast path: a line that does
    not start with ``{`` and end with ``}`` cannot be one, and the rest is decoded in one
    pass; if that pass fails (or yields another row count), every line is validated on its
    own first. The decoded frame keeps lineage and ``payload`` for later quarantine.
    """
    trimmed = pl.col("payload").str.strip_chars()
    is_candidate = trimmed.str.starts_with("{") & trimmed.str.ends_with("}")
    flagged = bronze.with_columns(is_candidate.fill_null(False).alias("_object"))
    candidate = flagged.filter("_object")
    decoded = None
    if candidate.height:
        try:
            decoded = _read_objects(candidate)
            if decoded.height != candidate.height:
                decoded = None
        except pl.exceptions.PolarsError:
            decoded = None
        if decoded is None:
            flagged = flagged.with_columns(pl.col("_object") & pl.col("payload").str.json_path_match("$").is_not_null())
            candidate = flagged.filter("_object")
            decoded = _read_objects(candidate) if candidate.height else None
    if decoded is None:
        decoded = pl.DataFrame(schema={f: pl.String for f in CONTRACT_FIELDS})
    good = candidate
    malformed = flagged.filter(~pl.col("_object"))
    drift = unknown_fields(good) if good.height else {}
    decoded = pl.concat([good.select("payload", *LINEAGE), decoded], how="horizontal")
    return decoded, malformed.select("payload", *LINEAGE), drift


def _with_timestamps(decoded: pl.DataFrame) -> pl.DataFrame:
    """Adds ``_timestamp``: the common format on every row, the others only where it failed."""
    text = pl.col("timestamp").str.strip_chars()
    first = decoded.with_columns(
        text.str.to_datetime(_TS_FORMATS_WITH_OFFSET[0], strict=False, time_unit="us")
        .dt.convert_time_zone("UTC")
        .alias("_timestamp")
    )
    retry = pl.col("_timestamp").is_null() & pl.col("timestamp").is_not_null()
    if not first.select(retry.any()).item():
        return first
    return pl.concat(
        [first.filter(~retry), first.filter(retry).with_columns(parse_timestamps(pl.col("timestamp")).alias("_timestamp"))]
    )


def type_records(decoded: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Cast text fields to contract types; records whose values cannot be cast are rejected.

    Rules, applied uniformly from the contract's field lists: a numeric field must parse as
    a finite number, a text field must be a scalar (not an object or array), a timestamp
    must be ISO-8601. Missing values are left to the contract (they are not type errors).
    """
    casts = {f: pl.col(f).str.strip_chars().cast(pl.Float64, strict=False) for f in NUMERIC_FIELDS}
    decoded = _with_timestamps(decoded)
    ts = pl.col("_timestamp")
    checks = {
        **{
            f"invalid_type:{f}": pl.col(f).is_not_null() & (casts[f].is_null() | ~casts[f].is_finite())
            for f in NUMERIC_FIELDS
        },
        **{f"invalid_type:{f}": pl.col(f).str.strip_chars_start().str.contains(r"^[\[{]") for f in STRING_FIELDS},
        "invalid_timestamp": pl.col("timestamp").is_not_null() & ts.is_null(),
    }
    flagged = decoded.with_columns(
        *(expr.fill_null(False).alias(name) for name, expr in checks.items()),
        *(casts[f].alias(f"_{f}") for f in NUMERIC_FIELDS),
    )
    any_bad = pl.any_horizontal(list(checks))
    # Reasons are spelled out only for the (few) failing rows.
    bad = flagged.filter(any_bad).with_columns(
        pl.concat_list(pl.when(pl.col(n)).then(pl.lit(n)) for n in checks).list.drop_nulls().alias("_type_errors")
    )
    rejected = bad.select(
        "payload",
        *LINEAGE,
        pl.col("_type_errors").list.first().alias("reason"),
        pl.col("_type_errors").list.join(";").alias("details"),
    )
    typed = (
        flagged.filter(~any_bad)
        .drop(*checks, *NUMERIC_FIELDS, "timestamp")
        .rename({"_timestamp": "timestamp", **{f"_{f}": f for f in NUMERIC_FIELDS}})
    )
    return typed, rejected


def validate_contract(typed: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Run the pandera contract lazily; every failure case becomes a row-level reason."""
    indexed = typed.with_row_index("_row")
    try:
        TypedEvent.validate(indexed.drop("_row"), lazy=True)
        return typed, pl.DataFrame(schema=QUARANTINE_SCHEMA)
    except pandera.errors.SchemaErrors as errors:
        cases = errors.failure_cases
    row_cases = cases.filter(pl.col("index").is_not_null())
    if row_cases.height < cases.height:
        # A failure without a row (e.g. a wrong column dtype) is a bug upstream of the
        # contract, not bad data: fail loudly instead of quarantining everything.
        raise ValueError(f"contract failed at table level: {cases.filter(pl.col('index').is_null())}")
    reasons = (
        row_cases.with_columns(
            pl.struct("check", "column")
            .map_elements(lambda s: reason_for(s["check"], s["column"]), return_dtype=pl.String)
            .alias("reason"),
            pl.col("index").cast(pl.UInt32).alias("_row"),
        )
        .group_by("_row")
        .agg(pl.col("reason").unique(maintain_order=True))
    )
    joined = indexed.join(reasons, on="_row", how="left")
    rejected = joined.filter(pl.col("reason").is_not_null()).select(
        "payload",
        *LINEAGE,
        pl.col("reason").list.first().alias("reason"),
        pl.col("reason").list.join(";").alias("details"),
    )
    return joined.filter(pl.col("reason").is_null()).drop("_row", "reason"), rejected


def hash_emails(emails: pl.Series, salt: str) -> pl.Series:
    """Salted HMAC-SHA256 of the normalised address; hashed once per distinct address."""
    key = salt.encode("utf-8")
    uniq = emails.drop_nulls().unique()
    digests = {
        e: hmac.new(key, e.strip().lower().encode("utf-8"), hashlib.sha256).hexdigest() for e in uniq.to_list()
    }
    return emails.replace_strict(digests, default=None, return_dtype=pl.String)


def in_source_order(frame: pl.DataFrame) -> bool:
    """Whether rows are already in (source_file, line_number) order (as bronze stores them):
    one comparison pass instead of a sort of the day."""
    if frame.height < 2:
        return True
    file, line = pl.col("source_file"), pl.col("line_number")
    step_ok = (file > file.shift()) | ((file == file.shift()) & (line > line.shift()))
    return bool(frame.select(step_ok.slice(1).fill_null(False).all()).item())


def sorts_before(left: Sequence[str], right: Sequence[str]) -> pl.Expr:
    """Whether the record named by the ``left`` columns comes before the one named by ``right`` in
    ownership order (both name landing day, source file and line, in that order)."""
    before = pl.lit(False)
    for a, b in reversed(list(zip(left, right, strict=True))):
        before = (pl.col(a) < pl.col(b)) | ((pl.col(a) == pl.col(b)) & before)
    return before.fill_null(False)


def _as_kept() -> list[pl.Expr]:
    """The record's lineage as the ``kept_*`` pointer of its duplicates."""
    return [pl.col(c).alias(f"kept_{c}") for c in OWNERSHIP_ORDER]


def deduplicate(
    valid: pl.DataFrame, existing: pl.LazyFrame | ExistingLookup
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Keep one record per event_id: the first in ownership order (landing day, source file, line).

    The rule is a property of the data, not of the order in which landing days or files arrive,
    so every processing order and every rerun keeps the same record. ``valid`` is one landing
    day's records; ``existing`` is silver of the other landing days (``event_date`` is optional:
    it only dates the displaced rows), or a lookup giving those of its rows whose event_id is
    among the ids asked (the event index: no scan of silver). Returns the kept events, the duplicates (each pointing at
    the kept record) and the *displaced* rows: records of later landing days that silver holds
    today and that this batch now owns (they become duplicates of their own landing day; the
    engine's write step moves them, see ``hybrid_pipeline.engines.rehoming``).
    """
    ordered = valid if in_source_order(valid) else valid.sort("source_file", "line_number")
    flagged = ordered.with_columns(pl.col("event_id").is_first_distinct().alias("_first"))
    first = flagged.filter(pl.col("_first")).drop("_first")
    repeats = flagged.filter(~pl.col("_first")).drop("_first")
    if not isinstance(existing, pl.LazyFrame):
        existing = existing(first["event_id"]).lazy()
    # Ids first: a cross-day repeat is rare, so lineage is read only for the ids that clash.
    clashing = existing.select("event_id").join(first.lazy().select("event_id"), on="event_id", how="semi").unique().collect()
    event_date = "event_date" if "event_date" in existing.collect_schema().names() else None
    other = (
        existing.select(
            "event_id",
            *OWNERSHIP_ORDER,
            pl.col(event_date) if event_date else pl.lit(None, pl.Date()).alias("event_date"),
        )
        .filter(pl.col("event_id").is_in(clashing["event_id"].implode()))
        .sort("event_id", *OWNERSHIP_ORDER)
        .unique("event_id", keep="first", maintain_order=True)  # silver holds one row per id
        .rename({c: f"other_{c}" for c in (*OWNERSHIP_ORDER, "event_date")})
        .collect()
    )
    matched = first.select("event_id", *OWNERSHIP_ORDER).join(other, on="event_id", how="inner")
    other_first = sorts_before([f"other_{c}" for c in OWNERSHIP_ORDER], OWNERSHIP_ORDER)
    seen = matched.filter(other_first).select(
        "event_id", *[pl.col(f"other_{c}").alias(f"kept_{c}") for c in OWNERSHIP_ORDER]
    )
    displaced = matched.filter(~other_first).select(
        "event_id",
        *[pl.col(f"other_{c}").alias(c) for c in (*OWNERSHIP_ORDER, "event_date")],
        *_as_kept(),
    )
    kept = first.join(seen.select("event_id"), on="event_id", how="anti")
    across_days = first.join(seen, on="event_id", how="inner")
    in_batch = repeats.join(first.select("event_id", *_as_kept()), on="event_id", how="left")
    # A repeat of an event kept on an earlier day points at that earlier record.
    in_batch = in_batch.join(seen, on="event_id", how="left", suffix="_seen").with_columns(
        pl.coalesce(f"kept_{c}_seen", f"kept_{c}").alias(f"kept_{c}") for c in OWNERSHIP_ORDER
    )
    duplicates = pl.concat(
        [d.select(list(DUPLICATES_SCHEMA)) for d in (across_days, in_batch)], how="vertical_relaxed"
    ).sort("source_file", "line_number")
    return kept, duplicates, displaced


def clean_events(bronze: pl.DataFrame, existing: pl.LazyFrame | ExistingLookup, pii_salt: str) -> SilverBatch:
    """The whole bronze -> silver step for one batch of bronze records."""
    decoded, malformed, drift = decode_payloads(bronze)
    typed, type_rejects = type_records(decoded)
    valid, contract_rejects = validate_contract(typed)
    kept, duplicates, displaced = deduplicate(valid, existing)
    events = kept.with_columns(
        pl.col("timestamp").dt.date().alias("event_date"),
        pl.col("timestamp").dt.hour().cast(pl.Int8).alias("hour"),
        hash_emails(kept["email"], pii_salt).alias("email_hash"),
    ).select(list(silver_schema()))
    quarantine = pl.concat(
        [
            malformed.with_columns(
                pl.lit("malformed_json").alias("reason"), pl.lit("not a single JSON object").alias("details")
            ).select(list(QUARANTINE_SCHEMA)),
            type_rejects.select(list(QUARANTINE_SCHEMA)),
            contract_rejects.select(list(QUARANTINE_SCHEMA)),
        ],
        how="vertical_relaxed",
    ).sort("source_file", "line_number")
    return SilverBatch(
        events=events.cast(silver_schema()).sort("event_date", "timestamp", "event_id"),
        quarantine=quarantine.cast(QUARANTINE_SCHEMA),
        duplicates=duplicates.cast(DUPLICATES_SCHEMA),
        drift=drift,
        displaced=displaced.cast(DISPLACED_SCHEMA).sort(*OWNERSHIP_ORDER),
    )
