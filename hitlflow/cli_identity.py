"""Who may answer: the stack's users (``hitlflow users``), gateway tokens (``hitlflow token``),
the task operations (``claim``, ``release``, ``delegate``, ``reassign``) and ``pending --mine``.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from contracts.subjects import (
    InvalidPrincipalError,
    InvalidThreadIdError,
    check_principal,
    check_thread_id,
)
from hitlflow import auth, display
from hitlflow.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_NO_STACK,
    EXIT_REFUSED,
    ForPerson,
    JsonOut,
    NatsUrl,
    client_for,
    err,
    fail,
    out,
)
from hitlflow.client import NoOutcomeError, Outcome, StackUnavailableError
from hitlflow.settings import Settings, SettingsError, load_settings

users_app = typer.Typer(no_args_is_help=True, help="The stack's users: who may connect, as "
                                                   "which role, in which groups.")

Groups = Annotated[list[str] | None, typer.Option(
    "--group", help="A group the user is in (repeatable): requests for candidate_groups or a "
                    "group quorum reach its members.")]


def _files(settings: Settings) -> auth.AuthFiles:
    files = auth.auth_files(settings.home)
    if not files.exists():
        fail(f"no users in {settings.home} yet: 'hitlflow up' makes them on its first start",
             EXIT_BAD_INPUT)
    return files


def _reload(settings: Settings) -> None:
    """Tell the running embedded server (if any) that the users changed."""
    from hitlflow.stack import reload_users

    try:
        info = json.loads(settings.stack_file.read_text())
    except (OSError, ValueError):
        info = {}
    if reload_users(settings.home, info.get("nats_pid")):
        err.print("the running stack's NATS server has the new users now")
    else:
        err.print("no stack is running from here: the users take effect at the next "
                  "'hitlflow up'")


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The principal's name (as audits will show it).")],
    role: Annotated[str, typer.Option(
        "--role", help="responder (answers as itself), system (may act for people), or "
                       "operator (also queries everything, rebuilds, reassigns)")] = "responder",
    group: Groups = None,
    api_key: Annotated[bool, typer.Option(
        "--api-key", help="system users: make a new API key for the HTTP gateway (X-API-Key) "
                          "and print it, this once (the directory keeps only its digest; an "
                          "earlier key stops working)")] = False,
) -> None:
    """Add a user (or change its role and groups) and write its credentials file."""
    settings = load_settings()
    files = _files(settings)
    if api_key and role != "system":
        fail(f"--api-key is for system users (--role system), not {role}s: people use "
             "tokens ('hitlflow token')", EXIT_BAD_INPUT)
    try:
        creds = auth.add_user(files, name, role, group or [])
        key = auth.new_api_key(files, name) if api_key else None
    except (auth.AuthError, InvalidPrincipalError) as error:
        fail(str(error), EXIT_BAD_INPUT)
    out.print(f"{name} ({role}{', groups ' + ', '.join(group) if group else ''}): "
              f"credentials in {creds}")
    out.print(f"use them with: HITLFLOW_NATS_CREDS={creds} hitlflow pending --mine",
              markup=False, highlight=False, soft_wrap=True)
    if key is not None:
        out.print(f"API key (shown this once; send it as the X-API-Key header): {key}",
                  markup=False, highlight=False, soft_wrap=True)
    _reload(settings)


@users_app.command("init")
def users_init() -> None:
    """Make the stack's own users (services, gateway, operator) and the gateway's token key
    under HITLFLOW_HOME/auth, as the first 'hitlflow up' does (for a deployment's files)."""
    settings = load_settings()
    files = auth.auth_files(settings.home)
    made = auth.ensure(files)
    out.print(f"{'made' if made else 'already there'}: the users of {files.folder} "
              f"({', '.join(sorted(auth.load(files)))})", markup=False, highlight=False,
              soft_wrap=True)


@users_app.command("roles")
def users_roles() -> None:
    """Print each role and what it may publish and subscribe to on NATS (a Markdown table,
    the one in docs/security.md)."""
    sys.stdout.write(auth.permissions_markdown())


@users_app.command("nats-config")
def users_nats_config(
    users: Annotated[Path | None, typer.Option(
        "--users", help="A users.json (default: HITLFLOW_HOME/auth/users.json).")] = None,
) -> None:
    """Print the NATS servers' 'authorization' block for these users: each user, its password
    and what its role may publish and subscribe to (include it in each server's config)."""
    path = users or _files(load_settings()).users
    try:
        sys.stdout.write(auth.authorization_block(auth.load_users_file(path)))
    except auth.AuthError as error:
        fail(str(error), EXIT_BAD_INPUT)


@users_app.command("directory")
def users_directory(
    users: Annotated[Path | None, typer.Option(
        "--users", help="A users.json (default: HITLFLOW_HOME/auth/users.json).")] = None,
) -> None:
    """Print the directory the services and the gateway read (HITLFLOW_IDENTITY_FILE): each
    user's role, groups and API key digest, without the NATS passwords."""
    path = users or _files(load_settings()).users
    try:
        sys.stdout.write(auth.public_directory(auth.load_users_file(path)))
    except auth.AuthError as error:
        fail(str(error), EXIT_BAD_INPUT)


@users_app.command("remove")
def users_remove(name: str) -> None:
    """Remove a user: it can no longer connect."""
    settings = load_settings()
    try:
        auth.remove_user(_files(settings), name)
    except auth.AuthError as error:
        fail(str(error), EXIT_BAD_INPUT)
    out.print(f"removed {name}")
    _reload(settings)


@users_app.command("list")
def users_list(as_json: JsonOut = False) -> None:
    """Every user, with its role, groups and credentials file."""
    settings = load_settings()
    files = _files(settings)
    rows = [{"name": name, "role": entry["role"], "groups": entry.get("groups", []),
             "creds": str(files.creds(name)), "api_key": bool(entry.get("api_key_sha256"))}
            for name, entry in sorted(auth.load(files).items())]
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "role", "groups", "credentials", "API key")
    for row in rows:
        table.add_row(row["name"], row["role"], ", ".join(row["groups"]), row["creds"],
                      "yes" if row["api_key"] else "")
    out.print(table)


