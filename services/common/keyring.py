"""Encryption at rest of the services' event stores: AES-GCM (eventsourcing's cipher) with a key
ring, so that a new key can be made current while events written under older keys stay
readable.

Every stored event's state is ``b"H1" + key id (4 bytes) + nonce + tag + ciphertext``: the key
id (the first 4 bytes of the key's sha256) says which key of the ring decrypts it; the rest is
what :class:`eventsourcing.cryptography.AESCipher` makes. New events are written under the
current key (the first of the ring).

Keys come from ``HITLFLOW_CIPHER_KEYS`` (base64 keys, comma separated, the current one first)
or from the key file (``HITLFLOW_KEY_FILE``, by default ``<HITLFLOW_HOME>/keys.json``), which
is created with one new key the first time a store is opened without any key.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from base64 import b64decode, b64encode
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from eventsourcing.cryptography import AESCipher
from eventsourcing.utils import Environment

#: What every encrypted state starts with (format 1 of hitlflow's encrypted events).
MARKER = b"H1"
KEY_ID_BYTES = 4
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
#: The eventsourcing environment keys the cipher reads (besides ``CIPHER_TOPIC``).
CURRENT_KEY_ENV = "CIPHER_KEY"
ALL_KEYS_ENV = "CIPHER_KEYS"
CIPHER_TOPIC = "services.common.keyring:KeyRingCipher"


class KeyRingError(RuntimeError):
    """Keys that cannot be used: missing, malformed, or not the ones a store was written with."""


class StoreUnreadableError(KeyRingError):
    """A store holds events the configured keys (or no keys) cannot read."""


def key_id(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES]


def new_key() -> str:
    """A new random 256-bit key, base64."""
    return b64encode(os.urandom(KEY_BYTES)).decode()


def decode_key(text: str, where: str) -> bytes:
    try:
        key = b64decode(text.strip().encode(), validate=True)
    except ValueError:
        raise KeyRingError(f"{where}: a key is not base64 text") from None
    if len(key) not in AESCipher.KEY_SIZES:
        raise KeyRingError(f"{where}: a key is {len(key)} bytes; expected 16, 24 or 32 "
                           "(base64 of random bytes, e.g. from 'hitlflow keys rotate')")
    return key


class KeyRingCipher(AESCipher):
    """AES-GCM under the ring's current key; decrypts with whichever key of the ring the stored
    state names. A state without the marker (written with encryption off) is refused.

    The body after the key id is what :class:`AESCipher` writes and reads (nonce, tag,
    ciphertext); the AES-GCM object of each key is made once, not once per event."""

    def __init__(self, environment: Environment) -> None:
        current = environment.get(CURRENT_KEY_ENV)
        if not current:
            raise KeyRingError("encryption is on but no key was given (set "
                               "HITLFLOW_CIPHER_KEYS or create the key file with 'hitlflow up' "
                               "or 'hitlflow keys rotate')")
        super().__init__(environment)
        self._current_id = key_id(self.key)
        self._current = AESGCM(self.key)
        self._ciphers: dict[bytes, AESGCM] = {self._current_id: self._current}
        for text in (environment.get(ALL_KEYS_ENV) or "").split(","):
            if text.strip():
                key = decode_key(text, "the key ring")
                self._ciphers.setdefault(key_id(key), AESGCM(key))

    @property
    def key_ids(self) -> list[str]:
        return [kid.hex() for kid in self._ciphers]

    def encrypt(self, plaintext: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._current.encrypt(nonce, plaintext, None)  # ciphertext, then the tag
        return MARKER + self._current_id + nonce + sealed[-TAG_BYTES:] + sealed[:-TAG_BYTES]

    def decrypt(self, ciphertext: bytes) -> bytes:
        if not ciphertext.startswith(MARKER):
            raise StoreUnreadableError("the event was stored without encryption")
        start = len(MARKER) + KEY_ID_BYTES
        kid = ciphertext[len(MARKER):start]
        cipher = self._ciphers.get(kid)
        if cipher is None:
            raise StoreUnreadableError(f"the event is encrypted with key {kid.hex()}, which is "
                                       f"not in the key ring ({', '.join(self.key_ids)})")
        tag_at, body_at = start + NONCE_BYTES, start + NONCE_BYTES + TAG_BYTES
        if len(ciphertext) < body_at:
            raise ValueError("Damaged cipher text: shorter than its nonce and tag")
        try:
            return cipher.decrypt(ciphertext[start:tag_at],
                                  ciphertext[body_at:] + ciphertext[tag_at:body_at], None)
        except InvalidTag as error:
            raise ValueError("Invalid cipher tag") from error


# -- the key file -------------------------------------------------------------------------------


def read_key_file(path: Path) -> list[str]:
    """The keys of a key file, the current one first."""
    try:
        data = json.loads(path.read_text())
        keys = [str(entry["key"]) for entry in data["keys"]]
        current = str(data.get("current") or "")
    except FileNotFoundError:
        raise KeyRingError(f"no key file at {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise KeyRingError(f"the key file {path} cannot be read ({type(error).__name__}: "
                           f"{error}); expected JSON {{\"current\": ID, \"keys\": "
                           "[{\"id\": ID, \"key\": BASE64}, ...]}") from None
    if not keys:
        raise KeyRingError(f"the key file {path} holds no key")
    for text in keys:
        decode_key(text, f"the key file {path}")
    by_id = {key_id(decode_key(k, str(path))).hex(): k for k in keys}
    first = by_id.get(current, keys[-1])
    return [first, *(k for k in keys if k != first)]


def write_key_file(path: Path, keys: list[str]) -> None:
    """Write ``keys`` (the current one first) to ``path`` (mode 0600), replacing it whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    entries: list[dict[str, Any]] = []
    try:
        known = {e["key"]: e for e in json.loads(path.read_text())["keys"]}
    except (OSError, ValueError, KeyError, TypeError):
        known = {}
    for key in reversed(keys):  # oldest first in the file
        kid = key_id(decode_key(key, str(path))).hex()
        entries.append({"id": kid, "key": key,
                        "created_at": known.get(key, {}).get("created_at", now)})
    partial = path.with_name(path.name + ".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"current": key_id(decode_key(keys[0], str(path))).hex(), "keys": entries},
                  handle, indent=2)
    partial.replace(path)


