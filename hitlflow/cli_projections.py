"""What the projections answer, on the command line: ``threads``, ``show``, ``audit``,
``analytics`` and ``projections rebuild``.

All of them ask a running projections service over NATS request/reply (``hitl.q.*``), like
``status`` and ``pending``. ``audit`` streams: it fetches a page at a time and writes each entry
as it arrives, so a million entries go out in constant memory. Exit codes as for the other
commands: 0 done, 2 bad input (the reason on stderr), 3 no stack reachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import IO, Annotated, Any, TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from contracts.limits import MAX_PAGE_ITEMS
from contracts.queries import (
    THREAD_STATUSES,
    VIEW_NAMES,
    AnalyticsQuery,
    AnalyticsReply,
    AuditEntry,
    AuditQuery,
    Metrics,
    RebuildProgress,
    TimelineEvent,
)
from contracts.subjects import InvalidThreadIdError, check_thread_id
from hitlflow import display
from hitlflow.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_NO_STACK,
    EXIT_REFUSED,
    JsonOut,
    NatsUrl,
    client_for,
    err,
    fail,
    out,
)
from hitlflow.client import HitlClient, NoOutcomeError, QueryRefusedError, StackUnavailableError
from hitlflow.settings import load_settings
from projections.time_travel import TimeTravelError, diff, fold, resolve

T = TypeVar("T")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="The views (thread_status, audit_trail, analytics): rebuild them.")

Since = Annotated[str | None, typer.Option(
    "--since", help="From this moment on (ISO 8601, e.g. 2026-03-01 or 2026-03-01T12:00Z; "
                    "UTC unless an offset is given).")]
Until = Annotated[str | None, typer.Option("--until", help="Before this moment (ISO 8601).")]
Days = Annotated[float | None, typer.Option("--days", help="The last N days (instead of "
                                                          "--since).", min=0.0)]


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


def _ask(nats_url: str | None, work: Callable[[HitlClient], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` with a connected client; failures become the documented exit codes."""
    settings = load_settings(nats_url=nats_url)

    async def go() -> T:
        async with client_for(settings) as client:
            return await work(client)

    try:
        return asyncio.run(go())
    except (StackUnavailableError, NoOutcomeError) as error:
        fail(str(error), EXIT_NO_STACK)
    except QueryRefusedError as error:
        fail(str(error), EXIT_BAD_INPUT)


def _moment(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"{option} {text!r} is not a date or time; expected ISO 8601 such as 2026-03-01 "
              "or 2026-03-01T12:00:00Z", EXIT_BAD_INPUT)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _window(since: str | None, until: str | None, days: float | None) -> dict[str, Any]:
    if since is not None and days is not None:
        fail("give either --since or --days, not both", EXIT_BAD_INPUT)
    start, end = _moment(since, "--since"), _moment(until, "--until")
    if start and end and start >= end:
        fail(f"--since ({start.isoformat()}) must be before --until ({end.isoformat()})",
              EXIT_BAD_INPUT)
    return {"since": start, "until": end, "days": days}


def _short(value: Any, width: int) -> str:
    text = "" if value is None else value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= width else text[: width - 1] + "…"


# -- threads and show ---------------------------------------------------------------------------


