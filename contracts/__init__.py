"""Wire contracts of hitlflow: the messages other systems may publish and subscribe to.

Everything here is a frozen pydantic model with ``extra="forbid"`` and a ``schema_version``,
plus the NATS subject and stream names. Domain events are not wire contracts: each service
converts its own events to these models at its edge.
"""