def ensure_key_file(path: Path) -> bool:
    """Create ``path`` with one new key if there is none; True when it was created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path.with_name(path.name + ".lock"), os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o600)
    except FileExistsError:  # another process is creating it: wait for it
        for _ in range(100):
            if path.exists():
                return False
            time.sleep(0.05)
        return False
    try:
        if not path.exists():
            write_key_file(path, [new_key()])
            return True
        return False
    finally:
        os.close(fd)
        path.with_name(path.name + ".lock").unlink(missing_ok=True)


def rotate_key_file(path: Path) -> str:
    """Make a new key current, keeping the older ones to read old events; its id."""
    keys = read_key_file(path) if path.exists() else []
    key = new_key()
    write_key_file(path, [key, *keys])
    return key_id(decode_key(key, str(path))).hex()


def cipher_env(keys: list[str]) -> dict[str, str]:
    """The eventsourcing environment for a store encrypted with ``keys`` (current first)."""
    return {"CIPHER_TOPIC": CIPHER_TOPIC, CURRENT_KEY_ENV: keys[0],
            ALL_KEYS_ENV: ",".join(keys)}


def check_readable(app: Any, service: str) -> None:
    """Refuse a store whose events the configured keys cannot read: its first and its last
    event are read back (cheap, and covers a store written before a rotation)."""
    recorder = app.recorder
    try:
        last = int(recorder.max_notification_id() or 0)
    except Exception as error:
        raise StoreUnreadableError(f"the {service} store cannot be read: "
                                   f"{type(error).__name__}: {error}") from None
    if not last:
        return
    encrypted = app.mapper.cipher is not None
    for position in {1, last}:
        for notification in recorder.select_notifications(position, 1):
            try:
                app.mapper.to_domain_event(notification)
            except Exception as error:
                cause = error.__cause__ or error
                if isinstance(cause, StoreUnreadableError):
                    detail = str(cause)
                elif not encrypted:
                    detail = ("it is encrypted, and encryption is off here "
                              "(HITLFLOW_ENCRYPTION=false)")
                else:
                    detail = ("it does not decrypt with the current keys: a wrong key, or the "
                              "stored event was altered")
                raise StoreUnreadableError(
                    f"the {service} store holds an event (position {notification.id}) this "
                    f"service cannot read: {detail}; give the key the store was written with "
                    "(HITLFLOW_CIPHER_KEYS or the key file)") from None
