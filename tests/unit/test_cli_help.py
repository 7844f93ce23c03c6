"""`hitlflow --help` and each command's help read as prose: every paragraph flows in the
terminal's width, not broken again where its docstring's source line ended."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from typer.main import get_command
from typer.testing import CliRunner

from hitlflow.cli import app


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


def test_every_paragraph_of_every_help_is_one_line_of_text() -> None:
    found = list(commands(get_command(app)))
    assert len(found) > 40  # every command, the groups' ones included
    broken = {" ".join(path): paragraph for path, command in found
              for paragraph in (command.help or "").split("\n\n") if "\n" in paragraph}
    assert not broken, broken


def test_a_long_help_is_wrapped_by_the_terminal_only() -> None:
    shown = CliRunner().invoke(app, ["projections", "rebuild", "--help"],
                               env={"COLUMNS": "120"}).output
    # its docstring breaks this paragraph before "result.": a wide terminal shows one line
    assert "Shows a progress bar (events replayed, rate, ETA) on a terminal; --json prints " \
           "only the result." in shown
