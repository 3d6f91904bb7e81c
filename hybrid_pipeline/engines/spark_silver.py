"""Bronze -> silver on Spark: the port of ``transforms.silver.clean_events``.

Same contract, same reasons, same outputs (``events``, ``quarantine`` with reason and details,
``duplicates`` pointing at the kept record, and the schema-drift counts); the equivalence tests
hold both to identical rows on generated dirty data.

What is shared with the polars version (imported, not copied)
    the contract's field lists and the pandera model ``TypedEvent`` (the Spark checks are
    *derived* from ``TypedEvent.to_schema()``: each built-in check is translated by name, so a
    bound changed in the contract changes both engines), the reason codes (``reason_for``),
    the output schemas (``silver_schema``, ``QUARANTINE_SCHEMA``, ``DUPLICATES_SCHEMA``), the
    timestamp formats and the e-mail hashing for unusual addresses (``hash_emails``).

What is duplicated, and why
    * JSON decoding: polars decodes with ``read_ndjson`` on the driver; Spark with ``from_json``
      in the executors (PERMISSIVE mode with a corrupt-record column, single quotes and NaN
      literals disallowed, so that what polars calls malformed Spark calls malformed too).
    * timestamp parsing: chrono formats (``%Y-%m-%dT%H:%M:%S%.f%#z`` ...) become Java patterns,
      with a few regex normalisations for what chrono accepts and Java does not (spaces before
      the offset, a leading ``+`` on the year, more than 6 fraction digits, which chrono
      truncates) or the reverse (lowercase ``t``/``z``, 5-digit years).
    * number parsing: Java's ``parseDouble`` accepts ``1.5d`` and hex floats, polars does not;
      a decimal-number regex gates the cast.
    * the two dataframe-level contract checks (``revenue_only_on_purchase``,
      ``purchase_has_revenue``) are polars functions inside the pandera model; their Spark
      expressions are written out in ``DATAFRAME_CHECKS`` (a test fails if the model gains a
      check without a translation). pandera's own pyspark backend is not used because it
      reports failures per check, not per row, and a quarantine needs per-row reasons.
    * e-mail hashing: HMAC-SHA256 is built from Spark's ``sha2`` for addresses of printable
      ASCII (the norm; ``str.strip().lower()`` and Spark's trim/lower agree exactly there);
      any other address is hashed on the driver by the polars code, once per distinct address.
    * deduplication: a window (``row_number`` over event_id ordered by source file and line)
      instead of ``is_first_distinct`` on a sorted frame; same survivor, same pointers, same
      displaced rows of later days.

Known divergences (none occur in generated data): a JSON number where the contract expects
text keeps its JSON spelling on Spark (``1.50``) while polars re-prints it (``1.5``); text after
a complete JSON object on the same line; duplicate keys in a record.

The work is one pass: every bronze row is classified (reason, or valid with its dedup
annotations) into one persisted frame from which the three outputs are filters; call
:meth:`SparkSilverBatch.unpersist` once they are written. Expressions are staged so that each
costly one (JSON decoding, timestamp parsing) is evaluated once per row: a PySpark Column reused
in several places is a copy of its expression tree, and a frame used twice in one plan (the
batch's event ids for the dedup join) is computed twice unless persisted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import polars as pl

from hybrid_pipeline.engines.shared import spark_types
from hybrid_pipeline.transforms.contract import (
    CONTRACT_FIELDS,
    NUMERIC_FIELDS,
    STRING_FIELDS,
    TypedEvent,
    reason_for,
    silver_schema,
)
from hybrid_pipeline.transforms.silver import (
    DISPLACED_SCHEMA,
    DUPLICATES_SCHEMA,
    LINEAGE,
    OWNERSHIP_ORDER,
    QUARANTINE_SCHEMA,
    SilverBatch,
    hash_emails,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pyspark.sql import Column, DataFrame

# chrono formats of transforms.silver (_TS_FORMATS_WITH_OFFSET, then _TS_FORMATS_NAIVE) as Java
# patterns: variable-width fields (chrono accepts 1-digit months) and every offset spelling
# chrono's %#z accepts (Z, +02, +0200, +02:00).
_TS_PATTERNS = (
    "y-M-d'T'H:m:s[.SSSSSS]XXX",
    "y-M-d'T'H:m:s[.SSSSSS]XX",
    "y-M-d'T'H:m:s[.SSSSSS]X",
    "y-M-d'T'H:mXXX",
    "y-M-d'T'H:mXX",
    "y-M-d'T'H:mX",
    "y-M-d'T'H:m:s[.SSSSSS]",
    "y-M-d'T'H:m",
    "y-M-d",
)
_TS_CANONICAL = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
_NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$"  # what polars' float cast accepts, finite spellings
_WS = r"(?U)^\s+|\s+$"  # chrono/polars strip Unicode white space; Spark's trim only spaces
_JSON_OPTIONS = {
    "mode": "PERMISSIVE",
    "columnNameOfCorruptRecord": "_corrupt",
    "allowSingleQuotes": "false",
    "allowNonNumericNumbers": "false",
    "allowUnquotedFieldNames": "false",
    "allowComments": "false",
}
_ASCII_EMAIL = r"^[\t\n\x0b\x0c\r\x20-\x7e]*$"
_PY_ASCII_WS = " \t\n\x0b\x0c\r"  # str.isspace() within printable ASCII + these controls


def _strip(col: Column) -> Column:
    from pyspark.sql import functions as F

    return F.regexp_replace(col, _WS, "")


def parse_timestamps(raw: Column) -> Column:
    """ISO-8601 text -> timestamp, as ``transforms.silver.parse_timestamps`` (offset-less = UTC).

    Fast path first, as polars does: the canonical spelling (``2024-03-01T10:00:00.123Z``,
    ``...+02:00``) is parsed with one pattern; only other text goes through the normalisations
    and the nine patterns (``coalesce`` evaluates its arguments lazily).
    """
    from pyspark.sql import functions as F

    fast = F.when(raw.rlike(_TS_CANONICAL), F.try_to_timestamp(raw, F.lit(_TS_PATTERNS[0])))
    text = _strip(raw)
    text = F.regexp_replace(text, r"^(\d{4}-\d{2}-\d{2}) ", "$1T")
    text = F.regexp_replace(text, r"^\+(?=\d{4}-)", "")  # chrono accepts a signed year
    text = F.regexp_replace(text, r"(\.\d{6})\d+", "$1")  # chrono truncates to the time unit
    text = F.regexp_replace(text, r"(?<=\d)\s+(?=(Z|[+-]\d{2}(:?\d{2})?)$)", "")  # "10:00 +02:00"
    parsed = F.coalesce(*[F.try_to_timestamp(text, F.lit(p)) for p in _TS_PATTERNS])
    # Java parses case-insensitively and reads years of any width; chrono does neither.
    plausible = text.rlike(r"^\d{4}-") & ~text.rlike("[a-z]")
    return F.coalesce(fast, F.when(plausible, parsed))


# -- the contract, derived from the pandera model -------------------------------------------


def _column_check(check: Any, col: Column) -> Column:
    """A pandera built-in check as a Spark predicate (True = passes; null values pass)."""
    from pyspark.sql import functions as F

    s = check.statistics
    name = check.name
    if name == "isin":
        return col.isin(list(s["allowed_values"]))
    if name == "notin":
        return ~col.isin(list(s["forbidden_values"]))
    if name == "str_length":
        n = F.length(col)
        cond = F.lit(True)
        if s.get("exact_value") is not None:
            cond = cond & (n == s["exact_value"])
        if s.get("min_value") is not None:
            cond = cond & (n >= s["min_value"])
        if s.get("max_value") is not None:
            cond = cond & (n <= s["max_value"])
        return cond
    if name == "greater_than_or_equal_to":
        return col >= s["min_value"]
    if name == "less_than_or_equal_to":
        return col <= s["max_value"]
    if name == "greater_than":
        return col > s["min_value"]
    if name == "less_than":
        return col < s["max_value"]
    if name == "equal_to":
        return col == s["value"]
    if name == "not_equal_to":
        return col != s["value"]
    if name == "in_range":
        lo = col >= s["min_value"] if s.get("include_min", True) else col > s["min_value"]
        hi = col <= s["max_value"] if s.get("include_max", True) else col < s["max_value"]
        return lo & hi
    if name == "str_matches":
        return col.rlike("^(?:" + s["pattern"] + ")")
    if name == "str_contains":
        return col.rlike(s["pattern"])
    if name == "str_startswith":
        return col.startswith(s["string"])
    if name == "str_endswith":
        return col.endswith(s["string"])
    raise NotImplementedError(f"no Spark translation for pandera check {name!r}")


def _df_revenue_only_on_purchase() -> Column:
    from pyspark.sql import functions as F

    return (F.col("event_type") == "purchase") | F.col("revenue").isNull()


def _df_purchase_has_revenue() -> Column:
    from pyspark.sql import functions as F

    return (F.col("event_type") != "purchase") | F.col("revenue").isNotNull()


# The model's dataframe-level checks are polars code; these are their Spark twins.
DATAFRAME_CHECKS = {
    "revenue_only_on_purchase": _df_revenue_only_on_purchase,
    "purchase_has_revenue": _df_purchase_has_revenue,
}


def contract_failures() -> list[tuple[str, Column]]:
    """(reason, fails) per check, in the order pandera reports them (columns, then frame checks).

    ``fails`` is True only when the check evaluates to False: pandera ignores nulls in checks
    (a missing value is reported by ``not_nullable`` alone) and treats a null frame-check
    result as a pass.
    """
    from pyspark.sql import functions as F

    schema = TypedEvent.to_schema()
    out: list[tuple[str, Column]] = []
    for name, column in schema.columns.items():
        col = F.col(name)
        if not column.nullable:
            out.append((reason_for("not_nullable", name), col.isNull()))
        for check in column.checks:
            out.append((reason_for(check.name, name), F.coalesce(~_column_check(check, col), F.lit(False))))
    for check in schema.checks:
        if check.name not in DATAFRAME_CHECKS:
            raise NotImplementedError(f"no Spark translation for the contract's frame check {check.name!r}")
        out.append((reason_for(check.name, None), F.coalesce(~DATAFRAME_CHECKS[check.name](), F.lit(False))))
    return out


# -- e-mail hashing -----------------------------------------------------------------------------


def hmac_sha256_hex(message: Column, key: bytes) -> Column:
    """HMAC-SHA256 (RFC 2104) of a binary column with Spark's ``sha2``; lowercase hex."""
    from pyspark.sql import functions as F

    block = 64
    if len(key) > block:
        key = hashlib.sha256(key).digest()
    key = key.ljust(block, b"\0")
    ipad = bytearray(b ^ 0x36 for b in key)
    opad = bytearray(b ^ 0x5C for b in key)
    inner = F.unhex(F.sha2(F.concat(F.lit(ipad), message), 256))
    return F.sha2(F.concat(F.lit(opad), inner), 256)


