"""The HTTP gateway on a stack with authorization on (generated NATS users and permissions),
with real signed tokens: HS256 from ``hitlflow token``, RS256 from an identity provider's JWKS
served over HTTP; API keys for systems; who may answer, claim and hand on over HTTP; and the
audit naming the authenticated principal."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from httpx import Response
from jwt.algorithms import RSAAlgorithm

from hitlflow import auth
from hitlflow.gateway import create_app
from hitlflow.settings import Settings, SettingsError
from hitlflow.stack import free_port
from hitlflow.testing import HitlTestStack
from tests.conftest import EXAMPLE_AGENTS, ROOT
from tests.helpers import cli, cli_json

PEOPLE = ROOT / "tests" / "workflows" / "people.csv"
USERS = {"alice": ("responder", ["finance"]), "bob": ("responder", []),
         "carol": ("responder", ["finance"]), "boss": ("operator", []),
         "erp": ("system", [])}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[HitlTestStack]:
    files = auth.auth_files(tmp_path)
    auth.ensure(files)
    for name, (role, groups) in USERS.items():
        auth.add_user(files, name, role, groups)
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS],
                       settings=Settings(home=tmp_path, auth=True)) as hitl:
        yield hitl


def gateway(stack: HitlTestStack, **settings: Any) -> TestClient:
    """The gateway as `hitlflow serve gateway` runs it from the stack's home: on NATS as the
    `gateway` user, the stack's directory, tokens checked with the stack's key."""
    return TestClient(create_app(Settings(home=stack.data_dir, nats_url=stack.nats_url,
                                          reply_timeout=20.0, **settings)))


@pytest.fixture
def http(stack: HitlTestStack) -> Iterator[TestClient]:
    with gateway(stack) as client:
        yield client


def token(stack: HitlTestStack, name: str, *groups: str) -> str:
    """A token as `hitlflow token NAME --group G` prints it."""
    args = ["token", name, *[arg for g in groups for arg in ("--group", g)]]
    result = cli(stack.nats_url, *args, env={"HITLFLOW_HOME": str(stack.data_dir)})
    assert result.exit_code == 0, result.stderr
    return str(result.stdout.strip())


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


def signed(stack: HitlTestStack, claims: dict[str, Any], key: str | None = None,
           algorithm: str = "HS256") -> str:
    """A token with exactly these claims, signed with the stack's key (or ``key``)."""
    secret = key or auth.auth_files(stack.data_dir).jwt_secret.read_text().strip()
    return jwt.encode(claims, secret, algorithm=algorithm)


def claims(name: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": name, "iss": "hitlflow", "aud": "hitlflow", "iat": now, "exp": now + 600,
            **extra}


def start(stack: HitlTestStack, graph: str) -> tuple[str, str]:
    """A thread of people.csv paused at its gate: its id and the request's ``shown``."""
    thread_id = f"{graph.lower()}-{uuid.uuid4().hex[:8]}"
    outcome = stack.start(f"{PEOPLE}::{graph}", {"request": "r"}, thread_id=thread_id)
    stack.assert_paused(outcome)
    return thread_id, outcome.pending[0]["shown"]


def audit(stack: HitlTestStack, thread_id: str) -> list[dict[str, Any]]:
    code, rows, stderr = cli_json(stack.nats_url, "audit", "--thread", thread_id,
                                  env={"HITLFLOW_NATS_CREDS": str(
                                      auth.auth_files(stack.data_dir).creds("operator"))})
    assert code == 0, stderr
    return list(rows)


def refused(response: Response, status: int, code: str, says: str) -> dict[str, Any]:
    """The response is a JSON refusal with this status and code whose error says ``says``."""
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert says in (body.get("error") or ""), body
    assert "Traceback" not in response.text
    return body


# -- tokens -----------------------------------------------------------------------------------


