"""Who an HTTP request is from, decided before anything reaches the stack.

- **Bearer tokens** (``Authorization: Bearer <JWT>``) for people: signed with HS256 by this
  stack's own key (``hitlflow token``; ``HITLFLOW_AUTH_JWT_SECRET[_FILE]`` or
  ``HOME/auth/jwt.secret``), or by an identity provider whose public keys are at
  ``HITLFLOW_AUTH_JWKS_URL`` (RS/PS/ES/EdDSA). The signature, ``exp``, ``iss`` and ``aud`` are
  checked; the principal is the ``auth_principal_claim`` (``sub``), the groups the
  ``auth_groups_claim`` (``groups``; missing: no groups).
- **API keys** (``X-API-Key``) for systems: ``hitlflow users add NAME --role system --api-key``
  prints one; the directory keeps its digest. A system may act for a person
  (``X-On-Behalf-Of``, with ``X-On-Behalf-Groups``), as it may on NATS.
- **No authorization** (no directory: the stack's NATS has no users): requests without
  credentials are from ``HITLFLOW_GATEWAY_USER``.

The gateway then publishes as its own NATS user (role ``gateway``) and asserts whom it
authenticated; the services record that principal (:mod:`services.common.identity`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import jwt
from jwt import PyJWKClient
from jwt.exceptions import PyJWKClientConnectionError, PyJWKClientError, PyJWKError

from contracts.limits import MAX_GROUPS
from contracts.subjects import InvalidPrincipalError, check_principal
from hitlflow.auth import COMMAND_VERBS, GATEWAY_USER, auth_files
from hitlflow.settings import Settings, SettingsError
from services.common.identity import Directory, IdentityError

#: Signature algorithms taken with an identity provider's keys (never HS*: a public key must
#: not double as an HMAC secret).
PROVIDER_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                       "ES512", "EdDSA")
#: Claims every token must carry.
REQUIRED_CLAIMS = ("exp", "iss", "aud")
#: Roles that authenticate otherwise than with a token: the services and the gateway (NATS
#: credentials), systems (API keys).
NOT_BY_TOKEN = frozenset({"service", "gateway", "system"})
REALM = "hitlflow"


class NotAuthenticatedError(Exception):
    """A request without valid credentials: none, malformed, forged, expired, unsigned, for
    another issuer or audience (HTTP 401)."""

    def __init__(self, message: str, *, error: str | None = "invalid_token") -> None:
        super().__init__(message)
        #: RFC 6750's error code for ``WWW-Authenticate`` (None: no credentials were sent).
        self.error = error

    @property
    def challenge(self) -> str:
        """The ``WWW-Authenticate`` header value."""
        if self.error is None:
            return f'Bearer realm="{REALM}"'
        described = "".join(ch for ch in str(self) if ch not in '"\\' and " " <= ch <= "~")
        return f'Bearer realm="{REALM}", error="{self.error}", error_description="{described}"'


class RequestForbiddenError(Exception):
    """Valid credentials asking for what they may not do (HTTP 403, code ``forbidden``)."""


class AuthUnavailableError(Exception):
    """What credentials are checked against cannot be read: the identity provider's keys, or
    the directory (HTTP 503)."""


class InvalidHeaderError(Exception):
    """An identity header that names nobody (HTTP 400)."""


@dataclass(frozen=True)
class Caller:
    """Whom a request is from, as the gateway asserts it to the services."""

    principal: str
    #: The person's groups (from the token's claim, or ``X-On-Behalf-Groups``); None: the
    #: directory's for the principal.
    groups: list[str] | None
    on_behalf_of: str | None
    #: The principal's role (``responder``, ``operator``, ``system``); None with authorization
    #: off, when nobody is verified.
    role: str | None
    how: Literal["token", "api_key", "configured"]

    @property
    def person(self) -> str:
        """Whose requests are listed as "mine": the person acted for, else the principal."""
        return self.on_behalf_of or self.principal

    def check_may(self, verb: str) -> None:
        """Refuse a command the principal's role may not send (the same rule as on NATS)."""
        if self.role is not None and verb not in COMMAND_VERBS.get(self.role, ()):
            raise RequestForbiddenError(
                f"{self.principal!r} ({self.role}) may not {verb} threads: "
                f"{self.role}s may {', '.join(COMMAND_VERBS.get(self.role, ()))}")

    def assertion(self) -> dict[str, Any]:
        """What the gateway asserts in a command: ``principal``, ``on_behalf_of``, ``groups``."""
        return {"principal": self.principal, "on_behalf_of": self.on_behalf_of,
                "groups": self.groups}


