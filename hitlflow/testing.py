"""Test your workflows against the real embedded stack (nats-server, services, SQLite stores).

    from hitlflow.testing import HitlTestStack

    def test_approval(tmp_path):
        with HitlTestStack(tmp_path, agents=["my_project.agents"]) as hitl:
            run = hitl.start("flows.csv::ApprovalFlow", {"user_request": "buy"})
            assert run.status == "paused"
            assert run.pending[0]["interaction_type"] == "approval"
            done = hitl.resume(run.reply.thread_id, "approve")
            assert done.status == "completed"

Every call is synchronous and returns once the thread has settled (paused or ended).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from contracts.queries import PendingInteraction, ThreadView
from contracts.workflow import WorkflowSpec
from hitlflow.client import HitlClient, Outcome
from hitlflow.settings import Settings
from hitlflow.stack import BackgroundStack, Stack, free_port
from services.common.clock import Clock
from services.common.logging import configure_logging
from services.workflow.agents import AgentRegistry
from services.workflow.definition import load_workflow


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

    def __enter__(self) -> HitlTestStack:
        self._bg = BackgroundStack(self._stack).__enter__()
        self._client = HitlClient(self._bg.nats_url, reply_timeout=20.0)
        self.call(self._client.connect())
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

    def start(self, target: str | WorkflowSpec, state: dict[str, Any] | None = None, *,
              thread_id: str | None = None) -> Outcome:
        spec = target if isinstance(target, WorkflowSpec) else self.workflow(target)
        return self.call(self.client.start(spec, state or {}, thread_id=thread_id))  # type: ignore[no-any-return]

    def resume(self, thread_id: str, action: str, data: Any = None, **options: Any) -> Outcome:
        return self.call(self.client.resume(thread_id, action, data, **options))  # type: ignore[no-any-return]

    def cancel(self, thread_id: str, reason: str = "") -> Outcome:
        return self.call(self.client.cancel(thread_id, reason))  # type: ignore[no-any-return]

    def status(self, thread_id: str) -> ThreadView | None:
        return self.call(self.client.thread(thread_id))  # type: ignore[no-any-return]

    def pending(self, thread_id: str | None = None) -> list[PendingInteraction]:
        return self.call(self.client.pending(thread_id))  # type: ignore[no-any-return]
