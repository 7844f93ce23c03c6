"""The views' database: a SQLite file by default, PostgreSQL by settings, one code path.

Views write their SQL once, with ``?`` placeholders and the portable subset both engines share
(``INSERT … ON CONFLICT``, ``COALESCE``, ``CASE``, row-value comparisons, ``LIMIT … OFFSET``);
a small dialect adapter turns placeholders into psycopg's and knows how each engine begins a
write transaction and which errors are worth a retry.

Bookkeeping tables, written in the same transaction as the view rows they account for:

- ``applied_events (service, position)``: every event applied live, so a redelivered or
  re-published event changes nothing;
- ``view_positions (view, service, upto)``: a rebuilt view has applied every event of
  ``service`` up to ``upto`` (set by a rebuild, which writes no per-event rows);
- ``view_consumers (consumer, stream_seq)``: the last stream sequence applied, where the live
  consumer resumes after a restart (so a crash never lets later events overtake earlier ones);
- ``view_meta (view, version)``: the schema version each view was built with.

Reads go through their own connections (one per thread) and see the last committed state. On
SQLite (WAL) they never wait for a writer, not even a rebuild; on PostgreSQL only the tables a
rebuild has dropped make them wait, until it commits.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from contracts.jsontext import encoder
from contracts.limits import MAX_PAGE_BYTES
from projections.rows import Rows

BOOKKEEPING_DDL = (
    """CREATE TABLE IF NOT EXISTS applied_events (
        service TEXT NOT NULL,
        position BIGINT NOT NULL,
        PRIMARY KEY (service, position)
    )""",
    """CREATE TABLE IF NOT EXISTS view_positions (
        view TEXT NOT NULL,
        service TEXT NOT NULL,
        upto BIGINT NOT NULL,
        PRIMARY KEY (view, service)
    )""",
    """CREATE TABLE IF NOT EXISTS view_consumers (
        consumer TEXT PRIMARY KEY,
        stream_seq BIGINT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS view_meta (
        view TEXT PRIMARY KEY,
        version INTEGER NOT NULL
    )""",
    # One row every writer updates first: writers (live batches, rebuilds, other processes)
    # take turns on both engines.
    "CREATE TABLE IF NOT EXISTS view_writer (id INTEGER PRIMARY KEY)",
)

Row = dict[str, Any]
#: How long a SQLite writer waits for another process's write transaction.
SQLITE_BUSY_TIMEOUT_MS = 30_000
#: An insert of plain values, which PostgreSQL can take as ``COPY`` in a rebuild.
_COPYABLE = re.compile(r"INSERT INTO (\w+) \(([\w, ]+)\) VALUES \(\?(?:,\s*\?)*\)"
                       r"(?: ON CONFLICT DO NOTHING)?$")


P = TypeVar("P", bound=BaseModel)


def fill_page(items: Sequence[P], limit: int,
              max_bytes: int = MAX_PAGE_BYTES) -> tuple[list[P], bool]:
    """The first items that make a page: at most ``limit`` of them and ``max_bytes`` as JSON
    (a first item larger than that still comes, alone). Also whether more items follow:
    give it one item more than ``limit`` when there are more."""
    page: list[P] = []
    size = 0
    for item in items:
        if len(page) == limit:
            return page, True
        size += len(item.model_dump_json()) + 1
        if page and size > max_bytes:
            return page, True
        page.append(item)
    return page, False


#: Made once (the text of ``json.dumps`` with these options).
_dumps = encoder(sort_keys=True)


def dumps(value: Any) -> str:
    """Compact JSON for view columns (keys sorted, no spaces)."""
    return _dumps(value)


class Dialect(Protocol):
    name: str

    def connect(self) -> Any: ...

    def sql(self, text: str) -> str: ...

    def begin(self, conn: Any) -> None: ...

    def is_transient(self, error: BaseException) -> bool: ...


def _broken(conn: Any) -> bool:
    """A PostgreSQL connection that was lost (SQLite connections are never lost)."""
    return bool(getattr(conn, "broken", False) or getattr(conn, "closed", False) is True)


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> Row:
    return {column[0]: value for column, value in zip(cursor.description, row, strict=True)}


class SqliteDialect:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                               timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = _dict_row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        # the views hold personal values: what is deleted or overwritten (an erased thread's
        # rows) is zeroed in the file, whatever SQLite's build chose as its default
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    def sql(self, text: str) -> str:
        return text

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN IMMEDIATE")

    def is_transient(self, error: BaseException) -> bool:
        text = str(error).lower()
        return isinstance(error, sqlite3.OperationalError) and any(
            word in text for word in ("locked", "busy", "disk i/o", "unable to open"))


class PostgresDialect:
    name = "postgres"

    def __init__(self, dsn: str, schema: str | None = None) -> None:
        self.dsn = dsn
        self.schema = schema
        self._translated: dict[str, str] = {}
        if schema:
            import psycopg
            from psycopg import sql

            with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(
                    sql.Identifier(schema)))

    def connect(self) -> Any:
        import psycopg
        from psycopg import sql
        from psycopg.rows import dict_row

        conn = psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row,
                               connect_timeout=5)
        if self.schema:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        return conn

    def sql(self, text: str) -> str:
        translated = self._translated.get(text)
        if translated is None:
            translated = self._translated[text] = text.replace("%", "%%").replace("?", "%s")
        return translated

    def begin(self, conn: Any) -> None:
        conn.execute("BEGIN")

    def is_transient(self, error: BaseException) -> bool:
        import psycopg

        return isinstance(error, psycopg.OperationalError | psycopg.InterfaceError |
                          psycopg.errors.SerializationFailure |
                          psycopg.errors.DeadlockDetected)


class Tx:
    """An open write transaction: ``execute`` returns the row count, ``one``/``all`` rows.

    In bulk mode (a rebuild, :meth:`bulk`), statements given to :meth:`defer` are collected
    and sent with ``executemany`` at :meth:`flush`, and table names can be redirected (the
    views' own SQL then fills new tables)."""

    def __init__(self, dialect: Dialect, conn: Any) -> None:
        self._dialect = dialect
        self._conn = conn
        self._cursor = conn.cursor()
        self._sql = dialect.sql
        self._pipelined = False
        self._deferred: dict[str, list[Sequence[Any]]] | None = None
        self._rows: Rows | None = None
        if dialect.name == "sqlite":
            self.execute = self._execute_plain  # type: ignore[method-assign]

    def bulk(self, renames: dict[str, str] | None = None) -> None:
        """Collect deferred statements from now on; write each table ``a`` of ``renames`` as
        ``renames[a]`` (none: the tables' own names again)."""
        if self._deferred is None:
            self._deferred = {}
        translate = self._dialect.sql
        if not renames:
            self._sql = translate
            if self._dialect.name == "sqlite":
                self.execute = self._execute_plain  # type: ignore[method-assign]
            return
        pattern = re.compile(r"\b(" + "|".join(map(re.escape, renames)) + r")\b")
        cache: dict[str, str] = {}

        def renamed(text: str) -> str:
            done = cache.get(text)
            if done is None:
                done = cache[text] = translate(pattern.sub(lambda m: renames[m.group(1)], text))
            return done

        self._sql = renamed
        self.execute = Tx.execute.__get__(self)  # type: ignore[method-assign]

    @property
    def rows(self) -> Rows:
        """The views' rows as this transaction reads and changes them (see
        :mod:`projections.rows`)."""
        if self._rows is None:
            self._rows = Rows(self)
        return self._rows

    def fresh_rows(self) -> Rows:
        """From now on, rows of new, empty tables (a rebuild's): see :class:`Rows`."""
        self._rows = Rows(self, fresh=True)
        return self._rows

    def finish(self) -> None:
        """Write what is still held back (before the transaction commits)."""
        if self._rows is not None:
            self._rows.flush()
        self.flush()

    def defer(self, sql: str, params: Sequence[Any]) -> None:
        """A statement whose effect nothing reads before the transaction ends (a row only
        inserted): run now, or, in bulk mode, with the others like it at :meth:`flush`."""
        deferred = self._deferred
        if deferred is None:
            self.execute(sql, params)
        else:
            rows = deferred.get(sql)
            if rows is None:
                deferred[sql] = [params]
            else:
                rows.append(params)

    def flush(self) -> None:
        """Write what :meth:`defer` collected: with ``executemany``, or on PostgreSQL with
        ``COPY`` for a plain ``INSERT … VALUES (?, …)`` (a bulk write of new tables, whose
        unique indexes come after the rows, so no conflict can arise)."""
        deferred = self._deferred
        if not deferred:
            return
        for sql, rows in deferred.items():
            self.insert_all(sql, rows)
        deferred.clear()

    def insert_all(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` with ``sql``: as ``COPY`` on PostgreSQL when it is a plain ``INSERT
        … VALUES (?, …)`` (so none of the rows may conflict with another: ``COPY`` knows no
        ``ON CONFLICT``), else with ``executemany``."""
        copy = _COPYABLE.match(sql) if self._dialect.name == "postgres" else None
        if copy is None:
            self.executemany(sql, rows)
            return
        table, columns = self._sql(copy.group(1)), copy.group(2)
        with self._cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as writer:
            for row in rows:
                writer.write_row(row)

    def discard(self) -> None:
        """Forget what :meth:`defer` collected (its savepoint was rolled back)."""
        if self._deferred:
            self._deferred.clear()

    @property
    def dialect(self) -> str:
        return self._dialect.name

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement; the rows it changed (-1 inside :meth:`batched`: not known yet)."""
        cursor = self._cursor
        cursor.execute(self._sql(sql), params)
        return -1 if self._pipelined else int(cursor.rowcount)

    def _execute_plain(self, sql: str, params: Sequence[Any] = ()) -> int:
        cursor = self._cursor
        cursor.execute(sql, params)
        return int(cursor.rowcount)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            self._cursor.executemany(self._sql(sql), rows)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        self._cursor.execute(self._sql(sql), params)
        row: Row | None = self._cursor.fetchone()
        return row

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        self._cursor.execute(self._sql(sql), params)
        return list(self._cursor.fetchall())

    @contextmanager
    def batched(self) -> Iterator[None]:
        """Statements inside go to PostgreSQL without waiting for each result (psycopg's
        pipeline mode); errors surface on leaving. SQLite runs in process: nothing to batch."""
        if self._dialect.name == "sqlite" or self._pipelined:
            yield
            return
        self._pipelined = True
        try:
            with self._conn.pipeline():
                yield
        finally:
            self._pipelined = False

    def tune_for_bulk(self) -> None:
        """Settings for a transaction that writes a whole view (a rebuild)."""
        if self._dialect.name == "sqlite":
            self._cursor.execute("PRAGMA cache_size = -131072")  # 128 MiB of page cache
            # the indexes built after the rows sort them with helper threads (the cores are
            # free by then: the stores are read)
            self._cursor.execute(f"PRAGMA threads = {min(os.cpu_count() or 1, 4)}")
        else:
            self._cursor.execute("SET LOCAL maintenance_work_mem = '256MB'")

    @contextmanager
    def savepoint(self, name: str) -> Iterator[None]:
        """Undo only the statements inside when they raise (the transaction goes on)."""
        self._cursor.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._cursor.execute(f"ROLLBACK TO SAVEPOINT {name}")
            self._cursor.execute(f"RELEASE SAVEPOINT {name}")
            raise
        self._cursor.execute(f"RELEASE SAVEPOINT {name}")


class ViewDatabase:
    """One writer connection (serialised by a lock) and a read connection per thread."""

    def __init__(self, dialect: Dialect) -> None:
        self.dialect = dialect
        self._writer = dialect.connect()
        self._lock = threading.RLock()
        self._local = threading.local()
        self._readers: list[Any] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        with self.transaction(turn=False) as tx:
            for statement in BOOKKEEPING_DDL:
                tx.execute(statement)
            tx.execute("INSERT INTO view_writer (id) VALUES (1) ON CONFLICT DO NOTHING")

    @classmethod
    def sqlite(cls, path: Path) -> ViewDatabase:
        return cls(SqliteDialect(path))

    @classmethod
    def postgres(cls, dsn: str, schema: str | None = None) -> ViewDatabase:
        return cls(PostgresDialect(dsn, schema))

    @property
    def name(self) -> str:
        return self.dialect.name

    def is_transient(self, error: BaseException) -> bool:
        """Is ``error`` one a retry may get past (a busy or lost connection)?"""
        return self.dialect.is_transient(error)

    # -- writing -----------------------------------------------------------------------------

    @property
    def local(self) -> bool:
        """Is a write a short burst of local work (SQLite), fit to run on an event loop?"""
        return self.dialect.name == "sqlite"

    @contextmanager
    def transaction(self, *, turn: bool = True, wait: bool = True) -> Iterator[Tx]:
        """A write transaction; writers of every process take turns (``view_writer``).
        ``wait=False`` (SQLite): raise at once, with a transient error, when another process
        is writing, instead of waiting for it."""
        with self._lock:
            if _broken(self._writer):  # e.g. the database server restarted: start afresh
                self._writer = self.dialect.connect()
            conn = self._writer
            if wait or not self.local:
                self.dialect.begin(conn)
            else:
                conn.execute("PRAGMA busy_timeout = 0")
                try:
                    self.dialect.begin(conn)
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            try:
                tx = Tx(self.dialect, conn)
                if turn:
                    tx.execute("UPDATE view_writer SET id = id WHERE id = 1")
                yield tx
                tx.finish()
            except BaseException:
                with suppress(Exception):  # a broken connection has nothing to undo
                    conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    # -- reading -----------------------------------------------------------------------------

    def _reader(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or _broken(conn):
            if self._closed:
                raise RuntimeError("the views database is closed")
            conn = self.dialect.connect()
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        cursor = self._reader().cursor()
        try:
            cursor.execute(self.dialect.sql(sql), params)
            return list(cursor.fetchall())
        finally:
            cursor.close()

    def one(self, sql: str, params: Sequence[Any] = ()) -> Row | None:
        rows = self.query(sql, params)
        return rows[0] if rows else None

    def stream(self, sql: str, params: Sequence[Any] = (), chunk: int = 2000) -> Iterator[Row]:
        """Rows one by one, fetched ``chunk`` at a time (constant memory)."""
        cursor = self._reader().cursor()
        try:
            cursor.execute(self.dialect.sql(sql), params)
            while True:
                rows = cursor.fetchmany(chunk)
                if not rows:
                    return
                yield from rows
        finally:
            cursor.close()

    # -- bookkeeping -------------------------------------------------------------------------

    def position(self, view: str, service: str) -> int:
        """How far ``view`` has applied ``service``'s notification log (0: nothing)."""
        row = self.one(
            "SELECT MAX(p) AS p FROM ("
            " SELECT MAX(position) AS p FROM applied_events WHERE service = ?"
            " UNION ALL SELECT upto AS p FROM view_positions WHERE view = ? AND service = ?"
            ") AS known",
            (service, view, service),
        )
        return int(row["p"] or 0) if row else 0

    def consumer_position(self, consumer: str) -> int:
        row = self.one("SELECT stream_seq FROM view_consumers WHERE consumer = ?", (consumer,))
        return int(row["stream_seq"]) if row else 0

    def close(self) -> None:
        self._closed = True
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            try:
                conn.close()
            except Exception:  # noqa: S112 - closing what is already broken
                continue
        with self._lock:
            self._writer.close()


def open_view_database(settings: Any, data_dir: Path | None = None) -> ViewDatabase:
    """The views database the settings name: PostgreSQL (same DSN and schema as the stores)
    when ``persistence`` is ``postgres``, else ``projections.sqlite`` beside the stores."""
    if settings.persistence == "postgres":
        if not settings.postgres_dsn:
            raise ValueError(
                "HITLFLOW_PERSISTENCE=postgres needs HITLFLOW_POSTGRES_DSN, "
                "e.g. postgresql://postgres@127.0.0.1:5432/postgres"
            )
        return ViewDatabase.postgres(settings.postgres_dsn, settings.postgres_schema)
    directory = data_dir or settings.home / "stores"
    return ViewDatabase.sqlite(directory / "projections.sqlite")


def _utc(moment: Any) -> datetime:
    value = datetime.fromisoformat(moment) if isinstance(moment, str) else moment
    if value.tzinfo is UTC:  # (as the stores' times are read back: no new datetime)
        return value
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso(moment: Any) -> str:
    """A timestamp (datetime or ISO text) as UTC ISO text with microseconds: sorts as text."""
    return _utc(moment).isoformat(timespec="microseconds")


def epoch(moment: Any) -> float:
    """A timestamp (datetime or ISO text) as seconds since the epoch."""
    return _utc(moment).timestamp()


def when(moment: Any) -> tuple[str, float]:
    """Both: ISO text and seconds since the epoch."""
    value = _utc(moment)
    return value.isoformat(timespec="microseconds"), value.timestamp()
