"""Rebuilding views from the event stores, the source of truth.

Each service's notification log is read straight from its store (eventsourcing
``select_notifications``) and turned into envelopes by the same factory its outbox relay
publishes with (``envelope_factory`` with the ``PUBLISHED`` set of
``services/<name>/published.py``), so a replayed event is the event the live projector
received. The logs are merged in the order the events happened (each log keeps its own order: a
thread's hash chain for a service follows it), and folded into freshly created tables in one
transaction, into new tables (``<table>__rebuild``) that replace the old ones at its end:
readers see the old view until the new one is complete, on PostgreSQL too, and a rebuild that
fails leaves the old view as it was. The views fold a chunk of events at a time in memory and
write each row the chunk changed once (``projections/rows.py``); rows that nothing reads while
events are folded (the timeline, the audit trail) are written in bulk; secondary indexes are
built once the rows are in.

Large stores are read by worker processes (a store by one or more, a block of its log each in
turn, so that every core has work) while this process folds the events into the views; the
workers run the same reading code, write what needs no view state (each event's time, payload
JSON and audit record) and send the events over a pipe, a JSON array per chunk.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import importlib
import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, cast

import orjson

from contracts.events import Service
from contracts.jsontext import loads as json_loads
from projections import chain
from projections.db import Tx, ViewDatabase, open_view_database, when
from projections.event import Event, Replayed, moment, payload_json
from projections.projector import Projector, View, select_views
from projections.retention import forget_archived
from services.common.integration import EventParts, envelope_factory, event_parts
from services.common.logging import get_logger
from services.common.output import WholeWriter

log = get_logger(__name__)

#: The services whose stores are replayed: (service, module, application class). The events
#: each publishes are its ``services/<service>/published.py`` ``PUBLISHED``; a service that is
#: not installed is skipped.
SERVICES: tuple[tuple[Service, str, str], ...] = (
    ("workflow", "services.workflow.application", "WorkflowService"),
    ("interaction", "services.interaction.application", "InteractionService"),
    ("timeout", "services.timeout.application", "TimeoutService"),
)
#: Notifications read from a store per query.
PAGE = 5000
#: Stores holding more notifications than this (together) are read by worker processes.
PARALLEL_FROM = 20_000
#: Events per frame from a worker, and frames taken off its pipe before they are folded.
WORKER_CHUNK = 1000
FRAMES_AHEAD = 16
#: Suffix of the tables a rebuild fills before they replace the view's tables.
NEW = "__rebuild"
#: How often (seconds) a rebuild reports its progress, at most.
PROGRESS_EVERY = 0.25

#: Told (events replayed so far, notifications in the stores) while a rebuild runs.
Progress = Callable[[int, int], None]


class EventSource(Protocol):
    service: str
    #: Highest notification id read (internal events included), and how many were read.
    last: int
    read: int
    #: The threads erased in the store (their data keys destroyed) when it was opened.
    erased: frozenset[str]

    def size(self) -> int: ...

    def envelopes(self) -> Iterator[Event]: ...

    def close(self) -> None: ...


@dataclass
class Source:
    """One service's event store and the factory its relay converts events with (``parts``:
    the same conversion, without what no view reads: the event and aggregate ids)."""

    service: str
    app: Any
    to_envelope: Any
    parts: EventParts
    last: int = 0
    read: int = 0
    erased: frozenset[str] = frozenset()

    def size(self) -> int:
        return int(self.app.recorder.max_notification_id() or 0)

    def envelopes(self) -> Iterator[Event]:
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


@dataclass
class EmptySource:
    """A store that held no notification when the rebuild began."""

    service: str
    last: int = 0
    read: int = 0
    erased: frozenset[str] = frozenset()

    def size(self) -> int:
        return 0

    def envelopes(self) -> Iterator[Event]:
        return iter(())

    def close(self) -> None:
        pass


class WorkerSource:
    """A :class:`Source` read by a worker process (``python -m projections.rebuild_worker``):
    the events of the blocks ``part``, ``part + parts``, … of its log (``block``
    notifications each) up to ``stop``, in
    the store's order, as frames over the worker's stdout (a JSON array of :func:`_row` per
    frame). The settings go over its
    stdin (credentials never appear in a process listing)."""

    def __init__(self, settings: Any, data_dir: Path | None, service: str, *, part: int = 0,
                 parts: int = 1, block: int = PAGE, stop: int = 0, size: int = 0,
                 anchored: int = 0, erased: frozenset[str] = frozenset()) -> None:
        self.service = service
        self.last = 0
        self.read = 0
        self.erased = erased
        self._size = size
        self._process = subprocess.Popen(
            [sys.executable, "-m", "projections.rebuild_worker", service,
             str(data_dir) if data_dir else "", str(part), str(parts), str(block), str(stop),
             str(anchored)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(settings.model_dump_json().encode())
        self._process.stdin.close()
        self._stdout = self._process.stdout
        # frames are taken off the pipe as they come (a thread, outside the GIL while it
        # waits), so the worker never waits for the merge to want its events
        self._frames: queue.Queue[tuple[bytes, bytes]] = queue.Queue(maxsize=FRAMES_AHEAD)
        self._reader = threading.Thread(target=self._drain, daemon=True,
                                        name=f"rebuild-{service}-{part}")
        self._reader.start()

    def size(self) -> int:
        return self._size

    def _drain(self) -> None:
        while True:
            got = read_frame(self._stdout)
            if got is None:
                self._process.wait()
                self._frames.put((b"X", f"the worker reading the {self.service} store stopped "
                                        f"(exit code {self._process.returncode})".encode()))
                return
            self._frames.put(got)
            if got[0] not in (b"E", b"B"):  # events go on; stats or an error end it
                return

    def envelopes(self) -> Iterator[Event]:
        for block in self.blocks():
            yield from block

    def blocks(self) -> Iterator[list[Event]]:
        """The events of each block this worker read, a list per block, in its order."""
        make = Replayed
        block: list[Event] = []
        while True:
            kind, body = self._frames.get()
            if kind in (b"E", b"B"):
                block.extend(
                    make(event_type, service, thread_id, aggregate_id, position, version,
                         json_loads(text), text, at, at_ts, record)
                    for event_type, service, thread_id, aggregate_id, position, version, at,
                    at_ts, text, record in orjson.loads(body))
                if kind == b"B":
                    yield block
                    block = []
            elif kind == b"S":
                stats = json.loads(body)
                self.last, self.read = int(stats["last"]), int(stats["read"])
                return
            else:
                raise RuntimeError(f"reading the {self.service} store failed: "
                                   f"{body.decode(errors='replace')}")

    def close(self) -> None:
        if self._process.poll() is None:  # stopped early (a failed rebuild): not read to the end
            self._process.kill()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        while self._reader.is_alive():  # it may wait to hand over a frame nobody takes
            with contextlib.suppress(queue.Empty):
                self._frames.get(timeout=0.1)
        self._stdout.close()


def frame(kind: bytes, body: bytes) -> bytes:
    """One message from a worker: its kind (E events, B the events ending a block, S stats,
    X error), length, body."""
    return kind + len(body).to_bytes(4, "big") + body


def read_frame(stream: IO[bytes]) -> tuple[bytes, bytes] | None:
    """The next :func:`frame` on ``stream`` as (kind, body); None at its end (or at a frame
    cut off by it)."""
    head = stream.read(5)
    if len(head) < 5:
        return None
    size = int.from_bytes(head[1:], "big")
    body = stream.read(size)
    return None if len(body) < size else (head[:1], body)


def _row(source: Source, notification: Any, anchored: int) -> tuple[Any, ...] | None:
    """A notification as a worker sends it, converted as the relay converts it: event type,
    service, thread, aggregate, position, version, time (ISO text and seconds), the payload's
    compact JSON and, for an event past ``anchored`` (the last position of the service's log
    anchored already), its audit record (else None)."""
    event = source.app.mapper.to_domain_event(notification)
    parts = source.parts(event)
    if parts is None:
        return None
    event_type, thread_id, payload = parts
    at, at_ts = when(event.timestamp)
    aggregate_id, text = str(event.originator_id), payload_json(payload)
    record = None
    if notification.id > anchored:  # not anchored yet: its audit record
        record = chain.record(Replayed(event_type, source.service, thread_id, aggregate_id,
                                       notification.id, event.originator_version, payload,
                                       text, at, at_ts), at)
    return (event_type, source.service, thread_id, aggregate_id, notification.id,
            event.originator_version, at, at_ts, text, record)


def _parts_of(to_envelope: Any) -> EventParts:
    """:data:`EventParts` from a whole envelope factory."""

    def parts(event: Any) -> tuple[str, str, dict[str, Any]] | None:
        envelope = to_envelope(event, 0)
        return None if envelope is None else (envelope.event_type, envelope.thread_id,
                                              envelope.payload)

    return parts


class _CollectorPauses:
    """Pauses of Python's cyclic garbage collector that may overlap (two threads of a process
    rebuilding at once): it runs again when the last ends, if it ran when the first began."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open = 0
        self._was_enabled = False

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            if not self._open:
                self._was_enabled = gc.isenabled()
                gc.disable()
            self._open += 1
        try:
            yield
        finally:
            with self._lock:
                self._open -= 1
                if not self._open and self._was_enabled:
                    gc.enable()