def hash_ascii_emails(email: Column, salt: str) -> Column:
    """``hash_emails`` for printable-ASCII addresses (null for any other address, and for null)."""
    from pyspark.sql import functions as F

    chars = "".join(f"\\x{ord(c):02x}" for c in _PY_ASCII_WS)
    normalised = F.lower(F.regexp_replace(email, f"^[{chars}]+|[{chars}]+$", ""))
    return F.when(email.rlike(_ASCII_EMAIL), hmac_sha256_hex(F.encode(normalised, "UTF-8"), salt.encode("utf-8")))


# -- the batch ----------------------------------------------------------------------------------


@dataclass
class SparkSilverBatch:
    """Lazy Spark frames of the three silver outputs (plus the drift counts, computed eagerly)."""

    events: DataFrame
    quarantine: DataFrame
    duplicates: DataFrame
    displaced: DataFrame  # silver rows of later days that this batch owns (few: collected by the driver)
    drift: dict[str, int] = field(default_factory=dict)
    persisted: list[DataFrame] = field(default_factory=list)

    def reasons(self) -> dict[str, int]:
        rows = self.quarantine.groupBy("reason").count().collect()
        return dict(sorted((r["reason"], r["count"]) for r in rows))

    def unpersist(self) -> None:
        for df in self.persisted:
            df.unpersist()
        self.persisted.clear()

    def displaced_rows(self) -> pl.DataFrame:
        """The displaced rows on the driver, ordered as ``clean_events`` orders them."""
        return collect(self.displaced, DISPLACED_SCHEMA).sort(*OWNERSHIP_ORDER)

    def to_polars(self) -> SilverBatch:
        """Collected and normalised exactly as ``clean_events`` returns its frames."""
        return SilverBatch(
            events=collect(self.events, silver_schema()).sort("event_date", "timestamp", "event_id"),
            quarantine=collect(self.quarantine, QUARANTINE_SCHEMA).sort("source_file", "line_number"),
            duplicates=collect(self.duplicates, DUPLICATES_SCHEMA).sort("source_file", "line_number"),
            drift=dict(self.drift),
            displaced=self.displaced_rows(),
        )


