"""What auditors and operators run against the stores themselves: ``audit verify`` (the hash
chains), ``keys`` (the store key ring), ``erase`` and ``retention``. See docs/security.md.

``audit verify`` reads the stores and the views database the settings name (like
``projections rebuild --offline``): it needs the same data directory or PostgreSQL, and the
store keys. Exit codes: 0 verified, 1 a difference was found, 2 bad input or a store that
cannot be read.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from contracts.subjects import (
    COMMANDS_STREAM,
    EVENTS_STREAM,
    SCHEDULES_STREAM,
    InvalidThreadIdError,
    check_thread_id,
    erase_subject,
)
from hitlflow.cli_common import (
    EXIT_BAD_INPUT,
    EXIT_NO_STACK,
    EXIT_REFUSED,
    JsonOut,
    NatsUrl,
    client_for,
    err,
    fail,
    out,
)
from hitlflow.client import NoOutcomeError, StackUnavailableError
from hitlflow.settings import load_settings
from services.common.keyring import KeyRingError, read_key_file, rotate_key_file

Home = Annotated[Path | None, typer.Option("--home", envvar="HITLFLOW_HOME",
                                           help="Data directory of the stack.")]

keys_app = typer.Typer(add_completion=False, no_args_is_help=True,
                       help="The key ring that encrypts the services' event stores.")


def verify(
    thread_id: Annotated[str | None, typer.Option("--thread", help="One thread.")] = None,
    home: Home = None,
    as_json: JsonOut = False,
) -> None:
    """Recompute every thread's hash chains from the event stores and compare them with the
    links anchored as the events were published; report the first event whose content, order
    or presence differs (exit 1)."""
    from projections.verify import VerifyError
    from projections.verify import verify as run_verify

    if thread_id is not None:
        try:
            check_thread_id(thread_id)
        except InvalidThreadIdError as error:
            fail(str(error), EXIT_BAD_INPUT)
    settings = load_settings(home=home)
    try:
        report = run_verify(settings, thread_id)
    except (VerifyError, KeyRingError) as error:
        fail(str(error), EXIT_BAD_INPUT)
    data: dict[str, Any] = {
        "ok": report.ok, "threads": report.threads, "events": report.events,
        "read": report.read, "unanchored": report.unanchored,
        "seconds": round(report.seconds, 3), "events_per_second": round(report.rate, 1),
        "differences": [vars(d) for d in report.differences]}
    if as_json:
        out.print_json(json.dumps(data))
    else:
        for difference in report.differences:
            err.print(f"differs: {difference.describe()}", markup=False, highlight=False,
                      soft_wrap=True)
        verdict = "[green]verified[/]" if report.ok else (
            f"[red]{len(report.differences)} chain(s) differ[/]")
        out.print(f"{verdict}: {report.threads} thread(s), {report.events} events "
                  f"({report.read} read in {report.seconds:.2f}s, {report.rate:.0f} events/s)"
                  + (f"; {report.unanchored} not anchored yet" if report.unanchored else ""))
    if not report.ok:
        raise typer.Exit(EXIT_REFUSED)


@keys_app.command("list")
def keys_list(home: Home = None, as_json: JsonOut = False) -> None:
    """The key ring's key ids, the current one first (never the keys)."""
    from services.common.keyring import decode_key as decode
    from services.common.keyring import key_id

    settings = load_settings(home=home)
    try:
        keys = settings.store_keys() if settings.cipher_keys else read_key_file(
            settings.key_path)
    except KeyRingError as error:
        fail(str(error), EXIT_BAD_INPUT)
    ids = [key_id(decode(k, "key")).hex() for k in keys]
    if as_json:
        out.print_json(json.dumps({"current": ids[0], "keys": ids}))
    else:
        out.print(f"current {ids[0]}" + (f"; older: {', '.join(ids[1:])}" if ids[1:] else ""))


@keys_app.command("rotate")
def keys_rotate(home: Home = None) -> None:
    """Make a new key current in the key file; older keys stay to read older events. The
    services use it from their next start."""
    settings = load_settings(home=home)
    if settings.cipher_keys:
        fail("the keys come from HITLFLOW_CIPHER_KEYS, not the key file: put a new key first "
             "in that list to rotate", EXIT_BAD_INPUT)
    try:
        kid = rotate_key_file(settings.key_path)
    except KeyRingError as error:
        fail(str(error), EXIT_BAD_INPUT)
    out.print(f"new current key {kid} in {settings.key_path}; restart the services to use it")


#: The services that erase a thread's data key in their stores, then the views.
ERASING = ("workflow", "interaction", "timeout", "projections")
ENDED = ("completed", "failed", "timed_out", "cancelled")