def gateway_settings(settings: Settings) -> Settings:
    """The settings the gateway runs with: as given, and, when this home has the embedded
    stack's users, its directory (authorization on) and, unless other credentials are given,
    the stack's ``gateway`` user."""
    files = auth_files(settings.home)
    if not settings.auth or settings.identity_file is not None or not files.exists():
        return settings
    update: dict[str, Any] = {"identity_file": files.users}
    if settings.nats_creds is None and settings.nats_user is None:
        update["nats_creds"] = files.creds(GATEWAY_USER)
    return settings.model_copy(update=update)


class Authenticator:
    """Checks a request's credentials against the settings and the directory."""

    def __init__(self, settings: Settings, directory: Directory) -> None:
        self.settings = settings
        self.directory = directory
        self.jwks = (PyJWKClient(settings.auth_jwks_url, cache_keys=False, lifespan=300,
                                 timeout=10) if settings.auth_jwks_url else None)
        self.secret = None if self.jwks is not None else settings.jwt_secret()
        if settings.gateway_user is not None:
            try:
                check_principal(settings.gateway_user)
            except InvalidPrincipalError as error:
                raise SettingsError(f"HITLFLOW_GATEWAY_USER: {error}") from None
        if directory.enabled:
            self._check_own_user()

    def _check_own_user(self) -> None:
        """With authorization on, refuse to start unless the gateway can check tokens and is on
        NATS as a gateway user (only that role may assert whom it authenticated)."""
        if self.settings.gateway_user is not None:
            raise SettingsError(
                "HITLFLOW_GATEWAY_USER is for a stack without authorization; this one has "
                f"users ({self.directory.path}): every request carries a token ('hitlflow "
                "token NAME') or a system's API key")
        if self.jwks is None and self.secret is None:
            raise SettingsError(
                "the gateway has no key to check tokens with: set HITLFLOW_AUTH_JWKS_URL (an "
                "identity provider's keys), HITLFLOW_AUTH_JWT_SECRET or "
                "HITLFLOW_AUTH_JWT_SECRET_FILE")
        user = self.settings.nats_auth().get("user")
        try:
            known = self.directory.user(user) if user else None
        except IdentityError as error:
            raise SettingsError(str(error)) from None
        if known is None or known.role != "gateway":
            raise SettingsError(
                f"the gateway connects to NATS as {user!r}, which is not a gateway user of "
                f"{self.directory.path}: give it the gateway's credentials "
                "(HITLFLOW_NATS_CREDS=.../gateway.creds)")

    @property
    def mode(self) -> str:
        if self.jwks is not None:
            return "identity provider (JWKS)"
        return "HS256" if self.secret is not None else "none"

    async def caller(self, *, authorization: str | None, api_key: str | None,
                     on_behalf_of: str | None, on_behalf_groups: str | None) -> Caller:
        """Whom a request with these headers is from; raises :class:`NotAuthenticatedError`,
        :class:`RequestForbiddenError`, :class:`InvalidHeaderError` or
        :class:`AuthUnavailableError`."""
        if authorization is not None and api_key is not None:
            raise NotAuthenticatedError("send a bearer token or an API key, not both",
                                        error="invalid_request")
        if api_key is not None:
            return self._by_api_key(api_key, on_behalf_of, on_behalf_groups)
        if authorization is not None:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise NotAuthenticatedError("expected an 'Authorization: Bearer <token>' header",
                                            error="invalid_request")
            caller = await self._by_token(token.strip())
        elif not self.directory.enabled and self.settings.gateway_user is not None:
            caller = Caller(principal=self.settings.gateway_user, groups=None,
                            on_behalf_of=None, role=None, how="configured")
        else:
            raise NotAuthenticatedError(
                "no credentials: send 'Authorization: Bearer <token>' (a person: 'hitlflow "
                "token NAME' or your identity provider's) or 'X-API-Key: <key>' (a system)",
                error=None)
        if on_behalf_of is not None or on_behalf_groups is not None:
            if caller.role is not None:
                raise RequestForbiddenError(
                    f"{caller.principal!r} may not act for someone else (X-On-Behalf-Of): "
                    "only a system, with its API key, may")
            return Caller(principal=caller.principal, on_behalf_of=_name(
                on_behalf_of, "X-On-Behalf-Of"), groups=_groups_header(on_behalf_groups),
                role=None, how=caller.how)
        return caller

    def _by_api_key(self, key: str, on_behalf_of: str | None,
                    on_behalf_groups: str | None) -> Caller:
        try:
            user = self.directory.by_api_key(key.strip()) if key.strip() else None
        except IdentityError as error:
            raise AuthUnavailableError(str(error)) from None
        if user is None or user.role != "system":
            raise NotAuthenticatedError("unknown API key (X-API-Key)")
        if on_behalf_of is None:
            if on_behalf_groups is not None:
                raise InvalidHeaderError("X-On-Behalf-Groups names the groups of the person in "
                                         "X-On-Behalf-Of, which is missing")
            return Caller(principal=user.name, groups=None, on_behalf_of=None, role=user.role,
                          how="api_key")
        # as on NATS: the person acted for is in the groups the system says, else in none
        return Caller(principal=user.name, on_behalf_of=_name(on_behalf_of, "X-On-Behalf-Of"),
                      groups=_groups_header(on_behalf_groups) or [], role=user.role,
                      how="api_key")

    async def _by_token(self, token: str) -> Caller:
        if self.jwks is not None:
            claims = await asyncio.to_thread(self._verify, token)
        else:
            claims = self._verify(token)
        principal_claim = self.settings.auth_principal_claim
        principal = claims.get(principal_claim)
        if not isinstance(principal, str):
            raise NotAuthenticatedError(f"the token has no {principal_claim!r} claim naming "
                                        "its principal (a string)")
        try:
            check_principal(principal)
        except InvalidPrincipalError as error:
            raise NotAuthenticatedError(f"the token's {principal_claim!r} claim: {error}") \
                from None
        groups = _groups_claim(claims, self.settings.auth_groups_claim)
        try:
            known = self.directory.user(principal) if self.directory.enabled else None
        except IdentityError as error:
            raise AuthUnavailableError(str(error)) from None
        if known is not None and known.role in NOT_BY_TOKEN:
            raise RequestForbiddenError(
                f"{principal!r} is a {known.role} of this stack, which does not sign in with a "
                "token" + (": a system sends its API key (X-API-Key)"
                           if known.role == "system" else ""))
        role = None if not self.directory.enabled else (known.role if known else "responder")
        return Caller(principal=principal, groups=groups, on_behalf_of=None, role=role,
                      how="token")

    def _verify(self, token: str) -> dict[str, Any]:
        """The token's claims once its signature, ``exp``, ``iss`` and ``aud`` are checked."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise NotAuthenticatedError(
                "the bearer token is not a JWT (expected header.payload.signature)") from None
        alg = header.get("alg")
        key: Any
        if self.jwks is not None:
            if alg not in PROVIDER_ALGORITHMS:
                raise NotAuthenticatedError(
                    f"the token is signed with {alg!r}: this gateway takes tokens signed by "
                    f"its identity provider ({', '.join(PROVIDER_ALGORITHMS)})")
            try:
                key = self.jwks.get_signing_key_from_jwt(token)
            except PyJWKClientConnectionError as error:
                raise AuthUnavailableError(
                    f"cannot fetch the identity provider's keys from "
                    f"{self.settings.auth_jwks_url}: {error}") from None
            except (PyJWKClientError, PyJWKError, jwt.InvalidTokenError):
                raise NotAuthenticatedError(
                    f"the token's key ({header.get('kid')!r}) is not one of the identity "
                    "provider's keys") from None
            algorithms = [alg]
        else:
            if self.secret is None:
                raise NotAuthenticatedError(
                    "this gateway has no key to check tokens with (no authorization on this "
                    "stack, and no HITLFLOW_AUTH_JWT_SECRET or HITLFLOW_AUTH_JWKS_URL)")
            if alg != "HS256":
                raise NotAuthenticatedError(
                    f"the token is signed with {alg!r}: expected HS256 with this stack's key "
                    "('hitlflow token'), or configure an identity provider (JWKS)")
            key, algorithms = self.secret, ["HS256"]
        settings = self.settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=algorithms, audience=settings.auth_audience,
                issuer=settings.auth_issuer, leeway=settings.auth_leeway,
                options={"require": list(REQUIRED_CLAIMS)})
        except jwt.ExpiredSignatureError:
            raise NotAuthenticatedError("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise NotAuthenticatedError("the token is not valid yet (its nbf or iat is in the "
                                        "future)") from None
        except jwt.MissingRequiredClaimError as error:
            raise NotAuthenticatedError(f"the token has no {error.claim!r} claim (required: "
                                        f"{', '.join(REQUIRED_CLAIMS)})") from None
        except jwt.InvalidAudienceError:
            raise NotAuthenticatedError(f"the token is for another audience: expected "
                                        f"{settings.auth_audience!r}") from None
        except jwt.InvalidIssuerError:
            raise NotAuthenticatedError(f"the token is from another issuer: expected "
                                        f"{settings.auth_issuer!r}") from None
        except jwt.InvalidSignatureError:
            raise NotAuthenticatedError("the token's signature does not verify (forged, or "
                                        "signed with another key)") from None
        except jwt.InvalidTokenError as error:
            raise NotAuthenticatedError(f"invalid token: {error}") from None
        return claims


def _groups_claim(claims: dict[str, Any], claim: str) -> list[str]:
    """The groups a token names: a list of names; a missing claim is no groups."""
    value = claims.get(claim)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
        raise NotAuthenticatedError(f"the token's {claim!r} claim is not a list of strings "
                                    f"(got {type(value).__name__})")
    if len(value) > MAX_GROUPS:
        raise NotAuthenticatedError(f"the token's {claim!r} claim names {len(value)} groups; "
                                    f"at most {MAX_GROUPS} are taken")
    try:
        return sorted({check_principal(g) for g in value})
    except InvalidPrincipalError as error:
        raise NotAuthenticatedError(f"the token's {claim!r} claim: {error}") from None


def _name(value: str | None, header: str) -> str | None:
    if value is None:
        return None
    try:
        return check_principal(value.strip())
    except InvalidPrincipalError as error:
        raise InvalidHeaderError(f"{header}: {error}") from None


def _groups_header(value: str | None) -> list[str] | None:
    """``X-On-Behalf-Groups: finance, audit``: the person's groups."""
    if value is None:
        return None
    names = [g.strip() for g in value.split(",") if g.strip()]
    if len(names) > MAX_GROUPS:
        raise InvalidHeaderError(f"X-On-Behalf-Groups names {len(names)} groups; at most "
                                 f"{MAX_GROUPS}")
    try:
        return sorted({check_principal(g) for g in names})
    except InvalidPrincipalError as error:
        raise InvalidHeaderError(f"X-On-Behalf-Groups: {error}") from None
