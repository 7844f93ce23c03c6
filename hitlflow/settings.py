"""Settings, from the environment (prefix ``HITLFLOW_``) with defaults for the embedded stack."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlparse

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:  # the messaging module imports the NATS client: not for every settings reader
    from services.common.messaging import NatsAuth

#: The embedded nats-server's own default port: not 4222, which machines often already use.
EMBEDDED_NATS_PORT = 4322


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HITLFLOW_", extra="ignore")

    #: Where the embedded stack keeps NATS data, SQLite stores and its ``stack.json``.
    home: Path = Field(default_factory=lambda: Path.home() / ".hitlflow")
    #: NATS URL of a running stack. Unset: the embedded stack's (from ``stack.json``).
    nats_url: str | None = None
    nats_user: str | None = None
    nats_password: str | None = None
    nats_token: str | None = None
    #: A credentials file (``{"user": ..., "password": ...}``, as ``hitlflow users add``
    #: writes): who this process is on NATS. Unset, the embedded stack's own operator
    #: (``HOME/auth/operator.creds``) when there is one.
    nats_creds: Path | None = None
    #: The directory of principals (users.json: roles and groups). Set: authorization is on
    #: (the NATS server authenticates everyone; services trust only what each role may
    #: assert). Unset: off, and names are taken as sent. ``hitlflow up`` sets it.
    identity_file: Path | None = None
    #: Who commands are sent as when NATS has no users (authorization off).
    principal: str | None = None
    #: HTTP gateway tokens (JWT): who issues them and for whom, the claim naming the principal
    #: and the one listing its groups. Signed by an identity provider whose keys are at
    #: ``auth_jwks_url``, else (HS256) with ``auth_jwt_secret`` or ``HOME/auth/jwt.secret``
    #: (what ``hitlflow token`` signs with).
    auth_issuer: str = "hitlflow"
    auth_audience: str = "hitlflow"
    auth_principal_claim: str = "sub"
    auth_groups_claim: str = "groups"
    auth_jwks_url: str | None = None
    auth_jwt_secret: str | None = None
    #: A file holding the HS256 key (a mounted secret), when ``auth_jwt_secret`` is not set.
    auth_jwt_secret_file: Path | None = None
    #: Seconds of clock difference allowed when checking a token's ``exp``, ``nbf``, ``iat``.
    auth_leeway: float = Field(default=30.0, ge=0)
    #: The HTTP gateway of a stack without authorization (no directory): who requests without
    #: a token are from (development; e.g. the web inbox on one's own machine). Refused when
    #: authorization is on: there every request carries a token or an API key.
    gateway_user: str | None = None
    #: ``hitlflow up`` starts the HTTP gateway with the stack (the HTTP API, the web inbox
    #: under ``/ui/``); false: not (``hitlflow up --no-gateway``).
    gateway: bool = True
    #: Where the HTTP gateway listens: under ``hitlflow up``, and ``hitlflow serve gateway``
    #: without ``--host`` / ``--port``. Port 0: a free one, chosen at start (printed, and kept
    #: in stack.json).
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8080, ge=0, le=65535)
    #: The embedded stack's NATS server has users (made on the first ``hitlflow up`` under
    #: ``HOME/auth``), each allowed only what its role needs; false: no users, names as sent.
    auth: bool = True
    embedded_port: int = EMBEDDED_NATS_PORT
    #: Event store backend of the services.
    persistence: Literal["sqlite", "postgres"] = "sqlite"
    #: e.g. ``postgresql://postgres@127.0.0.1:5432/hitlflow``; needed when persistence=postgres.
    postgres_dsn: str | None = None
    #: PostgreSQL schema for the stores and views (created if missing).
    postgres_schema: str | None = None
    #: Connections each service's event store keeps open, and may open beyond that at busy
    #: times (mind the server's max_connections: replicas times services times their sum).
    postgres_pool_size: int = Field(default=5, ge=1)
    postgres_max_overflow: int = Field(default=10, ge=0)
    #: Python modules whose import registers user agents (comma separated).
    agents: str = ""
    #: How long a command waits for its outcome before reporting that none came.
    reply_timeout: float = 15.0
    #: Replication of the streams (3 on a NATS cluster).
    stream_replicas: int = 1
    log_level: str = "INFO"
    log_format: Literal["console", "json"] = "console"
    #: Pull consumer batch size of the services.
    consumer_batch: int = 64
    #: A message whose handling fails this many times with an error that is not an outage
    #: (a bug, data the code cannot take) is quarantined (stream HITL_DLQ, `hitlflow doctor`)
    #: and the messages after it go on.
    poison_attempts: int = Field(default=5, ge=1)
    #: Seconds before a message whose handling failed is delivered again.
    redelivery_delay: float = Field(default=1.0, ge=0)
    #: How much lower (nice, 0-19) ``hitlflow up`` sets the CPU priority of the service no
    #: command waits for (timeout), so that on a busy machine the others run first; 0 runs
    #: every service at the same priority.
    background_nice: int = Field(default=10, ge=0, le=19)
    #: Every interaction request is published on NATS ``hitl.notify.<thread>``; also log it.
    notify_log: bool = True
    #: Webhook URLs (comma separated) that get each notification as an HTTP POST of JSON.
    notify_webhook_url: str = ""
    #: Retries after a failed webhook POST (connection error, timeout, 429, 5xx).
    notify_webhook_retries: int = 3
    #: First retry delay in seconds; doubles with each retry.
    notify_webhook_backoff: float = 0.5
    notify_webhook_timeout: float = 5.0
    #: Encrypt the event state in every service store (AES-GCM). Off only to measure its cost.
    encryption: bool = True
    #: Store keys, base64, comma separated, the current one first (instead of the key file).
    cipher_keys: str | None = None
    #: The key file (default ``<home>/keys.json``), created with a new key when missing.
    key_file: Path | None = None
    #: Timeout of a request, per interaction type, when its node sets no ``timeout_seconds``
    #: (seconds; empty or "none" = no timeout): the guide's 24 h approvals, 2 h edits, 30 min
    #: choices, none for conversations.
    timeout_approval: float | None = Field(default=24 * 3600, gt=0)
    timeout_edit: float | None = Field(default=2 * 3600, gt=0)
    timeout_choice: float | None = Field(default=30 * 60, gt=0)
    timeout_text_input: float | None = Field(default=None, gt=0)
    timeout_conversation: float | None = Field(default=None, gt=0)
    #: How often the timeout service sweeps for due deadlines whose timer did not go off.
    timeout_sweep_interval: float = Field(default=30.0, gt=0)
    #: The periodic sweep leaves a due deadline to its NATS timer for this many seconds.
    timeout_sweep_grace: float = Field(default=2.0, ge=0)
    #: Seconds a consumer's server waits for a delivered message to be acknowledged before it
    #: delivers it again (to any replica): how long the messages a crashed replica held wait.
    ack_wait: float = Field(default=60.0, gt=0)
    #: Port of a service process's /metrics, /healthz and /readyz (0: not served). Under
    #: ``hitlflow up`` each service process gets a free port of its own (printed, and kept in
    #: stack.json).
    metrics_port: int = Field(default=0, ge=0, le=65535)
    #: Address that endpoint listens on (0.0.0.0 in a container).
    metrics_host: str = "127.0.0.1"
    #: Seconds between two health checks of a service (store reachable, consumer lag, ...).
    health_interval: float = Field(default=5.0, gt=0)
    #: Seconds the projections replica holding the single-writer lease has to renew it; past
    #: that, a standby replica takes over (docs/projections.md).
    projections_lease_ttl: float = Field(default=10.0, gt=0)
    #: Rows of applied_events (the views' tracking) older than this many seconds of live
    #: work are compacted into each view's position.
    projections_compact_after: float = Field(default=1800.0, gt=0)
    #: Seconds the projections consumer lets events gather after the first of a batch (0: none):
    #: fewer, larger commits for a little lag. A query waiting to read its writes does not wait
    #: for it.
    projections_linger: float = Field(default=0.025, ge=0, le=1)

    @field_validator("timeout_approval", "timeout_edit", "timeout_choice", "timeout_text_input",
                     "timeout_conversation", mode="before")
    @classmethod
    def _no_timeout(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null", "off"):
            return None
        return value

    def request_timeouts(self) -> dict[str, float]:
        """Default ``timeout_seconds`` per interaction type (types without one left out)."""
        kinds = ("approval", "edit", "choice", "text_input", "conversation")
        return {kind: value for kind in kinds
                if (value := getattr(self, f"timeout_{kind}")) is not None}

    @property
    def stack_file(self) -> Path:
        return self.home / "stack.json"

    @property
    def key_path(self) -> Path:
        return self.key_file or self.home / "keys.json"

    def store_keys(self) -> list[str]:
        """The store keys, the current one first: ``cipher_keys``, else the key file (created
        with one new key when there is none)."""
        from services.common.keyring import ensure_key_file, read_key_file

        if self.cipher_keys:
            return [k.strip() for k in self.cipher_keys.split(",") if k.strip()]
        ensure_key_file(self.key_path)
        return read_key_file(self.key_path)

    def nats_auth(self) -> NatsAuth:
        """Who this process is on NATS: the user and password given, else those of the
        credentials file (``nats_creds``, else the embedded stack's operator, when there is
        one), else a token; nothing when NATS has no users."""
        if self.nats_user:
            return {"user": self.nats_user, "password": self.nats_password, "token": None}
        creds = self.nats_creds or (self.home / "auth" / "operator.creds")
        if self.nats_creds is not None or creds.exists():
            try:
                found = json.loads(creds.read_text())
                return {"user": str(found["user"]), "password": str(found["password"]),
                        "token": None}
            except (OSError, ValueError, KeyError, TypeError) as error:
                raise SettingsError(f"cannot read NATS credentials {creds}: {error}; expected "
                                    'a JSON file {"user": ..., "password": ...} as '
                                    "'hitlflow users add' writes") from None
        return {"user": None, "password": None, "token": self.nats_token}

    def jwt_secret(self) -> str | None:
        """The HS256 key of gateway tokens: ``auth_jwt_secret``, else the content of
        ``auth_jwt_secret_file``, else the embedded stack's ``HOME/auth/jwt.secret`` when there
        is one; None when there is none."""
        if self.auth_jwt_secret:
            return self.auth_jwt_secret
        path = self.auth_jwt_secret_file or self.home / "auth" / "jwt.secret"
        try:
            secret = path.read_text().strip()
        except OSError as error:
            if self.auth_jwt_secret_file is not None:
                raise SettingsError(f"cannot read HITLFLOW_AUTH_JWT_SECRET_FILE {path}: "
                                    f"{error.strerror or error}") from None
            return None
        if not secret:
            raise SettingsError(f"the token key file {path} is empty")
        return secret

    def agent_modules(self) -> list[str]:
        return [m.strip() for m in self.agents.split(",") if m.strip()]

    def resolved_nats_url(self) -> str:
        """The URL given, else the running embedded stack's, else the embedded default."""
        if self.nats_url:
            return self.nats_url
        try:
            info = json.loads(self.stack_file.read_text())
            return str(info["nats_url"])
        except (OSError, ValueError, KeyError):
            return f"nats://127.0.0.1:{self.embedded_port}"

    def store_env(self, service: str, data_dir: Path | None = None) -> dict[str, str]:
        """eventsourcing environment for one service's event store."""
        env = {"SINGLE_ROW_TRACKING": "f", "ORIGINATOR_ID_TYPE": "uuid"}
        if self.encryption:
            from services.common.keyring import cipher_env

            env.update(cipher_env(self.store_keys()))
        if self.persistence == "sqlite":
            directory = data_dir or self.home / "stores"
            directory.mkdir(parents=True, exist_ok=True)
            env.update(
                PERSISTENCE_MODULE="eventsourcing.sqlite",
                SQLITE_DBNAME=str(directory / f"{service}.sqlite"),
                SQLITE_LOCK_TIMEOUT="30",
            )
            return env
        if not self.postgres_dsn:
            raise ValueError(
                "HITLFLOW_PERSISTENCE=postgres needs HITLFLOW_POSTGRES_DSN, "
                "e.g. postgresql://postgres@127.0.0.1:5432/postgres"
            )
        env.update(PERSISTENCE_MODULE="eventsourcing.postgres", **postgres_env(self.postgres_dsn),
                   PROCESS_RECORDER_TOPIC="services.common.pgrecorder:PostgresStoreRecorder")
        env.update(POSTGRES_POOL_SIZE=str(self.postgres_pool_size),
                   POSTGRES_MAX_OVERFLOW=str(self.postgres_max_overflow))
        if self.postgres_schema:
            env["POSTGRES_SCHEMA"] = self.postgres_schema
        return env