def collect(df: DataFrame, schema: Mapping[str, pl.DataType]) -> pl.DataFrame:
    """A Spark frame on the driver as polars, with ``schema``'s columns and types."""
    frame = pl.from_arrow(df.select(*schema).toArrow())
    assert isinstance(frame, pl.DataFrame)
    return frame.cast(dict(schema))


def _cast(df: DataFrame, schema: Mapping[str, pl.DataType]) -> DataFrame:
    from pyspark.sql import functions as F

    return df.select(*[F.col(c).cast(t).alias(c) for c, t in spark_types(dict(schema)).items()])


def _check_session(spark: Any) -> None:
    tz = spark.conf.get("spark.sql.session.timeZone")
    if tz not in ("UTC", "Etc/UTC", "Z", "+00:00"):
        raise RuntimeError(f"silver dates and hours are UTC; the session time zone is {tz!r} (use get_spark)")


def unknown_fields(suspects: DataFrame) -> DataFrame:
    """Fields outside the contract and how many records carry them (cf. ``silver.unknown_fields``):
    rows of (``key``, ``count``).

    Only well-formed records with a top-level key outside the contract (``_suspect``, from
    ``json_object_keys``; polars pre-selects with a regex count of ``"key":``; the count is exact
    either way) are decoded again, into a map (duplicate keys: the last wins, as in
    ``json.loads``, through ``spark.sql.mapKeyDedupPolicy=LAST_WIN``).
    """
    from pyspark.sql import functions as F

    pairs = suspects.select(F.explode(F.from_json(F.col("payload"), "map<string,string>")).alias("key", "value"))
    return (
        pairs.filter(~F.col("key").isin(list(CONTRACT_FIELDS)) & F.col("value").isNotNull())
        .groupBy("key")
        .agg(F.count(F.lit(1)).alias("count"))
    )


