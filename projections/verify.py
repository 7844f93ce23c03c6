"""``hitlflow audit verify``: recompute every thread's hash chains from the event stores and
compare them with the links the projections anchored as the events arrived
(:mod:`projections.chain`).

For each ``(thread, service)`` the store's events are taken in log order and chained; walking
the anchored links alongside, the first one that differs is reported:

- ``content``: the event at that position is there but its record is not the one anchored (a
  value, time, type or version was changed), or it cannot be read any more (its encrypted
  state was altered);
- ``order``: the event at that position is another event (type or version) than anchored;
- ``missing``: an anchored event is no longer in the store (deleted; deleting the last events
  of a thread shows here too, since the anchors go on);
- ``inserted``: the store has an event of the thread between anchored ones that was never
  anchored.

Events after the last anchored link of a chain (not yet applied by the projections) are
counted as ``unanchored``, not as a difference.
"""

from __future__ import annotations

import importlib
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.events import EventEnvelope, Service
from projections import chain
from projections.db import ViewDatabase, open_view_database
from projections.rebuild import PAGE, SERVICES
from services.common.integration import envelope_factory


class VerifyError(RuntimeError):
    """A store or the anchors cannot be read at all (missing, unreachable, wrong key)."""


@dataclass(frozen=True)
class Link:
    position: int
    event_type: str
    aggregate_version: int
    hash: str


@dataclass
class Difference:
    thread_id: str
    service: str
    #: content, order, missing or inserted.
    kind: str
    position: int
    event_type: str
    detail: str

    def describe(self) -> str:
        return (f"thread {self.thread_id!r}: {self.service} event at position {self.position} "
                f"({self.event_type}): {self.kind}: {self.detail}")


@dataclass
class VerifyReport:
    threads: int = 0
    events: int = 0
    #: Notifications read from the stores (every thread's, internal events included).
    read: int = 0
    unanchored: int = 0
    seconds: float = 0.0
    differences: list[Difference] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.differences

    @property
    def rate(self) -> float:
        return self.read / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Computed:
    links: list[Link] = field(default_factory=list)
    last_hash: str = ""


def _open_store(settings: Any, service: Service, data_dir: Path | None) -> tuple[Any, Any]:
    """The service's application (no read check: unreadable events are findings here) and
    its envelope factory."""
    published_module = importlib.import_module(f"services.{service}.published")
    module, class_name = next((m, c) for s, m, c in SERVICES if s == service)
    app_class = getattr(importlib.import_module(module), class_name)
    if settings.persistence == "sqlite":
        path = (data_dir or settings.home / "stores") / f"{service}.sqlite"
        if not path.exists():
            raise VerifyError(f"no {service} store at {path}: is HITLFLOW_HOME (or --home) the "
                              "stack's data directory?")
    env = settings.store_env(service, data_dir)
    env.update(CHECK_READABLE="false", CREATE_TABLE="false")
    try:
        app = app_class(env)
        app.recorder.max_notification_id()
    except Exception as error:
        raise VerifyError(f"the {service} store cannot be read: {type(error).__name__}: "
                          f"{error}") from None
    converter = getattr(published_module, "to_envelope", None)
    if converter is None:
        converter = envelope_factory(app, service, published_module.PUBLISHED,
                                     getattr(published_module, "ENVELOPE_ALIASES", None))
    return app, converter


def _events(app: Any, to_envelope: Any, report: VerifyReport,
            unreadable: dict[int, str]) -> Iterator[EventEnvelope]:
    recorder, mapper = app.recorder, app.mapper
    start = 1
    while True:
        batch = recorder.select_notifications(start, PAGE)
        if not batch:
            return
        for notification in batch:
            report.read += 1
            try:
                envelope = to_envelope(mapper.to_domain_event(notification), notification.id)
            except Exception as error:
                unreadable[notification.id] = f"{type(error).__name__}: {error}"[:300]
                continue
            if envelope is not None:
                yield envelope
        start = batch[-1].id + 1


def _anchors(db: ViewDatabase, thread_id: str | None) -> dict[tuple[str, str], list[Link]]:
    columns = "SELECT thread_id, service, position, event_type, aggregate_version, hash"
    order = " ORDER BY thread_id, service, seq"
    rows = (db.stream(columns + " FROM audit_chain WHERE thread_id = ?" + order, (thread_id,))
            if thread_id else db.stream(columns + " FROM audit_chain" + order))
    anchors: dict[tuple[str, str], list[Link]] = defaultdict(list)
    for row in rows:
        anchors[(row["thread_id"], row["service"])].append(Link(
            int(row["position"]), str(row["event_type"]), int(row["aggregate_version"]),
            str(row["hash"])))
    return anchors


