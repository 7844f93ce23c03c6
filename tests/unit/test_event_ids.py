"""The relay's event ids: uuid5 of the aggregate id and version, written out for speed."""

from __future__ import annotations

from uuid import uuid4, uuid5

from services.common.integration import _EVENT_NS, event_id


def test_event_id_is_the_uuid5_of_aggregate_and_version() -> None:
    for version in range(1, 500):
        aggregate = uuid4()
        assert event_id(aggregate, version) == str(uuid5(_EVENT_NS, f"{aggregate}:{version}"))
