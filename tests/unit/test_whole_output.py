"""What a process writes to a pipe arrives whole, even when the process is stopped and
continued while it writes (SIGSTOP/SIGCONT, as Ctrl-Z and ``fg`` on a pipeline or a sampling
profiler attaching do): a rebuild reader's frames, and what the CLI prints."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, TypeVar

from typer.testing import CliRunner

from hitlflow.cli import app
from projections.rebuild import read_frame

T = TypeVar("T")

FRAMES = 60
#: A worker writes a frame per chunk of events; these are larger than a pipe holds (64 KiB).
WRITER = """
import sys
from projections.rebuild import frame
from services.common.output import WholeWriter
out = WholeWriter(sys.stdout.fileno())
for i in range({frames}):
    out.write(frame(b"E", (f"{{i:08d}}" * 40_000).encode()))
out.write(frame(b"S", b"{{}}"))
"""


@contextlib.contextmanager
def stopped_and_continued(args: list[str]) -> Iterator[IO[bytes]]:
    """Run ``args`` with its stdout on a pipe, stopping and continuing it every millisecond or
    so until the block is done; yield the pipe. The process must exit 0."""
    process = subprocess.Popen(args, stdout=subprocess.PIPE)
    assert process.stdout is not None
    done = threading.Event()

    def stop_and_continue() -> None:
        while not done.is_set():
            os.kill(process.pid, signal.SIGSTOP)
            time.sleep(0.0005)
            os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.001)

    pester = threading.Thread(target=stop_and_continue, daemon=True)
    pester.start()
    try:
        yield process.stdout
    finally:
        done.set()
        pester.join()
        os.kill(process.pid, signal.SIGCONT)
        assert process.wait(timeout=60) == 0
        process.stdout.close()


def slowly(read: Callable[[], T]) -> T:
    """A reader a little slower than the writer, so that the pipe fills and writes wait."""
    time.sleep(0.0002)
    return read()


def test_frames_arrive_whole_while_the_writer_is_stopped_and_continued() -> None:
    with stopped_and_continued([sys.executable, "-c", WRITER.format(frames=FRAMES)]) as pipe:
        got = [slowly(lambda: read_frame(pipe)) for _ in range(FRAMES + 1)]
    assert got[-1] == (b"S", b"{}")
    broken = [i for i, one in enumerate(got[:-1])
              if one != (b"E", (f"{i:08d}" * 40_000).encode())]
    assert broken == [], f"frames cut or garbled on the way: {broken}"


def test_what_the_cli_prints_arrives_whole_while_it_is_stopped_and_continued() -> None:
    """``hitlflow contract --format asyncapi`` prints about 200 KB: all of it reaches the pipe
    (it lost most of it, exiting 0, when its writes were cut short)."""
    expected = CliRunner().invoke(app, ["contract", "--format", "asyncapi"]).stdout.encode()
    assert len(expected) > 150_000
    with stopped_and_continued([sys.executable, "-m", "hitlflow", "contract", "--format",
                                "asyncapi"]) as pipe:
        chunks = []
        while chunk := slowly(lambda: pipe.read(4096)):
            chunks.append(chunk)
    got = b"".join(chunks)
    assert (len(got), got) == (len(expected), expected)


def test_a_frame_cut_off_by_the_end_of_the_stream_is_none() -> None:
    reader = subprocess.Popen([sys.executable, "-c",
                               "import sys; sys.stdout.buffer.write(b'E\\x00\\x00\\x00\\x09abc')"],
                              stdout=subprocess.PIPE)
    assert reader.stdout is not None
    assert read_frame(reader.stdout) is None
    assert read_frame(reader.stdout) is None
    reader.wait(timeout=30)
    reader.stdout.close()