def threads(
    status_filter: Annotated[str | None, typer.Option(
        "--status", help=f"Only threads in this status: {', '.join(THREAD_STATUSES)}.")] = None,
    graph: Annotated[str | None, typer.Option("--graph", help="Only threads of this graph.")]
    = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1_000_000,
                                       help="Most threads listed (fetched a page at a time).")]
    = 100,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Threads, most recently changed first."""
    if status_filter is not None and status_filter not in THREAD_STATUSES:
        fail(f"unknown status {status_filter!r}; expected one of: "
              f"{', '.join(THREAD_STATUSES)}", EXIT_BAD_INPUT)
    found = _ask(nats_url, lambda c: c.threads(status_filter, limit, graph_name=graph))
    items = [t.model_dump(mode="json") for t in found]
    if as_json:
        out.print_json(json.dumps(items))
    else:
        out.print(display.threads_table(items))


def summarize(event: TimelineEvent) -> str:
    """One line saying what an event did (any event type, known or not)."""
    p = event.payload
    kind = event.event_type
    if kind == "ThreadStarted":
        return f"graph {p.get('graph_name')} by {p.get('started_by')}"
    if kind == "NodeCompleted":
        route = f" ({p['route']})" if p.get("route") else ""
        return f"{p.get('node')}{route} → {p.get('next_node') or 'end'}"
    if kind == "ThreadPaused":
        asked = ", ".join(f"{i.get('interaction_type')} {i.get('id')}"
                          for i in p.get("interactions") or ())
        return f"at {p.get('node')}: waits on {asked}"
    if kind == "InteractionRequested":
        return f"{p.get('node_name')} ({p.get('interaction_type')}): {p.get('prompt')!r}"
    if kind == "ResponseAccepted":
        keys = ", ".join(sorted(p.get("data") or {}))
        who = "timeout policy" if p.get("by_timeout") else p.get("responder")
        return f"{p.get('action')} by {who}" + (f" (data: {keys})" if keys else "")
    if kind == "ResponseRejected":
        return f"{p.get('action') or '-'} by {p.get('responder')}: {p.get('code')}: " \
               f"{p.get('reason')}"
    if kind == "ThreadResumed":
        waiting = f"; {p['waiting_on']} more to answer" if p.get("waiting_on") else ""
        return f"{p.get('action')} by {p.get('responder')}{waiting}"
    if kind in ("ThreadFailed", "NodeFailed"):
        return f"{p.get('node')}: {p.get('error')}"
    if kind == "ThreadCancelled":
        return f"by {p.get('requested_by')}" + (f": {p['reason']}" if p.get("reason") else "")
    if kind == "InteractionTimedOut":
        taken = f", took {p['action']}" if p.get("action") else ""
        return f"{p.get('node_name')}: policy {p.get('policy')} (step {p.get('step', 0)}){taken}"
    if kind == "InteractionReminded":
        return f"reminder {p.get('reminder')} of {p.get('of')} to " \
               f"{', '.join(p.get('assignees') or ()) or 'assignees'}; until {p.get('deadline')}"
    if kind == "InteractionEscalated":
        return f"{', '.join(p.get('from_assignees') or ()) or '-'} → " \
               f"{', '.join(p.get('assignees') or ())}; until {p.get('deadline')}"
    if kind in ("DeadlineScheduled", "DeadlineFired"):
        return f"step {p.get('step')} {p.get('policy') or 'fired via ' + str(p.get('via'))} " \
               f"due {p.get('due_at')}"
    if kind in ("DeadlineCleared", "InteractionCancelled"):
        return str(p.get("reason"))
    if kind in ("NodeDecided", "FallbackTaken"):
        why = p.get("expression") or p.get("reason")
        return f"{p.get('node')}: {p.get('action') or p.get('next_node')} without a person " \
               f"({why})"
    if kind == "ThreadTimedOut":
        return f"at {p.get('node')}: request {p.get('interaction_id')}"
    if kind == "ThreadCompleted":
        return f"at {p.get('node')}: output {_short(p.get('output'), 120)}"
    fields = {k: v for k, v in p.items() if k not in ("thread_id",) and v not in (None, "", [])}
    return _short(fields, 160)


def show(
    thread_id: Annotated[str, typer.Argument(help="The thread.")],
    at: Annotated[str | None, typer.Option(
        "--at", help="The thread as it stood after this event: its number in the timeline "
                     "(1 = the first) or a moment (ISO 8601).")] = None,
    between: Annotated[tuple[str, str] | None, typer.Option(
        "--diff", help="What changed between two points (event numbers or moments).")] = None,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """A thread's status and its full event timeline, from every service; with --at, the thread
    as it stood at one event (status, state values, open requests as shown, answers); with
    --diff A B, what changed between two points. Computed from the events alone."""
    try:
        check_thread_id(thread_id)
    except InvalidThreadIdError as error:
        fail(str(error), EXIT_BAD_INPUT)
    if at is not None and between is not None:
        fail("give either --at or --diff, not both", EXIT_BAD_INPUT)
    view, events = _ask(nats_url, lambda c: c.timeline(thread_id))
    if view is None:
        fail(f"unknown thread {thread_id!r}", EXIT_REFUSED)
    if at is not None or between is not None:
        _travel(thread_id, events, at, between, as_json)
        return
    data = view.model_dump(mode="json")
    if as_json:
        out.print_json(json.dumps({"thread": data,
                                   "events": [e.model_dump(mode="json") for e in events]}))
        return
    display.show_outcome(out, {**data, "node": data["current_node"], "pending": []})
    facts = [f"graph {view.graph_name} ({view.workflow_digest[:12]})",
             f"started {view.started_at:%Y-%m-%d %H:%M:%S} by {view.started_by}"]
    if view.completed_at:
        facts.append(f"ended {view.completed_at:%Y-%m-%d %H:%M:%S}")
    if view.pending:
        facts.append("waiting on " + ", ".join(f"{p.node_name} ({p.interaction_type}) {p.id}"
                                              for p in view.pending))
    out.print(Text("  ".join(facts), style="dim"))
    table = Table(title=f"{len(events)} events", title_justify="left")
    for column in ("time (UTC)", "service", "event", "what"):
        table.add_column(column, overflow="fold")
    for event in events:
        table.add_row(f"{event.at:%Y-%m-%d %H:%M:%S.%f}"[:23], event.service, event.event_type,
                      summarize(event))
    out.print(table)


def _travel(thread_id: str, events: list[TimelineEvent], at: str | None,
            between: tuple[str, str] | None, as_json: bool) -> None:
    """``show --at`` and ``show --diff``."""
    try:
        if between is not None:
            first, second = (fold(thread_id, events, resolve(events, point, thread_id))
                             for point in between)
            if first.event_number > second.event_number:
                first, second = second, first
            changes = diff(first, second)
            if as_json:
                out.print_json(json.dumps(changes, default=str))
            else:
                display.show_diff(out, thread_id, changes, events)
            return
        assert at is not None
        then = fold(thread_id, events, resolve(events, at, thread_id))
    except TimeTravelError as error:
        fail(str(error), EXIT_BAD_INPUT)
    if as_json:
        out.print_json(then.model_dump_json(exclude={"schema_version"}))
    else:
        display.show_thread_at(out, then)


# -- audit --------------------------------------------------------------------------------------

CSV_COLUMNS = ("at", "event", "thread_id", "request_id", "node_name", "interaction_type",
               "action", "responder", "principal", "on_behalf_of", "data_keys", "by_timeout",
               "code", "reason", "digest", "shown", "service", "position", "event_type",
               "idempotency_key", "detail")
#: AuditQuery field → the option that sets it (for error messages).
OPTIONS = {"thread_id": "--thread", "node_name": "--node", "interaction_type": "--type",
           "request_id": "--request-id", "event": "--event", "since": "--since",
           "until": "--until", "responder": "--responder", "action": "--action"}
TABLE_COLUMNS = (("at (UTC)", 23), ("event", 9), ("thread", 18), ("node", 16), ("type", 12),
                 ("action", 9), ("responder", 14), ("sent by", 14), ("data keys", 18),
                 ("digest", 12), ("reason", 40))


def _assigned(entry: AuditEntry) -> str:
    """Who a request, reminder or escalation went to."""
    people = entry.detail.get("assignees")
    return f"to {', '.join(people)}" if people else ""


class AuditWriter:
    """Writes entries as they come, in one format, holding none of them."""

    def __init__(self, stream: IO[str], fmt: Format) -> None:
        self.stream = stream
        self.format = fmt
        self.count = 0
        self._csv = csv.writer(stream, lineterminator="\n") if fmt is Format.csv else None

    def begin(self) -> None:
        if self._csv is not None:
            self._csv.writerow(CSV_COLUMNS)
        elif self.format is Format.json:
            self.stream.write("[")
        else:
            self.stream.write("  ".join(name.ljust(width) for name, width in TABLE_COLUMNS)
                              .rstrip() + "\n")

    def write(self, entry: AuditEntry) -> None:
        if self._csv is not None:
            row = entry.model_dump(mode="json")
            self._csv.writerow([
                json.dumps(row[c]) if c in ("data_keys", "detail")
                else ("true" if row[c] else "false") if c == "by_timeout"
                else "" if row[c] is None else row[c]
                for c in CSV_COLUMNS
            ])
        elif self.format is Format.json:
            self.stream.write(("\n" if not self.count else ",\n") +
                              entry.model_dump_json(exclude={"schema_version"}))
        else:
            cells = (f"{entry.at:%Y-%m-%d %H:%M:%S.%f}"[:23], entry.event, entry.thread_id,
                     entry.node_name, entry.interaction_type, entry.action,
                     "timeout policy" if entry.by_timeout and not entry.responder
                     else entry.responder,
                     entry.principal if entry.principal != entry.responder else "",
                     ",".join(entry.data_keys), (entry.digest or "")[:12],
                     entry.reason or entry.code or _assigned(entry))
            self.stream.write("  ".join(_short(value, width).ljust(width)
                                        for value, (_, width) in zip(cells, TABLE_COLUMNS,
                                                                     strict=True)).rstrip()
                              + "\n")
        self.count += 1

    def end(self) -> None:
        if self.format is Format.json:
            self.stream.write("\n]\n" if self.count else "]\n")
        self.stream.flush()


def audit(
    ctx: typer.Context,
    thread_id: Annotated[str | None, typer.Option("--thread", help="One thread.")] = None,
    node: Annotated[str | None, typer.Option("--node", help="One node name.")] = None,
    responder: Annotated[str | None, typer.Option("--responder", help="Who answered.")] = None,
    action: Annotated[str | None, typer.Option("--action", help="approve, reject, edit, …")]
    = None,
    interaction_type: Annotated[str | None, typer.Option(
        "--type", help="approval, edit, choice, text_input or conversation.")] = None,
    event: Annotated[str | None, typer.Option(
        "--event", help="requested, accepted, rejected, timed_out, cancelled, reminded, "
                        "escalated, decided, fallback or refused.")] = None,
    request_id: Annotated[str | None, typer.Option("--request-id", help="One request.")]
    = None,
    since: Since = None,
    until: Until = None,
    days: Days = None,
    fmt: Annotated[Format, typer.Option("--format", help="table, json or csv.")] = Format.table,
    page: Annotated[int, typer.Option("--page-size", min=1, max=MAX_PAGE_ITEMS,
                                      help="Entries fetched per request.")] = MAX_PAGE_ITEMS,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """The audit trail: who answered what, when, and what they were shown.

    Every request, accepted answer, refused attempt, timeout, reminder and escalation, oldest
    first; --format csv or json for other tools (streamed, in constant memory).
    'hitlflow audit verify' checks the history against its hash chains.
    """
    if ctx.invoked_subcommand is not None:
        return
    window = _window(since, until, days)
    if window["days"] is not None:
        window["since"] = datetime.now(UTC) - timedelta(days=window["days"])
    try:
        query = AuditQuery.model_validate({
            "thread_id": thread_id, "node_name": node, "responder": responder,
            "action": action, "interaction_type": interaction_type, "event": event,
            "request_id": request_id, "since": window["since"], "until": window["until"],
            "limit": page})
    except ValidationError as error:
        fail("; ".join(f"{OPTIONS.get(str(e['loc'][0]), e['loc'][0]) if e['loc'] else 'query'}"
                        f": {e['msg']}" for e in error.errors()), EXIT_BAD_INPUT)
    writer = AuditWriter(sys.stdout, Format.json if as_json else fmt)

    async def stream(client: HitlClient) -> int:
        writer.begin()
        async for entry in client.audit(query):
            writer.write(entry)
        writer.end()
        return writer.count

    try:
        count = _ask(nats_url, stream)
    except BrokenPipeError:  # the reader stopped early (| head): not an error
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from None
    if writer.format is Format.table and not count:
        err.print("no audit entries match", highlight=False)


# -- analytics ----------------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    """A duration the way people read it: 0.42s, 12m 05s, 3h 20m, 2d 4h."""
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.2f}s"
    return display.span(value)


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _metrics_table(title: str, rows: dict[str, Metrics]) -> Table:
    table = Table(title=title, title_justify="left")
    for column in ("", "total", "answered", "timed out", "avg", "p50", "p95", "timeout rate",
                   "approval rate", "pending", "oldest pending"):
        table.add_column(column, justify="left" if not column else "right")
    for name, m in rows.items():
        table.add_row(name, str(m.total), str(m.answered), str(m.timed_out),
                      _seconds(m.avg_response_time_s), _seconds(m.p50_response_time_s),
                      _seconds(m.p95_response_time_s), _rate(m.timeout_rate),
                      _rate(m.approval_rate), str(m.pending), _seconds(m.oldest_pending_age_s))
    return table


def show_analytics(console: Console, report: AnalyticsReply) -> None:
    window = (f"{report.since:%Y-%m-%d %H:%M:%S} → {report.until:%Y-%m-%d %H:%M:%S} UTC"
              if report.since and report.until else "")
    o = report.overall
    console.print(Text.assemble(("interactions ", "dim"), (str(report.total_interactions),
                                                            "bold"), (f"  {window}", "dim")))
    console.print(f"  by type: {', '.join(f'{k} {v}' for k, v in report.by_type.items()) or '-'}")
    console.print(f"  response time: avg {_seconds(o.avg_response_time_s)}, "
                  f"p50 {_seconds(o.p50_response_time_s)}, p95 {_seconds(o.p95_response_time_s)}")
    console.print(f"  timeout rate {_rate(o.timeout_rate)}, approval rate "
                  f"{_rate(o.approval_rate)}, rejected attempts {o.rejected_attempts}, "
                  f"reminders {o.reminders}, escalations {o.escalations}")
    console.print(f"  pending now {o.pending}, oldest waiting {_seconds(o.oldest_pending_age_s)}")
    if report.bottlenecks:
        console.print("  bottlenecks: " + ", ".join(
            f"{b.node} ({b.interaction_count})" for b in report.bottlenecks), style="yellow")
    if report.per_type:
        console.print(_metrics_table("per type", report.per_type))
    if report.per_node:
        console.print(_metrics_table("per node", report.per_node))
    if report.per_responder:
        console.print(_metrics_table("per responder", report.per_responder))
    if report.per_group:
        console.print(_metrics_table("per candidate group", report.per_group))
    if report.workload:
        console.print("  open requests per person: " + ", ".join(
            f"{person} {count}" for person, count in report.workload.items()))


def analytics(
    since: Since = None,
    until: Until = None,
    days: Days = None,
    threshold: Annotated[int, typer.Option(
        "--threshold", min=0, help="A node with more requests than this in the window is a "
                                   "bottleneck.")] = 10,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Interaction metrics over a window: volume, response times, timeout and approval rates.

    Overall, per interaction type, per node, per responder and per candidate group, for the
    requests created in the window (default: the last 30 days); bottleneck nodes; the pending
    backlog and its oldest request; the open requests per person they wait on.
    """
    window = _window(since, until, days)
    query = AnalyticsQuery(since=window["since"], until=window["until"], days=window["days"],
                           bottleneck_threshold=threshold)
    report = _ask(nats_url, lambda c: c.analytics(query))
    if as_json:
        out.print_json(report.model_dump_json(exclude={"error"}))
    else:
        show_analytics(out, report)


