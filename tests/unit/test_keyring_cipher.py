"""The key ring's cipher writes and reads what eventsourcing's AESCipher does (after the
ring's marker and key id), with whichever key of the ring a state names."""

from __future__ import annotations

import os
from base64 import b64encode

import pytest
from eventsourcing.cryptography import AESCipher
from eventsourcing.utils import Environment

from services.common.keyring import (
    ALL_KEYS_ENV,
    CURRENT_KEY_ENV,
    KEY_ID_BYTES,
    MARKER,
    KeyRingCipher,
    StoreUnreadableError,
    key_id,
)


def _env(current: bytes, *others: bytes) -> Environment:
    ring = ",".join(b64encode(k).decode() for k in (current, *others))
    return Environment(env={CURRENT_KEY_ENV: b64encode(current).decode(), ALL_KEYS_ENV: ring})


def _plain_cipher(key: bytes) -> AESCipher:
    return AESCipher(Environment(env={"CIPHER_KEY": b64encode(key).decode()}))


@pytest.mark.parametrize("size", [0, 1, 1000, 70_000])
def test_the_stored_format_is_eventsourcings_behind_the_key_id(size: int) -> None:
    key = os.urandom(32)
    ring, plain = KeyRingCipher(_env(key)), _plain_cipher(key)
    text = os.urandom(size)
    ours = ring.encrypt(text)
    head = MARKER + key_id(key)
    assert ours.startswith(head) and len(ours) == len(head) + 12 + 16 + size
    assert plain.decrypt(ours[len(head):]) == text  # eventsourcing reads what we write
    assert ring.decrypt(head + plain.encrypt(text)) == text  # and we read what it writes


def test_a_state_is_read_with_the_key_it_names() -> None:
    old, new = os.urandom(32), os.urandom(16)
    written_before = KeyRingCipher(_env(old)).encrypt(b"before")
    ring = KeyRingCipher(_env(new, old))
    assert ring.decrypt(written_before) == b"before"
    assert ring.decrypt(ring.encrypt(b"after")) == b"after"
    assert ring.encrypt(b"x")[len(MARKER):len(MARKER) + KEY_ID_BYTES] == key_id(new)
    with pytest.raises(StoreUnreadableError, match="not in the key ring"):
        KeyRingCipher(_env(new)).decrypt(written_before)


def test_damaged_states_are_refused() -> None:
    ring = KeyRingCipher(_env(os.urandom(32)))
    state = ring.encrypt(b"some event")
    flipped = state[:-1] + bytes([state[-1] ^ 1])
    with pytest.raises(ValueError, match="Invalid cipher tag"):
        ring.decrypt(flipped)
    with pytest.raises(ValueError, match="Damaged cipher text"):
        ring.decrypt(state[:len(MARKER) + KEY_ID_BYTES + 20])
    with pytest.raises(StoreUnreadableError, match="without encryption"):
        ring.decrypt(b"{}")
