"""What every ``hitlflow`` sub-command shares: exit codes, consoles, common options, failing
with a one-line reason, and a client for the configured stack.

Exit codes scripts can trust: 0 done/accepted; 1 refused (a response or command the services
rejected); 2 bad input; 3 no stack (nothing answers at the NATS URL, or no outcome in time).
"""

from __future__ import annotations

import inspect
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

from hitlflow.client import HitlClient
from hitlflow.settings import Settings

EXIT_REFUSED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_STACK = 3

out = Console()
err = Console(stderr=True)

NatsUrl = Annotated[str | None, typer.Option("--nats-url", envvar="HITLFLOW_NATS_URL",
                                             help="NATS of a running stack (default: the "
                                                  "embedded stack's).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
ForPerson = Annotated[str | None, typer.Option(
    "--for", "--as", help="Act for this person (a system user acting for someone; the audit "
    "keeps both names). Others are refused: they act as themselves.")]


def say_error(message: str) -> None:
    """``error: <message>``, one line on stderr."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit with ``code``."""
    say_error(message)
    raise typer.Exit(code)


#: A command's fields as the CLI's options name them.
OPTION_NAMES = {"action": "the action", "idempotency_key": "--key", "on_behalf_of": "--for",
                "request_id": "--request-id", "reason": "--reason", "shown": "--shown"}


def describe_input_error(error: ValidationError, names: dict[str, str] | None = None) -> str:
    """``invalid input: action: String should have at most 64 characters``: which value the
    contract refused, and why (fields named as in ``names``, when given)."""
    names = names or {}
    problems = []
    for item in error.errors()[:3]:
        field = ".".join(str(p) for p in item["loc"])
        problems.append(f"{names.get(field, field)}: {item['msg']}")
    return "invalid input: " + "; ".join(problems)


def flowing(text: str) -> str:
    """``text`` with each paragraph on one line (paragraphs apart by a blank line; one that
    starts with ``\\b`` is kept as written, as click does)."""
    return "\n\n".join(
        paragraph if paragraph.startswith("\b")
        else " ".join(line.strip() for line in paragraph.splitlines())
        for paragraph in text.split("\n\n"))


def flow_help(app: typer.Typer) -> None:
    """Every command's help as flowing paragraphs, in ``app`` and the groups under it. typer
    keeps a docstring's line breaks, so a paragraph wrapped at the source's width came out
    broken again inside the terminal's ("… and the" / "HTTP gateway …")."""
    for command in app.registered_commands:
        text = command.help or inspect.getdoc(command.callback)
        if text:
            command.help = flowing(text)
    called = app.registered_callback  # a group's own help: its callback's docstring
    if called is not None and called.callback is not None:
        text = called.help or inspect.getdoc(called.callback)
        if isinstance(text, str):
            called.help = flowing(text)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            flow_help(group.typer_instance)


def client_for(settings: Settings) -> HitlClient:
    return HitlClient(settings.resolved_nats_url(), reply_timeout=settings.reply_timeout,
                      auth=settings.nats_auth(), principal=settings.principal)