def erase(
    thread_id: Annotated[str, typer.Option("--thread", help="The thread to erase.")],
    nats_url: NatsUrl = None,
    as_json: JsonOut = False,
) -> None:
    """Erase a thread's personal data: its data key is destroyed in every service store
    (crypto-shredding), the views keep only digests of its values, and its messages are purged
    from the NATS streams. Who, when, which action and the digests stay; its hash chains still
    verify. The thread must have ended (cancel it first)."""
    try:
        check_thread_id(thread_id)
    except InvalidThreadIdError as error:
        fail(str(error), EXIT_BAD_INPUT)
    settings = load_settings(nats_url=nats_url)

    async def go() -> dict[str, Any]:
        async with client_for(settings) as client:
            view = await client.thread(thread_id)
            if view is None:
                return {"refused": f"unknown thread {thread_id!r}: nothing to erase"}
            if view.status not in ENDED:
                return {"refused": f"thread {thread_id!r} is {view.status}; only an ended "
                                   f"thread is erased (cancel it first: hitlflow cancel "
                                   f"{thread_id})"}
            done: dict[str, Any] = {"thread_id": thread_id, "services": {}}
            for service in ERASING:
                try:
                    msg = await client.nc.request(erase_subject(service), json.dumps(
                        {"thread_id": thread_id}).encode(), timeout=settings.reply_timeout)
                except Exception as error:
                    raise NoOutcomeError(
                        f"the {service} service did not answer the erase request "
                        f"({type(error).__name__}); what it holds of thread {thread_id!r} is "
                        "not erased yet: run 'hitlflow erase' again once it is up") from None
                reply = json.loads(msg.data)
                if not reply.get("ok"):
                    raise NoOutcomeError(f"the {service} service could not erase thread "
                                         f"{thread_id!r}: {reply.get('error')}")
                done["services"][service] = reply
            js = client.nc.jetstream()
            purged = {}
            for stream, filters in ((EVENTS_STREAM, [f"hitl.evt.*.*.{thread_id}"]),
                                    (COMMANDS_STREAM, [f"hitl.cmd.*.{thread_id}",
                                                       f"hitl.cmd.*.*.{thread_id}"]),
                                    (SCHEDULES_STREAM, [f"hitl.sched.*.*.{thread_id}",
                                                        f"hitl.sched.fire.{thread_id}"])):
                for subject in filters:
                    await js.purge_stream(stream, subject=subject)
                purged[stream] = filters
            done["purged"] = purged
            return done

    result = _run_async(go())
    if "refused" in result:
        fail(result["refused"], EXIT_REFUSED)
    if as_json:
        out.print_json(json.dumps(result))
        return
    out.print(f"[green]erased[/] thread {thread_id}: its data key destroyed in the "
              f"{', '.join(ERASING[:3])} stores; the views keep digests of its values; its "
              "messages purged from the NATS streams. Kept: who, when, actions, data keys, "
              "digests (its hash chains still verify).")


def _run_async(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except (StackUnavailableError, NoOutcomeError) as error:
        fail(str(error), EXIT_NO_STACK)


retention_app = typer.Typer(add_completion=False, no_args_is_help=True,
                            help="Archive ended threads and compact the views' tracking rows.")


@retention_app.command("archive")
def retention_archive(
    days: Annotated[float, typer.Option(
        "--older-than-days", min=0.0, help="Archive threads that ended more than this many "
                                           "days ago.")],
    out_path: Annotated[Path, typer.Option("--out", help="JSON lines file (appended to).")],
    home: Home = None,
    as_json: JsonOut = False,
) -> None:
    """Export ended threads older than the age as JSON lines with their chain links, take them
    out of the live thread views (a rebuild leaves them out too) and compact the views'
    per-event tracking rows. Their audit entries, analytics and stored events stay."""
    from datetime import timedelta

    from projections.db import open_view_database
    from projections.retention import archive_to

    settings = load_settings(home=home)
    try:
        db = open_view_database(settings)
    except Exception as error:
        fail(f"the views database cannot be opened: {error}", EXIT_BAD_INPUT)
    try:
        result = archive_to(db, timedelta(days=days), out_path)
    except OSError as error:
        fail(f"cannot write {out_path}: {error}", EXIT_BAD_INPUT)
    finally:
        db.close()
    data = {"threads": result.threads, "events": result.events,
            "tracking_rows_compacted": result.compacted, "archive": str(out_path),
            "seconds": round(result.seconds, 3)}
    if as_json:
        out.print_json(json.dumps(data))
    else:
        out.print(f"archived {result.threads} thread(s), {result.events} events, to "
                  f"{out_path}; {result.compacted} tracking rows compacted")


def register(main: typer.Typer, audit_app: typer.Typer) -> None:
    main.add_typer(retention_app, name="retention")
    audit_app.command("verify")(verify)
    main.add_typer(keys_app, name="keys")
    main.command("erase")(erase)
