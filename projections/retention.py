"""Retention: ended threads older than an age are archived (JSON lines, with the hash-chain
link of each event) and leave the live thread views; the per-event tracking rows of the views
are compacted into positions.

An archived thread's rows of ``thread_status``, ``thread_requests`` and ``thread_timeline``
are deleted and the thread is listed in ``archived_threads``; a rebuild leaves it out again,
so live and rebuilt views stay equal. Its audit entries, analytics rows and chain anchors stay
(they hold no personal values), so ``hitlflow audit verify`` still checks it against the
stores, which keep every event.

The archive has one line per event: the thread, service, position, time, type, aggregate
version, payload and ``chain`` (the anchored link of that event), then one line per thread
``{"thread_id": …, "archived": {...status, chain heads...}}``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from projections.db import Tx, ViewDatabase

DDL = ("CREATE TABLE IF NOT EXISTS archived_threads (thread_id TEXT PRIMARY KEY,"
       " archived_at TEXT NOT NULL, archive TEXT NOT NULL, events BIGINT NOT NULL)")
ENDED = ("completed", "failed", "timed_out", "cancelled")
#: Live thread tables an archived thread leaves.
THREAD_TABLES = ("thread_status", "thread_requests", "thread_timeline")


@dataclass
class ArchiveResult:
    threads: int = 0
    events: int = 0
    compacted: int = 0
    seconds: float = 0.0


def create(tx: Tx) -> None:
    tx.execute(DDL)


def forget_archived(tx: Tx) -> None:
    """After a rebuild: the archived threads leave the thread views again."""
    create(tx)
    for table in THREAD_TABLES:
        tx.execute(f"DELETE FROM {table} WHERE thread_id IN"  # noqa: S608 - our table names
                   " (SELECT thread_id FROM archived_threads)")


def archive(db: ViewDatabase, older_than: timedelta, out: TextIO, name: str,
            now: datetime | None = None) -> ArchiveResult:
    started = time.perf_counter()
    result = ArchiveResult()
    cutoff = ((now or datetime.now(UTC)) - older_than).isoformat(timespec="microseconds")
    with db.transaction() as tx:
        create(tx)
        threads = tx.all("SELECT thread_id, status, graph_name, started_at, completed_at FROM"
                         " thread_status WHERE status IN ('completed', 'failed', 'timed_out',"
                         " 'cancelled') AND completed_at < ? ORDER BY completed_at",
                         (cutoff,))
        for thread in threads:
            thread_id = thread["thread_id"]
            links = {(r["service"], int(r["position"])): r["hash"] for r in tx.all(
                "SELECT service, position, hash FROM audit_chain WHERE thread_id = ?",
                (thread_id,))}
            rows = tx.all("SELECT * FROM thread_timeline WHERE thread_id = ?"
                          " ORDER BY at_ts, service, position", (thread_id,))
            for row in rows:
                out.write(json.dumps({
                    "thread_id": thread_id, "service": row["service"],
                    "position": int(row["position"]), "at": row["at"],
                    "event_type": row["event_type"],
                    "aggregate_version": int(row["aggregate_version"]),
                    "payload": json.loads(row["payload"]),
                    "chain": links.get((row["service"], int(row["position"])))},
                    ensure_ascii=False, separators=(",", ":")) + "\n")
            heads = {r["service"]: r["hash"] for r in tx.all(
                "SELECT service, hash FROM audit_chain WHERE thread_id = ? AND seq ="
                " (SELECT MAX(seq) FROM audit_chain c WHERE c.thread_id = audit_chain.thread_id"
                " AND c.service = audit_chain.service)", (thread_id,))}
            out.write(json.dumps({"thread_id": thread_id, "archived": {
                **{k: thread[k] for k in ("status", "graph_name", "started_at",
                                          "completed_at")},
                "events": len(rows), "chain_heads": heads}}, separators=(",", ":")) + "\n")
            for table in THREAD_TABLES:
                tx.execute(f"DELETE FROM {table} WHERE thread_id = ?", (thread_id,))  # noqa: S608
            tx.execute("INSERT INTO archived_threads (thread_id, archived_at, archive, events)"
                       " VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                       (thread_id, datetime.now(UTC).isoformat(), name, len(rows)))
            result.threads += 1
            result.events += len(rows)
        out.flush()
        result.compacted = compact(tx)
    result.seconds = time.perf_counter() - started
    return result


def compact(tx: Tx) -> int:
    """Fold ``applied_events`` (one row per event applied live) into ``view_positions``: each
    service's events arrive in log order, so every position up to the highest applied is
    done. Returns the rows removed."""
    from projections.projector import VIEWS

    removed = 0
    for row in tx.all("SELECT service, MAX(position) AS upto FROM applied_events"
                      " GROUP BY service"):
        service, upto = str(row["service"]), int(row["upto"])
        for view in VIEWS:
            tx.execute("INSERT INTO view_positions (view, service, upto) VALUES (?, ?, ?)"
                       " ON CONFLICT (view, service) DO UPDATE SET upto ="
                       " CASE WHEN excluded.upto > view_positions.upto THEN excluded.upto"
                       " ELSE view_positions.upto END", (view, service, upto))
        removed += max(tx.execute("DELETE FROM applied_events WHERE service = ? AND"
                                  " position < ?", (service, upto)), 0)
    return removed


def archive_to(db: ViewDatabase, older_than: timedelta, path: Path) -> ArchiveResult:
    """Archive into ``path`` (appended to when it exists)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as out:
        return archive(db, older_than, out, str(path))


def archived(db: ViewDatabase, thread_id: str) -> dict[str, Any] | None:
    try:
        return db.one("SELECT * FROM archived_threads WHERE thread_id = ?", (thread_id,))
    except Exception:  # no archive table yet
        return None