#: Python's cyclic garbage collector paused while a rebuild folds, or a worker reads. Both keep
#: many objects alive (rows in memory, events on their way, the threads' data keys), which
#: every collection walks again: at a million events a third of the main process's CPU.
#: Neither makes reference cycles (``tests/service/test_projections_rebuild_gc.py``), so no
#: garbage waits for the collector meanwhile; reference counting frees everything as before.
#: (In the projections service, whatever else the process does meanwhile runs without the
#: collector too; its cycles are collected when the rebuild ends.)
cyclic_gc_paused = _CollectorPauses()


def _read_blocks(source: Source, out: WholeWriter, part: int, parts: int, block: int,
                 stop: int, anchored: int) -> None:
    """Write the events of the blocks ``part``, ``part + parts``, … (see
    :func:`read_in_worker`), a frame of 1,000 events at a time, each block ending with a B
    frame."""
    recorder = source.app.recorder
    keys = getattr(source.app, "thread_keys", None)
    if keys is not None:  # the threads' data keys at once, not one query each
        keys.preload()
    chunk: list[tuple[Any, ...]] = []
    for low in range(1 + part * block, stop + 1, parts * block):
        batch = recorder.select_notifications(low, block, stop=min(low + block - 1, stop))
        for notification in batch:
            row = _row(source, notification, anchored)
            if row is None:
                continue
            chunk.append(row)
            if len(chunk) == WORKER_CHUNK:
                out.write(frame(b"E", orjson.dumps(chunk)))
                chunk = []
        # every block ends with a B frame (empty when it held no published event): the
        # blocks of the store's workers are taken by turns (see merged())
        out.write(frame(b"B", orjson.dumps(chunk)))
        chunk = []
        source.read += len(batch)


