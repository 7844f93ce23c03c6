"""Who sent a command: the principal its subject names, and what it may assert.

NATS does not tell a consumer who published a message, so identity travels where the server
enforces it: every command subject names its principal (``hitl.cmd.<verb>.<principal>.<thread>``)
and each NATS user may publish only under its own name (the generated server configuration,
:mod:`hitlflow.auth`). The directory (``users.json``) says each principal's role and groups:

- ``responder``, ``operator``: act as themselves; their groups come from the directory;
- ``system``: acts as itself, and may act for a person (``on_behalf_of``, with that person's
  ``groups``);
- ``gateway``: the HTTP gateway, which verified a token or API key and asserts whose it was
  (``principal``, ``groups``, ``on_behalf_of``);
- ``service``: the services themselves.

With authorization off (a NATS server of one's own without users), nobody is verified: the
principal is what the subject names and assertions are taken as sent.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from contracts.subjects import InvalidPrincipalError, check_principal

Role = Literal["service", "gateway", "system", "responder", "operator"]
ROLES: tuple[str, ...] = ("service", "gateway", "system", "responder", "operator")
#: Roles that may act for someone else.
DELEGATING = frozenset({"gateway", "system"})

class IdentityError(ValueError):
    """A principal that is not known, or an assertion it may not make."""

    code = "forbidden"


def check_name(name: str) -> str:
    try:
        return check_principal(name)
    except InvalidPrincipalError as error:
        raise IdentityError(str(error)) from error


@dataclass(frozen=True)
class Identity:
    """Who a command acts as: the authenticated ``principal``, the person it acts for (when a
    system or the gateway acts for someone), and the groups that person is in."""

    principal: str
    on_behalf_of: str | None = None
    groups: tuple[str, ...] = ()
    role: str | None = None
    #: False when authorization is off: the names are as sent, not verified.
    verified: bool = True

    @property
    def person(self) -> str:
        """Whose answer it is: the person acted for, else the principal."""
        return self.on_behalf_of or self.principal

    @property
    def operator(self) -> bool:
        return self.role == "operator" or not self.verified


@dataclass
class User:
    name: str
    role: str
    groups: list[str] = field(default_factory=list)
    #: SHA-256 (hex) of the system's API key for the HTTP gateway; the key itself is kept
    #: nowhere (``hitlflow users add NAME --role system --api-key`` prints it once).
    api_key_sha256: str | None = None


def api_key_digest(key: str) -> str:
    """What the directory keeps of an API key: its SHA-256, in hex. (Keys are 256 random bits:
    a fast digest is enough, there is nothing to guess from.)"""
    return hashlib.sha256(key.encode()).hexdigest()


class Directory:
    """The principals a stack knows (``users.json``), read again when the file changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: float | None = None
        self._users: dict[str, User] = {}

    @property
    def enabled(self) -> bool:
        """Authorization is on: the NATS server authenticates every connection."""
        return self.path is not None

    def user(self, name: str) -> User | None:
        return self._load().get(name)

    def by_api_key(self, key: str) -> User | None:
        """The user whose API key this is (digests compared in constant time), else None."""
        digest = api_key_digest(key)
        found = None
        for user in self._load().values():
            if user.api_key_sha256 and hmac.compare_digest(user.api_key_sha256, digest):
                found = user
        return found

    def _load(self) -> dict[str, User]:
        if self.path is None:
            return {}
        try:
            stamp = self.path.stat().st_mtime
        except OSError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._users = read_users(self.path) if stamp is not None else {}
                self._stamp = stamp
            return self._users

    def resolve(self, principal: str, *, asserted: str | None = None,
                on_behalf_of: str | None = None,
                groups: list[str] | tuple[str, ...] | None = None) -> Identity:
        """The identity of a command published under ``principal`` with these assertions;
        raises :class:`IdentityError` for an assertion the principal may not make."""
        if not self.enabled:
            return Identity(principal=asserted or principal, on_behalf_of=on_behalf_of,
                            groups=tuple(groups or ()), role=None, verified=False)
        user = self.user(principal)
        if user is None:
            raise IdentityError(f"principal {principal!r} is not in this stack's directory")
        if user.role == "gateway":
            if not asserted:
                raise IdentityError("a command from the gateway must name the principal it "
                                    "authenticated ('principal')")
            check_name(asserted)
            known = self.user(asserted)
            return Identity(principal=asserted, on_behalf_of=on_behalf_of,
                            groups=tuple(groups if groups is not None else
                                         (known.groups if known else ())),
                            role=known.role if known else "responder")
        if asserted not in (None, principal):
            raise IdentityError(f"{principal!r} may not name another principal ({asserted!r}); "
                                "only the gateway asserts whom it authenticated")
        if user.role in DELEGATING and on_behalf_of:
            check_name(on_behalf_of)
            return Identity(principal=principal, on_behalf_of=on_behalf_of,
                            groups=tuple(groups or ()), role=user.role)
        if on_behalf_of not in (None, principal) or groups is not None:
            raise IdentityError(f"{principal!r} ({user.role}) may not act for someone else or "
                                "name groups; a system user or the gateway may")
        return Identity(principal=principal, groups=tuple(user.groups), role=user.role)


def read_users(path: Path) -> dict[str, User]:
    """``{"users": {name: {"role": ..., "groups": [...], ...}}}``: each user's role and groups."""
    try:
        raw: Any = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise IdentityError(f"cannot read the directory {path}: {error}") from error
    users: dict[str, User] = {}
    entries = raw.get("users") if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise IdentityError(f"{path}: expected {{\"users\": {{NAME: {{\"role\": ...}}}}}}")
    for name, entry in entries.items():
        role = entry.get("role") if isinstance(entry, dict) else None
        if role not in ROLES:
            raise IdentityError(f"{path}: user {name!r} has role {role!r}; expected one of "
                                f"{', '.join(ROLES)}")
        groups = entry.get("groups") or []
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise IdentityError(f"{path}: user {name!r}: groups must be a list of strings")
        digest = entry.get("api_key_sha256")
        if digest is not None and not isinstance(digest, str):
            raise IdentityError(f"{path}: user {name!r}: api_key_sha256 must be a string")
        users[name] = User(name=name, role=role, groups=list(groups), api_key_sha256=digest)
    return users
