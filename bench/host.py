"""How fast the host was while a benchmark ran: the figures that tell whether two runs compare.

On shared machines the same code runs at very different speeds from one hour to the next (other
guests take the cores: *steal* time), so a figure without the host's state beside it cannot be
set against another run's. Each bench therefore records:

- ``python_loop_ms``: the best of five runs of a fixed pure-Python loop (a million additions),
  at the start and at the end of the run: the interpreter's speed on this host right then;
- ``fsync_ms``: how long a 4 KiB write and ``fsync`` take in the run's data directory (p50 and
  p90 of 50), which sets the pace of every durable commit (SQLite's above all);
- per phase (:class:`Meter`): the load average when it began, and over its whole time the share
  of the cores that was busy, that the hypervisor took (steal) and that waited for the disk
  (iowait), from ``/proc/stat`` (absent elsewhere than Linux: those figures are then None).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

#: The fields of /proc/stat's ``cpu`` line, in its order (jiffies since boot, all cores).
CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
LOOP_STEPS = 1_000_000


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def python_loop_ms(steps: int = LOOP_STEPS, repeat: int = 5) -> float:
    """Milliseconds the fastest of ``repeat`` runs of a ``steps``-addition loop took."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        total = 0
        for step in range(steps):
            total += step
        best = min(best, time.perf_counter() - started)
    return round(best * 1000, 2)


def fsync_ms(directory: Path, writes: int = 50) -> dict[str, float]:
    """p50 and p90 (ms) of writing 4 KiB to a new file in ``directory`` and syncing it."""
    directory.mkdir(parents=True, exist_ok=True)
    took = []
    block = os.urandom(4096)
    with tempfile.TemporaryFile(dir=directory) as file:
        for _ in range(writes):
            started = time.perf_counter()
            file.write(block)
            file.flush()
            os.fsync(file.fileno())
            took.append(time.perf_counter() - started)
    cuts = statistics.quantiles(took, n=10)
    return {"p50": round(statistics.median(took) * 1000, 3), "p90": round(cuts[8] * 1000, 3)}


def cpu_times(stat: Path = Path("/proc/stat")) -> dict[str, int] | None:
    """The host's CPU time so far by kind (jiffies), or None where there is no /proc/stat."""
    try:
        first = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    values = [int(v) for v in first[1:1 + len(CPU_FIELDS)]]
    values += [0] * (len(CPU_FIELDS) - len(values))  # older kernels: no steal column
    return dict(zip(CPU_FIELDS, values, strict=True))


def shares(before: dict[str, int] | None, after: dict[str, int] | None
           ) -> dict[str, float | None]:
    """Percent of the cores' time between two :func:`cpu_times` readings that was busy (neither
    idle nor waiting for the disk), stolen by the hypervisor, and waiting for the disk."""
    empty: dict[str, float | None] = {"busy_pct": None, "steal_pct": None, "iowait_pct": None}
    if before is None or after is None:
        return empty
    spent = {kind: after[kind] - before[kind] for kind in CPU_FIELDS}
    total = sum(spent.values())
    if total <= 0:
        return empty
    idle = spent["idle"] + spent["iowait"]
    return {"busy_pct": round(100 * (total - idle - spent["steal"]) / total, 1),
            "steal_pct": round(100 * spent["steal"] / total, 1),
            "iowait_pct": round(100 * spent["iowait"] / total, 1)}


class Meter:
    """What the host did over one phase, from its start to :meth:`reading`."""

    def __init__(self) -> None:
        self.load = load_average()
        self._start = cpu_times()

    def reading(self) -> dict[str, Any]:
        return {"load_average": self.load, **shares(self._start, cpu_times())}


def probe(directory: Path) -> dict[str, Any]:
    """The host's speed right now: :func:`python_loop_ms` and :func:`fsync_ms`."""
    return {"python_loop_ms": python_loop_ms(), "fsync_ms": fsync_ms(directory)}


def describe(phase: dict[str, Any]) -> str:
    """A phase's host figures in a few words: ``busy 97 %, steal 12 %, load 1.8``."""
    parts = []
    if phase.get("busy_pct") is not None:
        parts.append(f"busy {phase['busy_pct']:g} %, steal {phase['steal_pct']:g} %")
    if phase.get("load_average"):
        parts.append(f"load {phase['load_average'][0]:g}")
    return ", ".join(parts)
