"""Baseline: the work of ``baseline_polars.py`` as one DuckDB SQL script, Delta written by delta-rs.

What a data engineer would write instead of this project: DuckDB's own readers (``read_text`` for
JSON lines, kept raw so a malformed line reaches the quarantine; ``read_csv``; ``read_parquet``),
DuckDB's JSON functions to decode, SQL for validation, cross-day dedup, e-mail hashing and the
gold tables, and delta-rs (``write_deltalake``) fed with DuckDB's Arrow output. The tables equal
the polars baseline's, table for table and row for row (``hybrid_pipeline_tests/bench``).

HMAC-SHA256: DuckDB has ``sha256`` but no HMAC, so the HMAC is spelled out in SQL from its
definition (RFC 2104): ``sha256((K ^ opad) || sha256((K ^ ipad) || message))``, with the two
padded keys computed once from the salt. No Python function runs per row.

Python does two things, as the polars baseline does them: each landing file's SHA-256 (hashlib;
DuckDB's ``sha256`` is ten times slower on whole files) and the user key (BLAKE2b of the user id,
as ``gold.user_keys``; DuckDB has no BLAKE2b), computed once per distinct user and joined back.

    python bench/baseline_duckdb.py LANDING_DIR OUT_DIR [SALT]
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable, write_deltalake

FIELDS = ["event_id", "user_id", "session_id", "event_type", "timestamp", "product_id", "session_duration", "revenue", "user_segment", "email"]
TYPES = ["view", "click", "add_to_cart", "purchase"]
# What Python's str.strip() and polars' strip_chars() take off for ASCII text.
WHITESPACE = " \t\n\r\x0b\x0c"
# ISO-8601 as the polars baseline accepts it: date, 'T' (or a space), time, optional fraction and offset.
ISO_TS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}(:?\d{2})?)?$"


def q(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def hmac_keys(salt: str) -> tuple[bytes, bytes]:
    """The HMAC-SHA256 inner and outer padded keys of ``salt`` (RFC 2104)."""
    key = salt.encode()
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    key = key.ljust(64, b"\0")
    return bytes(b ^ 0x36 for b in key), bytes(b ^ 0x5C for b in key)


def blob(data: bytes) -> str:
    return f"unhex('{data.hex()}')"


def file_rows(con: duckdb.DuckDBPyConnection, path: Path) -> str:
    """SQL for one landing file's records: payload text, line number, file name and SHA-256."""
    # hashlib: DuckDB's sha256() hashes ~40 MB/s here, a tenth of hashlib's speed
    sha = q(hashlib.sha256(path.read_bytes()).hexdigest())
    name = q(path.name)
    if path.suffix == ".jsonl":
        return f"""
            SELECT payload, line_number, {name} AS source_file, {sha} AS file_sha256 FROM (
              SELECT unnest(lines) AS payload, generate_subscripts(lines, 1)::BIGINT AS line_number
              FROM (SELECT string_split(content, chr(10)) AS lines FROM read_text({q(str(path))})))
            WHERE trim(payload, {q(WHITESPACE)}) <> ''"""
    # A tabular row becomes the JSON object of its columns (values as read), numbered from 1 in
    # file order: a table keeps insertion order, so its rowid is the row's position.
    table = f"f{abs(hash(str(path)))}"
    reader = (
        f"read_csv({q(str(path))}, all_varchar=true, header=true, allow_quoted_nulls=false)"
        if path.suffix == ".csv"
        else f"read_parquet({q(str(path))})"
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM {reader}")
    cols = [r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()]
    struct = ", ".join(f'"{c}" := "{c}"' for c in cols)
    return f"""SELECT to_json(struct_pack({struct})) AS payload, rowid + 1 AS line_number,
               {name} AS source_file, {sha} AS file_sha256 FROM {table}"""


def main(landing: Path, out: Path, salt: str) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    ipad, opad = hmac_keys(salt)
    con.execute("CREATE TABLE kept (event_id VARCHAR)")
    ws = q(WHITESPACE)
    extract = ", ".join(q(f"$.{f}") for f in FIELDS)
    for day_dir in sorted((landing / "events").iterdir()):
        day = day_dir.name
        files = [file_rows(con, p) for p in sorted(day_dir.iterdir())]
        con.execute(f"CREATE OR REPLACE TEMP TABLE raw AS SELECT *, {q(day)} AS landing_date FROM ({' UNION ALL '.join(files)})")
        bronze = con.sql("SELECT *, now() AS ingested_at FROM raw").to_arrow_table()
        write_deltalake(str(out / "bronze"), bronze, mode="append")
        # Lines that are one JSON object (valid JSON in braces) decode, the contract fields as
        # text, in one parse per line (materialized: a projection of the list would re-parse).
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE decoded AS
            SELECT source_file, line_number, landing_date, {", ".join(f"j[{i + 1}] AS {f}" for i, f in enumerate(FIELDS))}
            FROM (SELECT *, json_extract_string(payload, [{extract}]) AS j FROM raw
                  WHERE trim(payload, {ws}) LIKE '{{%}}' AND json_valid(payload))""")
        con.execute(f"""
            CREATE OR REPLACE TEMP TABLE good AS
            SELECT * FROM (
              SELECT *, TRY_CAST(session_duration AS DOUBLE) AS sd, TRY_CAST(revenue AS DOUBLE) AS rv,
                CASE WHEN regexp_matches(replace_ts, {q(ISO_TS)}) THEN TRY_CAST(replace_ts AS TIMESTAMPTZ) END AS ts
              FROM (SELECT *, regexp_replace(trim(timestamp, {ws}), '^(\\d{{4}}-\\d{{2}}-\\d{{2}}) ', '\\1T') AS replace_ts FROM decoded))
            WHERE event_id IS NOT NULL AND user_id IS NOT NULL AND session_id IS NOT NULL AND product_id IS NOT NULL
              AND user_segment IS NOT NULL AND ts IS NOT NULL AND sd IS NOT NULL
              AND event_type IN ({", ".join(q(t) for t in TYPES)})
              AND sd >= 0 AND (rv IS NULL OR rv >= 0) AND (revenue IS NULL OR rv IS NOT NULL)
              AND ((event_type = 'purchase') = (rv IS NOT NULL))""")
        # The first record of each event_id in (file, line) order, unless an earlier day kept it.
        con.execute("""
            CREATE OR REPLACE TEMP TABLE first AS
            SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY event_id ORDER BY source_file, line_number) AS _rn FROM good) g
            WHERE _rn = 1 AND NOT EXISTS (SELECT 1 FROM kept k WHERE k.event_id = g.event_id)""")
        con.execute("INSERT INTO kept SELECT event_id FROM first")
        # HMAC once per distinct address, joined back
        inner = f"unhex(sha256({blob(ipad)} || encode(lower(trim(email, {ws})))))"
        silver = con.sql(f"""
            WITH hashes AS (SELECT email, sha256({blob(opad)} || {inner}) AS email_hash
                            FROM (SELECT DISTINCT email FROM first WHERE email IS NOT NULL))
            SELECT event_id, user_id, session_id, event_type, ts AS timestamp, ts::DATE AS event_date,
              hour(ts)::TINYINT AS hour, product_id, sd AS session_duration, rv AS revenue, user_segment,
              h.email_hash, landing_date, source_file, line_number
            FROM first LEFT JOIN hashes h USING (email)""").to_arrow_table()
        write_deltalake(str(out / "silver"), silver, mode="append", partition_by=["event_date"])
        quarantine = con.sql("""
            SELECT r.*, 'rejected' AS reason FROM raw r
            ANTI JOIN good g ON r.source_file = g.source_file AND r.line_number = g.line_number""").to_arrow_table()
        write_deltalake(str(out / "quarantine"), quarantine, mode="append")
        dups = con.sql("""
            SELECT event_id, landing_date, source_file, line_number FROM good
            ANTI JOIN first f USING (source_file, line_number)""").to_arrow_table()
        write_deltalake(str(out / "duplicates"), dups, mode="append")
        counts = con.execute("SELECT (SELECT count(*) FROM raw), (SELECT count(*) FROM good)").fetchall()[0]
        print(day, counts[0], silver.num_rows, counts[0] - counts[1], dups.num_rows, flush=True)

    # Gold from silver as delta-rs sees it (the Delta log's files, through an Arrow dataset).
    con.register("silver", DeltaTable(str(out / "silver")).to_pyarrow_dataset())
    metrics = con.sql("""
        SELECT event_date, user_segment, count(*)::UINTEGER AS events, count(DISTINCT user_id)::UINTEGER AS unique_users,
          count(*) FILTER (WHERE event_type = 'purchase')::UINTEGER AS purchases,
          count(DISTINCT user_id) FILTER (WHERE event_type = 'purchase')::UINTEGER AS purchasing_users,
          -- polars divides by a scalar as a product with its reciprocal: the same bits here
          coalesce(sum(round_even(revenue * 100, 0)::BIGINT), 0) * (1.0 / 100)::DOUBLE AS total_revenue,
          (count(DISTINCT user_id) FILTER (WHERE event_type = 'purchase') / count(DISTINCT user_id))::DOUBLE AS conversion_rate
        FROM silver GROUP BY event_date, user_segment""").to_arrow_table()
    write_deltalake(str(out / "daily_metrics"), metrics, mode="overwrite")
    users = con.sql("SELECT DISTINCT user_id FROM silver").fetchnumpy()["user_id"].tolist()
    keys = pa.table({
        "user_id": pa.array(users, pa.string()),
        "user_key": pa.array([int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "big") >> 1 for u in users], pa.int64()),
    })
    con.register("user_keys", keys)
    facts = con.sql("""
        SELECT event_id, event_date,
          (year(event_date) * 10000 + month(event_date) * 100 + day(event_date))::INTEGER AS date_key,
          k.user_key, session_id, event_type, product_id, timestamp, hour, session_duration,
          coalesce(revenue, 0.0) AS revenue, landing_date
        FROM silver s JOIN user_keys k USING (user_id)""").to_arrow_table()
    write_deltalake(str(out / "fact_events"), facts, mode="overwrite", partition_by=["event_date"])
    dim_user = con.sql("""
        SELECT user_id, arg_max(user_segment, timestamp) AS user_segment,
          arg_max(email_hash, timestamp) FILTER (WHERE email_hash IS NOT NULL) AS email_hash,
          min(timestamp) AS first_seen, max(timestamp) AS last_seen, count(*)::UINTEGER AS lifetime_events
        FROM silver GROUP BY user_id""").to_arrow_table()
    write_deltalake(str(out / "dim_user"), dim_user, mode="overwrite")
    dates = con.sql("SELECT DISTINCT event_date FROM silver").to_arrow_table()
    write_deltalake(str(out / "dim_date"), dates, mode="overwrite")
    revenue = float(pc.sum(metrics["total_revenue"]).as_py() or 0.0)
    print("silver_rows", facts.num_rows, "revenue", revenue, flush=True)


TABLES = ("bronze", "silver", "quarantine", "duplicates", "daily_metrics", "fact_events", "dim_user", "dim_date")
# Set when a table is written, so never equal between two runs.
VOLATILE = {"bronze": ["ingested_at"]}


def differences(left: Path, right: Path) -> dict[str, str]:
    """Tables of two baseline outputs that differ (schema or rows), with what differs; empty when equal."""
    import polars as pl

    found: dict[str, str] = {}
    for name in TABLES:
        a, b = (pl.read_delta(str(root / name)).drop(VOLATILE.get(name, [])) for root in (left, right))
        if dict(a.schema) != dict(b.schema.items()) or list(a.columns) != list(b.columns):
            found[name] = f"schema {dict(a.schema)} != {dict(b.schema)}"
            continue
        a, b = a.sort(a.columns), b.sort(b.columns)
        if not a.equals(b):
            diff = a.join(b, on=a.columns, how="anti", nulls_equal=True).height
            found[name] = f"{a.height} vs {b.height} rows, {diff} rows of the first not in the second"
    return found


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "bench-salt")
