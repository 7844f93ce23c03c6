"""Responders are real people: a nats-server with the stack's generated users and permissions,
each principal on its own credentials; who may answer, claims, quorums and answers bound to
what was shown, decided by the interaction service and kept in the audit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeoutError

from hitlflow import auth
from hitlflow.client import HitlClient, Outcome
from hitlflow.settings import Settings
from hitlflow.testing import HitlTestStack
from services.common.messaging import connect
from tests.conftest import EXAMPLE_AGENTS, ROOT
from tests.helpers import cli_json, wait_for

PEOPLE = str(ROOT / "tests" / "workflows" / "people.csv")
USERS = {"alice": ("responder", ["finance"]), "bob": ("responder", []),
         "carol": ("responder", ["finance"]), "erp": ("system", []),
         **{f"v{i}": ("responder", ["board"]) for i in range(10)}}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[HitlTestStack]:
    """The whole stack on a NATS server with users: the services', the gateway's, the
    operator's, and the people and systems of USERS."""
    files = auth.auth_files(tmp_path)
    auth.ensure(files)
    for name, (role, groups) in USERS.items():
        auth.add_user(files, name, role, groups)
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS],
                       settings=Settings(home=tmp_path, auth=True)) as hitl:
        yield hitl


def creds(stack: HitlTestStack, name: str) -> Any:
    found = json.loads(auth.auth_files(stack.data_dir).creds(name).read_text())
    return {"user": found["user"], "password": found["password"], "token": None}


def as_user(stack: HitlTestStack, name: str, call: Any) -> Any:
    """Run ``call(client)`` with a client connected as ``name``."""

    async def run() -> Any:
        async with HitlClient(stack.nats_url, reply_timeout=20.0,
                              auth=creds(stack, name)) as client:
            return await call(client)

    return stack.call(run())


def start(stack: HitlTestStack, graph: str, thread_id: str) -> dict[str, Any]:
    outcome = stack.start(f"{PEOPLE}::{graph}", {"request": "r"}, thread_id=thread_id)
    stack.assert_paused(outcome)
    return outcome.pending[0]


def answer(stack: HitlTestStack, name: str, thread_id: str, action: str = "approve",
           **options: Any) -> Outcome:
    return as_user(stack, name, lambda c: c.resume(thread_id, action, **options))


def audit(stack: HitlTestStack, thread_id: str) -> list[dict[str, Any]]:
    code, rows, stderr = cli_json(stack.nats_url, "audit", "--thread", thread_id,
                                  env={"HITLFLOW_NATS_CREDS": str(
                                      auth.auth_files(stack.data_dir).creds("operator"))})
    assert code == 0, stderr
    return list(rows)


# -- the server enforces each role's subjects -------------------------------------------------


async def _attempt(stack: HitlTestStack, user: str, *, publish: str | None = None,
                   subscribe: str | None = None) -> bool:
    """True when the server lets ``user`` do it, False when it says it is a permissions
    violation."""
    errors: list[str] = []

    async def on_error(error: Exception) -> None:
        errors.append(str(error))

    nc = await connect(stack.nats_url, name="permissions-test", **creds(stack, user))
    nc._error_cb = on_error  # the server's refusal arrives as an asynchronous -ERR
    try:
        if publish is not None:
            await nc.publish(publish, b"{}")
        if subscribe is not None:
            await nc.subscribe(subscribe)
        await nc.flush()
        try:
            await asyncio.wait_for(nc.flush(), 2)
            async with asyncio.timeout(1):
                while not errors:
                    await asyncio.sleep(0.02)
        except (TimeoutError, NatsTimeoutError):
            pass
        return not any("permissions violation" in e.lower() for e in errors)
    finally:
        await nc.close()


@pytest.mark.parametrize(("user", "action", "subject", "allowed"), [
    ("alice", "publish", "hitl.cmd.resume.alice.t1", True),
    ("alice", "publish", "hitl.cmd.resume.bob.t1", False),
    ("alice", "publish", "hitl.cmd.cancel.alice.t1", True),
    ("alice", "publish", "hitl.cmd.start.alice.t1", False),
    ("alice", "publish", "hitl.admin.projections.rebuild", False),
    ("alice", "publish", "hitl.evt.workflow.ThreadCompleted.t1", False),
    ("alice", "publish", "hitl.q.mine.alice", True),
    ("alice", "publish", "hitl.q.mine.bob", False),
    ("alice", "subscribe", "_INBOX.bob.>", False),
    ("alice", "subscribe", "_INBOX.alice.>", True),
    ("erp", "publish", "hitl.cmd.start.erp.t1", True),
    ("erp", "publish", "hitl.cmd.resume.alice.t1", False),
    ("gateway", "publish", "hitl.cmd.resume.gateway.t1", True),
    ("gateway", "publish", "hitl.cmd.resume.alice.t1", False),
    ("gateway", "publish", "hitl.q.mine.alice", True),
    ("operator", "publish", "hitl.admin.projections.rebuild", True),
    ("operator", "publish", "hitl.cmd.resume.alice.t1", False),
    ("workflow", "publish", "hitl.evt.workflow.ThreadCompleted.t1", True),
    ("workflow", "publish", "hitl.evt.interaction.ResponseAccepted.t1", False),
    ("workflow", "publish", "hitl.cmd.resume.alice.t1", False),
    ("interaction", "publish", "hitl.notify.t1", True),
    ("timeout", "publish", "hitl.cmd.timeout.t1", True),
    ("projections", "publish", "hitl.cmd.cancel.operator.t1", False),
])
def test_each_role_may_publish_and_subscribe_only_what_it_needs(
        stack: HitlTestStack, user: str, action: str, subject: str, allowed: bool) -> None:
    kind = {action: subject}
    assert stack.call(_attempt(stack, user, **kind)) is allowed


