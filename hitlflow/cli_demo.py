"""``hitlflow demo``: the guide's five workflow patterns, one after the other, on a real stack.

With a terminal it asks you at every pause — the options are shown, your input is checked and
asked again when it does not fit (locally, and by the interaction service's own rules). Without
one (CI, a pipe) it answers from a script and prints each step, including one answer the
service refuses, to show what a refusal looks like.

By default the demo starts its own embedded stack (a nats-server on a free port and every
service, in a temporary directory, with ``examples/agents.py`` registered) and stops it at the
end; ``--nats-url`` uses a running stack instead (it must know the example agents).
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.rule import Rule
from rich.text import Text

from hitlflow import display
from hitlflow.client import HitlClient, Outcome

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: A scripted answer: ``(action, data)``, or a function of the request giving one.
Scripted = tuple[str, dict[str, Any] | None] | Callable[[dict[str, Any]], tuple[str, Any]]


@dataclass(frozen=True)
class Pattern:
    title: str
    file: str
    graph: str
    about: str
    state: dict[str, Any]
    script: list[Scripted] = field(default_factory=list)


def _edited(request: dict[str, Any]) -> tuple[str, Any]:
    draft = str(request["context"].get("original_content", ""))
    edited = draft.replace("Questions are welcome; reply to this message.",
                           "Questions go to #platform-team.")
    return "edit", {"edited": edited, "changes": ["Pointed questions to the team channel"]}


PATTERNS = [
    Pattern("Approval gates", "approval.csv", "ApprovalFlow",
            "An approval interaction at a critical decision point.",
            {"user_request": "Buy 3 laptops for the new team"},
            [("approve", {"reason": "Within the Q1 budget"})]),
    Pattern("Content review and edit", "content.csv", "ContentFlow",
            "A person reviews and edits generated content.",
            {"content_request": {"topic": "New API rate limits from 1 May",
                                 "audience": "developers", "tone": "friendly",
                                 "points": ["100 requests per minute per key",
                                            "Bursts up to 200 are allowed"]}},
            [_edited]),
    Pattern("Multi-step decision making", "decision.csv", "DecisionFlow",
            "A choice between approaches after an automated analysis.",
            {"problem_description": "Checkout is slow at peak traffic and customers abandon "
                                    "their carts; the database is overloaded."},
            [("choose", {"choice": 5}),  # refused: there are 3 options
             ("choose", {"choice": 2, "justification": "Payments are critical"})]),
    Pattern("Requirements gathering", "requirements.csv", "RequirementsFlow",
            "Free-text input collects details an analysis cannot know.",
            {"project_brief": "A customer portal where users log in and download invoices"},
            [("respond", {"text": "Add social login (Google, GitHub). Rate-limit login "
                                  "attempts. Invoices must be downloadable as PDF. "
                                  "Dark mode could come later."})]),
    Pattern("Iterative conversation", "consultation.csv", "ConsultationFlow",
            "A conversation that loops until the person sends 'end'.",
            {"consultation_topic": "technical architecture"},
            [("respond", {"message": "Microservices would suit our team of 8. Start with "
                                     "users, catalog and orders.",
                          "follow_up_questions": ["What database strategy should we use?"]}),
             ("respond", {"message": "One database per service, with events between them."}),
             ("end", None)]),
]


class DemoError(RuntimeError):
    """The demo cannot go on (no stack, unknown agents, a thread that failed)."""


def demo(
    nats_url: Annotated[str | None, typer.Option(
        "--nats-url", help="Use this running stack (it must have examples/agents.py) instead "
                           "of starting one.")] = None,
    interactive: Annotated[bool | None, typer.Option(
        "--interactive/--script",
        help="Ask at each pause, or answer from the script (default: ask when stdin is a "
             "terminal).")] = None,
    only: Annotated[list[str] | None, typer.Option(
        "--only", help="Run only these patterns (approval, content, decision, requirements, "
                       "consultation); repeatable.")] = None,
) -> None:
    """Walk through the guide's five workflow patterns, pausing for a person at each step."""
    console = Console(highlight=False)
    ask = sys.stdin.isatty() if interactive is None else interactive
    chosen = [p for p in PATTERNS if not only or p.file.removesuffix(".csv") in only]
    if not chosen:
        raise typer.BadParameter(f"no pattern matches {only}", param_hint="--only")
    runner = _Runner(console, ask)
    try:
        if nats_url:
            runner.run_against(nats_url, chosen)
        else:
            runner.run_embedded(chosen)
    except DemoError as error:
        console.print(Text(f"error: {error}", style="red"))
        raise typer.Exit(1) from None
    console.print(Rule())
    console.print(Text(f"All {len(chosen)} pattern(s) ran to completion.", style="bold green"))