def postgres_env(dsn: str) -> dict[str, str]:
    """Split a ``postgresql://user:password@host:port/dbname`` DSN into eventsourcing's keys."""
    url = urlparse(dsn)
    if url.scheme not in ("postgres", "postgresql") or not url.hostname:
        raise ValueError(
            f"invalid PostgreSQL DSN {dsn!r}: expected postgresql://user[:password]@host[:port]/db"
        )
    return {
        "POSTGRES_HOST": url.hostname,
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_DBNAME": (url.path or "/postgres").lstrip("/") or "postgres",
        "POSTGRES_USER": unquote(url.username or "postgres"),
        "POSTGRES_PASSWORD": unquote(url.password or ""),
        "POSTGRES_CONNECT_TIMEOUT": "5",
        "POSTGRES_POOL_SIZE": "5",
        "POSTGRES_MAX_OVERFLOW": "10",
    }


class SettingsError(ValueError):
    """A setting (environment variable or option) whose value is not valid."""


def load_settings(**overrides: object) -> Settings:
    """The settings from the environment, with ``overrides`` (None: not given) on top;
    :class:`SettingsError` names each setting that is not valid, and what it should be."""
    values = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**values)  # type: ignore[arg-type]
    except ValidationError as error:
        prefix = Settings.model_config.get("env_prefix", "")
        problems = [
            f"{prefix}{'_'.join(map(str, e['loc'])).upper()}={e['input']!r}: {e['msg']}"
            if e["loc"] else e["msg"]
            for e in error.errors()
        ]
        raise SettingsError("invalid setting " + "; ".join(problems)) from None


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")
