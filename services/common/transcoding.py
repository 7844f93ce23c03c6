"""The stores' transcoder: eventsourcing's ``JSONTranscoder``, decoding faster.

eventsourcing decodes a stored event's state with the json module and an object hook called
for every dict in it, to turn ``{"_type_": name, "_data_": …}`` back into a datetime, a UUID
or a Decimal. In hitlflow's events such a dict is a field of the event itself (its
``timestamp``), never deeper. :class:`QuickJSONTranscoder` reads the text with orjson
(``contracts.jsontext.quick_loads``) and decodes those fields only, when the text shows no
other ``"_type_"``; any other text is decoded by ``JSONTranscoder`` as before. Either way the
result is the same; what is written is unchanged.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import JSONTranscoder

from contracts.jsontext import NotQuick, quick_loads

#: The key of eventsourcing's encoded objects, as JSON text: found only where it is a key, or
#: a string that is exactly "_type_" (within a longer string its quotes would be escaped).
_TYPE_KEY = b'"_type_"'


class QuickJSONTranscoder(JSONTranscoder):
    def decode(self, data: bytes) -> Any:
        try:
            state = quick_loads(data)
        except NotQuick:
            return super().decode(data)
        marks = data.count(_TYPE_KEY)
        if not marks:
            return state
        if type(state) is not dict:
            return super().decode(data)
        encoded = [name for name, value in state.items()
                   if type(value) is dict and "_type_" in value]
        if len(encoded) != marks:  # another "_type_" (a key, deeper, or a string): the hook's way
            return super().decode(data)
        for name in encoded:
            state[name] = self._decode_obj(state[name])
        return state
