"""structlog, configured once per process."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

from services.common.correlation import add_correlation_id

_configured = False


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    """The services' logging (``up``, ``serve``, a test stack): once per process."""
    global _configured  # noqa: PLW0603 - configure-once guard for the process
    if _configured:
        return
    _configured = True
    _configure(level, fmt, cache=True)


def configure_command_logging() -> None:
    """What a ``hitlflow`` command logs until (unless) it runs the services: warnings and
    errors, on stderr. A command that reads the stores in process (``projections rebuild
    --offline``, ``audit verify`` …) runs service code that logs at INFO; structlog's default
    would print that on stdout, inside the command's own output (a ``--json`` document, a
    table). ``up`` and ``serve`` replace this with :func:`configure_logging` (so no logger
    keeps this configuration: none is cached)."""
    if not _configured:
        _configure("WARNING", "console", cache=False)


def _configure(level: str, fmt: str, *, cache: bool) -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_correlation_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper()) if isinstance(level, str) else level
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=cache,
    )
    # faststream and nats-py log through stdlib logging: keep them quiet unless asked.
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
