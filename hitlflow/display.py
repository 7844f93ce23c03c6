"""How the CLI shows things to a person (rich) — pending requests the way the guide shows them."""

from __future__ import annotations

import json
import shlex
from datetime import UTC, datetime
from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

SUGGESTIONS: dict[str, list[tuple[str, dict[str, Any] | None, str]]] = {
    "approval": [("approve", None, "approve"),
                 ("reject", {"reason": "..."}, "reject with a reason")],
    "edit": [("edit", {"edited": "...", "changes": ["..."]}, "submit edited content"),
             ("approve", None, "keep the content as it is"),
             ("reject", {"reason": "..."}, "reject")],
    "choice": [("choose", {"choice": 1}, "choose by option number"),
               ("choose", {"choice": 2, "justification": "..."}, "choose with a justification")],
    "text_input": [("respond", {"text": "..."}, "answer in free text"),
                   ("respond", {"response": "...", "priority": "high"}, "structured answer")],
    "conversation": [("respond", {"message": "..."}, "reply and continue"),
                     ("end", None, "end the conversation")],
}


def resume_commands(request: dict[str, Any], several: bool = False) -> list[tuple[str, str]]:
    thread = request["thread_id"]
    out = []
    for action, data, meaning in SUGGESTIONS[request["interaction_type"]]:
        parts = ["hitlflow", "resume", thread, action]
        if data is not None:
            parts += ["--data", json.dumps(data)]
        if several:
            parts += ["--request-id", request["id"]]
        out.append((shlex.join(parts), meaning))
    return out


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _moment(value: datetime | str) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def span(seconds: float) -> str:
    """A duration the way people read it: 45s, 12m 05s, 3h 20m, 2d 4h."""
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def time_left(deadline: datetime | str, now: datetime | None = None) -> str:
    """``2h 05m left`` before a deadline, or ``overdue by 12s`` after it."""
    remaining = (_moment(deadline) - (now or datetime.now(UTC))).total_seconds()
    return f"{span(remaining)} left" if remaining >= 0 else f"overdue by {span(-remaining)}"


def request_panel(request: dict[str, Any], several: bool = False) -> Panel:
    body: list[Any] = [Text(request["prompt"], style="bold")]
    if request.get("context"):
        table = Table.grid(padding=(0, 2))
        table.add_column(style="cyan", no_wrap=True)
        table.add_column()
        for key, value in request["context"].items():
            table.add_row(key, _value(value))
        body += [Text(""), Text("Context", style="underline"), table]
    if request.get("options"):
        body += [Text(""), Text("Options", style="underline")]
        body += [Text(f"  {i}. {option}") for i, option in enumerate(request["options"], 1)]
    if request.get("deadline"):
        deadline = _moment(request["deadline"])
        body += [Text(""), Text(f"Answer before {deadline:%Y-%m-%d %H:%M:%S} UTC "
                                f"({time_left(deadline)})", style="yellow")]
    body += [Text(""), Text("Respond with", style="underline")]
    for command, meaning in resume_commands(request, several):
        body.append(Text.assemble(("  " + command, "green"), (f"   # {meaning}", "dim")))
    title = (f"Human input required: {request['node_name']} ({request['interaction_type']})"
             + (f" [{request.get('batch_index', 0) + 1}/{request['batch_size']}]"
                if request.get("batch_size", 1) > 1 else ""))
    return Panel(Group(*body), title=title, title_align="left", border_style="magenta")


def show_outcome(console: Console, outcome: dict[str, Any]) -> None:
    thread = outcome["thread_id"]
    status = outcome.get("status") or "unknown"
    style = {"completed": "green", "paused": "magenta", "failed": "red", "timed_out": "red",
             "cancelled": "yellow"}.get(status, "white")
    console.print(Text.assemble(("thread ", "dim"), (thread, "bold"), ("  status ", "dim"),
                                (status, f"bold {style}"),
                                (f"  at {outcome['node']}" if outcome.get("node") else "", "dim")))
    if outcome.get("duplicate"):
        console.print(Text("(this repeats an earlier command: nothing changed)", style="dim"))
    if status == "completed" and outcome.get("output") is not None:
        console.print(Text.assemble(("output: ", "dim"), _value(outcome["output"])))
    if outcome.get("error") and status in ("failed", "timed_out"):
        console.print(Text(outcome["error"], style="red"))
    pending = outcome.get("pending") or []
    for request in pending:
        console.print(request_panel(request, several=len(pending) > 1))


