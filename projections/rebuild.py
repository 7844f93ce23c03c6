"""Rebuilding views from the event stores, the source of truth.

Each service's notification log is read straight from its store (eventsourcing
``select_notifications``) and turned into envelopes by the very factory its outbox relay
publishes with (``services/<name>/main.py``), so a replayed event is the event the live
projector received. The logs are merged in the order the events happened (each log keeps its
own order), and folded into freshly created tables in one transaction: readers see the old view
until the new one is complete, and a rebuild that fails leaves the old view as it was.
"""

from __future__ import annotations

import heapq
import importlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.events import EventEnvelope
from projections.db import ViewDatabase, open_view_database
from projections.projector import Projector, View, select_views
from services.common.integration import envelope_factory
from services.common.logging import get_logger

log = get_logger(__name__)

#: The services whose stores are replayed: (service, module, application class). The events
#: each publishes are its ``services/<service>/main.py`` ``PUBLISHED``; a service not installed
#: is skipped.
SERVICES = (
    ("workflow", "services.workflow.application", "WorkflowService"),
    ("interaction", "services.interaction.application", "InteractionService"),
    ("timeout", "services.timeout.application", "TimeoutService"),
)
#: Payload fields named differently on a service's domain events, as its main.py hands them to
#: ``envelope_factory`` for its relay (a module-level ``ENVELOPE_ALIASES`` there wins).
ALIASES: dict[str, dict[str, dict[str, str]]] = {
    "interaction": {"InteractionRequested": {"id": "request_id"}},
}
#: Notifications read from a store per query.
PAGE = 1000


@dataclass
class Source:
    """One service's event store and the factory its relay converts events with."""

    service: str
    app: Any
    to_envelope: Any
    #: Highest notification id read so far (internal events included).
    last: int = 0
    read: int = 0

    def envelopes(self, page: int = PAGE) -> Iterator[EventEnvelope]:
        recorder = self.app.recorder
        mapper = self.app.mapper
        to_envelope = self.to_envelope
        while True:
            batch = recorder.select_notifications(self.last + 1, page)
            if not batch:
                return
            for notification in batch:
                envelope = to_envelope(mapper.to_domain_event(notification), notification)
                if envelope is not None:
                    yield envelope
            self.last = batch[-1].id
            self.read += len(batch)

    def close(self) -> None:
        self.app.close()


def open_sources(settings: Any, data_dir: Path | None = None) -> list[Source]:
    """The stores the settings name, each with the envelope factory its relay publishes with."""
    sources = []
    for service, module_name, class_name in SERVICES:
        try:
            wiring = importlib.import_module(f"services.{service}.main")
            app_class = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        published = getattr(wiring, "PUBLISHED", None)
        if not published:
            continue
        aliases = getattr(wiring, "ENVELOPE_ALIASES", ALIASES.get(service))
        app = app_class(settings.store_env(service, data_dir))
        sources.append(Source(service, app, envelope_factory(app, service, published, aliases)))
    return sources


def merged(sources: Sequence[Source]) -> Iterator[EventEnvelope]:
    """Every store's envelopes, in the order they happened; each store's own order kept."""
    return heapq.merge(*(source.envelopes() for source in sources),
                       key=lambda env: (env.occurred_at, env.service, env.position))


@dataclass
class RebuildResult:
    views: list[str]
    events: int = 0
    seconds: float = 0.0
    read: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


def rebuild(db: ViewDatabase, projector: Projector, views: Sequence[View],
            sources: Sequence[Source]) -> RebuildResult:
    """Drop ``views``, replay every source into them, record how far each source was read."""
    started = time.perf_counter()
    result = RebuildResult(views=[v.name for v in views])
    with db.transaction() as tx:
        for view in views:
            view.drop(tx)
            view.create(tx)
            tx.execute("DELETE FROM view_positions WHERE view = ?", (view.name,))
            tx.execute("INSERT INTO view_meta (view, version) VALUES (?, ?) ON CONFLICT (view)"
                       " DO UPDATE SET version = excluded.version", (view.name, view.version))
        result.events = projector.replay(tx, merged(sources), views)
        for view in views:
            for source in sources:
                tx.execute("INSERT INTO view_positions (view, service, upto) VALUES (?, ?, ?)",
                           (view.name, source.service, source.last))
    projector.rebuilt(result.views)
    result.seconds = time.perf_counter() - started
    result.read = {source.service: source.read for source in sources}
    log.info("views_rebuilt", views=result.views, events=result.events, read=result.read,
             seconds=round(result.seconds, 3), events_per_second=round(result.rate))
    return result


def rebuild_offline(settings: Any, names: Sequence[str] = (),
                    data_dir: Path | None = None) -> RebuildResult:
    """Rebuild in this process, against the stores and views database ``settings`` name (safe
    beside a running projections service: writers of the views database take turns)."""
    db = open_view_database(settings, data_dir)
    try:
        projector = Projector(db)
        views = select_views(names)
        sources = open_sources(settings, data_dir)
        try:
            return rebuild(db, projector, views, sources)
        finally:
            for source in sources:
                source.close()
    finally:
        db.close()