def test_an_answer_with_a_token_is_recorded_with_its_principal(
        stack: HitlTestStack, http: TestClient) -> None:
    thread_id, shown = start(stack, "Assigned")  # assignees alice, candidate group finance
    carol = bearer(token(stack, "carol", "finance"))
    [mine] = [p for p in http.get("/pending", params={"mine": "true"}, headers=carol).json()
              if p["thread_id"] == thread_id]
    assert mine["shown"] == shown

    outsider = http.post(f"/threads/{thread_id}/resume", headers=bearer(token(stack, "bob")),
                         json={"action": "approve", "shown": shown})
    refused(outsider, 403, "forbidden", "'bob' may not answer")

    done = http.post(f"/threads/{thread_id}/resume", headers=carol,
                     json={"action": "approve", "shown": shown})
    assert done.status_code == 200, done.text
    assert (done.json()["status"], done.json()["output"]) == ("completed", "Approved: r")
    rows = audit(stack, thread_id)
    [rejected] = [r for r in rows if r["event"] == "rejected"]
    assert (rejected["principal"], rejected["code"]) == ("bob", "forbidden")
    [accepted] = [r for r in rows if r["event"] == "accepted"]
    assert (accepted["principal"], accepted["responder"], accepted["on_behalf_of"]) == (
        "carol", "carol", None)


def _bad_tokens(stack: HitlTestStack) -> dict[str, tuple[dict[str, str], str]]:
    """Each kind of credentials that does not do, with what the refusal must say."""
    now = int(time.time())
    header, payload, _ = signed(stack, claims("alice", groups=["finance"])).split(".")
    unsigned = jwt.encode(claims("alice", groups=["finance"]), None, algorithm="none")
    return {
        "none": ({}, "no credentials"),
        "forged": (bearer(signed(stack, claims("alice", groups=["finance"]),
                                 key="not-the-stacks-key-but-long-enough-for-hs256")),
                   "signature does not verify"),
        "tampered": (bearer(f"{header}.{payload}.{'A' * 43}"), "signature does not verify"),
        "expired": (bearer(signed(stack, claims("alice", exp=now - 3600, iat=now - 7200))),
                    "has expired"),
        "other audience": (bearer(signed(stack, claims("alice", aud="payroll"))),
                           "another audience: expected 'hitlflow'"),
        "other issuer": (bearer(signed(stack, claims("alice", iss="someone-else"))),
                         "another issuer: expected 'hitlflow'"),
        "no expiry": (bearer(signed(stack, {k: v for k, v in claims("alice").items()
                                            if k != "exp"})), "no 'exp' claim"),
        "unsigned": (bearer(unsigned), "signed with 'none'"),
        "not a jwt": (bearer("hello"), "not a JWT"),
        "basic": ({"Authorization": "Basic YWxpY2U6eA=="}, "Bearer <token>"),
        "groups not a list": (bearer(signed(stack, claims("alice", groups="finance"))),
                              "'groups' claim is not a list of strings"),
        "no principal": (bearer(signed(stack, {k: v for k, v in claims("alice").items()
                                               if k != "sub"})), "no 'sub' claim"),
        "unknown api key": ({"X-API-Key": "hfk_guessed"}, "unknown API key"),
    }


def test_credentials_that_do_not_do_get_401_and_change_nothing(
        stack: HitlTestStack, http: TestClient) -> None:
    thread_id, shown = start(stack, "Assigned")
    for kind, (headers, says) in _bad_tokens(stack).items():
        response = http.post(f"/threads/{thread_id}/resume", headers=headers,
                             json={"action": "approve", "shown": shown})
        body = refused(response, 401, "unauthenticated", says)
        challenge = response.headers["WWW-Authenticate"]
        assert challenge.startswith('Bearer realm="hitlflow"'), kind
        if kind != "none":
            assert 'error="invalid' in challenge, (kind, challenge)
        assert set(body) == {"code", "error"}, kind
        # reads need credentials as well
        assert http.get("/pending", headers=headers).status_code == 401, kind
    [request] = stack.pending(thread_id)
    assert request.shown == shown
    assert not [r for r in audit(stack, thread_id) if r["event"] != "requested"]
    # open to anyone: the probes and metrics (the orchestrator has no token), the documents
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/asyncapi"):
        assert http.get(path).status_code == 200, path


def test_a_token_that_names_no_groups_has_none(stack: HitlTestStack, http: TestClient) -> None:
    thread_id, shown = start(stack, "Assigned")
    no_groups = bearer(signed(stack, claims("carol")))  # carol is in finance in the directory
    refused(http.post(f"/threads/{thread_id}/resume", headers=no_groups,
                      json={"action": "approve", "shown": shown}),
            403, "forbidden", "'carol' may not answer")
    assert thread_id not in {p["thread_id"] for p in
                             http.get("/pending", params={"mine": "true"},
                                      headers=no_groups).json()}
    with_groups = bearer(signed(stack, claims("carol", groups=["finance"])))
    assert http.post(f"/threads/{thread_id}/resume", headers=with_groups,
                     json={"action": "approve", "shown": shown}).json()["status"] == "completed"