def test_an_unknown_user_or_a_wrong_password_cannot_connect(stack: HitlTestStack) -> None:
    async def refusal(user: str, password: str) -> str:
        try:
            nc = await nats.connect(stack.nats_url, user=user, password=password,
                                    allow_reconnect=False, connect_timeout=5)
        except Exception as error:
            return str(error)
        await nc.close()
        return "connected"

    for user, password in (("mallory", "x"), ("alice", "not-her-password")):
        assert "Authorization Violation" in stack.call(refusal(user, password))


# -- who may answer ---------------------------------------------------------------------------


def test_only_assignees_and_their_groups_may_answer_and_the_audit_names_who(
        stack: HitlTestStack) -> None:
    start(stack, "Assigned", "as-1")
    refused = answer(stack, "bob", "as-1")
    assert (refused.ok, refused.reply.code) == (False, "forbidden")
    assert "'bob' may not answer" in (refused.reply.error or "")
    done = answer(stack, "carol", "as-1")  # in finance
    assert done.ok and done.status == "completed" and done.output == "Approved: r"
    rows = audit(stack, "as-1")
    [rejected] = [r for r in rows if r["event"] == "rejected"]
    assert (rejected["principal"], rejected["code"]) == ("bob", "forbidden")
    [accepted] = [r for r in rows if r["event"] == "accepted"]
    assert (accepted["principal"], accepted["responder"]) == ("carol", "carol")


def test_a_system_acts_for_a_person_and_a_responder_may_not(stack: HitlTestStack) -> None:
    start(stack, "Assigned", "as-2")
    forged = answer(stack, "bob", "as-2", on_behalf_of="alice")
    assert (forged.ok, forged.reply.code) == (False, "forbidden")
    assert "may not act for someone else" in (forged.reply.error or "")
    groups = answer(stack, "bob", "as-2", groups=["finance"])
    assert (groups.ok, groups.reply.code) == (False, "forbidden")
    done = answer(stack, "erp", "as-2", "reject", data={"reason": "no budget"},
                  on_behalf_of="alice")
    assert done.ok and done.output == "Refused: r"
    [accepted] = [r for r in audit(stack, "as-2") if r["event"] == "accepted"]
    assert (accepted["principal"], accepted["on_behalf_of"], accepted["responder"]) == (
        "erp", "alice", "alice")
    code, rows, _ = cli_json(stack.nats_url, "audit", "--responder", "erp",
                             env={"HITLFLOW_NATS_CREDS": str(
                                 auth.auth_files(stack.data_dir).creds("operator"))})
    assert code == 0 and {r["thread_id"] for r in rows} == {"as-2"}


def test_mine_lists_what_each_person_may_answer_now(stack: HitlTestStack) -> None:
    start(stack, "Assigned", "mine-1")
    start(stack, "Open", "mine-2")

    def mine(name: str) -> list[str]:
        return sorted(p.thread_id for p in as_user(stack, name, lambda c: c.mine()))

    assert mine("alice") == ["mine-1", "mine-2"]
    assert mine("carol") == ["mine-1", "mine-2"]  # by her group
    assert mine("bob") == ["mine-2"]
    assert as_user(stack, "carol", lambda c: c.task("mine-1", "claim")).ok
    assert mine("alice") == ["mine-2"]
    assert mine("carol") == ["mine-1", "mine-2"]


# -- claim, release, delegate, reassign -------------------------------------------------------


def test_two_claim_at_once_one_wins_and_only_the_claimant_may_answer(
        stack: HitlTestStack) -> None:
    start(stack, "Assigned", "cl-1")

    async def both() -> list[Outcome]:
        async def claim(name: str) -> Outcome:
            async with HitlClient(stack.nats_url, auth=creds(stack, name)) as client:
                return await client.task("cl-1", "claim")

        return list(await asyncio.gather(claim("alice"), claim("carol")))

    outcomes = stack.call(both())
    winners = [o for o in outcomes if o.ok]
    losers = [o for o in outcomes if not o.ok]
    assert len(winners) == 1 and len(losers) == 1
    assert losers[0].reply.code == "claimed"
    claimant = "alice" if outcomes[0].ok else "carol"
    other = "carol" if claimant == "alice" else "alice"
    refused = answer(stack, other, "cl-1")
    assert (refused.ok, refused.reply.code) == (False, "forbidden")
    assert "is claimed by" in (refused.reply.error or "")
    not_theirs = as_user(stack, other, lambda c: c.task("cl-1", "release"))
    assert (not_theirs.ok, not_theirs.reply.code) == (False, "forbidden")
    assert as_user(stack, claimant, lambda c: c.task("cl-1", "release")).ok
    assert answer(stack, other, "cl-1").status == "completed"
    events = [r["event"] for r in audit(stack, "cl-1")]
    assert events.count("claimed") == 1 and events.count("released") == 1


