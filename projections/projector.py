"""Folds event envelopes into the views, exactly once per (service, position).

Live: a batch from the stream is applied in one transaction together with its tracking rows
and the stream sequence the consumer resumes from. Rebuild: the replayed events are applied
without per-event tracking; the view records instead how far into each service's log it got
(``view_positions``), and live events up to there are skipped for that view.

An event a view cannot fold (a payload it does not understand) is passed over, in the live
path and in a rebuild alike, so both end in the same state; the other events of its batch are
still applied. A rebuild logs it and goes on (``careful``); the live consumer applies with
``careful=False``, finds the event by applying the batch one event at a time, quarantines it
and records it as passed over (:meth:`Projector.skip`; see ``projections/main.py``). Errors a
retry may get past (a busy database, a lost connection) are raised for the caller to retry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import get_args

from contracts.events import EventEnvelope, Service
from projections import analytics, audit_trail, chain, thread_status
from projections.db import Tx, ViewDatabase
from projections.event import Event
from services.common.logging import get_logger

log = get_logger(__name__)

#: Events replayed between savepoints during a rebuild.
REPLAY_CHUNK = 2000


@dataclass(frozen=True)
class View:
    name: str
    version: int
    tables: tuple[str, ...]
    ddl: tuple[str, ...]
    indexes: tuple[str, ...]
    apply: Callable[[Tx, Event], None]
    #: Names of the ``indexes`` that ``apply`` itself reads by (a ``DELETE … WHERE`` on a
    #: column that is no key): a rebuild creates them before the rows, not after, or each
    #: such statement would scan the whole table (a rebuild quadratic in the events).
    lookups: tuple[str, ...] = ()

    def create(self, tx: Tx, *, indexes: bool = True) -> None:
        for statement in self.ddl:
            tx.execute(statement)
        if indexes:
            self.index(tx)

    def index(self, tx: Tx) -> None:
        for statement in self.indexes:
            tx.execute(statement)

    def index_lookups(self, tx: Tx) -> None:
        """Create only the indexes ``apply`` reads by (see :attr:`lookups`)."""
        for statement in self.indexes:
            if any(f" {name} ON " in statement for name in self.lookups):
                tx.execute(statement)

    def drop(self, tx: Tx) -> None:
        for table in self.tables:
            tx.execute(f"DROP TABLE IF EXISTS {table}")


VIEWS: dict[str, View] = {
    module.NAME: View(module.NAME, module.VERSION, module.TABLES, module.DDL, module.INDEXES,
                      module.apply, getattr(module, "LOOKUPS", ()))
    for module in (thread_status, audit_trail, analytics)
}


class UnknownViewError(ValueError):
    """A view name that is not one of the projections."""


def select_views(names: Iterable[str]) -> list[View]:
    """The views named (all of them when none are), in their fixed order."""
    wanted = list(names)
    unknown = sorted(set(wanted) - set(VIEWS))
    if unknown:
        raise UnknownViewError(f"unknown view(s) {', '.join(map(repr, unknown))}; expected one "
                               f"of: {', '.join(VIEWS)}")
    return [view for name, view in VIEWS.items() if not wanted or name in wanted]


class Projector:
    def __init__(self, db: ViewDatabase, views: Sequence[View] | None = None) -> None:
        self.db = db
        self.views = list(views or VIEWS.values())
        self._stale: list[str] = []
        with db.transaction() as tx:
            chain.create(tx)  # the anchors: not a view, never dropped by a rebuild
            for view in self.views:
                row = tx.one("SELECT version FROM view_meta WHERE view = ?", (view.name,))
                if row is None:
                    view.create(tx)
                    tx.execute("INSERT INTO view_meta (view, version) VALUES (?, ?)",
                               (view.name, view.version))
                elif int(row["version"]) != view.version:
                    self._stale.append(view.name)
                else:
                    view.create(tx)  # indexes added since are created

    def stale(self) -> list[str]:
        """Views built by another version of their schema: rebuild them before applying."""
        return list(self._stale)

    def rebuilt(self, names: Iterable[str]) -> None:
        done = set(names)
        self._stale = [name for name in self._stale if name not in done]

    # -- live ---------------------------------------------------------------------------------

    def apply(self, envelopes: Sequence[EventEnvelope], *, consumer: str | None = None,
              stream_seq: int | None = None, careful: bool = True,
              guard: Callable[[Tx], None] | None = None, wait: bool = True) -> int:
        """Apply a batch in one transaction, in order; returns how many events were new.

        ``careful``: an event a view cannot fold is logged and passed over; else any error
        undoes the whole batch and is raised. ``guard`` runs first in the transaction (the
        single-writer lease's check) and may refuse it by raising. ``wait=False``: raise a
        transient error at once if another process is writing."""
        with self.db.transaction(wait=wait) as tx:
            if guard is not None:
                guard(tx)
            upto = {(row["view"], row["service"]): int(row["upto"])
                    for row in tx.all("SELECT view, service, upto FROM view_positions")}
            if not careful:
                applied = self._apply_live(tx, envelopes, upto, careful=False)
            else:
                try:
                    with tx.savepoint("view_batch"):
                        applied = self._apply_live(tx, envelopes, upto, careful=False)
                except Exception as error:
                    tx.rows.discard()
                    if self.db.is_transient(error):
                        raise
                    applied = self._apply_live(tx, envelopes, upto, careful=True)
            if consumer is not None and stream_seq is not None:
                self._record_consumer(tx, consumer, stream_seq)
        return applied

    def skip(self, consumer: str, stream_seq: int,
             guard: Callable[[Tx], None] | None = None) -> None:
        """Record that ``consumer`` got past ``stream_seq`` without applying anything more: the
        event there was quarantined (the views go on without it)."""
        with self.db.transaction() as tx:
            if guard is not None:
                guard(tx)
            self._record_consumer(tx, consumer, stream_seq)

    def max_applied(self) -> dict[str, int]:
        """The highest position applied live, per service (where compaction may go up to)."""
        rows = self.db.query("SELECT service, MAX(position) AS p FROM applied_events"
                             " GROUP BY service")
        return {str(row["service"]): int(row["p"]) for row in rows if row["p"] is not None}

    def compact(self, upto: dict[str, int],
                guard: Callable[[Tx], None] | None = None) -> int:
        """Fold the tracking rows of each service up to ``upto[service]`` into every view's
        position (``view_positions``: an event at or below it is skipped as applied), and
        delete them. Returns the tracking rows left.

        Safe because each service's events first reach the stream in the order of their
        positions (one relay publishes in order; several relays publish the same events,
        de-duplicated by the stream), so once the views have applied position P of a service,
        an event of it at or below P that comes later is a re-publication. The caller passes
        positions applied long enough ago (``HITLFLOW_PROJECTIONS_COMPACT_AFTER``) that a
        publication retried after an outage has come by then."""
        with self.db.transaction() as tx:
            if guard is not None:
                guard(tx)
            for service, position in sorted(upto.items()):
                for view in self.views:
                    tx.execute(
                        "INSERT INTO view_positions (view, service, upto) VALUES (?, ?, ?)"
                        " ON CONFLICT (view, service) DO UPDATE SET upto = CASE WHEN"
                        " view_positions.upto < excluded.upto THEN excluded.upto"
                        " ELSE view_positions.upto END", (view.name, service, position))
                tx.execute("DELETE FROM applied_events WHERE service = ? AND position <= ?",
                           (service, position))
            row = tx.one("SELECT COUNT(*) AS n FROM applied_events")
        return int(row["n"]) if row else 0

    @staticmethod
    def _record_consumer(tx: Tx, consumer: str, stream_seq: int) -> None:
        tx.execute(
            "INSERT INTO view_consumers (consumer, stream_seq) VALUES (?, ?)"
            " ON CONFLICT (consumer) DO UPDATE SET stream_seq = excluded.stream_seq",
            (consumer, stream_seq),
        )

    def _apply_live(self, tx: Tx, envelopes: Sequence[EventEnvelope],
                    upto: dict[tuple[str, str], int], *, careful: bool) -> int:
        applied = 0
        anchoring = chain.Anchoring(tx)
        for env in envelopes:
            if not tx.execute("INSERT INTO applied_events (service, position) VALUES (?, ?)"
                              " ON CONFLICT DO NOTHING", (env.service, env.position)):
                continue  # applied before: a redelivery or a re-published event
            applied += 1
            anchoring.extend(env)
            targets = [v for v in self.views if env.position > upto.get((v.name, env.service), 0)]
            if careful:
                self._apply_careful(tx, env, targets)
            else:
                for view in targets:
                    view.apply(tx, env)
        tx.rows.flush()  # the rows the batch changed, each written once
        anchoring.write()
        return applied

    def _apply_careful(self, tx: Tx, env: Event, views: Sequence[View]) -> None:
        try:
            with tx.savepoint("view_event"):
                for view in views:
                    view.apply(tx, env)
                tx.rows.flush()
                tx.flush()
        except Exception as error:
            tx.discard()
            tx.rows.discard()
            if self.db.is_transient(error):
                raise
            log.error("event_not_projected", event_type=env.event_type, service=env.service,
                      position=env.position, thread_id=env.thread_id, error=repr(error))

    # -- rebuild ------------------------------------------------------------------------------

    def replay(self, tx: Tx, envelopes: Iterable[Event], views: Sequence[View],
               progress: Callable[[int], None] | None = None) -> int:
        """Apply replayed events to ``views`` (no tracking); returns how many were applied.
        ``progress`` is told how many so far after each chunk."""
        count = 0
        stream = iter(envelopes)
        applies = [view.apply for view in views]
        anchored = {str(row["service"]): int(row["upto"]) for row in tx.all(
            "SELECT service, MAX(position) AS upto FROM audit_chain GROUP BY service")}
        anchoring = chain.Anchoring(tx, fresh=frozenset(
            service for service in get_args(Service) if not anchored.get(service)))
        while chunk := list(islice(stream, REPLAY_CHUNK)):
            for env in chunk:  # links for events the live path never anchored
                if env.position > anchored.get(env.service, 0):
                    anchoring.extend(env)
            anchoring.write()
            try:
                with tx.savepoint("view_chunk"):
                    with tx.batched():
                        for env in chunk:
                            for apply in applies:
                                apply(tx, env)
                        tx.rows.flush()  # the rows the chunk changed, each written once
                    tx.flush()
            except Exception as error:
                tx.discard()
                tx.rows.discard()
                if self.db.is_transient(error):
                    raise
                for env in chunk:
                    self._apply_careful(tx, env, views)
            count += len(chunk)
            if progress is not None:
                progress(count)
        return count
