"""Landing-zone discovery and raw record extraction for bronze.

Files are identified by the SHA-256 of their content, so a file re-dropped under another
name or into another day's folder is recognised and ingested once. Reading keeps every
record as received (the payload as text); typing and validation belong to silver.
"""

from __future__ import annotations

import hashlib
import io
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import polars as pl

from hybrid_pipeline.lakehouse import catalog

EVENT_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class LandedFile:
    path: Path
    relative_name: str  # relative to the landing dir, for lineage only (never used to write)
    sha256: str
    size_bytes: int
    source_format: str | None  # None for an unsupported extension


class RejectedFile(Exception):
    """A landed file that cannot be read as records at all; ``reason`` says why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def landed_dates(landing_dir: Path) -> list[str]:
    """Landing days present under ``events/``, oldest first."""
    root = Path(landing_dir) / "events"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and DATE_DIR.match(p.name))


def discover_event_files(landing_dir: Path, landing_date: str) -> list[LandedFile]:
    """Regular files of one landing day, in name order; symlinks are never followed."""
    day_dir = Path(landing_dir) / "events" / landing_date
    if not day_dir.is_dir():
        return []
    files = []
    for path in sorted(day_dir.iterdir()):
        if path.is_symlink() or not path.is_file() or path.name.startswith("."):
            continue
        files.append(
            LandedFile(
                path=path,
                relative_name=f"events/{landing_date}/{path.name}",
                sha256=file_sha256(path),
                size_bytes=path.stat().st_size,
                source_format=EVENT_FORMATS.get(path.suffix.lower()),
            )
        )
    return files


def read_records(file: LandedFile) -> pl.DataFrame:
    """Raw records of a file: ``payload`` (text) and ``line_number`` (1-based, as in the file).

    Raises :class:`RejectedFile` when nothing in the file can be read as records.
    """
    if file.source_format is None:
        raise RejectedFile("unsupported_format", f"extension {file.path.suffix!r}")
    if file.size_bytes == 0:
        raise RejectedFile("empty_file")
    if file.source_format == "jsonl":
        return _read_jsonl(file.path)
    if file.source_format == "csv":
        return _read_tabular(file.path, "csv")
    return _read_tabular(file.path, "parquet")


def _read_jsonl(path: Path) -> pl.DataFrame:
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise RejectedFile("binary_content", "NUL bytes in a text format")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RejectedFile("invalid_encoding", f"not UTF-8 at byte {exc.start}") from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = text.split("\n")
    frame = pl.DataFrame(
        {"payload": lines, "line_number": pl.int_range(1, len(lines) + 1, eager=True, dtype=pl.Int64)}
    ).with_columns(pl.col("payload").str.strip_chars_end("\r"))
    frame = frame.filter(pl.col("payload").str.strip_chars() != "")
    if frame.height == 0:
        raise RejectedFile("empty_file", "no records")
    return frame


def _read_tabular(path: Path, fmt: str) -> pl.DataFrame:
    try:
        if fmt == "csv":
            raw = path.read_bytes()
            if b"\x00" in raw:
                raise RejectedFile("binary_content", "NUL bytes in a text format")
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RejectedFile("invalid_encoding", f"not UTF-8 at byte {exc.start}") from exc
            table = pl.read_csv(io.BytesIO(raw), infer_schema=False)
            first_line = 2  # line 1 is the header
        else:
            table = pl.read_parquet(path)
            first_line = 1
    except RejectedFile:
        raise
    except Exception as exc:  # polars raises several error types for unreadable files
        raise RejectedFile(f"unreadable_{fmt}", str(exc).splitlines()[0][:200]) from exc
    if table.height == 0:
        raise RejectedFile("empty_file", "no records")
    # Temporal columns become ISO text so the payload is what a JSON landing would carry.
    table = table.with_columns(
        pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dt.time_zone else ""))
        for c, dt in table.schema.items()
        if isinstance(dt, pl.Datetime)
    )
    if fmt == "csv":
        # A quoted field may span lines: each record starts after the previous one's lines.
        lines = 1 + pl.sum_horizontal(pl.col(c).str.count_matches("\n").fill_null(0) for c in table.columns)
        numbers = table.select((first_line + lines.cum_sum() - lines).cast(pl.Int64)).to_series()
    else:
        numbers = pl.int_range(first_line, first_line + table.height, eager=True, dtype=pl.Int64)
    return pl.DataFrame(
        {"payload": table.select(pl.struct(pl.all()).struct.json_encode()).to_series(), "line_number": numbers}
    )


BRONZE_SCHEMA = catalog.BRONZE_EVENTS.schema
LANDED_FILES_SCHEMA = catalog.BRONZE_LANDED_FILES.schema


@dataclass
class LandingBatch:
    records: pl.DataFrame  # rows for bronze/events (BRONZE_SCHEMA)
    files: pl.DataFrame  # one row per file looked at (LANDED_FILES_SCHEMA)


def collect_landing(
    landing_dir: Path, landing_date: str, ingested: dict[str, tuple[str, int, datetime]], now: datetime
) -> LandingBatch:
    """Read the not-yet-ingested files of one landing day into bronze rows.

    ``ingested`` maps the content hash of every file bronze already holds to
    (landing_date, records, ingested_at). A file bronze holds is never read again: under
    this landing day it is logged as ``ingested`` (a rerun), under another day as
    ``already_ingested`` (a re-drop, possibly renamed). An unreadable file is logged as
    ``rejected`` with its reason. Nothing here raises on bad data.
    """
    frames: list[pl.DataFrame] = []
    log: list[dict] = []
    seen: set[str] = set()
    for file in discover_event_files(landing_dir, landing_date):
        entry = {
            "landing_date": landing_date,
            "source_file": file.relative_name,
            "file_sha256": file.sha256,
            "size_bytes": file.size_bytes,
            "source_format": file.source_format,
            "status": "ingested",
            "reason": None,
            "records": 0,
            "ingested_at": now,
        }
        if file.sha256 in ingested:
            first_day, records, at = ingested[file.sha256]
            if first_day == landing_date:
                entry.update(records=records, ingested_at=at)
            else:
                entry.update(status="already_ingested", reason=f"same content ingested on {first_day}")
            log.append(entry)
            continue
        if file.sha256 in seen:
            entry.update(status="already_ingested", reason="same content earlier in this landing day")
            log.append(entry)
            continue
        seen.add(file.sha256)
        try:
            records = read_records(file)
        except RejectedFile as exc:
            entry.update(status="rejected", reason=str(exc))
            log.append(entry)
            continue
        entry["records"] = records.height
        log.append(entry)
        frames.append(
            records.with_columns(
                pl.lit(landing_date).alias("landing_date"),
                pl.lit(file.relative_name).alias("source_file"),
                pl.lit(file.source_format).alias("source_format"),
                pl.lit(file.sha256).alias("file_sha256"),
                pl.lit(now).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
            ).select(list(BRONZE_SCHEMA))
        )
    records_df = pl.concat(frames) if frames else pl.DataFrame(schema=BRONZE_SCHEMA)
    files_df = pl.DataFrame(log, schema=LANDED_FILES_SCHEMA) if log else pl.DataFrame(schema=LANDED_FILES_SCHEMA)
    return LandingBatch(records=records_df.cast(BRONZE_SCHEMA), files=files_df)


def ingested_files(bronze: pl.LazyFrame) -> dict[str, tuple[str, int, datetime]]:
    """What bronze already holds, by file content hash (the ingest-once ledger)."""
    summary = (
        bronze.group_by("file_sha256")
        .agg(
            pl.col("landing_date").min(),
            pl.len().cast(pl.Int64).alias("records"),
            pl.col("ingested_at").min(),
        )
        .collect()
    )
    return {r[0]: (r[1], r[2], r[3]) for r in summary.iter_rows()}
