"""The rules of identity, without I/O: principal names in subjects, what each role may assert,
quorums, and answers bound to the version of the request they were given to."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.subjects import InvalidPrincipalError, principal_of_token, principal_token
from services.common.identity import Directory, Identity, IdentityError
from services.interaction.domain import (
    ForbiddenError,
    Interaction,
    Quorum,
    StaleViewError,
)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
names = st.text(alphabet=st.characters(min_codepoint=32, blacklist_characters="\x7f",
                                       blacklist_categories=("Cs",)), min_size=1, max_size=60)


@given(name=names)
def test_any_printable_name_travels_in_one_subject_token_and_back(name: str) -> None:
    token = principal_token(name)
    assert not {".", "*", ">", " ", "\t"} & set(token)
    assert principal_of_token(token) == name


@pytest.mark.parametrize("token", ["a.b", "a%2e", "a%zz", "", "a%2", "%"])
def test_a_token_not_written_as_principal_token_writes_it_names_no_one(token: str) -> None:
    with pytest.raises(InvalidPrincipalError):
        principal_of_token(token)


@pytest.fixture
def directory(tmp_path: Path) -> Directory:
    users = {"alice": {"role": "responder", "groups": ["finance"]},
             "erp": {"role": "system", "groups": []},
             "gateway": {"role": "gateway", "groups": []},
             "ops": {"role": "operator", "groups": []}}
    path = tmp_path / "users.json"
    path.write_text(json.dumps({"users": users}))
    return Directory(path)


def test_each_role_asserts_only_what_it_may(directory: Directory) -> None:
    assert directory.resolve("alice") == Identity("alice", groups=("finance",),
                                                  role="responder")
    with pytest.raises(IdentityError, match="may not act for someone else"):
        directory.resolve("alice", on_behalf_of="bob")
    with pytest.raises(IdentityError, match="may not act for someone else or name groups"):
        directory.resolve("alice", groups=["board"])
    with pytest.raises(IdentityError, match="only the gateway asserts"):
        directory.resolve("erp", asserted="alice")
    acting = directory.resolve("erp", on_behalf_of="bob", groups=["board"])
    assert (acting.principal, acting.person, acting.groups) == ("erp", "bob", ("board",))
    via = directory.resolve("gateway", asserted="carol", groups=["sales"])
    assert (via.principal, via.groups, via.role) == ("carol", ("sales",), "responder")
    with pytest.raises(IdentityError, match="must name the principal"):
        directory.resolve("gateway")
    with pytest.raises(IdentityError, match="not in this stack's directory"):
        directory.resolve("mallory")
    assert directory.resolve("ops").operator


def test_without_a_directory_names_are_taken_as_sent() -> None:
    open_door = Directory(None).resolve("anyone", asserted="alice", on_behalf_of="bob",
                                        groups=["x"])
    assert (open_door.principal, open_door.person, open_door.verified) == ("alice", "bob",
                                                                            False)


@pytest.mark.parametrize(("quorum", "votes", "outcome"), [
    (Quorum(2, of=("a", "b", "c")), "A", None),
    (Quorum(2, of=("a", "b", "c")), "AA", "approve"),
    (Quorum(2, of=("a", "b", "c")), "AR", "reject"),  # one reject vetoes
    (Quorum(2, of=("a", "b", "c"), reject="majority"), "R", None),
    (Quorum(2, of=("a", "b", "c"), reject="majority"), "RA", None),
    (Quorum(2, of=("a", "b", "c"), reject="majority"), "RAR", "reject"),  # 2 can't be reached
    (Quorum(2, of=("a", "b", "c"), reject="majority"), "RAA", "approve"),
    (Quorum(3, group="board", reject="majority"), "RRA", None),
    (Quorum(3, group="board", reject="majority"), "RRR", "reject"),
])
def test_a_quorum_decides_as_its_rule_says(quorum: Quorum, votes: str,
                                           outcome: str | None) -> None:
    approvals = votes.count("A")
    assert quorum.outcome(approvals, len(votes) - approvals) == outcome


def request(**context: object) -> Interaction:
    return Interaction(
        request_id="3f0e4a34-5d41-4a55-9f8e-2b6c0d9e4f31", thread_id="t1", node_name="gate",
        interaction_type="approval", prompt="Approve?", context={}, options=[],
        timeout_seconds=60,
        on_timeout={"policy": "escalate", "to": ["lead"], "timeout_seconds": 60},
        assignees=["alice"], response_schema=None, batch_index=0, batch_size=1,
        created_at=T0, deadline=T0 + timedelta(seconds=60), **context)  # type: ignore[arg-type]


def test_an_escalation_shows_the_request_anew_and_answers_to_the_old_view_are_stale() -> None:
    gate = request()
    before = gate.shown
    gate.time_out(0, T0 + timedelta(seconds=61))  # escalated to "lead"
    assert gate.assignees == ["lead"] and gate.shown != before
    assert gate.shown.startswith("2:") and gate.shown.endswith(before.split(":")[1])
    with pytest.raises(StaleViewError, match="look at it again"):
        gate.respond("approve", None, Identity("lead"), "k1", T0 + timedelta(seconds=70),
                     before)
    with pytest.raises(ForbiddenError, match="'alice' may not answer"):
        gate.respond("approve", None, Identity("alice"), "k2", T0 + timedelta(seconds=70),
                     gate.shown)
    gate.respond("approve", None, Identity("lead"), "k3", T0 + timedelta(seconds=70),
                 gate.shown)
    assert gate.status == "answered"
