"""A rebuild worker's frames cross the pipe whole, even when the worker is stopped and
continued while it writes (SIGSTOP/SIGCONT: job control, a sampling profiler attaching)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

from projections.rebuild import read_frame

FRAMES = 60
#: A worker writes a frame per chunk of events; these are larger than a pipe holds (64 KiB).
WRITER = """
import sys
from projections.rebuild import FrameOut, frame
out = FrameOut(sys.stdout.fileno())
for i in range({frames}):
    out.write(frame(b"E", (f"{{i:08d}}" * 40_000).encode()))
out.write(frame(b"S", b"{{}}"))
"""


def test_frames_arrive_whole_while_the_writer_is_stopped_and_continued() -> None:
    worker = subprocess.Popen([sys.executable, "-c", WRITER.format(frames=FRAMES)],
                              stdout=subprocess.PIPE)
    assert worker.stdout is not None
    done = threading.Event()

    def stop_and_continue() -> None:
        while not done.is_set():
            os.kill(worker.pid, signal.SIGSTOP)
            time.sleep(0.0005)
            os.kill(worker.pid, signal.SIGCONT)
            time.sleep(0.001)

    pester = threading.Thread(target=stop_and_continue, daemon=True)
    pester.start()
    try:
        got = [read_frame(worker.stdout) for _ in range(FRAMES + 1)]
    finally:
        done.set()
        pester.join()
        os.kill(worker.pid, signal.SIGCONT)
        assert worker.wait(timeout=30) == 0
        worker.stdout.close()
    assert got[-1] == (b"S", b"{}")
    broken = [i for i, one in enumerate(got[:-1])
              if one != (b"E", (f"{i:08d}" * 40_000).encode())]
    assert broken == [], f"frames garbled on the way: {broken}"


def test_a_frame_cut_off_by_the_end_of_the_stream_is_none() -> None:
    reader = subprocess.Popen([sys.executable, "-c",
                               "import sys; sys.stdout.buffer.write(b'E\\x00\\x00\\x00\\x09abc')"],
                              stdout=subprocess.PIPE)
    assert reader.stdout is not None
    assert read_frame(reader.stdout) is None
    assert read_frame(reader.stdout) is None
    reader.wait(timeout=30)
    reader.stdout.close()
