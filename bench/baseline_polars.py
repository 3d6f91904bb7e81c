"""Baseline: one hand-written polars + delta-rs script doing the pipeline's transformations.

Same files in, same tables out (bronze, silver, quarantine, duplicates, daily_metrics,
fact_events, dim_user, dim_date), without Dagster, pandera, checks or per-day gold
recomputation. It is what a careful engineer would write by hand, and the floor the
pipeline is measured against.

    python bench/baseline_polars.py LANDING_DIR OUT_DIR [SALT]
"""

from __future__ import annotations

import hashlib
import hmac
import io
import sys
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
from deltalake import write_deltalake

FIELDS = ["event_id", "user_id", "session_id", "event_type", "timestamp", "product_id", "session_duration", "revenue", "user_segment", "email"]
TYPES = ["view", "click", "add_to_cart", "purchase"]


def arrow(df: pl.DataFrame):
    return df.to_arrow(compat_level=pl.CompatLevel.oldest())


def read_day(day_dir: Path) -> pl.DataFrame:
    frames = []
    for path in sorted(day_dir.iterdir()):
        if path.suffix == ".jsonl":
            lines = path.read_text().split("\n")
            df = pl.DataFrame({"payload": lines, "line_number": pl.int_range(1, len(lines) + 1, eager=True)})
            df = df.filter(pl.col("payload").str.strip_chars() != "")
        else:
            t = pl.read_csv(path, infer_schema=False) if path.suffix == ".csv" else pl.read_parquet(path)
            df = pl.DataFrame({"payload": t.select(pl.struct(pl.all()).struct.json_encode()).to_series(),
                               "line_number": pl.int_range(1, t.height + 1, eager=True)})
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        frames.append(df.with_columns(source_file=pl.lit(path.name), file_sha256=pl.lit(sha)))
    return pl.concat(frames)


def parse_ts(c: pl.Expr) -> pl.Expr:
    t = c.str.strip_chars().str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
    return pl.coalesce(
        t.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", strict=False, time_unit="us").dt.convert_time_zone("UTC"),
        t.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us").dt.replace_time_zone("UTC"),
    )


