"""Synthetic clickstream that follows the event contract of DESIGN.md.

Deterministic for a seed and generated one day at a time (memory is bounded by one day),
realistic enough to learn from: users belong to segments, browse in sessions that follow a
view -> click -> add_to_cart -> purchase funnel, and their purchase propensity rises with
their own recent activity and carts, so "will this user buy in the next 7 days" is learnable
from past behaviour. A configurable fraction of records is made dirty in the ways real
landings are.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import polars as pl

EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
SEGMENTS = ("new", "casual", "regular", "loyal")
# Per segment: share of users, sessions per user per day, baseline purchase logit.
_SEGMENT_SHARE = np.array([0.35, 0.35, 0.2, 0.1])
_SEGMENT_SESSIONS = np.array([0.3, 0.6, 1.2, 2.0])
_SEGMENT_LOGIT = np.array([-3.2, -2.6, -2.0, -1.4])
N_PRODUCTS = 5000
FILE_ROWS = 250_000

# Kinds of dirt, with their share of the dirty records.
DIRT_KINDS = {
    "malformed_json": 0.15,
    "missing_timestamp": 0.1,
    "bad_timestamp": 0.1,
    "wrong_type": 0.1,
    "negative_revenue": 0.1,
    "unknown_event_type": 0.1,
    "missing_user_id": 0.05,
    "duplicate_same_day": 0.1,
    "duplicate_previous_day": 0.1,
    "extra_field": 0.1,
}
# Late events are valid records whose timestamp lies days before the landing day.
LATE_EVENT_SHARE = 0.01


@dataclass
class GeneratorConfig:
    days: int = 7
    events_per_day: int = 200_000
    seed: int = 42
    dirty_rate: float = 0.02
    start_date: date = field(default_factory=lambda: date.today() - timedelta(days=7))
    n_users: int | None = None

    def users(self) -> int:
        return self.n_users or max(200, self.events_per_day // 20)

    def validate(self) -> None:
        if self.days < 1 or self.events_per_day < 1:
            raise ValueError("days and events_per_day must be positive")
        if not 0.0 <= self.dirty_rate <= 1.0:
            raise ValueError("dirty_rate must be within [0, 1]")


def file_format_for(day_index: int) -> str:
    """Most days land as JSON lines; every 7th day as CSV and the day after as Parquet."""
    return {5: "csv", 6: "parquet"}.get(day_index % 7, "jsonl")


@dataclass
class _UserState:
    segment: np.ndarray
    activity: np.ndarray  # decayed count of recent sessions
    carts: np.ndarray  # decayed count of recent add-to-carts
    last_purchase: np.ndarray  # day index of the last purchase, -inf if none


@dataclass
class DayBatch:
    day: date
    events: pl.DataFrame  # clean, contract-shaped records
    dirty: list[tuple[int, str]]  # (row index, dirt kind) applied at write time
    extra_rows: list[dict]  # duplicates appended to the landing file


class EventGenerator:
    """Yields one day of events at a time; state carries user behaviour across days."""

    def __init__(self, config: GeneratorConfig) -> None:
        config.validate()
        self.config = config
        self.rng = np.random.default_rng(config.seed)
        n = config.users()
        self.state = _UserState(
            segment=self.rng.choice(len(SEGMENTS), size=n, p=_SEGMENT_SHARE),
            activity=np.zeros(n),
            carts=np.zeros(n),
            last_purchase=np.full(n, -np.inf),
        )
        self.product_price = np.round(self.rng.lognormal(3.3, 0.8, N_PRODUCTS), 2)
        self._previous_ids: np.ndarray = np.array([], dtype=object)

    def days(self) -> Iterator[DayBatch]:
        for i in range(self.config.days):
            yield self._day(i)

    def _funnel(self, sess_user: np.ndarray, day_index: int) -> tuple[np.ndarray, ...]:
        """Funnel steps per session; purchase propensity depends on past behaviour."""
        rng, st = self.rng, self.state
        n_sess = len(sess_user)
        recency = day_index - st.last_purchase[sess_user]
        logit = (
            _SEGMENT_LOGIT[st.segment[sess_user]]
            + 0.45 * np.log1p(st.activity[sess_user])
            + 0.6 * np.log1p(st.carts[sess_user])
            + np.where(recency <= 7, 0.5, 0.0)
        )
        p_buy = 1.0 / (1.0 + np.exp(-logit))
        views = 1 + rng.poisson(2.0, n_sess)
        clicks = rng.binomial(views, 0.45)
        cart = (clicks > 0) & (rng.random(n_sess) < np.clip(p_buy * 3.0, 0, 0.9))
        buy = cart & (rng.random(n_sess) < np.clip(p_buy * 2.5, 0, 0.95))
        return sess_user, views, clicks, cart, buy, views + clicks + cart + buy

    def _day(self, day_index: int) -> DayBatch:
        cfg, rng, st = self.config, self.rng, self.state
        day = cfg.start_date + timedelta(days=day_index)
        n_users = len(st.segment)
        target = cfg.events_per_day

        # Sessions per user: segment rate times a boost from recent activity.
        rate = _SEGMENT_SESSIONS[st.segment] * (1.0 + 0.15 * np.log1p(st.activity))
        rate *= target / (4.6 * rate.sum())
        # Draw sessions in rounds until the day has at least the target number of events
        # (small days can come up short on one Poisson draw).
        rounds: list[tuple[np.ndarray, ...]] = []
        drawn = 0
        while drawn < target:
            sessions = rng.poisson(rate * 1.15)
            if sessions.sum() == 0:
                sessions[rng.integers(n_users)] = 1
            r_user = np.repeat(np.arange(n_users), sessions)
            rng.shuffle(r_user)
            r = self._funnel(r_user, day_index)
            rounds.append(r)
            drawn += int(r[-1].sum())
        sess_user, views, clicks, cart, buy, per_session = (np.concatenate(parts) for parts in zip(*rounds, strict=True))
        n_sess = len(sess_user)

        # Cut to exactly the target number of events, dropping whole trailing sessions
        # and trimming the last one.
        cum = np.cumsum(per_session)
        keep = int(np.searchsorted(cum, target, side="left")) + 1
        keep = min(keep, n_sess)
        sess_user, views, clicks, cart, buy = (a[:keep] for a in (sess_user, views, clicks, cart, buy))
        per_session = per_session[:keep]
        n_sess = keep

        sess_idx = np.repeat(np.arange(n_sess), per_session)
        pos = np.arange(len(sess_idx)) - np.repeat(np.cumsum(per_session) - per_session, per_session)
        v, c = np.repeat(views, per_session), np.repeat(clicks, per_session)
        etype = np.where(pos < v, 0, np.where(pos < v + c, 1, np.where(pos < v + c + np.repeat(cart, per_session), 2, 3)))
        etype = etype[:target]
        sess_idx, pos = sess_idx[:target], pos[:target]
        n = len(etype)

        start = rng.integers(0, 86_400 - 3_600, n_sess)
        gaps = rng.exponential(35.0, n)
        elapsed = gaps.copy()
        # Elapsed time within the session: cumulative gaps, reset at each session start.
        first = pos == 0
        elapsed[first] = 0.0
        group_start = np.maximum.accumulate(np.where(first, np.arange(n), 0))
        cs = np.cumsum(elapsed)
        elapsed = cs - cs[group_start]
        seconds = start[sess_idx] + elapsed
        users = sess_user[sess_idx]
        product = np.minimum(rng.zipf(1.3, n), N_PRODUCTS) - 1
        # A session shops one product from the cart onwards.
        revenue = np.where(etype == 3, self.product_price[product], np.nan)

        ts = datetime(day.year, day.month, day.day, tzinfo=timezone.utc)
        stamp = day.strftime("%Y%m%d")
        frame = pl.DataFrame(
            {
                "event_id": [f"ev-{stamp}-{i:08d}" for i in range(n)],
                "user_id": [f"u{u:07d}" for u in users],
                "session_id": [f"s-{stamp}-{s:07d}" for s in sess_idx],
                "event_type": np.array(EVENT_TYPES, dtype=object)[etype].tolist(),
                "timestamp": pl.Series(seconds * 1e6).cast(pl.Int64).cast(pl.Duration("us")) + ts,
                "product_id": [f"p{p:05d}" for p in product],
                "session_duration": np.round(elapsed, 3),
                "revenue": pl.Series(revenue, nan_to_null=True),
                "user_segment": np.array(SEGMENTS, dtype=object)[st.segment[users]].tolist(),
                "email": [f"user{u}@example.com" for u in users],
            }
        ).sort("timestamp")
        frame = frame.with_columns(
            pl.col("timestamp").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
        )

        # Late events: valid records whose timestamp is 1-3 days before the landing day.
        late = rng.random(n) < LATE_EVENT_SHARE
        if day_index > 0 and late.any():
            shift = pl.Series(rng.integers(1, 4, n) * late)
            frame = frame.with_columns(
                pl.when(shift > 0)
                .then(
                    (pl.col("timestamp").str.to_datetime("%Y-%m-%dT%H:%M:%S%.3fZ") - pl.duration(days=shift))
                    .dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
                )
                .otherwise(pl.col("timestamp"))
                .alias("timestamp")
            )

        # Update behaviour state for the next day.
        day_sessions = np.bincount(sess_user, minlength=n_users)
        day_carts = np.bincount(sess_user[cart], minlength=n_users)
        st.activity = 0.7 * st.activity + day_sessions
        st.carts = 0.6 * st.carts + day_carts
        st.last_purchase[np.unique(sess_user[buy])] = day_index

        dirty, extra = self._dirt(frame, day_index)
        self._previous_ids = frame["event_id"].to_numpy()
        return DayBatch(day=day, events=frame, dirty=dirty, extra_rows=extra)

    def _dirt(self, frame: pl.DataFrame, day_index: int) -> tuple[list[tuple[int, str]], list[dict]]:
        n = frame.height
        n_dirty = int(round(n * self.config.dirty_rate))
        if n_dirty == 0:
            return [], []
        kinds = list(DIRT_KINDS)
        chosen = self.rng.choice(len(kinds), size=n_dirty, p=np.array(list(DIRT_KINDS.values())))
        rows = self.rng.choice(n, size=n_dirty, replace=False)
        dirty: list[tuple[int, str]] = []
        extra: list[dict] = []
        for row, k in zip(rows.tolist(), chosen.tolist(), strict=True):
            kind = kinds[k]
            if kind == "duplicate_same_day":
                extra.append(frame.row(row, named=True))
            elif kind == "duplicate_previous_day":
                if len(self._previous_ids):
                    record = frame.row(row, named=True)
                    record["event_id"] = str(self._previous_ids[int(self.rng.integers(len(self._previous_ids)))])
                    extra.append(record)
            else:
                dirty.append((row, kind))
        return dirty, extra


def _dirty_record(record: dict, kind: str) -> dict:
    record = dict(record)
    if kind == "missing_timestamp":
        record.pop("timestamp", None)
    elif kind == "bad_timestamp":
        record["timestamp"] = "31/02/2024 25:61"
    elif kind == "wrong_type":
        record["session_duration"] = "a while"
    elif kind == "negative_revenue":
        record["event_type"] = "purchase"
        record["revenue"] = -abs(record.get("revenue") or 19.99)
    elif kind == "unknown_event_type":
        record["event_type"] = "hover"
    elif kind == "missing_user_id":
        record.pop("user_id", None)
    elif kind == "extra_field":
        record["campaign"] = "autumn-sale"
    return record


def write_day(batch: DayBatch, landing_dir: Path, fmt: str) -> list[Path]:
    """Write one day's batch as landing files; returns the paths written."""
    out_dir = Path(landing_dir) / "events" / batch.day.isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    frame = batch.events
    dirty = dict(batch.dirty)
    if fmt != "jsonl":
        # Tabular formats cannot carry malformed JSON; that record gets a bad timestamp.
        dirty = {row: ("bad_timestamp" if kind == "malformed_json" else kind) for row, kind in dirty.items()}
    dirty_records = {row: _dirty_record(frame.row(row, named=True), kind) for row, kind in dirty.items()}

    paths: list[Path] = []
    if fmt == "jsonl":
        lines = frame.write_ndjson().splitlines()
        for row, record in dirty_records.items():
            line = json.dumps(record, separators=(",", ":"))
            lines[row] = line[: len(line) // 2] if dirty[row] == "malformed_json" else line
        lines.extend(json.dumps(r, separators=(",", ":")) for r in batch.extra_rows)
        for part, start in enumerate(range(0, len(lines), FILE_ROWS)):
            path = out_dir / f"events-{part:04d}.jsonl"
            path.write_text("\n".join(lines[start : start + FILE_ROWS]) + "\n", encoding="utf-8")
            paths.append(path)
        return paths

    # Tabular formats: every value as text so dirt such as "a while" survives.
    def as_text(records: list[dict]) -> pl.DataFrame:
        cols = list(dict.fromkeys(k for r in records for k in r))
        return pl.DataFrame(
            {c: [None if r.get(c) is None else str(r[c]) for r in records] for c in cols},
            schema={c: pl.String for c in cols},
        )

    table = frame.with_columns(pl.all().cast(pl.String)).with_row_index("_row")
    if dirty_records:
        replaced = as_text(list(dirty_records.values())).with_columns(
            pl.Series("_row", list(dirty_records), dtype=pl.UInt32)
        )
        table = pl.concat(
            [table.filter(~pl.col("_row").is_in(list(dirty_records))), replaced], how="diagonal"
        ).sort("_row")
    if batch.extra_rows:
        table = pl.concat([table, as_text(batch.extra_rows)], how="diagonal")
    table = table.drop("_row")
    path = out_dir / f"events-0000.{fmt}"
    if fmt == "csv":
        table.write_csv(path)
    else:
        table.write_parquet(path)
    return [path]


def generate(config: GeneratorConfig, landing_dir: Path) -> dict[str, int]:
    """Generate ``config.days`` days into the landing zone; returns counts for the summary."""
    gen = EventGenerator(config)
    totals = {"days": 0, "files": 0, "records": 0, "dirty": 0, "duplicates": 0}
    for i, batch in enumerate(gen.days()):
        paths = write_day(batch, landing_dir, file_format_for(i))
        totals["days"] += 1
        totals["files"] += len(paths)
        totals["records"] += batch.events.height + len(batch.extra_rows)
        totals["dirty"] += len(batch.dirty)
        totals["duplicates"] += len(batch.extra_rows)
    return totals
