"""``payload_of`` (the wire payload the relays publish and a rebuild replays) calls pydantic's
validator and serializer directly; what it gives must stay what ``model_validate(...)
.model_dump(mode="json")`` gives, for every event the services store."""

from __future__ import annotations

from pathlib import Path

from bench.projections import generate
from contracts.events import PAYLOADS
from hitlflow.settings import Settings
from projections.rebuild import Source, open_sources
from services.common.integration import payload_of
from services.interaction.published import ENVELOPE_ALIASES


def test_payloads_are_what_the_models_dump(tmp_path: Path) -> None:
    (tmp_path / "stores").mkdir()
    generate(tmp_path / "stores", 400, batch=20)
    converted: dict[str, int] = {}
    for source in open_sources(Settings(home=tmp_path), tmp_path / "stores", parallel=False):
        assert isinstance(source, Source)
        try:
            for notification in source.app.recorder.select_notifications(1, 10_000):
                event = source.app.mapper.to_domain_event(notification)
                name = type(event).__name__
                if name not in PAYLOADS:
                    continue
                model = PAYLOADS[name]
                renamed = ENVELOPE_ALIASES.get(name, {})
                fields = {k: getattr(event, renamed.get(k, k)) for k in model.model_fields
                          if hasattr(event, renamed.get(k, k))}
                assert payload_of(model, fields) == model.model_validate(fields).model_dump(
                    mode="json", exclude={"schema_version"}), name
                converted[name] = converted.get(name, 0) + 1
        finally:
            source.close()
    # both services' events, a paused thread's requests among them
    assert {"ThreadStarted", "ThreadPaused", "InteractionRequested",
            "ResponseAccepted"} <= set(converted), converted
