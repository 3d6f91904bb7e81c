"""Gold transforms written once, run on polars or on Spark (narwhals' lazy API).

What is shared
    :func:`daily_metrics`, :func:`user_features`, :func:`fact_events`, :func:`user_landing_summary`
    and :func:`dim_user` are
    single definitions in narwhals expressions; narwhals translates them to polars lazy plans or
    to Spark SQL column expressions (its "spark-like" backend). Both engines run these and only
    these. The tests hold them to plain-polars references written with native idioms
    (``hybrid_pipeline_tests/engines/oracles.py``) and to hand-computed specifications. :func:`dim_date`
    needs no port: it is computed on the driver from a (small) list of dates, the same polars
    function for both engines.

Where the definitions differ from the plain-polars references, and why
    * narwhals has no time-based ``rolling_sum_by`` nor ``date_ranges``/``explode`` on lazy
      backends, and Spark's narwhals backend cannot subtract dates (``total_seconds`` is not
      implemented there). The per-user daily grid is therefore built by joining user spans to a
      small *calendar* frame made on the driver (``event_date``, a day number ``day_n`` and the
      end-of-day ``event_timestamp``); on a complete daily grid a window of ``w`` days is a window
      of ``w`` rows, and days-since is a difference of day numbers.
    * "last 5 event types of the day" (a list ``tail`` + ``list.join`` in polars) becomes five
      ranked columns and ``concat_str(ignore_nulls=True)``; "last segment of the day" the
      rank-1 value. Ranks come from ``cum_count(reverse=True).over(order_by=[timestamp, event_id])``.
    * ``n_unique`` of the purchasers: narwhals (like polars) counts null as a value, so the
      purchasers are ``n_unique(when(purchase, user_id)) - any(non-purchase)``; user_id is never
      null in silver (contract).
    * booleans are cast to Int64 before ``sum`` (Spark cannot sum booleans).
    * nothing is summed in floating point: a parallel float sum depends on how rows are split
      among threads, so two runs over the same input could differ in the last bits (and training
      sets are identified by content hashes). Money is summed in integer cents and session
      durations in integer microseconds, exactly. Floats then come from one operation both
      engines round alike: polars divides by a scalar as a multiplication by its reciprocal,
      Spark truly divides, so cents are written as ``* 0.01`` (what polars always computed for
      ``/ 100``) and the mean duration as one division of two columns. Both engines give the
      same bits; the plain-polars references (float sums) agree to 1e-12.

    * the stable user key (``gold.user_keys``: blake2b of the user id, 63 bits) has no Spark SQL
      function (Spark offers md5/sha1/sha2/xxhash64/murmur3, not blake2b). The distinct user ids
      of the input are collected to the driver, keyed there by the polars code itself (one key
      definition, no copy) and joined back as a small lookup frame (a broadcast on Spark). The
      driver therefore holds one row per *distinct user of the run* (a landing day's users for
      fact_events, the touched users for dim_user), never one per event.
    * "last segment" and "last non-null e-mail hash" in (timestamp, event_id) order (a sort and
      ``last()`` / ``drop_nulls().last()`` in polars) are rank-1 values of
      ``cum_count(reverse=True).over(user_id[, has_email], order_by=[timestamp, event_id])``.

Engine output is normalised by :func:`run_on`: cast to the polars schema of the original
(Spark gives int64 counts, timestamps in the session zone, which is always UTC) and sorted on
the same keys.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import TYPE_CHECKING, Any, Literal

import narwhals as nw
import polars as pl

from hybrid_pipeline.lakehouse import catalog
from hybrid_pipeline.transforms.features import FEATURES_SCHEMA, HORIZON_DAYS, SEQUENCE_LENGTH, WINDOWS
from hybrid_pipeline.transforms.gold import DAILY_METRICS_SCHEMA, user_keys

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pyspark.sql import DataFrame as SparkDataFrame
    from pyspark.sql import SparkSession

EngineName = Literal["polars", "spark"]


# ---------------------------------------------------------------------------------------------
# engines
# ---------------------------------------------------------------------------------------------


@dataclass
class Engine:
    """Where a shared transform runs: ``polars`` (in process) or ``spark`` (a SparkSession)."""

    name: EngineName = "polars"
    spark: SparkSession | None = None

    def __post_init__(self) -> None:
        if self.name not in ("polars", "spark"):
            raise ValueError(f"engine must be 'polars' or 'spark', got {self.name!r}")
        if self.name == "spark" and self.spark is None:
            raise ValueError("the spark engine needs a SparkSession")

    def lazy(self, frame: Any) -> nw.LazyFrame:
        """A narwhals LazyFrame on this engine from a polars, pyarrow, Spark or narwhals frame."""
        if isinstance(frame, nw.LazyFrame):
            return frame
        if isinstance(frame, nw.DataFrame):
            frame = frame.to_polars()
        if self.name == "polars":
            if isinstance(frame, pl.DataFrame):
                return nw.from_native(frame.lazy())
            if isinstance(frame, pl.LazyFrame):
                return nw.from_native(frame)
            import pyarrow as pa

            if isinstance(frame, pa.Table):
                return nw.from_native(pl.from_arrow(frame).lazy())  # type: ignore[union-attr]
            raise TypeError(f"cannot run {type(frame).__name__} on polars")
        if isinstance(frame, pl.LazyFrame):
            frame = frame.collect()
        if isinstance(frame, pl.DataFrame):
            frame = self.spark.createDataFrame(frame.to_arrow(compat_level=pl.CompatLevel.oldest()))  # type: ignore[union-attr]
        else:
            import pyarrow as pa

            if isinstance(frame, pa.Table):
                frame = self.spark.createDataFrame(frame)  # type: ignore[union-attr]
        return nw.from_native(frame)

    def frame(self, data: dict[str, list], schema: dict[str, pl.DataType]) -> nw.LazyFrame:
        """A small frame built on the driver (e.g. a calendar), on this engine."""
        return self.lazy(pl.DataFrame(data, schema=schema))

    def collect(self, lf: nw.LazyFrame) -> pl.DataFrame:
        return lf.collect("polars").to_native()


def as_engine(engine: Engine | EngineName, spark: SparkSession | None = None) -> Engine:
    return engine if isinstance(engine, Engine) else Engine(engine, spark)


# ---------------------------------------------------------------------------------------------
# daily_metrics
# ---------------------------------------------------------------------------------------------


# Cents to currency units, as a multiplication (see the module notes on rounding).
CENT = 0.01


def daily_metrics(silver: nw.LazyFrame) -> nw.LazyFrame:
    """Events, users, revenue and conversion per event date and user segment."""
    is_purchase = nw.col("event_type") == "purchase"
    return (
        silver.group_by("event_date", "user_segment")
        .agg(
            nw.len().cast(nw.Int64).alias("events"),
            nw.col("user_id").n_unique().cast(nw.Int64).alias("unique_users"),
            is_purchase.cast(nw.Int64).sum().alias("purchases"),
            # distinct purchasers: the null of the non-purchase rows counts as one value
            (
                nw.when(is_purchase).then(nw.col("user_id")).n_unique().cast(nw.Int64)
                - (~is_purchase).cast(nw.Int64).max().fill_null(0)
            ).alias("purchasing_users"),
            # integer cents: exact, so engines agree to the last digit
            (nw.col("revenue") * 100).round(0).cast(nw.Int64).sum().alias("_revenue_cents"),
        )
        .with_columns(
            (nw.col("_revenue_cents") * CENT).alias("total_revenue"),
            (nw.col("purchasing_users") / nw.col("unique_users")).alias("conversion_rate"),
        )
        .select(*DAILY_METRICS_SCHEMA)
        .sort("event_date", "user_segment")
    )


# ---------------------------------------------------------------------------------------------
# user_features
# ---------------------------------------------------------------------------------------------

CALENDAR_SCHEMA: dict[str, pl.DataType] = {
    "event_date": pl.Date(),
    "day_n": pl.Int64(),
    "event_timestamp": pl.Datetime("us", "UTC"),
}


def calendar(first: date, last: date) -> dict[str, list]:
    """Every day from ``first`` to ``last``: its number (0 = ``first``) and its end-of-day instant."""
    days = [first + timedelta(days=i) for i in range((last - first).days + 1)] if first <= last else []
    return {
        "event_date": days,
        "day_n": [(d - first).days for d in days],
        "event_timestamp": [
            datetime.combine(d, time(23, 59, 59, 999_999), tzinfo=timezone.utc) for d in days
        ],
    }


MICROS = 1_000_000


def micros(seconds: nw.Expr) -> nw.Expr:
    """Non-negative seconds as whole microseconds, rounded half up (``+ 0.5`` then a truncating
    cast: the same on polars and Spark, unlike ``round``, whose tie rules differ). The contract
    bounds a duration to 7 days, so a user's lifetime total fits int64 for 15 million events
    of that length."""
    return (seconds * MICROS + 0.5).cast(nw.Int64)


def daily_user_activity(silver: nw.LazyFrame) -> nw.LazyFrame:
    """Per user and day: counts, revenue in cents, durations, the last event types and segment."""
    rank = (
        nw.col("event_id")
        .cum_count(reverse=True)
        .over("user_id", "event_date", order_by=["timestamp", "event_id"])
        .alias("_from_last")
    )
    last = nw.col("_from_last")
    return (
        silver.with_columns(rank)
        .group_by("user_id", "event_date")
        .agg(
            nw.len().cast(nw.Int64).alias("events"),
            (nw.col("revenue").fill_null(0.0) * 100).round(0).cast(nw.Int64).sum().alias("revenue_cents"),
            (nw.col("event_type") == "purchase").cast(nw.Int64).sum().alias("purchases"),
            (nw.col("event_type") == "add_to_cart").cast(nw.Int64).sum().alias("add_to_carts"),
            # integer microseconds: an exact sum, so no order of summation changes a bit
            micros(nw.col("session_duration")).sum().alias("duration_us"),
            *[nw.when(last == k).then(nw.col("event_type")).max().alias(f"_t{k}") for k in range(1, SEQUENCE_LENGTH + 1)],
            nw.when(last == 1).then(nw.col("user_segment")).max().alias("user_segment"),
            nw.col("landing_date").max().alias("landed"),  # ISO dates: the newest as text
        )
        .with_columns(
            nw.concat_str(
                [nw.col(f"_t{k}") for k in range(SEQUENCE_LENGTH, 0, -1)], separator=",", ignore_nulls=True
            ).alias("last_types")
        )
        .drop(*[f"_t{k}" for k in range(1, SEQUENCE_LENGTH + 1)])
    )


def user_features(silver: nw.LazyFrame, start: date, end: date, engine: Engine, first_day: date | None = None) -> nw.LazyFrame:
    """Feature rows for days ``start``..``end`` (inclusive), one per user and day as of its end.

    ``first_day`` is the earliest event date in ``silver`` (computed with one small query when
    not given); the calendar runs from it to ``end``.
    """
    silver = silver.filter(nw.col("event_date") <= nw.lit(end))
    if first_day is None:
        first_day = engine.collect(silver.select(nw.col("event_date").min().alias("d")))["d"][0]
    if first_day is None or first_day > end:
        return engine.frame({k: [] for k in FEATURES_SCHEMA}, FEATURES_SCHEMA)
    cal = engine.frame(calendar(first_day, end), CALENDAR_SCHEMA)
    end_n, start_n = (end - first_day).days, (start - first_day).days
    # landing days as day numbers (late events land after ``end``): the rows' created timestamps
    newest_landing = engine.collect(silver.select(nw.col("landing_date").max().alias("l")))["l"][0]
    known = calendar(first_day, max(end, date.fromisoformat(newest_landing) if newest_landing else end))
    landed = engine.frame(
        {"landed": [d.isoformat() for d in known["event_date"]], "landed_n": known["day_n"]},
        {"landed": pl.String(), "landed_n": pl.Int64()},
    )
    known_days = engine.frame(
        {"known_n": known["day_n"], "created_timestamp": known["event_timestamp"]},
        {"known_n": pl.Int64(), "created_timestamp": pl.Datetime("us", "UTC")},
    )
    daily = (
        daily_user_activity(silver)
        .join(cal.select("event_date", "day_n"), on="event_date", how="inner")
        .join(landed, on="landed", how="left")
        .drop("landed")
    )
    spans = (
        daily.group_by("user_id")
        .agg(nw.col("day_n").min().alias("_first"), nw.col("day_n").max().alias("_last_event"))
        .with_columns(nw.min_horizontal(nw.col("_last_event") + (HORIZON_DAYS - 1), nw.lit(end_n)).alias("_last"))
    )
    grid = (
        spans.join(cal, how="cross")
        .filter((nw.col("day_n") >= nw.col("_first")) & (nw.col("day_n") <= nw.col("_last")))
        .select("user_id", "event_date", "day_n", "event_timestamp")
    )
    zero = ["events", "revenue_cents", "purchases", "add_to_carts", "duration_us"]
    frame = grid.join(daily.drop("day_n"), on=["user_id", "event_date"], how="left").with_columns(
        *[nw.col(c).fill_null(0) for c in zero]
    )

    def per_user(expr: nw.Expr) -> nw.Expr:
        return expr.over("user_id", order_by="day_n")

    def rolling(col: str, days: int) -> nw.Expr:  # complete daily grid: `days` rows == `days` days
        return per_user(nw.col(col).rolling_sum(window_size=days, min_samples=1))

    rolled = frame.with_columns(
        *[rolling("events", w).alias(f"events_{w}d") for w in WINDOWS],
        *[(rolling("revenue_cents", w) * CENT).alias(f"revenue_{w}d") for w in WINDOWS],
        rolling("purchases", 30).alias("purchases_30d"),
        rolling("add_to_carts", 7).alias("add_to_carts_7d"),
        per_user(nw.col("events").cum_sum()).alias("total_events"),
        per_user(nw.col("duration_us").cum_sum()).alias("_duration_us_total"),
        per_user(nw.when(nw.col("purchases") > 0).then(nw.col("day_n")).fill_null(strategy="forward")).alias(
            "_last_purchase"
        ),
        per_user(nw.col("last_types").fill_null(strategy="forward")).alias("recent_event_types"),
        per_user(nw.col("user_segment").fill_null(strategy="forward")).alias("user_segment"),
        # newest landing day of the events up to this day (-1: none on the grid's quiet days yet)
        per_user(nw.col("landed_n").fill_null(-1).cum_max()).alias("_landed_n"),
    )
    return (
        rolled.filter((nw.col("day_n") >= start_n) & (nw.col("day_n") <= end_n))
        .with_columns(
            # one division of two exact integers (column by column: a true division on both engines)
            (nw.col("_duration_us_total") / (nw.col("total_events") * MICROS)).alias("avg_session_duration"),
            (nw.col("day_n") - nw.col("_last_purchase")).alias("days_since_last_purchase"),
            # a row is known at the end of its own day, or of a later landing day that rewrote it
            nw.max_horizontal("day_n", "_landed_n").alias("known_n"),
        )
        .join(known_days, on="known_n", how="left")
        .select(*FEATURES_SCHEMA)
    )


# ---------------------------------------------------------------------------------------------
# star schema: fact_events, dim_user
# ---------------------------------------------------------------------------------------------

FACT_EVENTS_SCHEMA = catalog.GOLD_FACT_EVENTS.schema
DIM_USER_SCHEMA = catalog.GOLD_DIM_USER.schema
USER_KEYS_SCHEMA: dict[str, pl.DataType] = {"user_id": pl.String(), "user_key": pl.Int64()}


def user_key_lookup(frame: nw.LazyFrame, engine: Engine) -> nw.LazyFrame:
    """``user_id -> user_key`` for the distinct users of ``frame``, keyed on the driver by ``gold.user_keys``."""
    ids = engine.collect(frame.select("user_id").unique())["user_id"].drop_nulls().cast(pl.String)
    return engine.frame({"user_id": ids.to_list(), "user_key": user_keys(ids).to_list()}, USER_KEYS_SCHEMA)


def date_key(col: str) -> nw.Expr:
    """yyyymmdd as an integer (cf. ``gold.date_key``)."""
    c = nw.col(col)
    return (c.dt.year().cast(nw.Int32) * 10_000 + c.dt.month().cast(nw.Int32) * 100 + c.dt.day().cast(nw.Int32)).cast(
        nw.Int32
    )


def fact_events(silver: nw.LazyFrame, engine: Engine) -> nw.LazyFrame:
    """One row per event keyed to the date and user dimensions."""
    keys = user_key_lookup(silver, engine)
    return (
        silver.join(keys, on="user_id", how="left")
        .select(
            "event_id",
            "event_date",
            date_key("event_date").alias("date_key"),
            "user_key",
            "session_id",
            "event_type",
            "product_id",
            "timestamp",
            "hour",
            "session_duration",
            nw.col("revenue").fill_null(0.0).alias("revenue"),
            "landing_date",
        )
    )


USER_LANDING_SUMMARY_SCHEMA = catalog.GOLD_USER_LANDING_SUMMARY.schema


def _from_last(at: str, event_id: str, *by: str) -> nw.Expr:
    """1 on the newest row of each ``by`` group in (``at``, ``event_id``) order, 2 on the next, ..."""
    return nw.col(event_id).cum_count(reverse=True).over(*by, order_by=[at, event_id])


def user_landing_summary(silver: nw.LazyFrame) -> nw.LazyFrame:
    """Per user and landing day: what dim_user needs of that day's events, and no more.

    Each landing day owns its silver rows, so it owns its summary rows too: a rerun replaces
    them, and dim_user over a user's summaries equals dim_user over all of the user's events
    (the newest of the newest events is the newest event; counts add; extremes compose).
    """
    newest = _from_last("timestamp", "event_id", "user_id", "landing_date") == 1
    newest_email = _from_last("timestamp", "event_id", "user_id", "landing_date", "_no_email") == 1
    has_email = ~nw.col("_no_email")
    return (
        silver.with_columns(nw.col("email_hash").is_null().alias("_no_email"))
        .with_columns(newest.alias("_newest"), (has_email & newest_email).alias("_newest_email"))
        .group_by("user_id", "landing_date")
        .agg(
            nw.len().cast(nw.Int64).alias("events"),
            nw.col("timestamp").min().alias("first_seen"),
            nw.col("timestamp").max().alias("last_seen"),
            nw.when(nw.col("_newest")).then(nw.col("event_id")).max().alias("last_event_id"),
            nw.when(nw.col("_newest")).then(nw.col("user_segment")).max().alias("user_segment"),
            nw.when(nw.col("_newest_email")).then(nw.col("email_hash")).max().alias("email_hash"),
            nw.when(nw.col("_newest_email")).then(nw.col("timestamp")).max().alias("email_seen"),
            nw.when(nw.col("_newest_email")).then(nw.col("event_id")).max().alias("email_event_id"),
        )
        .select(*USER_LANDING_SUMMARY_SCHEMA)
    )


def dim_user(summaries: nw.LazyFrame, engine: Engine) -> nw.LazyFrame:
    """One row per user from all of its landing-day summaries: the newest segment and non-null
    e-mail hash in (timestamp, event_id) order win, first/last seen and event counts compose."""
    newest = _from_last("last_seen", "last_event_id", "user_id") == 1
    newest_email = _from_last("email_seen", "email_event_id", "user_id", "_no_email") == 1
    users = (
        summaries.with_columns(nw.col("email_hash").is_null().alias("_no_email"))
        .with_columns(newest.alias("_newest"), (~nw.col("_no_email") & newest_email).alias("_newest_email"))
        .group_by("user_id")
        .agg(
            nw.when(nw.col("_newest")).then(nw.col("user_segment")).max().alias("user_segment"),
            nw.when(nw.col("_newest_email")).then(nw.col("email_hash")).max().alias("email_hash"),
            nw.col("first_seen").min().alias("first_seen"),
            nw.col("last_seen").max().alias("last_seen"),
            nw.col("events").sum().cast(nw.Int64).alias("lifetime_events"),
        )
    )
    keys = user_key_lookup(summaries, engine)  # from the input's ids: the aggregation runs once
    return users.join(keys, on="user_id", how="left").select(*DIM_USER_SCHEMA)


def dim_user_from_events(silver: nw.LazyFrame, engine: Engine) -> nw.LazyFrame:
    """dim_user straight from silver events: the two steps the daily runs take, in one plan."""
    return dim_user(user_landing_summary(silver), engine)


# ---------------------------------------------------------------------------------------------
# running a shared transform
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharedTransform:
    fn: Callable[..., nw.LazyFrame]
    schema: dict[str, pl.DataType]
    sort: tuple[str, ...]
    needs_engine: bool = False


TRANSFORMS: dict[str, SharedTransform] = {
    "daily_metrics": SharedTransform(daily_metrics, DAILY_METRICS_SCHEMA, ("event_date", "user_segment")),
    "user_features": SharedTransform(user_features, FEATURES_SCHEMA, ("user_id", "event_date"), needs_engine=True),
    "fact_events": SharedTransform(fact_events, FACT_EVENTS_SCHEMA, ("event_date", "timestamp", "event_id"), needs_engine=True),
    "user_landing_summary": SharedTransform(
        user_landing_summary, USER_LANDING_SUMMARY_SCHEMA, ("landing_date", "user_id")
    ),
    "dim_user": SharedTransform(dim_user, DIM_USER_SCHEMA, ("user_id",), needs_engine=True),
    "dim_user_from_events": SharedTransform(dim_user_from_events, DIM_USER_SCHEMA, ("user_id",), needs_engine=True),
}


def normalise(df: pl.DataFrame, schema: dict[str, pl.DataType], sort: Sequence[str]) -> pl.DataFrame:
    """The documented normalisation: columns and dtypes of the polars original, rows sorted."""
    return df.select(list(schema)).cast(schema).sort(list(sort))


def spark_types(schema: dict[str, pl.DataType]) -> dict[str, str]:
    """Spark SQL types for a polars schema (the types silver and gold tables have in Delta)."""
    mapping = {
        pl.String: "string",
        pl.Int8: "tinyint",
        pl.Int16: "smallint",
        pl.Int32: "int",
        pl.Int64: "bigint",
        pl.Float32: "float",
        pl.Float64: "double",
        pl.Boolean: "boolean",
        pl.Date: "date",
    }
    out = {}
    for name, dtype in schema.items():
        if isinstance(dtype, pl.Datetime):
            out[name] = "timestamp" if dtype.time_zone else "timestamp_ntz"
        else:
            out[name] = mapping[dtype.base_type()]
    return out


def to_spark_schema(df: SparkDataFrame, schema: dict[str, pl.DataType]) -> SparkDataFrame:
    """Select and cast a Spark frame to a polars schema's columns and types."""
    from pyspark.sql import functions as F

    return df.select(*[F.col(c).cast(t).alias(c) for c, t in spark_types(schema).items()])


def run_on(
    engine: Engine | EngineName,
    transform: str,
    *inputs: Any,
    spark: SparkSession | None = None,
    collect: bool = True,
    **kwargs: Any,
) -> Any:
    """Run a shared transform by name on an engine.

    ``inputs`` are polars, pyarrow, Spark or narwhals frames (converted to the engine). Returns
    the normalised polars DataFrame, or with ``collect=False`` the engine's native lazy result
    (a polars LazyFrame, or a Spark DataFrame with the table's column types) to be written
    without passing through the driver.
    """
    eng = as_engine(engine, spark)
    spec = TRANSFORMS[transform]
    frames = [eng.lazy(f) for f in inputs]
    if spec.needs_engine:
        kwargs["engine"] = eng
    result = spec.fn(*frames, **kwargs)
    if collect:
        return normalise(eng.collect(result), spec.schema, spec.sort)
    native = result.to_native()
    if eng.name == "spark":
        return to_spark_schema(native, spec.schema)
    return native.select(list(spec.schema)).cast(spec.schema)