def verify(settings: Any, thread_id: str | None = None, data_dir: Path | None = None,
           db: ViewDatabase | None = None) -> VerifyReport:
    """Recompute the chains from the stores; compare them with the anchors."""
    started = time.perf_counter()
    report = VerifyReport()
    stores = [(service, *_open_store(settings, service, data_dir)) for service, _, _ in SERVICES]
    own_db = db is None
    try:
        views = db or open_view_database(settings, data_dir)
        with views.transaction() as tx:
            chain.create(tx)
    except Exception as error:
        for _, app, _ in stores:
            app.close()
        raise VerifyError(f"the views database (the anchors) cannot be opened: {error}") from None
    try:
        anchors = _anchors(views, thread_id)
        computed: dict[tuple[str, str], _Computed] = defaultdict(_Computed)
        unreadable: dict[str, dict[int, str]] = {}
        for service, app, to_envelope in stores:
            bad = unreadable[service] = {}
            read_before = report.read
            try:
                for env in _events(app, to_envelope, report, bad):
                    if thread_id is not None and env.thread_id != thread_id:
                        continue
                    chain_of = computed[(env.thread_id, service)]
                    chain_of.last_hash = chain.link(chain_of.last_hash, env)
                    chain_of.links.append(Link(env.position, env.event_type,
                                               env.aggregate_version, chain_of.last_hash))
            finally:
                app.close()
            if report.read > read_before and len(bad) == report.read - read_before:
                raise VerifyError(f"no event of the {service} store can be read (a wrong key?): "
                                  f"{next(iter(bad.values()))}")
        keys = sorted(set(anchors) | set(computed))
        report.threads = len({thread for thread, _ in keys})
        for key in keys:
            found = computed[key].links if key in computed else []
            report.events += len(found)
            difference, unanchored = _compare(key, anchors.get(key, []), found,
                                              unreadable[key[1]])
            report.unanchored += unanchored
            if difference is not None:
                report.differences.append(difference)
    finally:
        for _, app, _ in stores:
            app.close()
        if own_db:
            views.close()
    if thread_id is not None and not report.threads:
        raise VerifyError(f"unknown thread {thread_id!r}: no event of it in the stores, no "
                          "anchor of it in the views")
    report.seconds = time.perf_counter() - started
    return report


def _compare(key: tuple[str, str], anchored: list[Link], found: list[Link],
             unreadable: dict[int, str]) -> tuple[Difference | None, int]:
    """The first difference between the anchored links and the ones from the store, and how
    many events of the store come after the last anchor."""
    thread_id, service = key
    last_anchored = anchored[-1].position if anchored else 0
    positions = {link.position for link in found}
    i = j = 0
    while i < len(anchored):
        expected = anchored[i]
        actual = found[j] if j < len(found) else None
        if actual is not None and actual.position < expected.position:
            return Difference(thread_id, service, "inserted", actual.position,
                              actual.event_type, "the store has an event here that was never "
                              "anchored"), 0
        if actual is None or actual.position > expected.position:
            if expected.position in unreadable:
                return Difference(thread_id, service, "content", expected.position,
                                  expected.event_type, "the stored event cannot be read (its "
                                  f"encrypted state was altered): "
                                  f"{unreadable[expected.position]}"), 0
            return Difference(thread_id, service, "missing", expected.position,
                              expected.event_type, "the anchored event is not in the store "
                              f"(deleted; {len(anchored) - i} anchored event(s) from here "
                              "are missing)" if expected.position not in positions else
                              "not found"), 0
        if (actual.event_type, actual.aggregate_version) != (expected.event_type,
                                                             expected.aggregate_version):
            return Difference(thread_id, service, "order", expected.position,
                              expected.event_type, f"anchored as {expected.event_type} "
                              f"v{expected.aggregate_version}, the store has "
                              f"{actual.event_type} v{actual.aggregate_version} there"), 0
        if actual.hash != expected.hash:
            return Difference(thread_id, service, "content", expected.position,
                              expected.event_type, "the stored event differs from the one "
                              "anchored (its record's hash does not match)"), 0
        i += 1
        j += 1
    return None, sum(1 for link in found if link.position > last_anchored)