class _Runner:
    def __init__(self, console: Console, interactive: bool) -> None:
        self.console = console
        self.interactive = interactive

    def run_embedded(self, patterns: list[Pattern]) -> None:
        from hitlflow.settings import Settings
        from hitlflow.stack import BackgroundStack, Stack, free_port
        from services.common.logging import configure_logging
        from services.workflow.agents import AgentRegistry

        configure_logging("WARNING")
        with tempfile.TemporaryDirectory(prefix="hitlflow-demo-") as home:
            settings = Settings(home=Path(home), log_level="WARNING")
            registry = AgentRegistry.load([str(EXAMPLES / "agents.py")])
            self.console.print(Text("Starting an embedded stack for the demo …", style="dim"))
            stack = Stack(settings, port=free_port(), agents=registry)
            with BackgroundStack(stack) as running:
                client = HitlClient(running.nats_url, reply_timeout=20.0,
                                    auth=stack.settings_for("operator").nats_auth())
                running.call(client.connect())
                try:
                    for number, pattern in enumerate(patterns, 1):
                        self.walk(running.call, client, pattern, number, len(patterns))
                finally:
                    running.call(client.close())

    def run_against(self, nats_url: str, patterns: list[Pattern]) -> None:
        import asyncio

        loop = asyncio.new_event_loop()
        from hitlflow.cli_common import client_for
        from hitlflow.settings import load_settings

        client = client_for(load_settings(nats_url=nats_url))
        try:
            try:
                loop.run_until_complete(client.connect())
            except Exception as error:
                raise DemoError(str(error)) from error
            for number, pattern in enumerate(patterns, 1):
                self.walk(loop.run_until_complete, client, pattern, number, len(patterns))
        finally:
            loop.run_until_complete(client.close())
            loop.close()

    # -- one pattern --------------------------------------------------------------------------

    def walk(self, call: Callable[[Any], Any], client: HitlClient, pattern: Pattern,
             number: int, total: int) -> None:
        from services.workflow.definition import WorkflowError, load_workflow

        out = self.console
        target = f"{EXAMPLES / pattern.file}::{pattern.graph}"
        out.print(Rule(f"Pattern {number} of {total}: {pattern.title}"))
        out.print(Text(pattern.about, style="italic"))
        try:
            spec = load_workflow(target)
        except WorkflowError as error:
            raise DemoError(str(error)) from error
        thread = f"demo-{pattern.file.removesuffix('.csv')}-{_suffix()}"
        self.step(f"hitlflow run examples/{pattern.file}::{pattern.graph} --thread-id {thread} "
                  f"--state {shlex.quote(json.dumps(pattern.state))}")
        outcome: Outcome = call(client.start(spec, pattern.state, thread_id=thread))
        if not outcome.ok:
            raise DemoError(f"{outcome.reply.code}: {outcome.reply.error}")
        script = list(pattern.script)
        while outcome.status == "paused":
            request = outcome.pending[0]
            out.print(display.request_panel(request, several=len(outcome.pending) > 1))
            outcome = self.answer(call, client, thread, request, script)
        display.show_outcome(out, {**outcome.as_dict(), "pending": []})
        if outcome.status != "completed":
            raise DemoError(f"thread {thread} ended {outcome.status}: {outcome.error}")

    def answer(self, call: Callable[[Any], Any], client: HitlClient, thread: str,
               request: dict[str, Any], script: list[Scripted]) -> Outcome:
        """Send answers until one is accepted; returns the thread's outcome after it."""
        while True:
            if self.interactive:
                action, data = ask(self.console, request)
            else:
                if not script:
                    raise DemoError(f"the script has no answer left for {request['node_name']}")
                entry = script.pop(0)
                action, data = entry(request) if callable(entry) else entry
            command = ["hitlflow", "resume", thread, action]
            if data is not None:
                command += ["--data", json.dumps(data)]
            self.step(shlex.join(command))
            outcome: Outcome = call(client.resume(thread, action, data,
                                                  request_id=request["id"],
                                                  shown=request.get("shown")))
            if outcome.ok:
                self.console.print(Text(f"accepted: {action}", style="green"))
                return outcome
            self.console.print(Text(f"refused ({outcome.reply.code}): {outcome.reply.error}",
                                    style="red"))
            if self.interactive:
                self.console.print(Text("Please answer again.", style="yellow"))

    def step(self, command: str) -> None:
        self.console.print(Text(f"$ {command}", style="bold"), soft_wrap=True)


# -- asking a person --------------------------------------------------------------------------


def _prompt(console: Console, text: str, *, default: str | None = None) -> str:
    shown = f"{text} [{default}]" if default else text
    value: str = typer.prompt(shown, default=default or "", show_default=False)
    return value.strip()


def ask(console: Console, request: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """Ask for an answer fitting the request's type; asks again until the input fits."""
    kind = request["interaction_type"]
    actions = [a for a, _, _ in display.SUGGESTIONS[kind]]
    actions = list(dict.fromkeys(actions))
    while True:
        if len(actions) == 1:
            action = actions[0]
        else:
            action = _prompt(console, f"Action ({' / '.join(actions)})", default=actions[0])
            if action not in actions:
                console.print(Text(f"'{action}' is not one of: {', '.join(actions)}",
                                   style="red"))
                continue
        try:
            return action, _data_for(console, kind, action, request)
        except ValueError as error:
            console.print(Text(str(error), style="red"))


def _data_for(console: Console, kind: str, action: str,
              request: dict[str, Any]) -> dict[str, Any] | None:
    if kind == "approval" or (kind == "edit" and action == "reject"):
        reason = _prompt(console, "Reason (optional)")
        return {"reason": reason} if reason else None
    if kind == "edit":
        if action == "approve":
            return None
        edited = _prompt(console, "Edited content (one line)")
        if not edited:
            raise ValueError("the edited content is empty; type the new text")
        return {"edited": edited}
    if kind == "choice":
        options = request["options"]
        raw = _prompt(console, f"Option number (1-{len(options)})")
        if not raw.isdigit() or not 1 <= int(raw) <= len(options):
            raise ValueError(f"'{raw}' is not an option number: type 1-{len(options)}")
        justification = _prompt(console, "Justification (optional)")
        return {"choice": int(raw), **({"justification": justification} if justification else {})}
    if kind == "text_input":
        text = _prompt(console, "Your answer")
        if not text:
            raise ValueError("the answer is empty; type some text")
        return {"text": text}
    if action == "end":
        return None
    message = _prompt(console, "Your message")
    if not message:
        raise ValueError("the message is empty; type a message, or choose 'end'")
    return {"message": message}


def _suffix() -> str:
    import uuid

    return uuid.uuid4().hex[:6]
