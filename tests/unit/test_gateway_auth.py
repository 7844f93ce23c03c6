"""The gateway's rules about credentials that need no stack: the challenge it answers 401
with, what a role may send, how a groups claim is read, where the gateway finds its files."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from hitlflow import auth
from hitlflow.gateway_auth import (
    Authenticator,
    Caller,
    InvalidHeaderError,
    NotAuthenticatedError,
    RequestForbiddenError,
    _groups_claim,
    gateway_settings,
)
from hitlflow.settings import Settings, SettingsError
from services.common.identity import Directory


def test_the_challenge_says_why_in_a_header_safe_form() -> None:
    assert NotAuthenticatedError("none", error=None).challenge == 'Bearer realm="hitlflow"'
    challenge = NotAuthenticatedError('bad "quote" \\ and é\n').challenge
    assert challenge == ('Bearer realm="hitlflow", error="invalid_token", '
                         'error_description="bad quote  and "')


def test_each_role_sends_the_commands_it_may_send_on_nats() -> None:
    def caller(role: str | None) -> Caller:
        return Caller(principal="p", groups=None, on_behalf_of=None, role=role, how="token")

    caller("operator").check_may("start")
    caller("system").check_may("start")
    caller(None).check_may("start")  # authorization off: nobody is verified
    caller("responder").check_may("resume")
    with pytest.raises(RequestForbiddenError, match="responders may resume, cancel, task"):
        caller("responder").check_may("start")


@pytest.mark.parametrize(("claims", "groups"), [
    ({}, []),
    ({"groups": None}, []),
    ({"groups": []}, []),
    ({"groups": ["b", "a", "a"]}, ["a", "b"]),
])
def test_a_groups_claim_is_a_list_of_names(claims: dict[str, object],
                                           groups: list[str]) -> None:
    assert _groups_claim(claims, "groups") == groups


@pytest.mark.parametrize(("value", "says"), [
    ("finance", "is not a list of strings (got str)"),
    (["finance", 3], "is not a list of strings"),
    ({"finance": True}, "is not a list of strings (got dict)"),
    ([f"g{i}" for i in range(101)], "names 101 groups; at most 100"),
    (["ok", ""], "invalid principal name"),
])
def test_a_groups_claim_that_is_not_is_refused_naming_the_claim(value: object,
                                                                says: str) -> None:
    with pytest.raises(NotAuthenticatedError, match="the token's 'roles' claim") as refused:
        _groups_claim({"roles": value}, "roles")
    assert says in str(refused.value)


def test_the_gateway_finds_the_embedded_stacks_files_by_itself(tmp_path: Path) -> None:
    assert gateway_settings(Settings(home=tmp_path)).identity_file is None  # none made yet
    files = auth.auth_files(tmp_path)
    auth.ensure(files)
    found = gateway_settings(Settings(home=tmp_path))
    assert (found.identity_file, found.nats_creds) == (files.users, files.creds("gateway"))
    assert found.nats_auth()["user"] == "gateway"
    given = gateway_settings(Settings(home=tmp_path, nats_creds=files.creds("operator")))
    assert (given.identity_file, given.nats_creds) == (files.users, files.creds("operator"))
    with pytest.raises(SettingsError, match="'operator', which is not a gateway user"):
        Authenticator(given, Directory(files.users))  # said at start, not as 403s later
    assert gateway_settings(Settings(home=tmp_path, auth=False)).identity_file is None


def test_on_behalf_headers_are_names(tmp_path: Path) -> None:
    files = auth.auth_files(tmp_path)
    auth.ensure(files)
    auth.add_user(files, "erp", "system", [])
    key = auth.new_api_key(files, "erp")
    authenticator = Authenticator(gateway_settings(Settings(home=tmp_path)),
                                  Directory(files.users))

    def caller(**headers: str | None) -> Caller:
        return asyncio.run(authenticator.caller(
            authorization=None, api_key=key, on_behalf_of=headers.get("on_behalf_of"),
            on_behalf_groups=headers.get("on_behalf_groups")))

    assert caller(on_behalf_of="alice", on_behalf_groups=" finance, audit ,").assertion() == {
        "principal": "erp", "on_behalf_of": "alice", "groups": ["audit", "finance"]}
    assert caller(on_behalf_of="alice").groups == []  # the person's groups: the ones said
    assert caller().groups is None  # the system itself: its groups in the directory
    with pytest.raises(InvalidHeaderError, match="X-On-Behalf-Of: invalid principal"):
        caller(on_behalf_of="\x01")
    with pytest.raises(InvalidHeaderError, match="X-On-Behalf-Of, which is missing"):
        caller(on_behalf_groups="finance")