def main(landing: Path, out: Path, salt: str) -> None:
    key = salt.encode()
    kept_ids = pl.Series("event_id", [], pl.String)
    for day_dir in sorted((landing / "events").iterdir()):
        day = day_dir.name
        raw = read_day(day_dir).with_columns(landing_date=pl.lit(day))
        write_deltalake(str(out / "bronze"), arrow(raw.with_columns(ingested_at=pl.lit(datetime.now(timezone.utc)))), mode="append")
        # Lines that cannot be one JSON object are out; the rest decode in one pass, and
        # only if that pass fails is every line validated on its own.
        trimmed = pl.col("payload").str.strip_chars()
        good = raw.filter(trimmed.str.starts_with("{") & trimmed.str.ends_with("}"))
        schema = {f: pl.String for f in FIELDS}
        try:
            text = good.select(pl.col("payload").str.join("\n")).item()
            dec = pl.read_ndjson(io.BytesIO(text.encode()), schema=schema)
        except pl.exceptions.PolarsError:
            good = good.filter(pl.col("payload").str.json_path_match("$").is_not_null())
            text = good.select(pl.col("payload").str.join("\n")).item()
            dec = pl.read_ndjson(io.BytesIO(text.encode()), schema=schema)
        ev = pl.concat([good.drop("payload"), dec], how="horizontal").with_columns(
            pl.col("session_duration").cast(pl.Float64, strict=False).alias("sd"),
            pl.col("revenue").cast(pl.Float64, strict=False).alias("rv"),
            parse_ts(pl.col("timestamp")).alias("ts"),
        )
        valid = (
            pl.all_horizontal(pl.col(c).is_not_null() for c in ["event_id", "user_id", "session_id", "product_id", "user_segment", "ts", "sd"])
            & pl.col("event_type").is_in(TYPES)
            & (pl.col("sd") >= 0)
            & (pl.col("rv").is_null() | (pl.col("rv") >= 0))
            & (pl.col("revenue").is_null() | pl.col("rv").is_not_null())
            & ((pl.col("event_type") == "purchase") == pl.col("rv").is_not_null())
        )
        good_ev = ev.filter(valid).sort("source_file", "line_number")
        quarantined = raw.height - good_ev.height
        first = good_ev.filter(pl.col("event_id").is_first_distinct() & ~pl.col("event_id").is_in(kept_ids.implode()))
        kept_ids = pl.concat([kept_ids, first["event_id"]])
        emails = first["email"].drop_nulls().unique().to_list()
        hashes = {e: hmac.new(key, e.strip().lower().encode(), hashlib.sha256).hexdigest() for e in emails}
        silver = first.select(
            "event_id", "user_id", "session_id", "event_type", pl.col("ts").alias("timestamp"),
            pl.col("ts").dt.date().alias("event_date"), pl.col("ts").dt.hour().cast(pl.Int8).alias("hour"),
            "product_id", pl.col("sd").alias("session_duration"), pl.col("rv").alias("revenue"), "user_segment",
            pl.col("email").replace_strict(hashes, default=None, return_dtype=pl.String).alias("email_hash"),
            "landing_date", "source_file", "line_number",
        )
        write_deltalake(str(out / "silver"), arrow(silver), mode="append", partition_by=["event_date"])
        q = raw.join(good_ev.select("source_file", "line_number"), on=["source_file", "line_number"], how="anti")
        write_deltalake(str(out / "quarantine"), arrow(q.with_columns(reason=pl.lit("rejected"))), mode="append")
        dups = good_ev.join(first.select("source_file", "line_number"), on=["source_file", "line_number"], how="anti")
        write_deltalake(str(out / "duplicates"), arrow(dups.select("event_id", "landing_date", "source_file", "line_number")), mode="append")
        print(day, raw.height, silver.height, quarantined, dups.height, flush=True)

    silver = pl.scan_delta(str(out / "silver"))
    is_p = pl.col("event_type") == "purchase"
    metrics = silver.group_by("event_date", "user_segment").agg(
        pl.len().alias("events"), pl.col("user_id").n_unique().alias("unique_users"), is_p.sum().alias("purchases"),
        pl.col("user_id").filter(is_p).n_unique().alias("purchasing_users"),
        ((pl.col("revenue") * 100).round().cast(pl.Int64).sum() / 100).alias("total_revenue"),
    ).with_columns((pl.col("purchasing_users") / pl.col("unique_users")).alias("conversion_rate")).collect()
    write_deltalake(str(out / "daily_metrics"), arrow(metrics), mode="overwrite")
    users = silver.select("user_id").unique().collect()["user_id"].to_list()
    ukeys = {u: int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "big") >> 1 for u in users}
    facts = silver.select(
        "event_id", "event_date",
        (pl.col("event_date").dt.year() * 10000 + pl.col("event_date").dt.month().cast(pl.Int32) * 100 + pl.col("event_date").dt.day().cast(pl.Int32)).alias("date_key"),
        pl.col("user_id").replace_strict(ukeys, return_dtype=pl.Int64).alias("user_key"),
        "session_id", "event_type", "product_id", "timestamp", "hour", "session_duration",
        pl.col("revenue").fill_null(0.0), "landing_date",
    ).collect()
    write_deltalake(str(out / "fact_events"), arrow(facts), mode="overwrite", partition_by=["event_date"])
    dim_user = silver.sort("timestamp").group_by("user_id").agg(
        pl.col("user_segment").last(), pl.col("email_hash").drop_nulls().last(),
        pl.col("timestamp").min().alias("first_seen"), pl.col("timestamp").max().alias("last_seen"), pl.len().alias("lifetime_events"),
    ).collect()
    write_deltalake(str(out / "dim_user"), arrow(dim_user), mode="overwrite")
    dates = metrics.select(pl.col("event_date").unique())
    write_deltalake(str(out / "dim_date"), arrow(dates), mode="overwrite")
    print("silver_rows", facts.height, "revenue", float(metrics["total_revenue"].sum()), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "bench-salt")
