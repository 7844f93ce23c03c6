"""A rebuild's store readers are processes of their own (``python -m
projections.rebuild_worker``), started afresh for every rebuild, one per core. What
they import is paid for by each of them before it reads a single event: they import what reading
and converting a store needs, and not the NATS client, the broker or the HTTP server that the
services' wiring brings in (each service's ``published`` module says what its relay publishes,
apart from that wiring)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import orjson

from bench.projections import generate
from hitlflow.settings import Settings
from projections.db import ViewDatabase
from projections.projector import Projector
from projections.rebuild import (
    EmptySource,
    WorkerSource,
    open_sources,
    read_frame,
    rebuild_from_stores,
)

#: Packages a store reader has no use for (each costs a reader a share of its start-up).
NOT_FOR_READERS = ("faststream", "nats", "uvicorn", "fastapi", "starlette")

#: ``python -m projections.rebuild_worker ARGS``, noting at its exit the modules it imported.
WORKER = """
import atexit, os, pathlib, runpy, sys
noted = pathlib.Path(os.environ["MODULES_FILE"])
atexit.register(lambda: noted.write_text("\\n".join(sys.modules)))
runpy.run_module("projections.rebuild_worker", run_name="__main__", alter_sys=True)
"""


def test_a_store_reader_reads_without_importing_the_services_messaging(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "stores").mkdir(parents=True)
    generate(home / "stores", 200, batch=20)  # workflow and interaction events
    for source in open_sources(Settings(home=home), home / "stores", parallel=False):
        source.close()  # (the timeout store, created empty)
    for service in ("workflow", "interaction", "timeout"):
        noted = tmp_path / f"{service}.modules"
        worker = subprocess.run(
            [sys.executable, "-c", WORKER, service, str(home / "stores"), "0", "1", "5000",
             "100000", "0"],
            input=Settings(home=home).model_dump_json().encode(), capture_output=True,
            env={**os.environ, "MODULES_FILE": str(noted)}, timeout=120, check=True)
        frames, events, stream = [], 0, io.BytesIO(worker.stdout)
        while (got := read_frame(stream)) is not None:
            frames.append(got[0])
            if got[0] in (b"E", b"B"):
                events += len(orjson.loads(got[1]))
        assert frames[-1] == b"S", (service, frames, worker.stdout[-2000:])
        assert events > 0 or service == "timeout", service
        modules = set(noted.read_text().split())
        assert "projections.rebuild" in modules
        assert f"services.{service}.published" in modules
        unwanted = sorted(m for m in modules if m.split(".")[0] in NOT_FOR_READERS)
        assert not unwanted, (service, unwanted)


def test_an_empty_store_gets_no_reader_and_is_recorded_as_read(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "stores").mkdir(parents=True)
    generate(home / "stores", 200, batch=20)  # the timeout store stays empty
    settings = Settings(home=home)
    sources = open_sources(settings, home / "stores", parallel=True)
    try:
        assert {s.service for s in sources if isinstance(s, WorkerSource)} == {
            "workflow", "interaction"}
        assert [s.service for s in sources if isinstance(s, EmptySource)] == ["timeout"]
    finally:
        for source in sources:
            source.close()
    recorded = {}
    for parallel in (False, True):
        db = ViewDatabase.sqlite(tmp_path / f"views-{parallel}.sqlite")
        try:
            rebuild_from_stores(db, Projector(db), settings, data_dir=home / "stores",
                                parallel=parallel)
            recorded[parallel] = [tuple(row.values()) for row in db.query(
                "SELECT view, service, upto FROM view_positions ORDER BY view, service")]
        finally:
            db.close()
    assert recorded[True] == recorded[False]
    assert ("thread_status", "timeout", 0) in recorded[True]
