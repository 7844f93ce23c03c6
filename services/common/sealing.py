"""Crypto-shredding: a thread's personal data sealed under a key of its own, in every store.

When a service stores an event of a thread, every value of it that may be personal data
(what :data:`projections.chain.PLAIN` does not name: prompts, contexts, options, inputs,
outputs, answer data and values, free-text reasons and errors; inside a paused thread's
requests likewise) is taken out and sealed, all of them together, with AES-GCM under the
thread's data key; the event keeps a marker in each place and the sealed values' digests.
(The whole event is then encrypted with the store key as any other.)

Reading an event back puts the values back. Once the thread is erased (its data key destroyed
in every service store: :meth:`ThreadKeys.erase`), each place holds ``{"erased": true,
"sha256": …}`` instead: who, when, which action, ids and digests stay readable, and the
thread's hash chains still verify (their records hold the same digests).

The data keys are kept in each store's table ``hitlflow_thread_keys`` (on PostgreSQL, one table
for the stores that share a schema), each encrypted with the store key. A key made while a write
is mapped under :meth:`ThreadKeys.deferred` (the SQLite group commit) is stored by that write,
in the transaction of the events sealed with it; any other is stored on its own, first.
Erasing overwrites the key with NULL (SQLite with ``secure_delete`` on, so the old bytes are
zeroed in the file; PostgreSQL vacuums the table afterwards).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from base64 import b64decode, b64encode
from binascii import a2b_base64
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.persistence import IntegrityError, Mapper, StoredEvent

from contracts.jsontext import loads
from projections.chain import NESTED, PLAIN, digest
from services.common.datastores import on_sqlite, reading

SEAL = "_seal_"
MARK = "_sealed_"
TABLE = "hitlflow_thread_keys"
#: Data keys held in memory, at most (the oldest go first).
CACHE_SIZE = 10_000
#: AES-GCM ciphers held, at most (the oldest made go first). A cipher saves about a
#: microsecond on each seal made or opened with its key, and a thread's events come close
#: together (one write, one batch, neighbours in the log), but each holds about 2.5 KB of
#: OpenSSL state: one per cached key was 25 MB per service, and a paused thread's growth of
#: the services' memory went from about 0.5 to 1.3 KB.
CIPHERS_HELD = 256
#: Aggregate id → thread id remembered for sealing, at most: only the writes in progress need
#: them, since every write notes its aggregates just before their events are mapped
#: (:meth:`SealingMapper.note_threads`). Kept for every thread, they were a quarter of a KB per
#: aggregate for as long as the service ran.
MAX_THREADS = 4096


def erased(digest_hex: str) -> dict[str, Any]:
    return {"erased": True, "sha256": digest_hex}


class ThreadErasedError(RuntimeError):
    """A change to a thread whose personal data was erased."""


#: Keys made while a write was mapped, not stored yet: thread id → (key, key as stored).
Made = dict[str, tuple[bytes, str]]


class ThreadKeys:
    """Per-thread data keys in one service store (its own table, same database)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, bytes | None] = OrderedDict()
        #: data key → its AES-GCM cipher, the ones made last (:data:`CIPHERS_HELD`)
        self._ciphers: OrderedDict[bytes, AESGCM] = OrderedDict()
        #: thread id → (wrapped key, erased at), read at once by :meth:`preload`
        self._preloaded: dict[str, tuple[str | None, str | None]] = {}
        self._local = threading.local()  # ``made``: the keys of a deferred mapping, if any
        recorder = app.recorder
        self._datastore = recorder.datastore
        self._sqlite = on_sqlite(self._datastore)
        self._mark = "?" if self._sqlite else "%s"
        schema = getattr(self._datastore, "schema", None) or "public"
        self._table = TABLE if self._sqlite else f'"{schema}"."{TABLE}"'

    def create_table(self) -> None:
        with self._datastore.transaction(commit=True) as cursor:
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {self._table} (thread_id TEXT PRIMARY"
                           " KEY, wrapped TEXT, erased_at TEXT)")

    # -- keys -------------------------------------------------------------------------------

    def _wrap(self, key: bytes) -> str:
        cipher = self._app.mapper.cipher
        return b64encode(cipher.encrypt(key) if cipher else key).decode()

    def _unwrap(self, text: str) -> bytes:
        cipher = self._app.mapper.cipher
        raw = b64decode(text)
        return bytes(cipher.decrypt(raw)) if cipher else raw

    @contextlib.contextmanager
    def deferred(self) -> Iterator[Made]:
        """Keys made within (in this thread) are not stored, only collected: the write of the
        events mapped within stores them in its own transaction (:meth:`insert_made`), and
        then hands them over (:meth:`stored`). Until then no other write sees them, so a
        write that fails leaves no key behind, and the next attempt makes another."""
        made: Made = {}
        self._local.made = made
        try:
            yield made
        finally:
            self._local.made = None

    def key(self, thread_id: str, *, create: bool) -> bytes | None:
        """The thread's data key (made when ``create`` and there is none); None once erased
        (or when there is none and ``create`` is false)."""
        made: Made | None = getattr(self._local, "made", None)
        if made and thread_id in made:
            return made[thread_id][0]
        with self._lock:
            if thread_id in self._cache:
                self._cache.move_to_end(thread_id)
                return self._cache[thread_id]
            preloaded = self._preloaded.pop(thread_id, None)
        if preloaded is not None:
            wrapped, erased_at = preloaded
            if wrapped or erased_at:
                key = self._unwrap(wrapped) if wrapped else None
                self._remember(thread_id, key)
                return key
        rows = self._rows(thread_id)
        if not rows and create:
            new = AESGCM.generate_key(256)
            if made is not None:  # stored by the write being mapped
                made[thread_id] = (new, self._wrap(new))
                return new
            if self._store(thread_id, new):
                self._remember(thread_id, new)
                return new
            rows = self._rows(thread_id)  # another writer stored one first: that one stands
        if not rows:
            return None  # no key yet: not cached, a later write makes one
        wrapped, _erased_at = rows[0]
        key = self._unwrap(wrapped) if wrapped else None
        self._remember(thread_id, key)
        return key

    def cipher(self, key: bytes) -> AESGCM:
        """The AES-GCM cipher of a data key (forgotten when its thread is erased)."""
        cipher = self._ciphers.get(key)  # (no lock to find one: a cipher is used per value)
        if cipher is None:
            cipher = AESGCM(key)
            with self._lock:
                ciphers = self._ciphers
                ciphers[key] = cipher
                while len(ciphers) > CIPHERS_HELD:
                    ciphers.popitem(last=False)
        return cipher

    def _store(self, thread_id: str, key: bytes) -> bool:
        """Store a new data key; False when the thread has one already (another writer's).

        The commit does not wait for the disk: the key is only ever used by the thread's
        events, which are written after it to the same database, and the commit that makes
        them durable (SQLite syncs the whole write-ahead log; PostgreSQL flushes its log up
        to that commit) makes the key durable with them. A crash before that loses the key
        and nothing sealed with it. (A new thread's first write in each store saves a sync.)
        """
        m = self._mark
        insert = (f"INSERT INTO {self._table} (thread_id, wrapped) VALUES ({m}, {m})"  # noqa: S608 - table name is ours
                  " ON CONFLICT (thread_id) DO NOTHING RETURNING thread_id")
        values = (thread_id, self._wrap(key))
        if not self._sqlite:
            with self._datastore.transaction(commit=True) as cursor:
                cursor.execute("SET LOCAL synchronous_commit TO OFF")
                cursor.execute(insert, values)
                return bool(cursor.fetchall())
        with self._datastore.get_connection(commit=True) as conn:
            raw = conn._sqlite_conn
            level = raw.execute("PRAGMA synchronous").fetchone()[0]
            raw.execute("PRAGMA synchronous=NORMAL")  # (not within a transaction)
            try:
                with conn.transaction(commit=True) as cursor:
                    cursor.execute(insert, values)
                    return bool(cursor.fetchall())
            finally:
                raw.execute(f"PRAGMA synchronous={int(level)}")

    def insert_made(self, cursor: Any, made: Made) -> None:
        """Store keys made by a deferred mapping, with the cursor of the transaction that
        writes the events sealed with them (one commit makes both durable). A thread that got
        a key from another writer in the meantime (or was erased) refuses the write with an
        ``IntegrityError``, as a version conflict does: the write is tried again and its
        events sealed anew, under the key that was stored."""
        m = self._mark
        for thread_id, (key, wrapped) in made.items():
            cursor.execute(f"INSERT INTO {self._table} (thread_id, wrapped) VALUES ({m}, {m})"  # noqa: S608 - table name is ours
                           " ON CONFLICT (thread_id) DO NOTHING RETURNING thread_id",
                           (thread_id, wrapped))
            if cursor.fetchall():
                continue
            cursor.execute(f"SELECT wrapped FROM {self._table} WHERE thread_id = {m}",  # noqa: S608
                           (thread_id,))
            rows = [tuple(r.values()) if isinstance(r, dict) else tuple(r)
                    for r in cursor.fetchall()]
            stored = rows[0][0] if rows else None
            # (the same key: an earlier write of this transaction stored it)
            if stored is None or self._unwrap(stored) != key:
                raise IntegrityError(
                    f"thread {thread_id!r} got its data key from another writer first")

    def stored(self, made: Made) -> None:
        """Keys a write stored (:meth:`insert_made`), now committed: held as any other."""
        for thread_id, (key, _wrapped) in made.items():
            self._remember(thread_id, key)

    def preload(self) -> int:
        """Read every thread's wrapped key in one query, for a reader of a whole store (a
        rebuild's worker asks for nearly every thread's key, one query each otherwise: most of
        the cost of reading a store back but decryption). Each is unwrapped when first asked
        for, and then held as any other. Like the cache, this is a snapshot: a key erased
        after it still reads as it was, so only a reader that ends soon may call it."""
        with reading(self._datastore) as cursor:
            cursor.execute(f"SELECT thread_id, wrapped, erased_at FROM {self._table}")  # noqa: S608
            rows = [tuple(r.values()) if isinstance(r, dict) else tuple(r)
                    for r in cursor.fetchall()]
        with self._lock:
            self._preloaded = {str(thread): (wrapped, erased_at)
                               for thread, wrapped, erased_at in rows}
        return len(rows)

    def erased(self) -> set[str]:
        """The threads whose data key was destroyed (:meth:`erase`)."""
        with reading(self._datastore) as cursor:
            cursor.execute(f"SELECT thread_id FROM {self._table} WHERE erased_at IS NOT NULL")  # noqa: S608
            return {str(r["thread_id"] if isinstance(r, dict) else r[0])
                    for r in cursor.fetchall()}

    def _rows(self, thread_id: str) -> list[Any]:
        with reading(self._datastore) as cursor:
            cursor.execute(f"SELECT wrapped, erased_at FROM {self._table} WHERE thread_id ="  # noqa: S608
                           f" {self._mark}", (thread_id,))
            return [tuple(r.values()) if isinstance(r, dict) else tuple(r)
                    for r in cursor.fetchall()]

    def _remember(self, thread_id: str, key: bytes | None) -> None:
        with self._lock:
            self._cache[thread_id] = key
            self._cache.move_to_end(thread_id)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)

    def erase(self, thread_id: str) -> bool:
        """Destroy the thread's data key (a tombstone stays); False when it was erased before."""
        m = self._mark
        now = datetime.now(UTC).isoformat()
        rows = self._rows(thread_id)
        already = bool(rows and rows[0][1])
        key = self._unwrap(rows[0][0]) if rows and rows[0][0] else None
        with self._datastore.transaction(commit=True) as cursor:
            if self._sqlite:
                cursor.execute("PRAGMA secure_delete = ON")  # the old bytes are zeroed
            cursor.execute(f"INSERT INTO {self._table} (thread_id, wrapped, erased_at)"  # noqa: S608
                           f" VALUES ({m}, NULL, {m}) ON CONFLICT (thread_id) DO UPDATE SET"
                           " wrapped = NULL, erased_at = COALESCE("
                           f"{TABLE}.erased_at, excluded.erased_at)", (thread_id, now))
        if not self._sqlite:
            self._vacuum()
        self._remember(thread_id, None)
        if key is not None:  # no cipher of the key outlives it in this process
            with self._lock:
                self._ciphers.pop(key, None)
        return not already

    def _vacuum(self) -> None:
        """PostgreSQL keeps an updated row's old version until it is vacuumed."""
        with self._datastore.pool.connection() as conn:
            conn.autocommit = True
            try:
                conn.execute(f"VACUUM {self._table}")
            finally:
                conn.autocommit = False