def read_in_worker(settings: Any, data_dir: Path | None, service: str, out: WholeWriter, *,
                   part: int = 0, parts: int = 1, block: int = PAGE, stop: int = 0,
                   anchored: int = 0) -> None:
    """What a worker process does: read the blocks ``part``, ``part + parts``, … of one
    store's notifications (``block`` each, the notifications 1 to ``stop``), write their
    events (with their audit records past ``anchored``) in the log's order, then how far the
    workers of the store read together (``stop``)."""
    try:
        # the parent opened every store before starting the workers: no table to create, and
        # workers creating them at once collide on PostgreSQL ("tuple concurrently updated")
        for source in open_sources(settings, data_dir, only=(service,), parallel=False,
                                   create_tables=False):
            assert isinstance(source, Source)
            try:
                with cyclic_gc_paused():
                    _read_blocks(source, out, part, parts, block, stop, anchored)
                source.last = stop
                out.write(frame(b"S", json.dumps({"last": source.last,
                                                  "read": source.read}).encode()))
            finally:
                source.close()
    except Exception as error:
        out.write(frame(b"X", repr(error).encode()))
    out.flush()


def _readers() -> int:
    """Worker processes that read the stores: one per core. (With this process folding
    beside them the cores are busy already; one reader more cost its start-up and a share of
    the cores' switching: at a million events on 2 cores, 3 readers took 47.7 to 49.5 s, 2 took
    46.4 to 47.0 s.)"""
    return os.cpu_count() or 2


