"""A rebuild folds with Python's cyclic garbage collector paused (``cyclic_gc_paused`` in
``projections/rebuild.py``). That is safe only while folding makes no reference cycles: any it
made would pile up until the fold's end, a million events' worth. The garbage left for the
collector when the fold ends must not grow with its events."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import pytest

from bench.projections import generate
from hitlflow.settings import Settings
from projections.db import ViewDatabase
from projections.projector import Projector
from projections.rebuild import cyclic_gc_paused, rebuild_from_stores


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
