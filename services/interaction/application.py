"""Interaction service: opens requests for paused threads and decides every response."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any
from uuid import UUID

from eventsourcing.persistence import Tracking

from contracts.commands import CommandReply, ResumeThread, TaskCommand
from contracts.events import InteractionSpec, shown_digest, shown_token
from contracts.timeouts import TimeoutInteraction
from services.common.clock import Clock, SystemClock
from services.common.identity import Directory, Identity, IdentityError
from services.common.logging import get_logger
from services.common.responses import InteractionError, InvalidResponseError
from services.common.store import Job, ServiceApplication
from services.interaction.domain import (
    AnswerTooLargeError,
    ForbiddenError,
    Inbox,
    Interaction,
    MalformedCommandError,
    check_answer_size,
    inbox_uuid,
)

log = get_logger(__name__)

#: Workflow events that end a thread, and the status each gives it.
ENDING = {"ThreadCompleted": "completed", "ThreadFailed": "failed",
          "ThreadTimedOut": "timed_out", "ThreadCancelled": "cancelled"}
#: The workflow events this service acts on.
THREAD_EVENTS = frozenset({"ThreadStarted", "ThreadPaused", *ENDING})


class InteractionService(ServiceApplication):
    name = "interaction"

    def __init__(self, env: dict[str, str] | None = None, *, clock: Clock | None = None,
                 directory: Directory | None = None) -> None:
        super().__init__(env)
        self.clock = clock or SystemClock()
        #: Who the principals are (roles, groups); without one, authorization is off.
        self.directory = directory or Directory(None)

    # -- responses --------------------------------------------------------------------------

    def respond_job(self, command: ResumeThread, principal: str) -> Job:
        """Decide one response sent under ``principal``; the job's result is the sender's
        reply. The same idempotency key always gets the same outcome."""
        pinned: dict[str, str | None] = {"request_id": command.request_id}
        said: dict[str, Any] = {}

        def decide() -> tuple[list[Any], CommandReply]:
            said.clear()
            inbox = self._inbox(command.thread_id)
            earlier = inbox.outcomes.get(command.idempotency_key)
            if earlier is not None:
                return [], self._reply(command, earlier, duplicate=True)
            now = self.clock.now()
            request_id: str | None = pinned["request_id"]
            identity: Identity | None = None
            try:
                identity = self._identity(principal, command)
                check_answer_size(command.data, command.raw_data)
                if command.raw_data is not None:
                    raise InvalidResponseError(
                        f"response data is not valid JSON ({command.raw_data[:80]!r}); "
                        "expected a JSON object such as '{\"reason\": \"...\"}'"
                    )
                request_id = inbox.target(request_id)
                pinned["request_id"] = request_id
                interaction: Interaction = self.load(_uuid(request_id))
                decision = interaction.respond(command.action, command.data, identity,
                                               command.idempotency_key, now, command.shown)
            except InteractionError as error:
                outcome = inbox.reject(request_id, command.action, command.data, identity,
                                       command.idempotency_key, error, now)
                said.update(event="response_rejected", interaction_id=request_id,
                            code=error.code, reason=str(error))
                return [inbox], self._reply(command, outcome)
            outcome = {"ok": True, "interaction_id": request_id, "action": command.action,
                       "decided": decision is not None}
            if decision is None:  # a quorum's vote: the request waits for more
                inbox.record_outcome(command.idempotency_key, outcome)
                said.update(event="vote_cast", interaction_id=request_id, action=command.action,
                            voter=identity.person)
            else:
                inbox.close_request(request_id, command.idempotency_key, outcome)
                said.update(event="response_accepted", interaction_id=request_id,
                            action=command.action, principal=identity.principal)
            return [interaction, inbox], self._reply(command, outcome)

        def settled(job: Job) -> None:  # what the saved decision was, logged once
            if said and not job.result.duplicate:
                log.info(**said)

        return Job(command.thread_id, decide, settled=settled)

    def task_job(self, command: TaskCommand, principal: str) -> Job:
        """Claim, release, delegate or reassign a request; refusals are kept in the audit."""
        pinned: dict[str, str | None] = {"request_id": command.request_id}

        def decide() -> tuple[list[Any], CommandReply]:
            inbox = self._inbox(command.thread_id)
            earlier = inbox.outcomes.get(command.idempotency_key)
            if earlier is not None:
                return [], self._reply(command, earlier, duplicate=True)
            now = self.clock.now()
            request_id: str | None = pinned["request_id"]
            identity: Identity | None = None
            try:
                identity = self._identity(principal, command)
                request_id = inbox.target(request_id)
                pinned["request_id"] = request_id
                interaction: Interaction = self.load(_uuid(request_id))
                if command.op == "claim":
                    interaction.claim(identity, now)
                elif command.op == "release":
                    interaction.release(identity, now)
                elif command.op == "delegate":
                    interaction.delegate(identity, list(command.to), now)
                else:
                    interaction.reassign(identity, list(command.to),
                                         list(command.candidate_groups), now)
            except InteractionError as error:
                outcome = inbox.reject(request_id, command.op, None, identity,
                                       command.idempotency_key, error, now)
                return [inbox], self._reply(command, outcome)
            outcome = {"ok": True, "interaction_id": request_id, "action": command.op,
                       "decided": False}
            inbox.record_outcome(command.idempotency_key, outcome)
            if not interaction.pending_events:  # e.g. claimed again by its claimant
                return [inbox], self._reply(command, outcome, duplicate=True)
            log.info("task_operation", op=command.op, interaction_id=request_id,
                     principal=identity.principal)
            return [interaction, inbox], self._reply(command, outcome)

        return Job(command.thread_id, decide)

    def _identity(self, principal: str, command: Any) -> Identity:
        try:
            return self.directory.resolve(principal, asserted=command.principal,
                                          on_behalf_of=command.on_behalf_of,
                                          groups=command.groups)
        except IdentityError as error:
            raise ForbiddenError(str(error)) from error

    def record_refused(self, thread_id: str, code: str, reason: str, position: int) -> None:
        """Keep a resume command that was refused before it could be decided (too large, not
        of the ResumeThread contract, sent for another thread) as a refused attempt."""
        key = f"malformed:{position}"  # (the name older releases used)
        error = (AnswerTooLargeError(reason) if code == AnswerTooLargeError.code
                 else MalformedCommandError(reason))

        def attempt() -> None:
            inbox = self._inbox(thread_id)
            if key not in inbox.outcomes:
                inbox.reject(None, "", None, None, key, error, self.clock.now())
                self.record([inbox])

        self.retry_on_conflict(attempt)

    # -- timeouts ---------------------------------------------------------------------------

    def time_out(self, command: TimeoutInteraction) -> CommandReply:
        """Take one step of a request's timeout policy; each step is taken at most once."""

        def attempt() -> CommandReply:
            interaction: Interaction | None = self.get_or_none(_uuid(command.request_id))
            if interaction is None:
                return self._timeout_reply(command, False, "unknown_request",
                                           f"no request {command.request_id}")
            try:
                decision = interaction.time_out(command.step, self.clock.now())
            except InteractionError as error:
                return self._timeout_reply(command, False, error.code, str(error))
            changed: list[Any] = [interaction]
            if decision.closing:
                inbox = self._inbox(command.thread_id)
                inbox.expire_request(command.request_id, decision.policy)
                changed.append(inbox)
            self.record(changed)
            log.info("interaction_timed_out", thread_id=command.thread_id,
                     interaction_id=command.request_id, step=command.step,
                     policy=decision.policy, fired_by=command.fired_by)
            return self._timeout_reply(command, True, None, None, decision.action
                                       or decision.policy)

        return self.retry_on_conflict(attempt)

    @staticmethod
    def _timeout_reply(command: TimeoutInteraction, ok: bool, code: str | None,
                       error: str | None, action: str | None = None) -> CommandReply:
        return CommandReply(ok=ok, command="timeout", thread_id=command.thread_id, code=code,
                            error=error, interaction_id=command.request_id, action=action)

    # -- workflow events --------------------------------------------------------------------

    def thread_event_job(self, thread_id: str, event_type: str, payload: dict[str, Any],
                         upstream: str, position: int) -> Job:
        """Open the requests of a paused thread; close those left open when it ends."""

        def decide() -> tuple[list[Any], None]:
            inbox = self._inbox(thread_id)
            changed: list[Any] = [inbox]
            if event_type == "ThreadStarted":
                inbox.thread_started()
            elif event_type == "ThreadPaused":
                inbox.thread_started()
                for raw in payload["interactions"]:
                    spec = InteractionSpec.model_validate(raw)
                    if self.get_or_none(_uuid(spec.id)) is None:
                        changed.append(self._open(spec))
                    inbox.open_request(spec.id)
            elif event_type in ENDING:
                status = ENDING[event_type]
                inbox.thread_ended(status)
                for request_id in list(inbox.open):
                    interaction: Interaction = self.load(_uuid(request_id))
                    interaction.cancel(f"thread {status}")
                    inbox.close_request(request_id, None, {"ok": False, "code": "thread_ended"})
                    changed.append(interaction)
            return changed, None

        return Job(thread_id, decide, Tracking(upstream, position))

    # -- queries ----------------------------------------------------------------------------

    def inbox(self, thread_id: str) -> Inbox | None:
        inbox: Inbox | None = self.get_or_none(inbox_uuid(thread_id))
        return inbox

    def settled(self, request_id: str) -> str | None:
        """How the request was closed (``answered``, ``timed_out``, ``cancelled``); None while
        it is open, or when this store does not hold it."""
        try:
            aggregate_id = Interaction.create_id(request_id)
        except ValueError:
            return None
        interaction: Interaction | None = self.peek(aggregate_id)
        return None if interaction is None or interaction.is_open else str(interaction.status)

    # -- helpers ----------------------------------------------------------------------------

    def _inbox(self, thread_id: str) -> Inbox:
        inbox = self.inbox(thread_id)
        return inbox if inbox is not None else Inbox(thread_id=thread_id)

    def _open(self, spec: InteractionSpec) -> Interaction:
        created = self.clock.now()
        context = json.loads(json.dumps(spec.context, default=str))
        deadline = (created + timedelta(seconds=spec.timeout_seconds)
                    if spec.timeout_seconds else None)
        return Interaction(
            request_id=spec.id, thread_id=spec.thread_id, node_name=spec.node_name,
            interaction_type=spec.interaction_type, prompt=spec.prompt, context=context,
            options=list(spec.options), timeout_seconds=spec.timeout_seconds,
            on_timeout=spec.on_timeout, assignees=list(spec.assignees),
            response_schema=spec.response_schema, sensitive=list(spec.sensitive),
            batch_index=spec.batch_index,
            batch_size=spec.batch_size, created_at=created, deadline=deadline,
            candidate_groups=list(spec.candidate_groups), quorum=spec.quorum,
            shown=shown_token(1, shown_digest(spec.prompt, context, list(spec.options))),
        )

    @staticmethod
    def _reply(command: ResumeThread | TaskCommand, outcome: dict[str, Any], *,
               duplicate: bool = False) -> CommandReply:
        return CommandReply(
            ok=bool(outcome.get("ok")),
            command="task" if isinstance(command, TaskCommand) else "resume",
            thread_id=command.thread_id, code=outcome.get("code"), error=outcome.get("error"),
            interaction_id=outcome.get("interaction_id"), action=outcome.get("action"),
            duplicate=duplicate, decided=bool(outcome.get("decided", True)),
        )


def _uuid(request_id: str) -> UUID:
    return UUID(request_id)
