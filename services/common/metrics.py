"""Prometheus metrics of a service process: one registry per process (``REGISTRY``), served
with ``/healthz`` and ``/readyz`` by :mod:`services.common.health` on ``HITLFLOW_METRICS_PORT``.

Figures are counted where the work already happens, with no second code path: a command's
reply (:func:`services.common.replies.send_reply`), a quarantine
(:func:`services.common.quarantine.quarantine`), a message delivered again (the consumers'
retry), a relay batch. Gauges that need a question to NATS or a store (consumer lag, relay lag,
backlog, deadlines) are refreshed by the health monitor every few seconds, off the message
path. Labels say which consumer, service or command, so several services in one process
(``hitlflow up --one-process``) share the registry without mixing their figures.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

COMMANDS = Counter(
    "hitlflow_commands", "Commands decided, by command and outcome: ok, or the refusal code "
    "(contracts/catalog.py REFUSAL_CODES)", ["command", "outcome"], registry=REGISTRY)
RESUME_LATENCY = Histogram(
    "hitlflow_resume_latency_seconds", "From a resume command stored in HITL_COMMANDS to its "
    "reply (the answer decided and saved), as seen by the interaction service",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=REGISTRY)
DELIVERED = Counter(
    "hitlflow_consumer_delivered", "Messages handed to a durable consumer's handler",
    ["consumer"], registry=REGISTRY)
REDELIVERIES = Counter(
    "hitlflow_consumer_redeliveries", "Messages a consumer asked to have delivered again "
    "(an outage, a failure, or held back behind an earlier message of its thread)",
    ["consumer"], registry=REGISTRY)
CONSUMER_PENDING = Gauge(
    "hitlflow_consumer_pending", "Consumer lag: messages of its stream not yet delivered",
    ["consumer"], registry=REGISTRY)
CONSUMER_ACK_PENDING = Gauge(
    "hitlflow_consumer_ack_pending", "Messages delivered and not yet acknowledged",
    ["consumer"], registry=REGISTRY)
CONSUMER_REDELIVERED = Gauge(
    "hitlflow_consumer_redelivered", "Messages being delivered again now (server's count)",
    ["consumer"], registry=REGISTRY)
QUARANTINED = Counter(
    "hitlflow_quarantined", "Messages no retry could help, set aside in HITL_DLQ",
    ["source"], registry=REGISTRY)
RELAY_PUBLISHED = Counter(
    "hitlflow_relay_published", "Events published to HITL_EVENTS by the outbox relay",
    ["service"], registry=REGISTRY)
RELAY_LAG = Gauge(
    "hitlflow_relay_lag", "Events saved in the service's store and not yet published",
    ["service"], registry=REGISTRY)
PENDING_REQUESTS = Gauge(
    "hitlflow_pending_requests", "Open interaction requests waiting for a person (backlog, "
    "from the thread_status view)", registry=REGISTRY)
OLDEST_PENDING_AGE = Gauge(
    "hitlflow_pending_oldest_age_seconds", "Age of the oldest open interaction request",
    registry=REGISTRY)
DEADLINES_PENDING = Gauge(
    "hitlflow_deadlines_pending", "Deadlines whose timer is still to go off",
    registry=REGISTRY)
DEADLINES_DUE = Gauge(
    "hitlflow_deadlines_due", "Deadlines past due and not fired yet (should stay near 0)",
    registry=REGISTRY)
DEADLINES_FIRED = Counter(
    "hitlflow_deadlines_fired", "Deadline steps fired, by what fired them (schedule, sweep)",
    ["by"], registry=REGISTRY)
PROJECTIONS_LEADER = Gauge(
    "hitlflow_projections_leader", "1 while this projections replica holds the single-writer "
    "lease and applies events to the views", registry=REGISTRY)
VIEW_TRACKING_ROWS = Gauge(
    "hitlflow_view_tracking_rows", "Rows of applied_events left after the last compaction",
    registry=REGISTRY)

#: Children looked up once: ``labels()`` takes a lock and a dict lookup each time.
_COMMAND_CHILDREN: dict[tuple[str, str], Any] = {}


def count_command(command: str, outcome: str) -> None:
    child = _COMMAND_CHILDREN.get((command, outcome))
    if child is None:
        child = _COMMAND_CHILDREN[(command, outcome)] = COMMANDS.labels(command, outcome)
    child.inc()


def observe_resume(stored_at: datetime | None) -> None:
    """A resume's reply is going out: the time since its command was stored (the server's
    clock; clipped at 0 when the clocks differ)."""
    if stored_at is None:
        return
    seconds = (datetime.now(UTC) - stored_at).total_seconds()
    RESUME_LATENCY.observe(max(seconds, 0.0))
