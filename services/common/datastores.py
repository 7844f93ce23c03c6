"""A store's datastore beside eventsourcing's recorders: which backend it is, and reads of
the store's own tables (tracking positions, thread keys) on SQLite and PostgreSQL alike."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def on_postgres(datastore: Any) -> bool:
    """Is this eventsourcing's PostgreSQL datastore? (Told by its module, so that SQLite
    installs never import psycopg; the recorder may be a class of the project's own.)"""
    return type(datastore).__module__ == "eventsourcing.postgres"


def on_sqlite(datastore: Any) -> bool:
    """Is this eventsourcing's SQLite datastore? (As :func:`on_postgres`; a store in memory,
    eventsourcing's POPO recorders, has neither.)"""
    return type(datastore).__module__ == "eventsourcing.sqlite"


@contextlib.contextmanager
def reading(datastore: Any) -> Iterator[Any]:
    """A cursor for read-only statements.

    On PostgreSQL the statements run on a connection of the pool as it is, in autocommit mode,
    not in a transaction rolled back at its end (eventsourcing's ``transaction(commit=False)``):
    psycopg deallocates every prepared statement of a connection when a transaction is rolled
    back (``DEALLOCATE ALL``), so each such read made eventsourcing prepare its statements
    again, and the BEGIN and ROLLBACK were two more round trips to the server."""
    if on_postgres(datastore):
        with datastore.get_connection() as conn, conn.cursor() as cursor:
            yield cursor
    else:
        with datastore.transaction(commit=False) as cursor:
            yield cursor
