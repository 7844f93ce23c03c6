"""Which failures are an outage (retried for as long as they last) and which will happen again
on every attempt (quarantined after a few)."""

from __future__ import annotations

import sqlite3

import nats.errors
import nats.js.errors
import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, OperationalError
from pydantic import BaseModel, ValidationError

from services.common.quarantine import describe, is_transient
from services.common.store import ConflictError


class Model(BaseModel):
    n: int


def validation_error() -> ValidationError:
    try:
        Model.model_validate({"n": "x"})
    except ValidationError as error:
        return error
    raise AssertionError("unreachable")


@pytest.mark.parametrize("error", [
    OSError("disk"), ConnectionRefusedError(), TimeoutError(),
    sqlite3.OperationalError("database is locked"), OperationalError("database is locked"),
    psycopg.OperationalError("server closed the connection"), IntegrityError("conflict"),
    ConflictError("gave up"), nats.errors.TimeoutError(), nats.errors.NoRespondersError(),
    nats.js.errors.ServiceUnavailableError(),
], ids=repr)
def test_outages_and_contention_are_transient(error: Exception) -> None:
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    ValueError("badly formed"), KeyError("graph_name"), OverflowError("too large"),
    validation_error(), nats.errors.MaxPayloadError(), nats.errors.BadSubjectError(),
    nats.js.errors.BadRequestError(code=400, err_code=10054),
    psycopg.errors.NumericValueOutOfRange("bigint out of range"),
], ids=repr)
def test_failures_about_the_message_are_not(error: Exception) -> None:
    assert not is_transient(error)


def test_an_error_raised_from_an_outage_is_transient() -> None:
    try:
        try:
            raise OSError("connection reset")
        except OSError as cause:
            raise RuntimeError("could not load") from cause
    except RuntimeError as error:
        assert is_transient(error)


def test_a_reason_names_the_error_type() -> None:
    assert describe(KeyError("graph_name")) == "KeyError: 'graph_name'"
    assert describe(TimeoutError()) == "TimeoutError"
    assert describe("said so") == "said so"
