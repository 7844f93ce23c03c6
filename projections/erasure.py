"""Erasing a thread from the views: what ``hitlflow erase`` asks of the projections.

The thread's timeline is folded again into ``thread_status`` with every personal value
replaced by ``{"erased": true, "sha256": …}`` (the same values and digests a rebuild reads from
the erased stores), and the free-text reasons of its audit entries read ``(erased)``. Who,
when, which action, data keys and the digests of what was shown stay; so do the hash chain's
anchors, whose records hold only digests of those values.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from contracts.events import EventEnvelope
from projections import thread_status
from projections.audit_trail import ERASED
from projections.chain import NESTED, PLAIN, digest
from projections.db import ViewDatabase


def erased_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """A payload with its personal values erased (the rule of services/common/sealing.py)."""
    kept: dict[str, Any] = {}
    for key, value in payload.items():
        if key in PLAIN or value is None:
            kept[key] = value
        elif key in NESTED and isinstance(value, list):
            kept[key] = [erased_payload(item) if isinstance(item, dict) else item
                         for item in value]
        elif isinstance(value, dict) and value.get("erased") is True:
            kept[key] = value
        else:
            kept[key] = {"erased": True, "sha256": digest(value)}
    return kept


def redact_thread(db: ViewDatabase, thread_id: str) -> int:
    """Erase the thread's personal values from every view; returns its events redone."""
    with db.transaction() as tx:
        rows = tx.all("SELECT * FROM thread_timeline WHERE thread_id = ?"
                      " ORDER BY at_ts, service, position", (thread_id,))
        for table in ("thread_status", "thread_requests", "thread_timeline"):
            tx.execute(f"DELETE FROM {table} WHERE thread_id = ?", (thread_id,))  # noqa: S608
        for row in rows:
            env = EventEnvelope.model_construct(
                event_type=row["event_type"], service=row["service"], thread_id=thread_id,
                event_id="", aggregate_id="", aggregate_version=int(row["aggregate_version"]),
                position=int(row["position"]), occurred_at=datetime.fromisoformat(row["at"]),
                payload=erased_payload(json.loads(row["payload"])))
            thread_status.apply(tx, env)
        tx.execute("UPDATE audit_trail SET reason = ? WHERE thread_id = ? AND reason IS NOT"
                   " NULL", (ERASED, thread_id))
    return len(rows)
