"""The host figures every bench records beside its own (``bench/host.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import host
from bench.run import print_host
from tests.helpers import wait_for

STAT = """cpu  {user} 0 {system} {idle} {iowait} 0 0 {steal} 0 0
cpu0 1 2 3 4 5 6 7 8 0 0
intr 12345
"""


def stat(tmp_path: Path, name: str, **jiffies: int) -> Path:
    path = tmp_path / name
    path.write_text(STAT.format(**{"user": 0, "system": 0, "idle": 0, "iowait": 0, "steal": 0,
                                   **jiffies}))
    return path


def test_the_shares_of_a_phase_come_from_the_difference_of_two_readings(tmp_path: Path) -> None:
    before = host.cpu_times(stat(tmp_path, "a", user=1000, system=500, idle=8000, iowait=100,
                                 steal=400))
    # over the phase: 600 user + 100 system busy, 100 idle, 50 iowait, 150 steal = 1000
    after = host.cpu_times(stat(tmp_path, "b", user=1600, system=600, idle=8100, iowait=150,
                                steal=550))
    assert host.shares(before, after) == {"busy_pct": 70.0, "steal_pct": 15.0,
                                          "iowait_pct": 5.0}


def test_a_kernel_without_a_steal_column_reads_as_no_steal(tmp_path: Path) -> None:
    path = tmp_path / "stat"
    path.write_text("cpu  10 0 10 80 0 0 0\n")
    times = host.cpu_times(path)
    assert times is not None and times["steal"] == 0 and times["idle"] == 80


@pytest.mark.parametrize("text", [None, "intr 1 2 3\n", ""])
def test_without_proc_stat_the_shares_are_unknown(tmp_path: Path, text: str | None) -> None:
    path = tmp_path / "stat"
    if text is not None:
        path.write_text(text)
    assert host.cpu_times(path) is None
    assert host.shares(None, None) == {"busy_pct": None, "steal_pct": None, "iowait_pct": None}
    assert host.describe({"load_average": [0.5, 0.4, 0.3], **host.shares(None, None)}) == \
        "load 0.5"


def test_a_meter_reads_this_hosts_cores_and_load() -> None:
    meter = host.Meter()
    if Path("/proc/stat").exists():  # some time between the readings, idle time included
        start = host.cpu_times()
        wait_for(lambda: host.cpu_times() != start, what="the cores' clock to tick")
    reading = meter.reading()
    assert len(reading["load_average"]) == 3
    if Path("/proc/stat").exists():
        assert 0.0 <= reading["busy_pct"] <= 100.0 and 0.0 <= reading["steal_pct"] <= 100.0
        assert "busy" in host.describe(reading) and "steal" in host.describe(reading)


def test_the_probe_times_the_interpreter_and_the_disk(tmp_path: Path) -> None:
    probe = host.probe(tmp_path / "data")
    assert probe["python_loop_ms"] > 0
    assert 0 < probe["fsync_ms"]["p50"] <= probe["fsync_ms"]["p90"]
    assert list((tmp_path / "data").iterdir()) == []  # the probe's file is gone


def test_the_bench_table_shows_the_host_at_both_ends_and_in_each_phase(
        capsys: pytest.CaptureFixture[str]) -> None:
    phase = {"load_average": [1.5, 1.0, 0.5], "busy_pct": 97.0, "steal_pct": 12.5,
             "iowait_pct": 0.0}
    print_host({
        "host": {"at_start": {"python_loop_ms": 33.1, "fsync_ms": {"p50": 0.21, "p90": 0.3}},
                 "at_end": {"python_loop_ms": 120.4, "fsync_ms": {"p50": 0.5, "p90": 0.9}},
                 "over_the_run": phase},
        "langgraph": {"sqlite": {"engine": "langgraph", "cycles_1": phase}},
        "hitlflow": {"sqlite": {"skipped": "no"}, "postgres": {"cycles_64": phase}},
    })
    out = capsys.readouterr().out
    assert "at start loop 33.1 ms, fsync 0.21 ms" in out
    assert "at end   loop 120.4 ms, fsync 0.50 ms" in out
    assert "over the run: busy 97 %, steal 12.5 %, load 1.5" in out
    assert "langgraph SQLite: cycles 1: busy 97 %, steal 12.5 %, load 1.5" in out
    assert "hitlflow PostgreSQL: cycles 64: busy 97 %" in out
    assert "hitlflow SQLite" not in out  # skipped: no phase to describe
