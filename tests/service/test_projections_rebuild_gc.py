"""A rebuild folds, and its workers read, with Python's cyclic garbage collector paused
(``cyclic_gc_paused`` in ``projections/rebuild.py``). That is safe only while neither makes
reference cycles: any they made would pile up until the end, a million events' worth. The
garbage left for the collector must not grow with the events."""

from __future__ import annotations

import gc
import os
from pathlib import Path
from typing import Any

import pytest

from bench.projections import generate
from hitlflow.settings import Settings
from projections.db import ViewDatabase
from projections.projector import Projector
from projections.rebuild import cyclic_gc_paused, read_in_worker, rebuild_from_stores
from services.common.output import WholeWriter


@pytest.mark.parametrize("parallel", [False, True], ids=["in process", "by readers"])
def test_the_garbage_a_fold_leaves_does_not_grow_with_its_events(
        tmp_path: Path, parallel: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    left: list[int] = []
    replay = Projector.replay

    def counted(self: Projector, *args: Any, **kwargs: Any) -> int:
        assert not gc.isenabled()
        count = replay(self, *args, **kwargs)
        left.append(gc.collect())  # the cycles made while the fold ran, and only those
        return count

    monkeypatch.setattr(Projector, "replay", counted)
    folded: list[int] = []
    for events in (300, 1500):
        home = tmp_path / str(events)
        (home / "stores").mkdir(parents=True)
        generate(home / "stores", events, batch=20)  # about 180 events a batch
        db = ViewDatabase.sqlite(home / "views.sqlite")
        gc.collect()
        try:
            folded.append(rebuild_from_stores(db, Projector(db), Settings(home=home),
                                              data_dir=home / "stores",
                                              parallel=parallel).events)
        finally:
            db.close()
    assert folded[1] - folded[0] > 1000
    assert left[1] <= left[0] + 50, left


def test_the_collector_is_paused_only_while_a_rebuild_folds() -> None:
    assert gc.isenabled()
    with cyclic_gc_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    gc.disable()
    try:
        with cyclic_gc_paused():
            pass
        assert not gc.isenabled()  # left as it was found
    finally:
        gc.enable()


def test_the_garbage_a_reader_leaves_does_not_grow_with_its_notifications(
        tmp_path: Path) -> None:
    """A rebuild's worker reads with the collector paused too: the same rule for its reading
    and converting (audit records included), run here in process."""
    home = tmp_path / "home"
    (home / "stores").mkdir(parents=True)
    generate(home / "stores", 1600, batch=20)
    sink = os.open(os.devnull, os.O_WRONLY)
    left: list[int] = []
    try:
        for notifications in (300, 1500):
            gc.collect()
            gc.disable()  # all the reader leaves is counted below, none collected on the way
            try:
                read_in_worker(Settings(home=home), home / "stores", "workflow",
                               WholeWriter(sink), stop=notifications)
                left.append(gc.collect())
            finally:
                gc.enable()
    finally:
        os.close(sink)
    assert left[1] <= left[0] + 50, left


def test_overlapping_pauses_end_with_the_last() -> None:
    first, second = cyclic_gc_paused(), cyclic_gc_paused()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not gc.isenabled()  # the second still folds
    second.__exit__(None, None, None)
    assert gc.isenabled()
