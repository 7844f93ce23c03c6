"""Folds event envelopes into every view, exactly once per (view, service, position)."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from contracts.events import EventEnvelope
from projections import thread_status
from projections.db import ViewDatabase


@dataclass(frozen=True)
class View:
    name: str
    create: Callable[[ViewDatabase], None]
    drop: Callable[[ViewDatabase], None]
    apply: Callable[[sqlite3.Cursor, EventEnvelope], None]


VIEWS: dict[str, View] = {
    thread_status.NAME: View(thread_status.NAME, thread_status.create, thread_status.drop,
                             thread_status.apply),
}


class Projector:
    def __init__(self, db: ViewDatabase, views: Sequence[View] | None = None) -> None:
        self.db = db
        self.views = list(views or VIEWS.values())
        for view in self.views:
            view.create(db)

    def apply(self, envelopes: Sequence[EventEnvelope]) -> int:
        """Apply a batch in one transaction, in order; returns how many were new."""
        applied = 0
        with self.db.transaction() as cursor:
            for env in envelopes:
                for view in self.views:
                    if self.db.track(cursor, view.name, env.service, env.position):
                        view.apply(cursor, env)
                        applied += 1
        return applied