class SealingMapper(Mapper[Any]):
    """eventsourcing's mapper, sealing each thread's personal values under its data key."""

    keys: ThreadKeys | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._threads: OrderedDict[Any, str] = OrderedDict()
        self._threads_lock = threading.Lock()

    def note_threads(self, aggregates: Any) -> None:
        """Remember which thread each of these aggregates belongs to, for the events about to
        be mapped (an event that carries no ``thread_id`` is sealed under its aggregate's):
        call it just before saving them. The latest noted are kept, the oldest forgotten."""
        with self._threads_lock:
            for aggregate in aggregates:
                thread_id = getattr(aggregate, "thread_id", None)
                if isinstance(thread_id, str):
                    self._threads[aggregate.id] = thread_id
                    self._threads.move_to_end(aggregate.id)
            while len(self._threads) > MAX_THREADS:
                self._threads.popitem(last=False)

    def _thread_of(self, event: Any) -> str | None:
        thread_id = getattr(event, "thread_id", None)
        if isinstance(thread_id, str):
            return thread_id
        with self._threads_lock:
            return self._threads.get(event.originator_id)

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        thread_id = self._thread_of(domain_event) if self.keys is not None else None
        if thread_id is None:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        values: list[Any] = []
        sealed = _take(state, values)
        if not values:
            return super().to_stored_event(domain_event)
        assert self.keys is not None
        key = self.keys.key(thread_id, create=True)
        digests = [digest(v) for v in values]
        if key is None:  # erased: nothing of it is written
            body = None
        else:
            nonce = os.urandom(12)
            body = b64encode(nonce + self.keys.cipher(key).encrypt(
                nonce, json.dumps(values, default=str).encode(), thread_id.encode())).decode()
        sealed[SEAL] = {"t": thread_id, "c": body, "d": digests}
        event = object.__new__(type(domain_event))
        object.__setattr__(event, "__dict__", sealed)
        return super().to_stored_event(event)

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        event = super().to_domain_event(stored_event)
        seal = event.__dict__.pop(SEAL, None)
        if seal is None:
            return event
        thread_id = str(seal["t"])
        cipher = None
        if self.keys is not None and seal["c"]:
            key = self.keys.key(thread_id, create=False)
            cipher = None if key is None else self.keys.cipher(key)
        if cipher is not None:
            raw = a2b_base64(seal["c"])
            filled = loads(cipher.decrypt(raw[:12], raw[12:], thread_id.encode()))
        else:
            filled = [erased(d) for d in seal["d"]]
        _fill(event.__dict__, filled)
        return event


def _fill(state: dict[str, Any], filled: list[Any]) -> None:
    """Put the sealed values back in place of their markers, in ``state`` and in the dicts
    of its :data:`NESTED` lists (the places :func:`_take` took them from)."""
    for name, value in state.items():
        kind = type(value)
        if kind is dict:
            if len(value) == 1 and MARK in value:
                state[name] = filled[int(value[MARK])]
        elif kind is list and name in NESTED:
            for item in value:
                if type(item) is dict:
                    _fill(item, filled)


def _take(state: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    """``state`` with its personal values replaced by markers, the values added to
    ``values`` (ids, version and time are never taken)."""
    kept: dict[str, Any] = {}
    for name, value in state.items():
        if name in PLAIN or name.startswith("originator_") or name == "timestamp" or (
                value is None):
            kept[name] = value
        elif name in NESTED and isinstance(value, list):
            kept[name] = [_take(item, values) if isinstance(item, dict) else item
                          for item in value]
        else:
            kept[name] = {MARK: len(values)}
            values.append(value)
    return kept
