"""Users, roles and NATS permissions of a stack (``HITLFLOW_HOME/auth``).

``hitlflow up`` makes them on its first start: a user per service, the gateway, and
``operator`` (whoever runs the stack; the CLI's identity by default), each with a random
password in a credentials file only its owner can read. ``hitlflow users add NAME --role
responder --group finance`` adds people and systems. From the same directory come the NATS
server's ``authorization`` block (each user may publish only what its role needs, and commands
only under its own name) and what the services trust (:class:`services.common.identity.Directory`).

Files (all mode 0600 in a 0700 folder):

- ``users.json``: ``{"users": {name: {"role", "groups", "password"[, "api_key_sha256"]}}}``;
- ``<name>.creds``: ``{"user", "password"}``, what a process connects with
  (``HITLFLOW_NATS_CREDS``);
- ``jwt.secret``: the key the HTTP gateway checks its HS256 tokens with, when no identity
  provider is configured (``hitlflow token`` signs with it).

A deployment (compose, k8s) takes from them the NATS servers' ``authorization`` block
(``hitlflow users nats-config``), each service's credentials file and the directory the
services and the gateway read, without the passwords (``hitlflow users directory``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from contracts.subjects import check_principal, principal_token
from services.common.identity import ROLES, api_key_digest
from services.common.messaging import inbox_prefix

#: The services' own users: their names are their roles' permission sets.
SERVICE_USERS = ("workflow", "interaction", "timeout", "projections")
GATEWAY_USER = "gateway"
OPERATOR_USER = "operator"
#: Verbs of the commands a role may send under its own name.
COMMAND_VERBS = {"operator": ("start", "resume", "cancel", "task"),
                 "system": ("start", "resume", "cancel", "task"),
                 "responder": ("resume", "cancel", "task"),
                 "gateway": ("start", "resume", "cancel", "task")}
#: Queries about threads and requests anyone with a role other than service may ask.
QUERIES = ("hitl.q.thread.*", "hitl.q.timeline.*", "hitl.q.pending", "hitl.q.pending.*",
           "hitl.q.threads", "hitl.q.audit", "hitl.q.analytics")
#: What each service publishes and subscribes to beyond its inbox (JetStream's API included:
#: its consumers, acknowledgements and, for the relay, the stored events).
SERVICE_PERMISSIONS: dict[str, dict[str, list[str]]] = {
    # (hitl.admin.erase.<service>: 'hitlflow erase' destroys a thread's data key there)
    "workflow": {"publish": ["hitl.evt.workflow.>"], "subscribe": ["hitl.admin.erase.workflow"]},
    "interaction": {"publish": ["hitl.evt.interaction.>", "hitl.notify.>"],
                    "subscribe": ["hitl.admin.erase.interaction"]},
    "timeout": {"publish": ["hitl.evt.timeout.>", "hitl.cmd.timeout.>", "hitl.sched.>"],
                "subscribe": ["hitl.ctl.timeouts.>", "hitl.admin.erase.timeout"]},
    "projections": {"publish": [], "subscribe": ["hitl.q.>", "hitl.admin.>"]},
}


class AuthError(ValueError):
    """A user that cannot be added, or auth files that cannot be read."""


@dataclass(frozen=True)
class AuthFiles:
    folder: Path

    @property
    def users(self) -> Path:
        return self.folder / "users.json"

    @property
    def jwt_secret(self) -> Path:
        return self.folder / "jwt.secret"

    def creds(self, name: str) -> Path:
        return self.folder / f"{principal_token(name)}.creds"

    def exists(self) -> bool:
        return self.users.exists()


def auth_files(home: Path) -> AuthFiles:
    return AuthFiles(home / "auth")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner can read (created so, never readable by others first)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    partial.replace(path)


def load(files: AuthFiles) -> dict[str, dict[str, Any]]:
    return load_users_file(files.users)


def load_users_file(path: Path) -> dict[str, dict[str, Any]]:
    """The users of a ``users.json``; :class:`AuthError` names what is wrong with it."""
    try:
        data: Any = json.loads(path.read_text())["users"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise AuthError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict) or not all(
            isinstance(entry, dict) and entry.get("role") in ROLES for entry in data.values()):
        raise AuthError(f"{path}: expected {{\"users\": {{NAME: {{\"role\": one of "
                        f"{', '.join(ROLES)}, ...}}}}}}")
    return data


def _save(files: AuthFiles, users: dict[str, dict[str, Any]]) -> None:
    write_private(files.users, json.dumps({"users": users}, indent=2, sort_keys=True))


def ensure(files: AuthFiles) -> bool:
    """Make the stack's users (services, gateway, operator) and the gateway's token key, once.
    Returns True when they were made now."""
    if files.exists():
        return False
    users: dict[str, dict[str, Any]] = {}
    for name in SERVICE_USERS:
        users[name] = {"role": "service", "groups": []}
    users[GATEWAY_USER] = {"role": "gateway", "groups": []}
    users[OPERATOR_USER] = {"role": "operator", "groups": []}
    for entry in users.values():
        entry["password"] = secrets.token_urlsafe(24)
    _save(files, users)
    for name, entry in users.items():
        _write_creds(files, name, entry["password"])
    write_private(files.jwt_secret, secrets.token_urlsafe(32))
    return True


def _write_creds(files: AuthFiles, name: str, password: str) -> None:
    write_private(files.creds(name), json.dumps({"user": name, "password": password}))


def add_user(files: AuthFiles, name: str, role: str, groups: list[str]) -> Path:
    """Add (or update the role and groups of) a user; returns its credentials file."""
    check_principal(name)
    if role not in ROLES or role == "service":
        raise AuthError(f"role {role!r}: expected one of "
                        f"{', '.join(r for r in ROLES if r != 'service')}")
    for group in groups:
        check_principal(group)
    users = load(files)
    if users.get(name, {}).get("role") in ("service", "gateway") and name != OPERATOR_USER:
        raise AuthError(f"{name!r} is one of the stack's own users")
    entry = users.get(name) or {"password": secrets.token_urlsafe(24)}
    entry.update(role=role, groups=sorted(set(groups)))
    if role != "system":
        entry.pop("api_key_sha256", None)  # API keys are for systems only
    users[name] = entry
    _save(files, users)
    _write_creds(files, name, entry["password"])
    return files.creds(name)


def new_api_key(files: AuthFiles, name: str) -> str:
    """Give system user ``name`` a new API key for the HTTP gateway (``X-API-Key``) and return
    it: the directory keeps only its digest, so this is the one time it is seen. An earlier key
    of the user stops working."""
    users = load(files)
    entry = users.get(name)
    if entry is None:
        raise AuthError(f"no user {name!r}")
    if entry["role"] != "system":
        raise AuthError(f"{name!r} is a {entry['role']}: API keys are for system users "
                        "(--role system); people use tokens ('hitlflow token')")
    key = f"hfk_{secrets.token_urlsafe(32)}"
    entry["api_key_sha256"] = api_key_digest(key)
    _save(files, users)
    return key


def public_directory(users: dict[str, dict[str, Any]]) -> str:
    """The directory the services and the gateway read (``HITLFLOW_IDENTITY_FILE``): each
    user's role, groups and API key digest, without the NATS passwords."""
    kept = {name: {k: v for k, v in entry.items() if k != "password"}
            for name, entry in users.items()}
    return json.dumps({"users": kept}, indent=2, sort_keys=True) + "\n"