def test_tokens_cannot_name_the_stacks_own_users_or_a_system(
        stack: HitlTestStack, http: TestClient) -> None:
    for name, role in (("gateway", "gateway"), ("workflow", "service"), ("erp", "system")):
        refused(http.get("/pending", headers=bearer(signed(stack, claims(name)))),
                403, "forbidden", f"is a {role} of this stack")


# -- identity provider (RS256, JWKS) ----------------------------------------------------------


class _Jwks(BaseHTTPRequestHandler):
    body = b"{}"

    def do_GET(self) -> None:  # the http.server interface
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def provider() -> Iterator[tuple[str, Any]]:
    """An identity provider's JWKS endpoint on a loopback port: its URL and its private key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = {**RSAAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "idp-1",
           "use": "sig", "alg": "RS256"}
    handler = type("Jwks", (_Jwks,), {"body": json.dumps({"keys": [jwk]}).encode()})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", key
    finally:
        server.shutdown()
        server.server_close()


def test_an_identity_providers_rs256_tokens(stack: HitlTestStack,
                                            provider: tuple[str, Any]) -> None:
    url, key = provider
    idp = {"iss": "https://idp.example", "aud": "hitlflow-api"}

    def rs256(name: str, kid: str = "idp-1", signing_key: Any = key, **extra: Any) -> str:
        return jwt.encode({**claims(name, **idp), "roles": ["finance"], **extra}, signing_key,
                          algorithm="RS256", headers={"kid": kid})

    thread_id, shown = start(stack, "Assigned")
    with gateway(stack, auth_jwks_url=url, auth_issuer=idp["iss"],
                 auth_audience=idp["aud"], auth_groups_claim="roles") as http:
        carol = bearer(rs256("carol"))
        assert thread_id in {p["thread_id"] for p in
                             http.get("/pending", params={"mine": "true"},
                                      headers=carol).json()}
        other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        refused(http.get("/pending", headers=bearer(rs256("carol", signing_key=other_key))),
                401, "unauthenticated", "signature does not verify")
        refused(http.get("/pending", headers=bearer(rs256("carol", kid="rotated-away"))),
                401, "unauthenticated", "not one of the identity provider's keys")
        # the stack's own HS256 tokens are not the identity provider's
        refused(http.get("/pending", headers=bearer(token(stack, "carol", "finance"))),
                401, "unauthenticated", "signed with 'HS256'")
        refused(http.get("/pending", headers=bearer(rs256("carol", aud="hitlflow"))),
                401, "unauthenticated", "another audience: expected 'hitlflow-api'")
        done = http.post(f"/threads/{thread_id}/resume", headers=carol,
                         json={"action": "approve", "shown": shown})
        assert done.json()["status"] == "completed", done.text
    [accepted] = [r for r in audit(stack, thread_id) if r["event"] == "accepted"]
    assert accepted["principal"] == "carol"


def test_an_identity_provider_out_of_reach_is_503_not_401(stack: HitlTestStack) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    nowhere = f"http://127.0.0.1:{free_port()}/jwks.json"
    rs256 = jwt.encode(claims("carol"), key, algorithm="RS256", headers={"kid": "idp-1"})
    with gateway(stack, auth_jwks_url=nowhere) as http:
        response = http.get("/pending", headers=bearer(rs256))
    assert response.status_code == 503, response.text
    assert "cannot fetch the identity provider's keys" in response.json()["error"]
    assert "Traceback" not in response.text


# -- API keys ---------------------------------------------------------------------------------


def test_a_systems_api_key_with_and_without_acting_for_someone(
        stack: HitlTestStack, http: TestClient) -> None:
    home = {"HITLFLOW_HOME": str(stack.data_dir)}
    made = cli(stack.nats_url, "users", "add", "erp", "--role", "system", "--api-key", env=home)
    assert made.exit_code == 0, made.stderr
    key = re.search(r"API key \(shown this once.*\): (\S+)", made.stdout)
    assert key is not None, made.stdout
    system = {"X-API-Key": key.group(1)}
    stored = auth.auth_files(stack.data_dir).users.read_text()
    assert key.group(1) not in stored and "api_key_sha256" in stored

    # as itself
    open_thread, open_shown = start(stack, "Open")
    done = http.post(f"/threads/{open_thread}/resume", headers=system,
                     json={"action": "approve", "shown": open_shown})
    assert done.json()["status"] == "completed", done.text
    [accepted] = [r for r in audit(stack, open_thread) if r["event"] == "accepted"]
    assert (accepted["principal"], accepted["on_behalf_of"]) == ("erp", None)

    # for a person
    thread_id, shown = start(stack, "Assigned")
    refused(http.post(f"/threads/{thread_id}/resume", headers=system,
                      json={"action": "approve", "shown": shown}),
            403, "forbidden", "'erp' may not answer")
    for_alice = http.post(f"/threads/{thread_id}/resume",
                          headers={**system, "X-On-Behalf-Of": "alice"},
                          json={"action": "reject", "data": {"reason": "no"}, "shown": shown})
    assert for_alice.json()["output"] == "Refused: r", for_alice.text
    [accepted] = [r for r in audit(stack, thread_id) if r["event"] == "accepted"]
    assert (accepted["principal"], accepted["on_behalf_of"], accepted["responder"]) == (
        "erp", "alice", "alice")

    # a person's token may not act for someone else
    other, other_shown = start(stack, "Assigned")
    refused(http.post(f"/threads/{other}/resume",
                      headers={**bearer(token(stack, "bob")), "X-On-Behalf-Of": "alice"},
                      json={"action": "approve", "shown": other_shown}),
            403, "forbidden", "may not act for someone else")
    assert stack.pending(other)[0].shown == other_shown

    # a new key replaces the old one
    again = cli(stack.nats_url, "users", "add", "erp", "--role", "system", "--api-key", env=home)
    assert again.exit_code == 0, again.stderr
    refused(http.get("/pending", headers=system), 401, "unauthenticated", "unknown API key")


def test_api_keys_are_for_systems(stack: HitlTestStack) -> None:
    result = cli(stack.nats_url, "users", "add", "dave", "--api-key",
                 env={"HITLFLOW_HOME": str(stack.data_dir)})
    assert result.exit_code == 2
    assert "--api-key is for system users" in result.stderr


# -- who may do what, over HTTP ---------------------------------------------------------------


def test_claim_release_delegate_reassign_and_mine_over_http(
        stack: HitlTestStack, http: TestClient) -> None:
    thread_id, shown = start(stack, "Assigned")
    alice, carol = bearer(token(stack, "alice")), bearer(token(stack, "carol", "finance"))

    def mine(headers: dict[str, str]) -> set[str]:
        response = http.get("/pending", params={"mine": "true"}, headers=headers)
        assert response.status_code == 200, response.text
        return {p["thread_id"] for p in response.json()}

    assert thread_id in mine(alice) and thread_id in mine(carol)
    claimed = http.post(f"/threads/{thread_id}/claim", headers=alice)
    assert claimed.status_code == 200 and claimed.json()["action"] == "claim", claimed.text
    assert thread_id in mine(alice) and thread_id not in mine(carol)
    refused(http.post(f"/threads/{thread_id}/claim", headers=carol), 409, "claimed",
            "claimed by 'alice'")
    refused(http.post(f"/threads/{thread_id}/resume", headers=carol,
                      json={"action": "approve", "shown": shown}),
            403, "forbidden", "is claimed by")
    refused(http.post(f"/threads/{thread_id}/release", headers=carol), 403, "forbidden",
            "only they or an operator")
    assert http.post(f"/threads/{thread_id}/release", headers=alice).status_code == 200

    delegated = http.post(f"/threads/{thread_id}/delegate", headers=alice, json={"to": "bob"})
    assert delegated.status_code == 200, delegated.text
    bob = bearer(token(stack, "bob"))
    stale = refused(http.post(f"/threads/{thread_id}/resume", headers=bob,
                              json={"action": "approve", "shown": shown}),
                    409, "stale_view", "look at it again")
    assert stale["ok"] is False
    refused(http.post(f"/threads/{thread_id}/reassign", headers=alice, json={"to": ["carol"]}),
            403, "forbidden", "operators may")
    operator = bearer(token(stack, "boss"))
    assert http.post(f"/threads/{thread_id}/reassign", headers=operator,
                     json={"to": ["carol"]}).status_code == 200
    [current] = http.get("/pending", params={"thread_id": thread_id}, headers=bob).json()
    assert current["assignees"] == ["carol"] and current["shown"] != shown
    done = http.post(f"/threads/{thread_id}/resume", headers=carol,
                     json={"action": "approve", "shown": current["shown"]})
    assert done.json()["status"] == "completed", done.text
    events = [(r["event"], r["principal"]) for r in audit(stack, thread_id)]
    for expected in (("claimed", "alice"), ("released", "alice"), ("delegated", "alice"),
                     ("reassigned", "boss"), ("accepted", "carol")):
        assert expected in events, events


def test_an_answer_must_say_what_it_answers(stack: HitlTestStack, http: TestClient) -> None:
    thread_id, _ = start(stack, "Open")
    alice = bearer(token(stack, "alice"))
    refused(http.post(f"/threads/{thread_id}/resume", headers=alice, json={"action": "approve"}),
            422, "invalid_command", "expected 'shown'")
    refused(http.post(f"/threads/{thread_id}/resume", headers=alice,
                      json={"action": "approve", "shown": "x", "responder": "mallory"}),
            422, "invalid_command", "responder: Extra inputs are not permitted")
    refused(http.post(f"/threads/{thread_id}/resume", headers=alice,
                      json={"action": "approve", "shown": "v1:0000"}),
            409, "stale_view", "look at it again")


def test_who_may_start_threads_over_http(stack: HitlTestStack, http: TestClient) -> None:
    csv = PEOPLE.read_text()
    body = {"csv": csv, "graph": "Open", "state": {"request": "r"}}
    refused(http.post("/threads", headers=bearer(token(stack, "alice")), json=body),
            403, "forbidden", "'alice' (responder) may not start threads")
    started = http.post("/threads", headers=bearer(token(stack, "boss")),
                        json={**body, "thread_id": f"op-{uuid.uuid4().hex[:8]}"})
    assert started.status_code == 201, started.text
    [event] = stack.events(started.json()["thread_id"], "ThreadStarted")
    assert event["started_by"] == "boss"


def test_the_openapi_document_describes_the_authentication(http: TestClient) -> None:
    document = http.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["token"] == {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                                "description": schemes["token"]["description"]}
    assert schemes["apiKey"]["in"] == "header" and schemes["apiKey"]["name"] == "X-API-Key"
    resume = document["paths"]["/threads/{thread_id}/resume"]["post"]
    assert {"token": []} in resume["security"] and {"apiKey": []} in resume["security"]
    assert {"401", "403", "409"} <= set(resume["responses"])
    assert "shown" in resume["requestBody"]["content"]["application/json"]["schema"]["required"]
    for op in ("claim", "release", "delegate", "reassign"):
        assert f"/threads/{{thread_id}}/{op}" in document["paths"]
    assert "X-On-Behalf-Of" in json.dumps(resume["parameters"])


# -- how the gateway starts -------------------------------------------------------------------


def test_the_gateway_refuses_to_start_when_it_could_not_check_credentials(
        stack: HitlTestStack) -> None:
    files = auth.auth_files(stack.data_dir)
    home = {"home": stack.data_dir, "nats_url": stack.nats_url}
    with pytest.raises(SettingsError, match="HITLFLOW_GATEWAY_USER is for a stack without"):
        create_app(Settings(**home, gateway_user="alice"))
    with pytest.raises(SettingsError, match="'operator', which is not a gateway user"):
        create_app(Settings(**home, identity_file=files.users,
                            nats_creds=files.creds("operator")))
    with pytest.raises(SettingsError, match="no key to check tokens with"):
        create_app(Settings(home=stack.data_dir / "elsewhere", nats_url=stack.nats_url,
                            identity_file=files.users, nats_creds=files.creds("gateway")))


def test_without_authorization_requests_are_from_the_configured_user(
        tmp_path: Path) -> None:
    with HitlTestStack(tmp_path, agents=[EXAMPLE_AGENTS],
                       settings=Settings(home=tmp_path, auth=False)) as stack:
        thread_id, shown = start(stack, "Open")
        with TestClient(create_app(Settings(home=tmp_path, nats_url=stack.nats_url,
                                            auth=False))) as anonymous:
            refused(anonymous.get("/pending"), 401, "unauthenticated", "no credentials")
        with TestClient(create_app(Settings(home=tmp_path, nats_url=stack.nats_url,
                                            auth=False, gateway_user="dev"))) as http:
            assert [p["thread_id"] for p in
                    http.get("/pending", params={"mine": "true"}).json()] == [thread_id]
            done = http.post(f"/threads/{thread_id}/resume",
                             json={"action": "approve", "shown": shown})
            assert done.json()["status"] == "completed", done.text
        [resumed] = stack.events(thread_id, "ThreadResumed")
        assert resumed["responder"] == "dev"
