"""A service's part in ``hitlflow erase``: destroy a thread's data key in its own store.

Request/reply on ``hitl.admin.erase.<service>`` with ``{"thread_id": ...}``; every replica
takes it (no queue group), so none keeps the key or the thread's aggregates in memory. The
reply says whether this store had not been erased before.
"""

from __future__ import annotations

import json
from typing import Any

from contracts.subjects import InvalidThreadIdError, check_thread_id, erase_subject
from services.common.logging import get_logger
from services.common.threads import in_thread

log = get_logger(__name__)


async def subscribe_erase(nc: Any, service: str, app: Any) -> Any:
    async def on_erase(msg: Any) -> None:
        try:
            thread_id = check_thread_id(json.loads(msg.data)["thread_id"])
        except (ValueError, KeyError, TypeError, InvalidThreadIdError) as error:
            reply: dict[str, Any] = {"ok": False, "error": f"invalid erase request: {error}"}
        else:
            try:
                erased = await in_thread(app.erase_thread, thread_id)
            except Exception as error:
                log.error("erase_failed", thread_id=thread_id, error=repr(error))
                reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
            else:
                log.info("thread_erased", thread_id=thread_id, service=service, first=erased)
                reply = {"ok": True, "service": service, "erased_now": erased}
        if msg.reply:
            await msg.respond(json.dumps(reply).encode())

    return await nc.subscribe(erase_subject(service), cb=on_erase)