def test_delegation_and_reassignment_show_the_request_anew(stack: HitlTestStack) -> None:
    first = start(stack, "Assigned", "dl-1")
    assert as_user(stack, "alice", lambda c: c.task("dl-1", "delegate", to=["bob"])).ok
    [request] = stack.pending("dl-1")
    assert request.claimed_by == "bob" and request.shown != first["shown"]
    stale = answer(stack, "bob", "dl-1", shown=first["shown"])
    assert (stale.ok, stale.reply.code) == (False, "stale_view")
    refused = as_user(stack, "alice", lambda c: c.task("dl-1", "reassign", to=["carol"]))
    assert (refused.ok, refused.reply.code) == (False, "forbidden")  # operators reassign
    assert as_user(stack, "operator", lambda c: c.task("dl-1", "reassign", to=["carol"])).ok
    [request] = stack.pending("dl-1")
    assert request.claimed_by is None and request.assignees == ["carol"]
    assert answer(stack, "bob", "dl-1").reply.code == "forbidden"
    assert answer(stack, "carol", "dl-1").status == "completed"


# -- quorum -----------------------------------------------------------------------------------


def test_two_of_three_approve_and_a_second_vote_is_refused(stack: HitlTestStack) -> None:
    start(stack, "Quorum", "q-1")
    first = answer(stack, "alice", "q-1")
    assert first.ok and first.reply.decided is False and first.status == "paused"
    again = answer(stack, "alice", "q-1")
    assert (again.ok, again.reply.code) == (False, "already_voted")
    outsider = answer(stack, "erp", "q-1")
    assert (outsider.ok, outsider.reply.code) == (False, "forbidden")
    done = answer(stack, "carol", "q-1")
    assert done.ok and done.reply.decided and done.output == "Approved: r"
    [resumed] = stack.events("q-1", "ThreadResumed")
    assert [v["voter"] for v in resumed["data"]["votes"]] == ["alice", "carol"]


def test_one_reject_vetoes_unless_the_majority_decides(stack: HitlTestStack) -> None:
    start(stack, "Quorum", "q-veto")
    assert answer(stack, "bob", "q-veto", "reject").output == "Refused: r"
    start(stack, "Majority", "q-maj")
    assert answer(stack, "bob", "q-maj", "reject").status == "paused"
    assert answer(stack, "alice", "q-maj").status == "paused"
    assert answer(stack, "carol", "q-maj", "reject").output == "Refused: r"


def test_ten_voters_at_once_decide_exactly_once(stack: HitlTestStack) -> None:
    start(stack, "Crowd", "q-crowd")  # 6 approvals of group "board"

    async def vote(name: str) -> Outcome:
        async with HitlClient(stack.nats_url, reply_timeout=20.0,
                              auth=creds(stack, name)) as client:
            return await client.resume("q-crowd", "approve")

    async def everyone() -> list[Outcome]:
        return list(await asyncio.gather(*(vote(f"v{i}") for i in range(10))))

    outcomes = stack.call(everyone(), timeout=120)
    assert sum(o.ok for o in outcomes) == 6
    assert sum(o.ok and o.reply.decided for o in outcomes) == 1
    # the later voters find it decided (the request closed, or the thread moved on)
    assert {o.reply.code for o in outcomes if not o.ok} <= {"already_answered", "not_waiting",
                                                            "thread_ended"}
    wait_for(lambda: (v := stack.status("q-crowd")) is not None and v.status == "completed",
             what="the thread to complete")
    assert len(stack.events("q-crowd", "ThreadResumed")) == 1
    rows = audit(stack, "q-crowd")
    assert [r["event"] for r in rows].count("voted") == 6
    assert [r["event"] for r in rows].count("accepted") == 1


def test_analytics_by_responder_group_and_workload(stack: HitlTestStack) -> None:
    start(stack, "Assigned", "an-1")
    start(stack, "Assigned", "an-2")
    start(stack, "Open", "an-3")
    assert answer(stack, "carol", "an-1").ok
    assert as_user(stack, "alice", lambda c: c.task("an-2", "claim")).ok
    code, report, stderr = cli_json(stack.nats_url, "analytics",
                                    env={"HITLFLOW_NATS_CREDS": str(
                                        auth.auth_files(stack.data_dir).creds("operator"))})
    assert code == 0, stderr
    assert report["per_responder"]["carol"]["answered"] == 1
    assert report["per_responder"]["carol"]["approval_rate"] == 1.0
    assert report["per_group"]["finance"]["total"] == 2
    assert report["per_group"]["finance"]["answered"] == 1
    assert report["workload"] == {"alice": 1}  # an-2, claimed; an-3 waits on anyone
