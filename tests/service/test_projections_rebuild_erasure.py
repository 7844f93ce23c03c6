"""A rebuild drops the views' old tables without zeroing their pages (zeroing was most of its
swap), so it first deletes, zeroed, the rows of the threads erased in the stores: a thread
erased while the views missed it (the projections were down) leaves none of its values in the
views' file once they are rebuilt."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bench.projections import generate
from hitlflow.settings import Settings
from projections.db import ViewDatabase
from projections.projector import Projector
from projections.rebuild import open_sources, rebuild_from_stores

#: A value of thread bench-7 as the views hold it (its input, and the prompt ending with it);
#: the closing quote tells it from bench-70's.
SEVEN, EIGHT = b'laptops #7"', b'laptops #8"'


def _rebuilt_file(views: Path, settings: Settings, stores: Path) -> bytes:
    db = ViewDatabase.sqlite(views)
    try:
        rebuild_from_stores(db, Projector(db), settings, data_dir=stores, parallel=False)
        with db.transaction() as tx:  # the writer zeroes again what it deletes
            assert tx.one("PRAGMA secure_delete") == {"secure_delete": 1}
    finally:
        db.close()
    with sqlite3.connect(views) as conn:  # everything in the file itself, the log emptied
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return views.read_bytes()


def test_a_rebuild_leaves_no_value_of_a_thread_erased_meanwhile_in_the_views_file(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    stores = home / "stores"
    stores.mkdir(parents=True)
    generate(stores, 120, batch=10)
    settings = Settings(home=home)
    views = tmp_path / "views.sqlite"
    before = _rebuilt_file(views, settings, stores)
    assert SEVEN in before and EIGHT in before

    for source in open_sources(settings, stores, parallel=False):  # erased in the stores only
        try:
            source.app.thread_keys.erase("bench-7")  # type: ignore[attr-defined]
        finally:
            source.close()

    after = _rebuilt_file(views, settings, stores)
    assert after.find(SEVEN) == -1  # (not the whole file in the report)
    assert EIGHT in after  # the other threads' rows are as they were
    db = ViewDatabase.sqlite(views)
    try:
        [row] = db.query("SELECT output FROM thread_status WHERE thread_id = 'bench-7'")
        assert '"erased":true' in row["output"]
    finally:
        db.close()