def remove_user(files: AuthFiles, name: str) -> None:
    users = load(files)
    if name not in users:
        raise AuthError(f"no user {name!r}")
    if users[name]["role"] in ("service", "gateway") or name == OPERATOR_USER:
        raise AuthError(f"{name!r} is one of the stack's own users")
    del users[name]
    _save(files, users)
    with contextlib.suppress(FileNotFoundError):
        files.creds(name).unlink()


def permissions(name: str, role: str) -> dict[str, list[str]]:
    """What ``name`` (of ``role``) may publish and subscribe to."""
    token = principal_token(name)
    own_inbox = f"{inbox_prefix(name)}.>"
    if role == "service":
        own = SERVICE_PERMISSIONS[name]
        return {"publish": [*own["publish"], "hitl.dlq.>", "$JS.API.>", "$JS.ACK.>",
                            "_INBOX.>"],
                "subscribe": [*own["subscribe"], own_inbox]}
    publish = [f"hitl.cmd.{verb}.{token}.>" for verb in COMMAND_VERBS[role]]
    publish += [*QUERIES, f"hitl.q.mine.{token}"]
    if role == "gateway":
        publish.append("hitl.q.mine.*")
    if role == "operator":
        publish += ["hitl.admin.>", "hitl.ctl.>", "$JS.API.>"]
    return {"publish": publish, "subscribe": [own_inbox, "hitl.evt.>", "hitl.notify.>"]}


def nats_authorization(files: AuthFiles) -> str:
    """The ``authorization`` block of the NATS server's configuration."""
    return authorization_block(load(files))


def authorization_block(users: dict[str, dict[str, Any]]) -> str:
    """The ``authorization`` block for these users (each with its role's permissions)."""
    lines = ["authorization {", "  users = ["]
    for name, entry in sorted(users.items()):
        if not isinstance(entry.get("password"), str):
            raise AuthError(f"user {name!r} has no password: expected the stack's own "
                            "users.json (HITLFLOW_HOME/auth/users.json), not a directory")
        allowed = permissions(name, entry["role"])
        lines.append("    {")
        lines.append(f"      user: {json.dumps(name)}")
        lines.append(f"      password: {json.dumps(entry['password'])}")
        lines.append("      permissions: {")
        lines.append(f"        publish: {{ allow: {json.dumps(allowed['publish'])} }}")
        lines.append(f"        subscribe: {{ allow: {json.dumps(allowed['subscribe'])} }}")
        lines.append("      }")
        lines.append("    }")
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


#: What each role is for, as docs/security.md and ``hitlflow users roles`` say it.
ROLE_PURPOSES = {
    "responder": "a person: answers, claims, delegates, cancels, as themselves",
    "system": "another system: starts threads, answers, acts for a person (on_behalf_of)",
    "operator": "runs the stack: everything a system does as itself, plus the JetStream API, "
                "rebuilds, timeout control; reassigns requests",
    "gateway": "the HTTP gateway: publishes under its own name and asserts whom it "
               "authenticated (principal, groups, on_behalf_of)",
}


def permissions_markdown() -> str:
    """The roles and what each may publish and subscribe to, as a Markdown table (the one in
    docs/security.md): ``<name>`` stands for the user's own name."""

    def cell(subjects: list[str]) -> str:
        return "<br>".join(f"`{s.replace('NAME', '<name>')}`" for s in subjects) or "—"

    rows = ["| user | role | may publish | may subscribe |", "|---|---|---|---|"]
    for name in SERVICE_USERS:
        allowed = permissions(name, "service")
        rows.append(f"| `{name}` | service | {cell(allowed['publish'])} | "
                    f"{cell(allowed['subscribe'])} |")
    for role, purpose in ROLE_PURPOSES.items():
        name = GATEWAY_USER if role == "gateway" else "<name>"
        allowed = permissions(GATEWAY_USER if role == "gateway" else "NAME", role)
        rows.append(f"| `{name}` | {role}: {purpose} | {cell(allowed['publish'])} | "
                    f"{cell(allowed['subscribe'])} |")
    return "\n".join(rows) + "\n"