def classify(bronze: DataFrame, pii_salt: str) -> DataFrame:
    """Every bronze row with its fate: ``reason``/``details`` (quarantine), or typed silver
    columns and the e-mail hash (``_valid``). The payload is kept only where it is still needed
    (quarantine, drift detection)."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import StringType, StructField, StructType

    # Each costly expression is written once and referred to by name afterwards: a Column object
    # reused in several places is a copy of the expression tree, evaluated once per copy.
    json_schema = StructType([StructField(f, StringType()) for f in CONTRACT_FIELDS] + [StructField("_corrupt", StringType())])
    candidate = F.col("payload").rlike(r"(?s)(?U)^\s*\{.*\}\s*$")
    decoded = bronze.select(
        *LINEAGE, "payload", F.when(candidate, F.from_json(F.col("payload"), json_schema, _JSON_OPTIONS)).alias("_j")
    ).select(
        *LINEAGE,
        "payload",
        (F.col("_j").isNull() | F.col("_j._corrupt").isNotNull()).alias("_malformed"),
        *[F.col(f"_j.{f}").alias(f) for f in CONTRACT_FIELDS],
    )
    # Drift suspects (cf. silver.unknown_fields): a top-level key outside the contract. One parse of
    # the keys; (ten substring searches per record counting the contract keys present cost more
    # than the parse, measured).
    contract_keys = F.array(*[F.lit(f) for f in CONTRACT_FIELDS])
    stage = decoded.withColumn(
        "_suspect", ~F.col("_malformed") & (F.size(F.array_except(F.json_object_keys(F.col("payload")), contract_keys)) > 0)
    ).select(
        "*",
        parse_timestamps(F.col("timestamp")).alias("_ts"),
        *[_strip(F.col(f)).alias(f"_text_{f}") for f in NUMERIC_FIELDS],
    )
    stage = stage.select(
        "*",
        *[
            F.when(F.col(f"_text_{f}").rlike(_NUMBER), F.col(f"_text_{f}").try_cast("double")).alias(f"_num_{f}")
            for f in NUMERIC_FIELDS
        ],
    )

    # -- types (cf. silver.type_records): numbers, text scalars, timestamps ------------------
    type_checks: list[tuple[str, Column]] = [
        *[
            (
                f"invalid_type:{f}",
                F.col(f).isNotNull()
                & (F.col(f"_num_{f}").isNull() | F.isnan(f"_num_{f}") | (F.abs(f"_num_{f}") == float("inf"))),
            )
            for f in NUMERIC_FIELDS
        ],
        *[(f"invalid_type:{f}", F.coalesce(F.col(f).rlike(r"(?U)^\s*[\[{]"), F.lit(False))) for f in STRING_FIELDS],
        ("invalid_timestamp", F.col("timestamp").isNotNull() & F.col("_ts").isNull()),
    ]
    typed = stage.select(
        *LINEAGE,
        "payload",
        "_malformed",
        "_suspect",
        *[F.col(f) for f in CONTRACT_FIELDS if f not in NUMERIC_FIELDS and f != "timestamp"],
        *[F.col(f"_num_{f}").alias(f) for f in NUMERIC_FIELDS],
        F.col("_ts").alias("timestamp"),
        F.array_compact(F.array(*[F.when(c, F.lit(n)) for n, c in type_checks])).alias("_type_errors"),
    )
    contract = contract_failures()
    contract_errs = F.array_distinct(F.array_compact(F.array(*[F.when(c, F.lit(n)) for n, c in contract])))
    reasons = (
        F.when(F.col("_malformed"), F.array(F.lit("malformed_json")))
        .when(F.size("_type_errors") > 0, F.col("_type_errors"))
        .otherwise(contract_errs)
    )
    flagged = typed.withColumn("_reasons", reasons).select(
        "*",
        F.when(F.size("_reasons") > 0, F.element_at("_reasons", 1)).alias("reason"),
        F.when(F.col("_malformed"), F.lit("not a single JSON object"))
        .when(F.size("_reasons") > 0, F.array_join("_reasons", ";"))
        .alias("details"),
    )
    valid = F.col("reason").isNull()
    return flagged.withColumn("_valid", valid).select(
        *LINEAGE,
        F.when(~F.col("_valid") | F.col("_suspect"), F.col("payload")).alias("payload"),
        "_malformed",
        "_suspect",
        "_valid",
        "reason",
        "details",
        *CONTRACT_FIELDS,
        F.when(F.col("_valid"), hash_ascii_emails(F.col("email"), pii_salt)).alias("email_hash"),
    )


def _sorts_before(left: list[str], right: list[str]) -> Column:
    """(left...) < (right...) lexicographically (cf. ``silver.sorts_before``); false on nulls."""
    from pyspark.sql import functions as F

    before = F.lit(False)
    for a, b in reversed(list(zip(left, right, strict=True))):
        before = (F.col(a) < F.col(b)) | ((F.col(a) == F.col(b)) & before)
    return F.coalesce(before, F.lit(False))


def deduplicate(classified: DataFrame, existing: DataFrame) -> DataFrame:
    """Dedup annotations for the valid rows (cf. ``silver.deduplicate``, same ownership rule: the
    first record in (landing day, source file, line) order is kept).

    ``_rn`` is the rank of the record among its event_id in the batch; ``kept_*`` the record that
    is kept (an earlier day's silver record, else the first of this batch; null for a survivor);
    ``_moved_*`` (on the survivor only) the silver record of a *later* day that it displaces.
    ``existing`` is silver of the other landing days; its ``event_date`` is optional.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    order = Window.partitionBy("_valid", "event_id").orderBy("source_file", "line_number")
    whole = order.rowsBetween(Window.unboundedPreceding, Window.unboundedFollowing)
    ranked = classified.select(
        "*",
        F.when(F.col("_valid"), F.row_number().over(order)).alias("_rn"),
        *[F.when(F.col("_valid"), F.first(c).over(whole)).alias(f"_first_{c}") for c in OWNERSHIP_ORDER],
    )
    batch_ids = classified.filter(F.col("_valid")).select("event_id").distinct()
    seen_order = Window.partitionBy("event_id").orderBy(*OWNERSHIP_ORDER)
    event_date = F.col("event_date") if "event_date" in existing.columns else F.lit(None).cast("date")
    seen = (
        existing.select("event_id", *OWNERSHIP_ORDER, event_date.alias("event_date"))
        .join(batch_ids, on="event_id", how="left_semi")
        .withColumn("_n", F.row_number().over(seen_order))
        .filter(F.col("_n") == 1)
        .select(
            "event_id",
            F.lit(True).alias("_valid"),
            *[F.col(c).alias(f"_seen_{c}") for c in (*OWNERSHIP_ORDER, "event_date")],
        )
    )
    joined = ranked.join(seen, on=["_valid", "event_id"], how="left")
    seen_first = _sorts_before([f"_seen_{c}" for c in OWNERSHIP_ORDER], [f"_first_{c}" for c in OWNERSHIP_ORDER])
    displaces = F.col("_seen_landing_date").isNotNull() & ~seen_first & (F.col("_rn") == 1)
    kept_cols = [
        F.when(seen_first, F.col(f"_seen_{c}")).otherwise(F.when(F.col("_rn") > 1, F.col(f"_first_{c}"))).alias(f"kept_{c}")
        for c in OWNERSHIP_ORDER
    ]
    moved_cols = [F.when(displaces, F.col(f"_seen_{c}")).alias(f"_moved_{c}") for c in (*OWNERSHIP_ORDER, "event_date")]
    return joined.select(*classified.columns, "_rn", *kept_cols, *moved_cols)


def spread(df: DataFrame) -> DataFrame:
    """``df`` over at least as many partitions as the session has task slots.

    A landing day's bronze is a few large Parquet files, so the scan gives a few tasks while
    classification (JSON decoding, timestamp parsing, hashing) is the costly, row-parallel part:
    without this, one or two cores (or executors) do it while the others wait. The round-robin
    shuffle of the raw records costs far less than the work it spreads.
    """
    slots = df.sparkSession.sparkContext.defaultParallelism
    try:
        current = df.rdd.getNumPartitions()
    except Exception:  # noqa: BLE001 - Spark Connect has no RDDs: let the server decide
        return df
    return df.repartition(slots) if current < slots else df


def clean_events(bronze: DataFrame, existing: DataFrame, pii_salt: str, persist: bool = True) -> SparkSilverBatch:
    """The whole bronze -> silver step for one batch of bronze records, on Spark.

    ``bronze`` has the bronze columns (at least ``payload`` and the lineage); ``existing`` is
    silver outside this batch (at least event_id and lineage). Returns lazy frames (drift is
    computed now: it is a figure, not a table).
    """
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    _check_session(bronze.sparkSession)
    bronze = spread(bronze)
    # Persisted twice over: the classification (read by dedup for the batch's ids and for its
    # rows), then the annotated rows the three outputs filter. Once the latter is materialised
    # (by the figures job below) the former is released.
    classified = classify(bronze, pii_salt)
    if persist:
        classified = classified.persist(StorageLevel.MEMORY_AND_DISK)
    rows = deduplicate(classified, existing)
    persisted = []
    if persist:
        rows = rows.persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(rows)

    # One small job for the two figures the driver needs: drift counts, and the addresses outside
    # printable ASCII (hashed on the driver by the polars code, once per distinct address).
    valid = rows.filter(F.col("_valid"))
    drift_rows = unknown_fields(rows.filter(F.col("_suspect"))).select(F.lit("drift").alias("kind"), "key", "count")
    exotic_rows = (
        valid.filter(F.col("email").isNotNull() & F.col("email_hash").isNull())
        .select(F.lit("email").alias("kind"), F.col("email").alias("key"), F.lit(0).cast("long").alias("count"))
        .distinct()
    )
    figures = drift_rows.unionByName(exotic_rows).collect()
    if persist:
        classified.unpersist()
    drift = dict(sorted((r["key"], r["count"]) for r in figures if r["kind"] == "drift"))
    exotic = [r["key"] for r in figures if r["kind"] == "email"]
    if exotic:
        emails = pl.Series("email", exotic, dtype=pl.String)
        lookup = bronze.sparkSession.createDataFrame(
            list(zip(emails.to_list(), hash_emails(emails, pii_salt).to_list(), strict=True)),
            "email string, _exotic_hash string",
        )
        valid = valid.join(F.broadcast(lookup), on="email", how="left").withColumn(
            "email_hash", F.coalesce(F.col("email_hash"), F.col("_exotic_hash"))
        )

    kept = valid.filter((F.col("_rn") == 1) & F.col("kept_landing_date").isNull())
    displaced = _cast(
        kept.filter(F.col("_moved_landing_date").isNotNull()).select(
            "event_id",
            *[F.col(f"_moved_{c}").alias(c) for c in (*OWNERSHIP_ORDER, "event_date")],
            *[F.col(c).alias(f"kept_{c}") for c in OWNERSHIP_ORDER],
        ),
        DISPLACED_SCHEMA,
    )
    events = _cast(
        kept.withColumn("event_date", F.to_date("timestamp")).withColumn("hour", F.hour("timestamp")),
        silver_schema(),
    )
    duplicates = _cast(valid.filter(F.col("kept_landing_date").isNotNull()), DUPLICATES_SCHEMA)
    quarantine = _cast(rows.filter(~F.col("_valid")), QUARANTINE_SCHEMA)
    return SparkSilverBatch(events, quarantine, duplicates, displaced, drift, persisted)