def threads_table(threads: list[dict[str, Any]]) -> Table:
    table = Table(title="threads")
    for column in ("thread", "graph", "status", "node", "started", "updated"):
        table.add_column(column)
    for t in threads:
        table.add_row(t["thread_id"], t["graph_name"], t["status"], t.get("current_node") or "",
                      str(t["started_at"])[:19], str(t["updated_at"])[:19])
    return table


def show_thread_at(console: Console, then: Any) -> None:
    """``hitlflow show T --at N``: the thread after event N, from its events."""
    console.print(Text.assemble(
        ("thread ", "dim"), (then.thread_id, "bold"),
        (f"  after event {then.event_number} of {then.events_total}", "dim"),
        (f"  ({then.service} {then.event_type} at {then.at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + ")",
         "dim")))
    show_outcome(console, {"thread_id": then.thread_id, "status": then.status,
                           "node": then.current_node, "output": then.output,
                           "error": then.error if isinstance(then.error, str) else None})
    if then.state:
        table = Table(title="state", title_justify="left")
        table.add_column("field", style="cyan")
        table.add_column("value", overflow="fold")
        for key, value in then.state.items():
            table.add_row(key, _value(value))
        console.print(table)
    for request in then.pending:
        body: list[Any] = [Text(_value(request.prompt), style="bold")]
        if isinstance(request.context, dict) and request.context:
            grid = Table.grid(padding=(0, 2))
            grid.add_column(style="cyan", no_wrap=True)
            grid.add_column()
            for key, value in request.context.items():
                grid.add_row(key, _value(value))
            body += [Text(""), Text("Context", style="underline"), grid]
        if request.options:
            body += [Text(""), Text("Options", style="underline")]
            body += [Text(f"  {i}. {option}") for i, option in enumerate(request.options, 1)]
        body += [Text(""), Text(f"shown digest {request.digest}", style="dim")]
        console.print(Panel(Group(*body), title=f"open then: {request.node_name} "
                            f"({request.interaction_type}) {request.id}", title_align="left",
                            border_style="magenta"))
    if then.answers or then.rejected:
        table = Table(title="answers so far", title_justify="left")
        for column in ("at", "request", "action", "by", "data", "outcome"):
            table.add_column(column, overflow="fold")
        for answer in then.answers:
            table.add_row(answer.at[:23], answer.request_id[:8], answer.action,
                          "timeout policy" if answer.by_timeout else str(answer.responder),
                          _value(answer.data) if answer.data is not None else "", "accepted")
        for attempt in then.rejected:
            table.add_row(attempt.at[:23], (attempt.request_id or "-")[:8], attempt.action,
                          str(attempt.responder), "", f"refused: {attempt.code}")
        console.print(table)


def show_diff(console: Console, thread_id: str, changes: dict[str, Any],
              events: list[Any]) -> None:
    """``hitlflow show T --diff A B``: what changed between two points."""
    first, last = changes["from"], changes["to"]
    console.print(Text.assemble(("thread ", "dim"), (thread_id, "bold"),
                                (f"  from event {first} to event {last}", "dim")))
    table = Table(title_justify="left")
    for column in ("what", "before", "after"):
        table.add_column(column, overflow="fold")
    for name in ("status", "current_node", "output", "error"):
        if name in changes:
            table.add_row(name, _value(changes[name]["from"]), _value(changes[name]["to"]))
    for key, change in changes.get("state", {}).items():
        table.add_row(f"state.{key}", _value(change.get("from", change.get("removed", ""))),
                      _value(change.get("to", change.get("added", ""))))
    for request in changes.get("opened", []):
        table.add_row(f"opened {request['id'][:8]}", "", f"{request['node_name']} "
                      f"({request['interaction_type']}): {_value(request['prompt'])}")
    for request in changes.get("closed", []):
        table.add_row(f"closed {request['id'][:8]}", "open", request["status"])
    for answer in changes.get("answers", []):
        table.add_row("answer", "", f"{answer['action']} by {answer['responder']}")
    for attempt in changes.get("rejected", []):
        table.add_row("refused", "", f"{attempt['action']} by {attempt['responder']}: "
                                     f"{attempt['code']}")
    console.print(table)
    steps = Table(title=f"{last - first} events in between", title_justify="left")
    for column in ("#", "time (UTC)", "service", "event"):
        steps.add_column(column)
    for number, event in enumerate(events[first:last], first + 1):
        steps.add_row(str(number), f"{event.at:%Y-%m-%d %H:%M:%S.%f}"[:23], event.service,
                      event.event_type)
    console.print(steps)
