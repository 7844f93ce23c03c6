"""Output that reaches its pipe whole.

On CPython 3.11 the buffered writer under ``sys.stdout`` returns a short count from ``write``
when a large write to a pipe is cut short because the process was stopped and continued
(SIGTSTP or SIGSTOP, then SIGCONT: Ctrl-Z and ``fg`` on a pipeline, a sampling profiler
attaching), and nothing above it writes the rest: ``hitlflow contract --format asyncapi | …``
lost most of its 200 KB and exited 0, and a rebuild reader's frames arrived cut. Here every
write goes on until the descriptor has taken all of it.
"""

from __future__ import annotations

import io
import os
from typing import Any, TextIO


class WholeWriter(io.RawIOBase):
    """Writes to a file descriptor, each call until all of it is written. Closing it leaves
    the descriptor open (it belongs to whoever opened it)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def write(self, data: Any, /) -> int:  # any bytes-like object
        view = memoryview(data).cast("B")
        size = len(view)
        while view:
            view = view[os.write(self._fd, view):]
        return size


def whole_text(stream: TextIO) -> TextIO:
    """``stream`` (``sys.stdout``, ``sys.stderr``) as a text stream over a
    :class:`WholeWriter` of its descriptor, with its encoding, error handling and buffering;
    ``stream`` itself when it has no descriptor (a test's capture)."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return stream
    stream.flush()
    return io.TextIOWrapper(io.BufferedWriter(WholeWriter(fd)), encoding=stream.encoding,
                            errors=stream.errors, line_buffering=bool(stream.line_buffering),
                            write_through=getattr(stream, "write_through", False))