# -- rebuild ------------------------------------------------------------------------------------


class RebuildBar:
    """A progress bar on stderr for a rebuild: events replayed, of how many, rate and ETA."""

    def __init__(self, console: Console) -> None:
        self._progress = Progress(
            TextColumn("rebuilding"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]:>9,.0f} events/s"), TimeElapsedColumn(),
            TextColumn("ETA {task.fields[eta]}"), console=console, transient=True)
        self._task = self._progress.add_task("rebuild", total=None, rate=0.0, eta="-")

    def __enter__(self) -> RebuildBar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, done: int, total: int, rate: float) -> None:
        left = max(total - done, 0)
        eta = display.span(left / rate) if rate > 0 and left else "0s" if not left else "-"
        self._progress.update(self._task, completed=done, total=total, rate=rate, eta=eta)


@app.command()
def rebuild(
    views: Annotated[list[str] | None, typer.Argument(
        help=f"Views to rebuild: {', '.join(VIEW_NAMES)} (default: all).")] = None,
    offline: Annotated[bool, typer.Option(
        "--offline", help="Rebuild here, from the stores and views database the settings "
                          "name, instead of asking the running projections service.")] = False,
    home: Annotated[Path | None, typer.Option("--home", envvar="HITLFLOW_HOME",
                                              help="Data directory (with --offline).")] = None,
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Drop views and replay every service's event store into them from the start.

    Shows a progress bar (events replayed, rate, ETA) on a terminal; --json prints only the
    result."""
    names = list(views or [])
    unknown = [n for n in names if n not in VIEW_NAMES]
    if unknown:
        fail(f"unknown view(s) {', '.join(map(repr, unknown))}; expected one of: "
              f"{', '.join(VIEW_NAMES)}", EXIT_BAD_INPUT)
    bar = RebuildBar(err) if not as_json and err.is_terminal else None
    with bar or contextlib.nullcontext():
        if offline:
            from projections.rebuild import rebuild_offline

            started = time.monotonic()

            def local(done: int, total: int) -> None:
                if bar is not None:
                    elapsed = time.monotonic() - started
                    bar.update(done, total, done / elapsed if elapsed > 0 else 0.0)

            result = rebuild_offline(load_settings(home=home), names, progress=local)
            data: dict[str, Any] = {
                "ok": True, "views": result.views, "read": result.read, "events": result.events,
                "seconds": round(result.seconds, 3),
                "events_per_second": round(result.rate, 1)}
        else:
            def remote(message: RebuildProgress) -> None:
                if bar is not None:
                    bar.update(message.done, message.total, message.rate)

            reply = _ask(nats_url, lambda c: c.rebuild(names, on_progress=remote))
            data = reply.model_dump(mode="json", exclude={"schema_version", "error"})
    if as_json:
        out.print_json(json.dumps(data))
        return
    read = ", ".join(f"{service} {count:,}" for service, count in data["read"].items())
    out.print(f"[green]rebuilt[/] {', '.join(data['views'])}: {data['events']:,} events "
              f"replayed in {data['seconds']:.2f}s ({data['events_per_second']:,.0f} events/s;"
              f" notifications read: {read or 'none'})")


def register(main: typer.Typer) -> None:
    """Add these commands to the ``hitlflow`` command."""
    main.command("threads")(threads)
    main.command("show")(show)
    audit_app = typer.Typer(add_completion=False)
    audit_app.callback(invoke_without_command=True)(audit)
    from hitlflow import cli_security

    cli_security.register(main, audit_app)
    main.add_typer(audit_app, name="audit")
    main.command("analytics")(analytics)
    main.add_typer(app, name="projections")
