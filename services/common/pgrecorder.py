"""The services' PostgreSQL recorder (``HITLFLOW_PERSISTENCE=postgres``), named by the stores'
settings (``PROCESS_RECORDER_TOPIC``): imported only where PostgreSQL is used."""

from __future__ import annotations

from typing import Any

from eventsourcing.postgres import PostgresProcessRecorder


class PostgresStoreRecorder(PostgresProcessRecorder):
    """eventsourcing's PostgreSQL process recorder without the ``NOTIFY`` it sends with every
    write.

    Nothing here listens (a service learns of its new events in process, the others from
    NATS), and a transaction that has sent a ``NOTIFY`` takes, when it commits, a lock of the
    whole server that every other such transaction waits for until that commit is on disk:
    the writes of every store (workflow, interaction, timeout) committed one at a time."""

    def _notify_channel(self, curs: Any) -> None:
        return None
