"""Rebuilding views from the event stores, the source of truth.

Each service's notification log is read straight from its store (eventsourcing
``select_notifications``) and turned into envelopes by the same factory its outbox relay
publishes with (``envelope_factory`` with the ``PUBLISHED`` set of ``services/<name>/main.py``),
so a replayed event is the event the live projector received. The logs are merged in the order
the events happened (each log keeps its own order), and folded into freshly created tables in
one transaction: readers see the old view until the new one is complete, and a rebuild that
fails leaves the old view as it was. Secondary indexes are built once the rows are in.

Large stores are read by one worker process per store while this process folds the events
into the views (the two halves of the work then run on two cores); the workers run the same
reading code and send the envelopes as JSON lines over a pipe.
"""

from __future__ import annotations

import heapq
import importlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Protocol

from contracts.events import EventEnvelope, Service
from projections.db import ViewDatabase, open_view_database
from projections.projector import Projector, View, select_views
from projections.retention import forget_archived
from services.common.integration import envelope_factory
from services.common.logging import get_logger

log = get_logger(__name__)

#: The services whose stores are replayed: (service, module, application class). The events
#: each publishes are its ``services/<service>/main.py`` ``PUBLISHED``; a service that is not
#: installed is skipped.
SERVICES: tuple[tuple[Service, str, str], ...] = (
    ("workflow", "services.workflow.application", "WorkflowService"),
    ("interaction", "services.interaction.application", "InteractionService"),
    ("timeout", "services.timeout.application", "TimeoutService"),
)
#: Notifications read from a store per query.
PAGE = 1000
#: Stores holding more notifications than this (together) are read by worker processes.
PARALLEL_FROM = 20_000
#: Envelopes per frame from a worker.
WORKER_CHUNK = 500


class EventSource(Protocol):
    service: str
    #: Highest notification id read (internal events included), and how many were read.
    last: int
    read: int

    def envelopes(self) -> Iterator[EventEnvelope]: ...

    def close(self) -> None: ...


@dataclass
class Source:
    """One service's event store and the factory its relay converts events with."""

    service: str
    app: Any
    to_envelope: Any
    last: int = 0
    read: int = 0

    def size(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)

    def envelopes(self) -> Iterator[EventEnvelope]:
        recorder = self.app.recorder
        mapper = self.app.mapper
        to_envelope = self.to_envelope
        while True:
            batch = recorder.select_notifications(self.last + 1, PAGE)
            if not batch:
                return
            for notification in batch:
                envelope = to_envelope(mapper.to_domain_event(notification), notification.id)
                if envelope is not None:
                    yield envelope
            self.last = batch[-1].id
            self.read += len(batch)

    def close(self) -> None:
        self.app.close()