def open_sources(settings: Any, data_dir: Path | None = None, *,
                 only: Sequence[str] | None = None,
                 parallel: bool | None = None,
                 create_tables: bool = True,
                 anchored: dict[str, int] | None = None) -> list[EventSource]:
    """The stores the settings name, each with the envelope factory its relay publishes with.

    ``parallel`` (by default: when the stores hold more than :data:`PARALLEL_FROM`
    notifications) reads each store in a worker process; the workers write the audit records
    of the events past ``anchored[service]`` (the hash chains' last anchored positions).
    """
    sources: list[Source] = []
    for service, module_name, class_name in SERVICES:
        if only is not None and service not in only:
            continue
        try:
            published_module = importlib.import_module(f"services.{service}.published")
            app_class = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError):
            continue
        published = getattr(published_module, "PUBLISHED", None)
        if not published:
            continue
        env = settings.store_env(service, data_dir)
        if not create_tables:
            env["CREATE_TABLE"] = "false"
        app = app_class(env)
        # the relay's own conversion: a service's ``to_envelope`` when it has one
        # (the timeout service's renames event types), else the shared factory with the same
        # payload renames the service's relay uses
        own = getattr(published_module, "to_envelope", None)
        if callable(own):
            source = Source(service, app, own, _parts_of(own))
        else:
            aliases = getattr(published_module, "ENVELOPE_ALIASES", None)
            source = Source(service, app, envelope_factory(app, service, published, aliases),
                            event_parts(app, service, published, aliases))
        keys = getattr(app, "thread_keys", None)
        if keys is not None:
            source.erased = frozenset(keys.erased())
        sources.append(source)
    sizes = {source.service: source.size() for source in sources}
    erased = {source.service: source.erased for source in sources}
    if parallel is None:
        parallel = sum(sizes.values()) > PARALLEL_FROM
    if not parallel:
        return list(sources)
    for source in sources:
        source.close()
    # a large store is read by several workers, a block of its log each in turn: their events
    # are merged back into the log's order (see :func:`merged`), and all are busy meanwhile
    total = sum(sizes.values()) or 1
    workers: list[EventSource] = []
    for name, size in sizes.items():
        if not size:  # nothing to read: no process started for it
            workers.append(EmptySource(name, erased=erased[name]))
            continue
        parts = max(1, min(round(_readers() * size / total), -(-size // PAGE)))
        workers.extend(
            WorkerSource(settings, data_dir, name, part=part, parts=parts, block=PAGE,
                         stop=size, size=size // parts, anchored=(anchored or {}).get(name, 0),
                         erased=erased[name])
            for part in range(parts))
    return workers


def merged(sources: Sequence[EventSource]) -> Iterator[Event]:
    """Every store's envelopes, each store's in the order of its log (the order its relay
    publishes them in: a thread's hash chain for a service follows it), the stores' merged by
    the time their events happened."""
    logs: dict[str, list[EventSource]] = {}
    for source in sources:
        logs.setdefault(source.service, []).append(source)
    # ISO text in UTC with microseconds (``at``) sorts as the times do
    # (a store is read by several sources only when workers read it)
    return heapq.merge(*(log[0].envelopes() if len(log) == 1
                         else in_turns(cast(list[WorkerSource], log)) for log in logs.values()),
                       key=lambda env: (moment(env)[0], env.service, env.position))


def in_turns(workers: Sequence[WorkerSource]) -> Iterator[Event]:
    """The events of one store read by several workers, in the log's order: block ``k`` of the
    log is the ``k // len(workers)``-th block of worker ``k % len(workers)`` (see
    :func:`read_in_worker`), so the blocks are taken from the workers by turns."""
    blocks = [worker.blocks() for worker in workers]
    while True:
        for turn, worker_blocks in enumerate(blocks):
            block = next(worker_blocks, None)
            if block is None:  # the log ends here: the later workers have no block either
                for rest in blocks[turn + 1:] + blocks[:turn]:
                    if next(rest, None) is not None:
                        raise RuntimeError("a rebuild worker read past the end of its store")
                return
            yield from block


@dataclass
class RebuildResult:
    views: list[str]
    events: int = 0
    seconds: float = 0.0
    read: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class _Reporter:
    """Calls ``progress`` at most every :data:`PROGRESS_EVERY` seconds, and at the end."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self._progress = progress
        self.total = total
        self._next = 0.0

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if self._progress is not None and now >= self._next:
            self._next = now + PROGRESS_EVERY
            self._progress(done, max(self.total, done))

    def finished(self, done: int) -> None:
        if self._progress is not None:
            self._progress(done, done)


def _index_names(view: View) -> list[str]:
    return [m.group(1) for statement in view.indexes
            if (m := re.search(r"INDEX IF NOT EXISTS (\w+)", statement))]


@contextlib.contextmanager
def _dropped_unzeroed(tx: Tx, views: Sequence[View], erased: set[str]) -> Iterator[None]:
    """Before the old tables of ``views`` are dropped within (SQLite): delete the rows of the
    ``erased`` threads from them, their bytes zeroed (``secure_delete``, on for the views), then
    turn zeroing off until the end.

    Dropping a table with ``secure_delete`` on writes zeros over every page it held: at a
    million events, six seconds of the main process and 400 MB more to the write-ahead log,
    the largest part of a rebuild's swap. Once the erased threads' rows are gone (their
    values, had the views not been erased with the stores, would otherwise stay in the file's
    free pages), the old tables hold only what the new ones hold again, and no byte of them
    needs zeroing."""
    if erased:
        tx.execute("CREATE TEMP TABLE IF NOT EXISTS rebuild_erased (thread_id TEXT PRIMARY KEY)")
        tx.execute("DELETE FROM temp.rebuild_erased")
        tx.executemany("INSERT INTO temp.rebuild_erased (thread_id) VALUES (?)",
                       [(thread,) for thread in sorted(erased)])
        for view in views:
            for table in view.tables:
                columns = {row["name"] for row in tx.all(f"PRAGMA table_info({table})")}
                if "thread_id" in columns:
                    tx.execute(f"DELETE FROM {table} WHERE thread_id IN"  # noqa: S608
                               " (SELECT thread_id FROM temp.rebuild_erased)")
        tx.execute("DROP TABLE temp.rebuild_erased")
    tx.execute("PRAGMA secure_delete = OFF")
    try:
        yield
    finally:
        tx.execute("PRAGMA secure_delete = ON")


def _swap(tx: Tx, view: View, upto: dict[str, int], *, postgres: bool) -> None:
    """Replace the view's tables by the new ones (built by the rebuild, ``upto`` each
    service's position) within the rebuild's transaction."""
    view.drop(tx)
    for table in view.tables:
        tx.execute(f"ALTER TABLE {table}{NEW} RENAME TO {table}")
    if postgres:
        for name in _index_names(view):
            tx.execute(f"ALTER INDEX {name}{NEW} RENAME TO {name}")
    else:  # SQLite cannot rename an index: the fold's are built again, named right
        for name in view.lookups:
            tx.execute(f"DROP INDEX IF EXISTS {name}{NEW}")
        view.index(tx)
    tx.execute("DELETE FROM view_positions WHERE view = ?", (view.name,))
    tx.execute("INSERT INTO view_meta (view, version) VALUES (?, ?) ON CONFLICT (view)"
               " DO UPDATE SET version = excluded.version", (view.name, view.version))
    for service, last in upto.items():
        tx.execute("INSERT INTO view_positions (view, service, upto) VALUES (?, ?, ?)",
                   (view.name, service, last))


def rebuild(db: ViewDatabase, projector: Projector, views: Sequence[View],
            sources: Sequence[EventSource], progress: Progress | None = None) -> RebuildResult:
    """Replay every source into new tables of ``views``, which then replace the old ones;
    record how far each source was read. ``progress`` is told how far it got as it goes."""
    started = time.perf_counter()
    result = RebuildResult(views=[v.name for v in views])
    postgres = db.name == "postgres"
    renames = {table: f"{table}{NEW}" for view in views for table in view.tables}
    # PostgreSQL renames indexes: they are built before the swap. The indexes the fold reads
    # by are built before the rows on both engines, under new names too (the old view's
    # indexes still hold their own).
    renames.update({name: f"{name}{NEW}" for view in views
                    for name in (_index_names(view) if postgres else view.lookups)})
    report = _Reporter(progress, sum(source.size() for source in sources))
    upto: dict[str, int] = {}
    with db.transaction() as tx:
        tx.tune_for_bulk()
        tx.bulk(renames)
        for view in views:
            view.drop(tx)  # what a rebuild that was interrupted left (its __rebuild tables)
            view.create(tx, indexes=False)
            view.index_lookups(tx)
        tx.fresh_rows()  # the new tables are empty: a key not written yet has no row
        report(0)
        with cyclic_gc_paused():
            result.events = projector.replay(tx, merged(sources), views, report)
        forget_archived(tx)  # archived threads stay out of the (new) thread views
        replayed = time.perf_counter()
        if postgres:
            for view in views:
                view.index(tx)
        tx.bulk()  # the views' own tables again: swap
        for source in sources:  # a store read by several workers: how far they all got
            upto[source.service] = max(upto.get(source.service, 0), source.last)
        erased = set().union(*(source.erased for source in sources))
        with contextlib.nullcontext() if postgres else _dropped_unzeroed(tx, views, erased):
            for view in views:
                _swap(tx, view, upto, postgres=postgres)
        indexed = time.perf_counter()
    projector.rebuilt(result.views)
    result.seconds = time.perf_counter() - started
    for source in sources:  # a store read by several workers: what they read together
        result.read[source.service] = result.read.get(source.service, 0) + source.read
    report.finished(result.events)
    log.info("views_rebuilt", views=result.views, events=result.events, read=result.read,
             seconds=round(result.seconds, 3), events_per_second=round(result.rate),
             replay_seconds=round(replayed - started, 3),
             index_seconds=round(indexed - replayed, 3),
             commit_seconds=round(result.seconds - (indexed - started), 3))
    return result


def rebuild_from_stores(db: ViewDatabase, projector: Projector, settings: Any,
                        names: Sequence[str] = (), data_dir: Path | None = None,
                        parallel: bool | None = None,
                        progress: Progress | None = None) -> RebuildResult:
    """Open the stores ``settings`` name, rebuild the views named (all: none), close them."""
    views = select_views(names)
    sources = open_sources(settings, data_dir, parallel=parallel, anchored=chain.anchored(db))
    try:
        return rebuild(db, projector, views, sources, progress)
    finally:
        for source in sources:
            source.close()


def rebuild_offline(settings: Any, names: Sequence[str] = (), data_dir: Path | None = None,
                    progress: Progress | None = None) -> RebuildResult:
    """Rebuild in this process, against the stores and views database ``settings`` name (safe
    beside a running projections service: writers of the views database take turns)."""
    db = open_view_database(settings, data_dir)
    try:
        return rebuild_from_stores(db, Projector(db), settings, names, data_dir,
                                   progress=progress)
    finally:
        db.close()
