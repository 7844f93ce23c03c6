"""analytics: the guide's ``InteractionAnalytics``, computed over a window from one row per
request.

Definitions (``[since, until)`` is the window; every count is "as it stood at ``until``"):

- total: requests created in the window; by type and by node likewise;
- answered: of those, answered by a person (not by a timeout policy) before ``until``;
- response time: from the request's creation to a person's accepted answer; average, and the
  50th and 95th percentiles by nearest rank (the value at rank ⌈p/100 · n⌉ of the sorted times);
- timeout rate: requests closed by their timeout policy (the thread failed, or a default answer
  was taken) before ``until``, divided by total;
- approval rate: ``approve`` / (``approve`` + ``reject``) over approval requests answered by a
  person;
- bottlenecks: nodes with more requests in the window than the threshold (the guide's 10);
- pending backlog: requests open at ``until``, created at any time before it, and the age of the
  oldest one at ``until``;
- by identity: the same metrics per responder (the person whose answer it was; requests
  answered by people only) and per candidate group (requests offered to that group), and the
  workload: requests open at ``until`` per person they wait on (assignees, a quorum's voters,
  or the claimant once claimed).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from contracts.queries import AnalyticsQuery, AnalyticsReply, Bottleneck, Metrics
from projections.db import Tx, ViewDatabase, epoch
from projections.event import Event, moment
from projections.rows import Audience, Keyed, Rows

NAME = "analytics"
VERSION = 2
TABLES = ("analytics_requests", "analytics_request_audience")
DEFAULT_DAYS = 30

DDL = (
    """CREATE TABLE IF NOT EXISTS analytics_requests (
        request_id TEXT PRIMARY KEY,
        thread_id TEXT NOT NULL,
        node_name TEXT NOT NULL,
        interaction_type TEXT NOT NULL,
        created_ts DOUBLE PRECISION NOT NULL,
        answered_ts DOUBLE PRECISION,
        by_timeout INTEGER NOT NULL DEFAULT 0,
        action TEXT,
        responder TEXT,
        timed_out_ts DOUBLE PRECISION,
        cancelled_ts DOUBLE PRECISION,
        closed_ts DOUBLE PRECISION,
        rejected_attempts INTEGER NOT NULL DEFAULT 0,
        reminders INTEGER NOT NULL DEFAULT 0,
        escalations INTEGER NOT NULL DEFAULT 0,
        claimed_by TEXT
    )""",
    # who each request is offered to: ('user', name) or ('group', name)
    """CREATE TABLE IF NOT EXISTS analytics_request_audience (
        request_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL
    )""",
)
#: Created after the rows during a rebuild.
INDEXES = (
    "CREATE INDEX IF NOT EXISTS analytics_requests_by_created ON analytics_requests"
    " (created_ts)",
    "CREATE INDEX IF NOT EXISTS analytics_requests_open ON analytics_requests"
    " (closed_ts, created_ts)",
    "CREATE INDEX IF NOT EXISTS analytics_request_audience_by_request ON"
    " analytics_request_audience (request_id)",
)
#: The index the fold reads by (replacing a request's audience), built before the rows.
LOOKUPS = ("analytics_request_audience_by_request",)


#: The keyed table the fold reads and changes (through ``tx.rows``: projections/rows.py).
REQUESTS = Keyed("analytics_requests", (
    "request_id", "thread_id", "node_name", "interaction_type", "created_ts", "answered_ts",
    "by_timeout", "action", "responder", "timed_out_ts", "cancelled_ts", "closed_ts",
    "rejected_attempts", "reminders", "escalations", "claimed_by"),
    defaults={"by_timeout": 0, "rejected_attempts": 0, "reminders": 0, "escalations": 0})
AUDIENCE = Audience("analytics_request_audience")


def _audience(rows: Rows, request_id: str, users: Any, groups: Any) -> None:
    rows.offer(AUDIENCE, request_id,
               [("user", u) for u in users or ()] + [("group", g) for g in groups or ()])


def _requested(rows: Rows, env: Event, p: dict[str, Any]) -> None:
    rows.add(REQUESTS, {"request_id": p["id"], "thread_id": env.thread_id,
                        "node_name": p["node_name"], "interaction_type": p["interaction_type"],
                        "created_ts": epoch(p["created_at"])})
    quorum = p.get("quorum") or {}
    if quorum:
        _audience(rows, p["id"], quorum.get("of"), [quorum["group"]]
                  if quorum.get("group") else ())
    else:
        _audience(rows, p["id"], p.get("assignees"), p.get("candidate_groups"))


def _reassigned(rows: Rows, env: Event, p: dict[str, Any]) -> None:
    _audience(rows, p["request_id"], p.get("assignees"), p.get("candidate_groups"))
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        row["claimed_by"] = None
        row["escalations"] += 1 if env.event_type == "InteractionEscalated" else 0


def _claimed(rows: Rows, env: Event, p: dict[str, Any]) -> None:
    claimed_by = p.get("claimed_by") or p.get("to")
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        row["claimed_by"] = claimed_by


def _accepted(rows: Rows, env: Event, p: dict[str, Any]) -> None:
    at = epoch(p["timestamp"])
    by_timeout = 1 if p.get("by_timeout") else 0
    action, responder = p.get("action"), p.get("responder")
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        row.update(answered_ts=at, by_timeout=by_timeout, action=action, responder=responder)
        if by_timeout == 1 and row["timed_out_ts"] is None:
            row["timed_out_ts"] = at
        if row["closed_ts"] is None:
            row["closed_ts"] = at


def _timed_out(rows: Rows, env: Event, p: dict[str, Any]) -> None:
    at = epoch(p["timestamp"]) if p.get("timestamp") else moment(env)[1]
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        if row["timed_out_ts"] is None:
            row["timed_out_ts"] = at
        if row["closed_ts"] is None:
            row["closed_ts"] = at


def _cancelled(rows: Rows, env: Event, p: dict[str, Any]) -> None:
    at = moment(env)[1]
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None and row["closed_ts"] is None:
        row.update(cancelled_ts=at, closed_ts=at)


def _rejected(rows: Rows, env: Event, p: dict[str, Any]) -> None:
    if p.get("request_id"):
        row = rows.change(REQUESTS, p["request_id"])
        if row is not None:
            row["rejected_attempts"] += 1


def _reminded(rows: Rows, env: Event, p: dict[str, Any]) -> None:
    row = rows.change(REQUESTS, p["request_id"])
    if row is not None:
        row["reminders"] += 1


HANDLERS: dict[str, Callable[[Rows, Event, dict[str, Any]], None]] = {
    "InteractionRequested": _requested,
    "InteractionEscalated": _reassigned,
    "InteractionReassigned": _reassigned,
    "InteractionClaimed": _claimed,
    "InteractionReleased": _claimed,
    "InteractionDelegated": _claimed,
    "ResponseAccepted": _accepted,
    "InteractionTimedOut": _timed_out,
    "InteractionCancelled": _cancelled,
    "ResponseRejected": _rejected,
    "InteractionReminded": _reminded,
}


def apply(tx: Tx, env: Event) -> None:
    handler = HANDLERS.get(env.event_type)
    if handler is not None:
        handler(tx.rows, env, env.payload)


# -- queries ------------------------------------------------------------------------------------

#: group name → the SQL expression rows are grouped by, and where they are read from.
_REQUESTS = "analytics_requests"
_GROUPS: dict[str, tuple[str, str]] = {
    "overall": ("'*'", _REQUESTS),
    "type": ("interaction_type", _REQUESTS),
    "node": ("node_name", _REQUESTS),
    # a person's own answers (a timeout policy's are no one's)
    "responder": ("CASE WHEN by_timeout = 0 THEN responder END", _REQUESTS),
    "group": ("g.name", "analytics_requests JOIN analytics_request_audience g ON"
                        " g.request_id = analytics_requests.request_id AND g.kind = 'group'"),
}


def window(query: AnalyticsQuery, now: datetime) -> tuple[datetime, datetime]:
    until = query.until or now
    since = query.since or until - timedelta(days=query.days or DEFAULT_DAYS)
    return since, until


def _rank(n: int, percent: float) -> int:
    """Nearest rank (1-based) of a percentile among ``n`` sorted values."""
    return max(1, math.ceil(percent / 100 * n))


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _grouped(db: ViewDatabase, group: str, since: float, until: float) -> dict[str, Metrics]:
    key, source = _GROUPS[group]
    person = "answered_ts < ? AND by_timeout = 0"
    by = "" if group == "overall" else f" GROUP BY {key}"
    rows = db.query(
        f"SELECT {key} AS grp, COUNT(*) AS total,"  # noqa: S608 - key from _GROUPS
        f" SUM(CASE WHEN {person} THEN 1 ELSE 0 END) AS answered,"
        " SUM(CASE WHEN timed_out_ts < ? THEN 1 ELSE 0 END) AS timed_out,"
        " SUM(CASE WHEN cancelled_ts < ? THEN 1 ELSE 0 END) AS cancelled,"
        " SUM(rejected_attempts) AS rejected_attempts, SUM(reminders) AS reminders,"
        " SUM(escalations) AS escalations,"
        f" AVG(CASE WHEN {person} THEN answered_ts - created_ts END) AS avg_rt,"
        f" SUM(CASE WHEN {person} AND interaction_type = 'approval' AND action = 'approve'"
        " THEN 1 ELSE 0 END) AS approved,"
        f" SUM(CASE WHEN {person} AND interaction_type = 'approval'"
        " AND action IN ('approve', 'reject') THEN 1 ELSE 0 END) AS decided"
        f" FROM {source} WHERE created_ts >= ? AND created_ts < ?" + by,
        (until, until, until, until, until, until, since, until),
    )
    metrics: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = int(row["total"] or 0)
        if not total or row["grp"] is None:
            continue
        timed_out = int(row["timed_out"] or 0)
        metrics[str(row["grp"])] = {
            "total": total, "answered": int(row["answered"] or 0), "timed_out": timed_out,
            "cancelled": int(row["cancelled"] or 0),
            "rejected_attempts": int(row["rejected_attempts"] or 0),
            "reminders": int(row["reminders"] or 0), "escalations": int(row["escalations"] or 0),
            "avg_response_time_s": (float(row["avg_rt"]) if row["avg_rt"] is not None
                                    else None),
            "timeout_rate": _ratio(timed_out, total),
            "approval_rate": _ratio(int(row["approved"] or 0), int(row["decided"] or 0)),
        }
    _percentiles(db, key, source, metrics, since, until)
    for row in db.query(
        f"SELECT {key} AS grp, COUNT(*) AS pending, MIN(created_ts) AS oldest"  # noqa: S608
        f" FROM {source} WHERE created_ts < ? AND (closed_ts IS NULL OR closed_ts >= ?)"
        + by, (until, until),
    ):
        if not row["pending"] or row["grp"] is None:
            continue
        entry = metrics.setdefault(str(row["grp"]), {})
        entry["pending"] = int(row["pending"])
        entry["oldest_pending_age_s"] = until - float(row["oldest"])
    return {name: Metrics(**values) for name, values in sorted(metrics.items())}


def _percentiles(db: ViewDatabase, key: str, source: str, metrics: dict[str, dict[str, Any]],
                 since: float, until: float) -> None:
    """p50/p95 of each group, reading the sorted response times once (constant memory)."""
    wanted: dict[str, dict[int, list[str]]] = {}
    for name, values in metrics.items():
        n = values["answered"]
        if n:
            ranks = wanted[name] = {}
            ranks.setdefault(_rank(n, 50), []).append("p50_response_time_s")
            ranks.setdefault(_rank(n, 95), []).append("p95_response_time_s")
    if not wanted:
        return
    current, seen = None, 0
    for row in db.stream(
        f"SELECT {key} AS grp, answered_ts - created_ts AS rt"  # noqa: S608 - key from _GROUPS
        f" FROM {source} WHERE created_ts >= ? AND created_ts < ?"
        " AND answered_ts < ? AND by_timeout = 0 ORDER BY grp, rt",
        (since, until, until),
    ):
        group = str(row["grp"])
        if group != current:
            current, seen = group, 0
        seen += 1
        for field in wanted.get(group, {}).get(seen, ()):
            metrics[group][field] = float(row["rt"])


def workload(db: ViewDatabase, until: float) -> dict[str, int]:
    """Requests open at ``until`` per person they wait on: the claimant once claimed, else
    each assignee (or quorum voter) named."""
    rows = db.query(
        "SELECT COALESCE(r.claimed_by, a.name) AS person, COUNT(DISTINCT r.request_id) AS n"
        " FROM analytics_requests r LEFT JOIN analytics_request_audience a"
        " ON a.request_id = r.request_id AND a.kind = 'user' AND r.claimed_by IS NULL"
        " WHERE r.created_ts < ? AND (r.closed_ts IS NULL OR r.closed_ts >= ?)"
        " GROUP BY COALESCE(r.claimed_by, a.name)", (until, until))
    return {str(row["person"]): int(row["n"]) for row in sorted(
        rows, key=lambda r: (-int(r["n"]), str(r["person"]))) if row["person"] is not None}


def report(db: ViewDatabase, query: AnalyticsQuery, now: datetime) -> AnalyticsReply:
    since, until = window(query, now)
    start, end = epoch(since), epoch(until)
    overall = _grouped(db, "overall", start, end).get("*", Metrics())
    per_type = _grouped(db, "type", start, end)
    per_node = _grouped(db, "node", start, end)
    bottlenecks = sorted(
        (Bottleneck(node=node, interaction_count=m.total) for node, m in per_node.items()
         if m.total > query.bottleneck_threshold),
        key=lambda b: (-b.interaction_count, b.node),
    )
    return AnalyticsReply(
        per_responder=_grouped(db, "responder", start, end),
        per_group=_grouped(db, "group", start, end), workload=workload(db, end),
        since=since, until=until, total_interactions=overall.total,
        by_type={name: m.total for name, m in per_type.items() if m.total},
        avg_response_time=overall.avg_response_time_s, timeout_rate=overall.timeout_rate,
        approval_rate=overall.approval_rate, overall=overall, per_type=per_type,
        per_node=per_node, bottlenecks=bottlenecks,
    )