class WorkerSource:
    """A :class:`Source` read by a worker process (``python -m projections.rebuild_worker``);
    its envelopes arrive over the worker's stdout as frames of JSON lines, in the store's
    order. The settings go over its stdin (credentials never appear in a process listing)."""

    def __init__(self, settings: Any, data_dir: Path | None, service: str) -> None:
        self.service = service
        self.last = 0
        self.read = 0
        self._process = subprocess.Popen(
            [sys.executable, "-m", "projections.rebuild_worker", service,
             str(data_dir) if data_dir else ""],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(settings.model_dump_json().encode())
        self._process.stdin.close()
        self._stdout = self._process.stdout

    def _frame(self) -> tuple[bytes, bytes]:
        head = self._stdout.read(5)
        if len(head) < 5:
            self._process.wait()
            raise RuntimeError(f"the worker reading the {self.service} store stopped "
                               f"(exit code {self._process.returncode})")
        size = int.from_bytes(head[1:], "big")
        return head[:1], self._stdout.read(size)

    def envelopes(self) -> Iterator[EventEnvelope]:
        while True:
            kind, body = self._frame()
            if kind == b"E":
                for line in body.split(b"\n"):
                    yield _decode(line)
            elif kind == b"S":
                stats = json.loads(body)
                self.last, self.read = int(stats["last"]), int(stats["read"])
                return
            else:
                raise RuntimeError(f"reading the {self.service} store failed: "
                                   f"{body.decode(errors='replace')}")

    def close(self) -> None:
        self._stdout.close()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def frame(kind: bytes, body: bytes) -> bytes:
    """One message from a worker: its kind (E envelopes, S stats, X error), length, body."""
    return kind + len(body).to_bytes(4, "big") + body


def _decode(line: bytes) -> EventEnvelope:
    """An envelope a worker made and validated (so not validated a second time)."""
    data = json.loads(line)
    data["occurred_at"] = datetime.fromisoformat(data["occurred_at"])
    return EventEnvelope.model_construct(**data)


def read_in_worker(settings: Any, data_dir: Path | None, service: str, out: IO[bytes]) -> None:
    """What a worker process does: read one store, write its envelopes, then how far it read."""
    try:
        # the parent opened every store before starting the workers: no table to create, and
        # workers creating them at once collide on PostgreSQL ("tuple concurrently updated")
        for source in open_sources(settings, data_dir, only=(service,), parallel=False,
                                   create_tables=False):
            try:
                chunk: list[str] = []
                for envelope in source.envelopes():
                    chunk.append(envelope.model_dump_json())
                    if len(chunk) == WORKER_CHUNK:
                        out.write(frame(b"E", "\n".join(chunk).encode()))
                        chunk = []
                if chunk:
                    out.write(frame(b"E", "\n".join(chunk).encode()))
                out.write(frame(b"S", json.dumps({"last": source.last,
                                                  "read": source.read}).encode()))
            finally:
                source.close()
    except Exception as error:
        out.write(frame(b"X", repr(error).encode()))
    out.flush()


def open_sources(settings: Any, data_dir: Path | None = None, *,
                 only: Sequence[str] | None = None,
                 parallel: bool | None = None,
                 create_tables: bool = True) -> list[EventSource]:
    """The stores the settings name, each with the envelope factory its relay publishes with.

    ``parallel`` (by default: when the stores hold more than :data:`PARALLEL_FROM`
    notifications) reads each store in a worker process.
    """
    sources: list[Source] = []
    for service, module_name, class_name in SERVICES:
        if only is not None and service not in only:
            continue
        try:
            wiring = importlib.import_module(f"services.{service}.main")
            app_class = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        published = getattr(wiring, "PUBLISHED", None)
        if not published:
            continue
        # the same payload renames the service's relay uses
        aliases = getattr(wiring, "ENVELOPE_ALIASES", None)
        env = settings.store_env(service, data_dir)
        if not create_tables:
            env["CREATE_TABLE"] = "false"
        app = app_class(env)
        sources.append(Source(service, app, envelope_factory(app, service, published, aliases)))
    if parallel is None:
        parallel = sum(source.size() for source in sources) > PARALLEL_FROM
    if not parallel:
        return list(sources)
    for source in sources:
        source.close()
    return [WorkerSource(settings, data_dir, source.service) for source in sources]


def merged(sources: Sequence[EventSource]) -> Iterator[EventEnvelope]:
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
            sources: Sequence[EventSource]) -> RebuildResult:
    """Drop ``views``, replay every source into them, record how far each source was read."""
    started = time.perf_counter()
    result = RebuildResult(views=[v.name for v in views])
    with db.transaction() as tx:
        tx.tune_for_bulk()
        for view in views:
            view.drop(tx)
            view.create(tx, indexes=False)
            tx.execute("DELETE FROM view_positions WHERE view = ?", (view.name,))
            tx.execute("INSERT INTO view_meta (view, version) VALUES (?, ?) ON CONFLICT (view)"
                       " DO UPDATE SET version = excluded.version", (view.name, view.version))
        result.events = projector.replay(tx, merged(sources), views)
        forget_archived(tx)  # archived threads stay out of the thread views
        replayed = time.perf_counter()
        for view in views:
            view.index(tx)
            for source in sources:
                tx.execute("INSERT INTO view_positions (view, service, upto) VALUES (?, ?, ?)",
                           (view.name, source.service, source.last))
        indexed = time.perf_counter()
    projector.rebuilt(result.views)
    result.seconds = time.perf_counter() - started
    result.read = {source.service: source.read for source in sources}
    log.info("views_rebuilt", views=result.views, events=result.events, read=result.read,
             seconds=round(result.seconds, 3), events_per_second=round(result.rate),
             replay_seconds=round(replayed - started, 3),
             index_seconds=round(indexed - replayed, 3),
             commit_seconds=round(result.seconds - (indexed - started), 3))
    return result


def rebuild_from_stores(db: ViewDatabase, projector: Projector, settings: Any,
                        names: Sequence[str] = (), data_dir: Path | None = None,
                        parallel: bool | None = None) -> RebuildResult:
    """Open the stores ``settings`` name, rebuild the views named (all: none), close them."""
    views = select_views(names)
    sources = open_sources(settings, data_dir, parallel=parallel)
    try:
        return rebuild(db, projector, views, sources)
    finally:
        for source in sources:
            source.close()


def rebuild_offline(settings: Any, names: Sequence[str] = (),
                    data_dir: Path | None = None) -> RebuildResult:
    """Rebuild in this process, against the stores and views database ``settings`` name (safe
    beside a running projections service: writers of the views database take turns)."""
    db = open_view_database(settings, data_dir)
    try:
        return rebuild_from_stores(db, Projector(db), settings, names, data_dir)
    finally:
        db.close()
