"""The views' rows, changed in memory and written back together.

The views fold an event by reading and changing rows of their keyed tables (a thread's status
row, a request's row) and by replacing a request's audience. They do it through :class:`Rows`
(one per transaction, ``Tx.rows``): a row is read once (from memory when this transaction read
or wrote it already), changed as a dict, and written back by :meth:`Rows.flush`, one statement
per changed row (``executemany``) however many events changed it. The live projector flushes
after its batch (after each event when it applies them one by one); a rebuild after each chunk
of events. Both run the same fold code, so both build the same rows.

A rebuild fills new, empty tables (``fresh``): a key this transaction never wrote is in no
table, so looking it up reads nothing; rows written are kept in memory up to :data:`KEEP` per
table (a thread's events follow each other closely), the others read back when needed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from projections.db import Tx

#: Rows kept in memory per table by a rebuild between chunks, at most.
KEEP = 50000


@dataclass(frozen=True, eq=False)  # one of each, hashed by identity
class Keyed:
    """A view table with one row per key: its columns (the key first) and their defaults."""

    name: str
    columns: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return self.columns[0]

    def insert_sql(self) -> str:
        return (f"INSERT INTO {self.name} ({', '.join(self.columns)}) VALUES"  # noqa: S608
                f" ({','.join('?' * len(self.columns))})")

    def update_sql(self) -> str:
        return (f"UPDATE {self.name} SET {', '.join(f'{c}=?' for c in self.columns[1:])}"  # noqa: S608
                f" WHERE {self.key}=?")

    def select_sql(self) -> str:
        return f"SELECT {', '.join(self.columns)} FROM {self.name} WHERE {self.key}=?"  # noqa: S608


@dataclass(frozen=True)
class Audience:
    """A view table of ``(request_id, kind, name)`` rows: who a request is offered to."""

    name: str


class _Table:
    __slots__ = ("blank", "cached", "changed", "sql", "stored")

    def __init__(self, table: Keyed) -> None:
        #: a new row before its values: every column, in order, with its default
        self.blank = {c: table.defaults.get(c) for c in table.columns}
        #: key → [row, in the database?]
        self.cached: OrderedDict[Any, list[Any]] = OrderedDict()
        self.changed: dict[Any, list[Any]] = {}
        #: keys written to the (fresh) table
        self.stored: set[Any] = set()
        self.sql = (table.select_sql(), table.insert_sql(), table.update_sql())


class Rows:
    """Rows of one transaction's keyed tables, read once and written back by :meth:`flush`."""

    def __init__(self, tx: Tx, *, fresh: bool = False, keep: int | None = None) -> None:
        self._tx = tx
        self._fresh = fresh
        self._keep = KEEP if keep is None else keep
        self._tables: dict[Keyed, _Table] = {}
        #: audience table → request id → its (kind, name) pairs, to be written
        self._audiences: dict[Audience, dict[str, list[tuple[str, str]]]] = {}
        #: (fresh) requests whose audience is in the table already
        self._offered: dict[Audience, set[str]] = {}

    def _table(self, table: Keyed) -> _Table:
        state = self._tables.get(table)
        if state is None:
            state = self._tables[table] = _Table(table)
        return state

    def _entry(self, table: Keyed, key: Any) -> list[Any] | None:
        state = self._table(table)
        entry = state.cached.get(key)
        if entry is not None:
            state.cached.move_to_end(key)
            return entry
        if self._fresh and key not in state.stored:
            return None
        row = self._tx.one(state.sql[0], (key,))
        if row is None:
            return None
        entry = state.cached[key] = [dict(row), True]
        return entry

    def get(self, table: Keyed, key: Any) -> dict[str, Any] | None:
        """The row of ``key`` (None: there is none), to read only."""
        entry = self._entry(table, key)
        return None if entry is None else entry[0]

    def change(self, table: Keyed, key: Any) -> dict[str, Any] | None:
        """The row of ``key`` (None: there is none), to change: written back at flush."""
        entry = self._entry(table, key)
        if entry is None:
            return None
        self._tables[table].changed[key] = entry
        return entry[0]  # type: ignore[no-any-return]

    def add(self, table: Keyed, values: dict[str, Any]) -> bool:
        """A new row (the table's defaults for the columns not given); nothing when its key
        has a row already (``INSERT … ON CONFLICT DO NOTHING``)."""
        key = values[table.key]
        if self._entry(table, key) is not None:
            return False
        state = self._tables[table]
        row = dict(state.blank)
        row.update(values)
        if len(row) != len(state.blank):
            raise KeyError(f"not columns of {table.name}: {sorted(set(row) - set(state.blank))}")
        entry = state.cached[key] = [row, False]
        state.changed[key] = entry
        return True

    def offer(self, table: Audience, request_id: str, pairs: Sequence[tuple[str, str]]) -> None:
        """Replace who ``request_id`` is offered to."""
        self._audiences.setdefault(table, {})[request_id] = list(pairs)

    def flush(self) -> None:
        """Write back every row changed since the last flush. (Should the statements be
        rolled back, :meth:`discard` forgets what this takes as written.)"""
        tx = self._tx
        for state in self._tables.values():
            if not state.changed:
                continue
            _, insert, update = state.sql
            updates = []
            for key, entry in state.changed.items():
                row = entry[0]
                if entry[1]:
                    values = list(row.values())
                    updates.append((*values[1:], values[0]))
                else:
                    tx.defer(insert, tuple(row.values()))
                    entry[1] = True
                    if self._fresh:
                        state.stored.add(key)
            if updates:
                tx.executemany(update, updates)
            state.changed = {}
            while len(state.cached) > self._keep:
                state.cached.popitem(last=False)
        for audience, offers in self._audiences.items():
            offered = self._offered.setdefault(audience, set())
            gone = [(request_id,) for request_id in offers
                    if not self._fresh or request_id in offered]
            if gone:
                tx.executemany(f"DELETE FROM {audience.name} WHERE request_id=?",  # noqa: S608
                               gone)
            insert = (f"INSERT INTO {audience.name} (request_id, kind, name)"  # noqa: S608
                      " VALUES (?,?,?)")
            for request_id, pairs in offers.items():
                for kind, name in pairs:
                    tx.defer(insert, (request_id, kind, name))
            if self._fresh:
                offered.update(offers)
        self._audiences = {}

    def discard(self) -> None:
        """Forget every row in memory and every change not written (the statements since
        the last savepoint were rolled back): rows are read again from the tables. (A key
        taken as written that was rolled back costs a lookup that finds nothing.)"""
        for state in self._tables.values():
            state.cached.clear()
            state.changed = {}
        self._audiences = {}
