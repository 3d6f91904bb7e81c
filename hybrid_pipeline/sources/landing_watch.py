"""What a landing-zone sensor should run: new file contents, grouped by landing day.

Pure and cursor-driven so it is tested without Dagster: a file is re-hashed only when its
size or mtime changed, at most ``max_files`` are hashed per tick (the rest wait for the
next tick), and a content already seen under any name never triggers a run again. The
cursor only knows what this watcher saw; contents that bronze already ingested (a run
started from the shell, a backfill) come in as ``ingested`` hashes and trigger nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from hybrid_pipeline.sources.landing import DATE_DIR, file_sha256


@dataclass(frozen=True)
class LandingRun:
    landing_date: str
    run_key: str  # derived from the new contents: the same files never run twice
    files: tuple[str, ...]


def plan_landing_runs(
    landing_dir: Path, cursor: str | None, max_files: int = 200, ingested: Collection[str] = frozenset()
) -> tuple[list[LandingRun], str]:
    """Runs for contents neither seen by this watcher nor in ``ingested`` (hashes bronze holds), and the next cursor."""
    state = json.loads(cursor) if cursor else {"files": {}, "hashes": []}
    files: dict[str, list] = state["files"]
    hashes: set[str] = set(state["hashes"])
    new_by_day: dict[str, list[tuple[str, str]]] = {}
    budget = max_files
    root = Path(landing_dir) / "events"
    days = sorted(p for p in root.iterdir() if p.is_dir() and DATE_DIR.match(p.name)) if root.is_dir() else []
    for day in days:
        for path in sorted(day.iterdir()):
            if path.is_symlink() or not path.is_file() or path.name.startswith("."):
                continue
            rel = f"{day.name}/{path.name}"
            st = path.stat()
            seen = files.get(rel)
            if seen and seen[0] == st.st_size and seen[1] == st.st_mtime_ns:
                continue
            if budget == 0:
                continue  # hashed on a later tick
            budget -= 1
            sha = file_sha256(path)
            files[rel] = [st.st_size, st.st_mtime_ns, sha]
            if sha not in hashes:
                hashes.add(sha)
                if sha in ingested:
                    continue
                new_by_day.setdefault(day.name, []).append((rel, sha))
    runs = [
        LandingRun(
            landing_date=day,
            run_key=f"landing:{day}:" + hashlib.sha256("".join(sorted(s for _, s in items)).encode()).hexdigest()[:16],
            files=tuple(r for r, _ in items),
        )
        for day, items in sorted(new_by_day.items())
    ]
    return runs, json.dumps({"files": files, "hashes": sorted(hashes)}, separators=(",", ":"))
