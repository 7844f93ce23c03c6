"""Test your workflows against the real embedded stack (nats-server, services, SQLite stores).

A pytest fixture, once per test (each gets its own NATS server and stores)::

    import pytest
    from hitlflow.testing import HitlTestStack

    @pytest.fixture
    def hitl(tmp_path):
        with HitlTestStack(tmp_path, agents=["my_project/agents.py"]) as stack:
            yield stack

    def test_approval_gate(hitl):
        run = hitl.start("flows/approval.csv::ApprovalFlow", {"user_request": "Buy 3 laptops"})
        request = hitl.assert_paused(run, node="approve_gate", interaction_type="approval",
                                     prompt="Please approve this request")
        thread = run.reply.thread_id
        done = hitl.resume(thread, "approve")
        hitl.assert_completed(done, output="Request completed: processed: Buy 3 laptops")
        assert hitl.path(thread) == ["start", "validate", "approve_gate", "process", "end"]
        assert hitl.routes(thread)["approve_gate"] == "success"

Every call is synchronous and returns once the thread has settled (paused with every request
opened, or ended). What the harness offers:

- drive a thread: :meth:`~HitlTestStack.start`, :meth:`~HitlTestStack.resume`,
  :meth:`~HitlTestStack.cancel`, and :meth:`~HitlTestStack.drive` (start, then answer each pause
  from a script);
- assert with messages that say what happened instead: :meth:`~HitlTestStack.assert_paused`,
  :meth:`~HitlTestStack.assert_completed`, :meth:`~HitlTestStack.assert_refused`,
  :meth:`~HitlTestStack.assert_status`;
- look inside: :meth:`~HitlTestStack.path` (nodes run, in order),
  :meth:`~HitlTestStack.routes` (route each node took), :meth:`~HitlTestStack.state` (every
  output field), :meth:`~HitlTestStack.events` (the thread's events),
  :meth:`~HitlTestStack.rejections` (refused answers), :meth:`~HitlTestStack.notifications`
  (what ``hitl.notify.<thread>`` carried), :meth:`~HitlTestStack.status`,
  :meth:`~HitlTestStack.pending`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from contracts import subjects
from contracts.notifications import Notification
from contracts.queries import PendingInteraction, ThreadView
from contracts.workflow import WorkflowSpec
from hitlflow.client import HitlClient, Outcome
from hitlflow.settings import Settings
from hitlflow.stack import BackgroundStack, Stack, free_port
from services.common.clock import Clock
from services.common.logging import configure_logging
from services.interaction.domain import inbox_uuid
from services.workflow.agents import AgentRegistry
from services.workflow.definition import load_workflow
from services.workflow.domain import thread_uuid

#: An answer in a script for :meth:`HitlTestStack.drive`: ``"approve"``, ``("reject", {...})``
#: or ``{"action": "choose", "data": {...}, "request_id": "..."}``.
Answer = str | tuple[str, Mapping[str, Any] | None] | Mapping[str, Any]


class HitlTestStack:
    def __init__(
        self,
        data_dir: Path,
        *,
        agents: list[str] | None = None,
        settings: Settings | None = None,
        clock: Clock | None = None,
        nats_url: str | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.settings = settings or Settings(home=self.data_dir)
        configure_logging(self.settings.log_level, self.settings.log_format)
        self.registry = AgentRegistry.load(agents or [])
        self._stack = Stack(self.settings, data_dir=self.data_dir, nats_url=nats_url,
                            port=None if nats_url else (port or free_port()), clock=clock,
                            agents=self.registry)
        self._bg: BackgroundStack | None = None
        self._client: HitlClient | None = None
        self._notifications: list[Notification] = []
        self._notified = threading.Condition()

    def __enter__(self) -> HitlTestStack:
        self._bg = BackgroundStack(self._stack).__enter__()
        # the stack's operator when its NATS has users (HOME/auth), else anyone
        self._client = HitlClient(self._bg.nats_url, reply_timeout=20.0,
                                  auth=self._stack.settings_for("operator").nats_auth())
        self.call(self._client.connect())
        self.call(self._client.nc.subscribe(subjects.NOTIFY_ALL, cb=self._on_notification))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None and self._bg is not None:
            self.call(self._client.close())
        if self._bg is not None:
            self._bg.close()

    @property
    def stack(self) -> Stack:
        return self._stack

    @property
    def nats_url(self) -> str:
        assert self._bg is not None
        return self._bg.nats_url

    @property
    def client(self) -> HitlClient:
        assert self._client is not None, "use HitlTestStack as a context manager"
        return self._client

    def call(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the stack's event loop and return its result."""
        assert self._bg is not None, "use HitlTestStack as a context manager"
        return self._bg.call(coro, timeout)

    def workflow(self, target: str) -> WorkflowSpec:
        return load_workflow(target, registry=self.registry)

    # -- driving a thread -------------------------------------------------------------------

    def start(self, target: str | WorkflowSpec, state: dict[str, Any] | None = None, *,
              thread_id: str | None = None) -> Outcome:
        """Start a thread of ``FILE.csv::Graph`` (or a loaded spec); returns once it settles."""
        spec = target if isinstance(target, WorkflowSpec) else self.workflow(target)
        return self.call(self.client.start(spec, state or {}, thread_id=thread_id))  # type: ignore[no-any-return]

    def resume(self, thread_id: str, action: str, data: Any = None, **options: Any) -> Outcome:
        """Answer (``request_id=``, ``shown=``, ``on_behalf_of=``, ``idempotency_key=`` as in
        the client)."""
        return self.call(self.client.resume(thread_id, action, data, **options))  # type: ignore[no-any-return]

    respond = resume

    def cancel(self, thread_id: str, reason: str = "") -> Outcome:
        return self.call(self.client.cancel(thread_id, reason))  # type: ignore[no-any-return]

    def drive(self, target: str | WorkflowSpec, state: dict[str, Any] | None = None,
              answers: Iterable[Answer] = (), *, thread_id: str | None = None) -> Outcome:
        """Start a thread and answer its pauses from ``answers`` in order; the last outcome.

        Each answer goes to the first open request (batch order) unless it names
        ``request_id``. Fails when a pause has no answer left, or an answer is refused.
        """
        outcome = self.start(target, state, thread_id=thread_id)
        if not outcome.ok:
            raise AssertionError(f"the thread did not start: {outcome.reply.error}")
        for number, answer in enumerate(answers, 1):
            action, data, request_id = _answer(answer)
            if outcome.status != "paused":
                raise AssertionError(
                    f"answer {number} ({action}) has no pause to answer: the thread is "
                    f"{outcome.status} ({_summary(outcome)})")
            if request_id is None and len(outcome.pending) > 1:
                request_id = outcome.pending[0]["id"]
            shown = next((p.get("shown") for p in outcome.pending
                          if request_id in (None, p["id"])), None)
            outcome = self.resume(outcome.reply.thread_id, action, data, request_id=request_id,
                                  shown=shown)
            if not outcome.ok:
                raise AssertionError(f"answer {number} ({action} {data}) was refused: "
                                     f"{outcome.reply.code}: {outcome.reply.error}")
            if outcome.status == "paused" and not outcome.pending:
                view = self.status(outcome.reply.thread_id)
                outcome.pending = [p.model_dump(mode="json") for p in view.pending] if view else []
        return outcome

    # -- assertions ---------------------------------------------------------------------------

    def assert_status(self, outcome: Outcome, status: str) -> Outcome:
        if not outcome.ok:
            raise AssertionError(f"expected status {status!r} but the command was refused: "
                                 f"{outcome.reply.code}: {outcome.reply.error}")
        if outcome.status != status:
            raise AssertionError(f"expected thread {outcome.reply.thread_id!r} to be {status}, "
                                 f"but it is {outcome.status} ({_summary(outcome)})")
        return outcome

    def assert_paused(self, outcome: Outcome, *, node: str | None = None,
                      interaction_type: str | None = None, prompt: str | None = None,
                      options: Sequence[str] | None = None,
                      requests: int = 1) -> dict[str, Any]:
        """The thread waits at ``node`` with ``requests`` open request(s) fitting the filters;
        returns the first request (all of them are in ``outcome.pending``)."""
        self.assert_status(outcome, "paused")
        pending = outcome.pending
        if len(pending) != requests:
            raise AssertionError(f"expected {requests} open request(s), found {len(pending)}: "
                                 f"{[p['node_name'] for p in pending]}")
        for request in pending:
            checks = [("node", node, request["node_name"], node == request["node_name"]),
                      ("interaction_type", interaction_type, request["interaction_type"],
                       interaction_type == request["interaction_type"]),
                      ("prompt containing", prompt, request["prompt"],
                       prompt is not None and prompt in request["prompt"]),
                      ("options", list(options or []), request["options"],
                       list(options or []) == list(request["options"]))]
            for what, wanted, actual, ok in checks:
                if wanted not in (None, []) and not ok:
                    raise AssertionError(f"expected {what} {wanted!r}, got {actual!r}")
        return pending[0]

    def assert_completed(self, outcome: Outcome, *, output: Any = ...,
                         node: str | None = None) -> Any:
        """The thread completed (at ``node``, with ``output`` when given); returns the output."""
        self.assert_status(outcome, "completed")
        if output is not ... and outcome.output != output:
            raise AssertionError(f"expected output {output!r}, got {outcome.output!r}")
        if node is not None and outcome.node != node:
            raise AssertionError(f"expected the thread to end at {node!r}, it ended at "
                                 f"{outcome.node!r}")
        return outcome.output

    def assert_refused(self, outcome: Outcome, *, code: str | None = None,
                       contains: str | None = None) -> str:
        """The command was refused (with ``code``, and a reason containing ``contains``)."""
        if outcome.ok:
            raise AssertionError(f"expected a refusal, but the command was accepted "
                                 f"({_summary(outcome)})")
        reason = outcome.reply.error or ""
        if code is not None and outcome.reply.code != code:
            raise AssertionError(f"expected refusal {code!r}, got {outcome.reply.code!r}: "
                                 f"{reason}")
        if contains is not None and contains not in reason:
            raise AssertionError(f"expected the reason to contain {contains!r}: {reason}")
        return reason

    # -- looking inside ---------------------------------------------------------------------

    def status(self, thread_id: str) -> ThreadView | None:
        return self.call(self.client.thread(thread_id))  # type: ignore[no-any-return]

    def pending(self, thread_id: str | None = None) -> list[PendingInteraction]:
        return self.call(self.client.pending(thread_id))  # type: ignore[no-any-return]

    def events(self, thread_id: str, event_type: str | None = None) -> list[dict[str, Any]]:
        """The thread's own events (workflow service store), oldest first: each a dict with
        ``type`` and the event's fields."""
        app = self._stack.runtimes["workflow"].app
        found = []
        for stored in app.events.get(thread_uuid(thread_id)):
            name = type(stored).__name__
            if event_type is None or name == event_type:
                fields = {k: v for k, v in vars(stored).items()
                          if k not in ("originator_id", "originator_version", "timestamp")}
                found.append({"type": name, **json.loads(json.dumps(fields, default=str))})
        return found

    def path(self, thread_id: str) -> list[str]:
        """The nodes the thread ran, in order (each time it ran)."""
        return [e["node"] for e in self.events(thread_id)
                if e["type"] in ("NodeCompleted", "NodeFailed")]

    def routes(self, thread_id: str) -> dict[str, str | None]:
        """Each node's latest route: ``success``, ``failure``, ``error`` (it failed) or None
        (a fallback to a named node)."""
        found: dict[str, str | None] = {}
        for e in self.events(thread_id):
            if e["type"] == "NodeCompleted":
                found[e["node"]] = e["route"]
            elif e["type"] == "NodeFailed":
                found[e["node"]] = "error"
        return found

    def state(self, thread_id: str) -> dict[str, Any]:
        """The thread's state: its inputs and every output field written so far."""
        thread = self._stack.runtimes["workflow"].app.repository.get(thread_uuid(thread_id))
        return dict(thread.state)

    def rejections(self, thread_id: str) -> list[dict[str, Any]]:
        """Every refused answer of the thread (code, reason, action, responder, ...)."""
        app = self._stack.runtimes["interaction"].app
        return [{k: v for k, v in vars(e).items()
                 if k not in ("originator_id", "originator_version")}
                for e in app.events.get(inbox_uuid(thread_id))
                if type(e).__name__ == "ResponseRejected"]

    def notifications(self, thread_id: str | None = None, *, count: int = 0,
                      timeout: float = 10.0) -> list[Notification]:
        """Notifications published on ``hitl.notify.>`` (of one thread), waiting up to
        ``timeout`` seconds until there are at least ``count``."""

        def matching() -> list[Notification]:
            return [n for n in self._notifications if thread_id in (None, n.thread_id)]

        deadline = time.monotonic() + timeout
        with self._notified:
            while len(matching()) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"expected {count} notification(s), got "
                                         f"{len(matching())} within {timeout}s")
                self._notified.wait(remaining)
            return matching()

    async def _on_notification(self, msg: Any) -> None:
        try:
            notification = Notification.model_validate_json(msg.data)
        except ValueError:
            return
        with self._notified:
            self._notifications.append(notification)
            self._notified.notify_all()


def _answer(answer: Answer) -> tuple[str, Any, str | None]:
    if isinstance(answer, str):
        return answer, None, None
    if isinstance(answer, tuple):
        return answer[0], answer[1], None
    return str(answer["action"]), answer.get("data"), answer.get("request_id")


def _summary(outcome: Outcome) -> str:
    parts = [f"at {outcome.node}" if outcome.node else ""]
    if outcome.pending:
        parts.append("waiting on " + ", ".join(
            f"{p['node_name']} ({p['interaction_type']})" for p in outcome.pending))
    if outcome.output is not None:
        parts.append(f"output {outcome.output!r}")
    if outcome.error:
        parts.append(f"error {outcome.error!r}")
    return "; ".join(p for p in parts if p) or "no details"