def token(
    name: Annotated[str, typer.Argument(help="Whose token (the principal it names).")],
    group: Groups = None,
    ttl: Annotated[float, typer.Option("--ttl", help="Hours it stays valid.")] = 8.0,
) -> None:
    """A bearer token for the HTTP gateway, signed with this stack's own key (an identity
    provider's tokens work as well when the gateway is configured with its JWKS)."""
    import jwt

    settings = load_settings()
    try:
        check_principal(name)
        for one in group or []:
            check_principal(one)
        secret = settings.jwt_secret()
    except (InvalidPrincipalError, SettingsError) as error:
        fail(str(error), EXIT_BAD_INPUT)
    if secret is None:
        fail(f"no key to sign tokens with: no users in {settings.home} yet ('hitlflow up' or "
             "'hitlflow users init' makes one), and neither HITLFLOW_AUTH_JWT_SECRET nor "
             "HITLFLOW_AUTH_JWT_SECRET_FILE is set", EXIT_BAD_INPUT)
    if ttl <= 0:
        fail(f"--ttl {ttl:g}: expected a number of hours above 0", EXIT_BAD_INPUT)
    now = int(time.time())
    claims: dict[str, Any] = {"sub": name, settings.auth_principal_claim: name, "iat": now,
                              "exp": now + int(ttl * 3600), "iss": settings.auth_issuer,
                              "aud": settings.auth_audience,
                              settings.auth_groups_claim: group or []}
    out.print(jwt.encode(claims, secret, algorithm="HS256"),
              markup=False, highlight=False, soft_wrap=True)


def _thread(thread_id: str) -> str:
    try:
        return check_thread_id(thread_id)
    except InvalidThreadIdError as error:
        fail(str(error), EXIT_BAD_INPUT)


def _task(nats_url: str | None, thread_id: str, op: str, request_id: str | None,
          to: list[str] | None, groups: list[str] | None, for_person: str | None,
          as_json: bool) -> None:
    _thread(thread_id)
    settings = load_settings(nats_url=nats_url)

    async def go() -> Outcome:
        async with client_for(settings) as client:
            return await client.task(thread_id, op, request_id=request_id, to=to,
                                     candidate_groups=groups, on_behalf_of=for_person)

    try:
        outcome = asyncio.run(go())
    except (StackUnavailableError, NoOutcomeError) as error:
        fail(str(error), EXIT_NO_STACK)
    if as_json:
        out.print_json(json.dumps(outcome.as_dict(), default=str))
    elif outcome.ok:
        out.print(f"[green]{op}[/]: request {outcome.reply.interaction_id} of {thread_id}")
    if not outcome.ok:
        fail(f"{outcome.reply.code}: {outcome.reply.error}", EXIT_REFUSED)


RequestId = Annotated[str | None, typer.Option("--request-id",
                                               help="Which request, when several wait.")]


def claim(thread_id: str, request_id: RequestId = None, for_person: ForPerson = None,
          nats_url: NatsUrl = None, as_json: JsonOut = False) -> None:
    """Claim a request: only you may answer it until you release it."""
    _task(nats_url, thread_id, "claim", request_id, None, None, for_person, as_json)


def release(thread_id: str, request_id: RequestId = None, for_person: ForPerson = None,
            nats_url: NatsUrl = None, as_json: JsonOut = False) -> None:
    """Give up a claim (operators may release anyone's)."""
    _task(nats_url, thread_id, "release", request_id, None, None, for_person, as_json)


def delegate(
    thread_id: str,
    to: Annotated[str, typer.Option("--to", help="Who takes it over (becomes its claimant).")],
    request_id: RequestId = None, for_person: ForPerson = None, nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Hand a request you may answer to someone else."""
    _task(nats_url, thread_id, "delegate", request_id, [to], None, for_person, as_json)


def reassign(
    thread_id: str,
    to: Annotated[list[str] | None, typer.Option("--to", help="New assignee (repeatable).")]
    = None,
    group: Groups = None, request_id: RequestId = None, nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Change who a request is for (operators)."""
    _task(nats_url, thread_id, "reassign", request_id, to, group, None, as_json)


def mine(settings: Settings, limit: int, as_json: bool) -> None:
    """``hitlflow pending --mine``: the requests you may answer now."""

    async def go() -> Any:
        async with client_for(settings) as client:
            return await client.mine(limit)

    try:
        items = [p.model_dump(mode="json") for p in asyncio.run(go())]
    except StackUnavailableError as error:
        fail(str(error), EXIT_NO_STACK)
    if as_json:
        out.print_json(json.dumps(items))
        return
    if not items:
        out.print("nothing is waiting for you")
    for item in items:
        out.print(display.request_panel(item))


def register(app: typer.Typer) -> None:
    app.add_typer(users_app, name="users")
    app.command("token")(token)
    for command in (claim, release, delegate, reassign):
        app.command()(command)
