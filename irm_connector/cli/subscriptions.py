"""subscriptions list | start | stop: the Management Activity API subscriptions of the tenant."""

from __future__ import annotations

import argparse

from irm_connector.errors import ConnectorError, SubscriptionMissingError
from irm_connector.redaction import redact
from irm_connector.runtime import get_runtime
from irm_connector.settings import KNOWN_CONTENT_TYPES, Settings

from ._common import EXIT_FAILED, EXIT_OK, UsageError, confirm, emit
from ._preflight import ready

__all__ = ["subscriptions"]


async def subscriptions(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "list":
        await ready(settings, management=True)
        rt = await get_runtime(settings)
        items = await rt.management.list_subscriptions()
        listed = {str(s.get("contentType")): str(s.get("status", "")) for s in items}
        rows = [
            {"content_type": ct, "status": status, "configured": ct in settings.content_types}
            for ct, status in sorted(listed.items())
        ]
        rows += [
            {"content_type": ct, "status": "none", "configured": True}
            for ct in settings.content_types
            if ct not in listed
        ]
        text = "\n".join(
            [f"{'content type':<28} {'status':<10} configured"]
            + [f"{r['content_type']:<28} {r['status']:<10} {'yes' if r['configured'] else 'no'}" for r in rows]
        )
        emit(args, {"subscriptions": rows}, text)
        return EXIT_OK
    by_lower = {ct.lower(): ct for ct in KNOWN_CONTENT_TYPES}
    unknown = [ct for ct in args.content_types or () if ct.lower() not in by_lower]
    if unknown:  # before the API, which would blame O365_CONTENT_TYPES for a typo on the command line
        raise UsageError(f"{', '.join(unknown)}: not a content type; name one of {', '.join(KNOWN_CONTENT_TYPES)}")
    named = tuple(dict.fromkeys(by_lower[ct.lower()] for ct in args.content_types or ()))
    content_types = named or (settings.content_types if args.action == "start" else ())
    if not content_types:
        raise UsageError("name the content type(s) to stop, e.g. `subscriptions stop Audit.General --yes`")
    polled = [ct for ct in content_types if ct in settings.content_types] if args.action == "stop" else []
    if polled:
        # Stopped, it would be started again by the next poller run, which would log the gap as content lost.
        raise UsageError(
            f"{', '.join(polled)} is polled (O365_CONTENT_TYPES): the poller starts its subscription again within "
            "minutes. Take it out of O365_CONTENT_TYPES, the function app's and this one's, then stop it"
        )
    if args.action == "stop":
        await confirm(
            args,
            f"Stop the subscription(s) {', '.join(content_types)}? Content published while stopped is never available",
        )
    await ready(settings, management=True)
    rt = await get_runtime(settings)
    results: list[dict[str, str]] = []
    first_failure: ConnectorError | None = None
    for ct in content_types:
        try:
            if args.action == "start":
                status_text = await rt.management.start_subscription(ct)
            else:
                try:
                    await rt.management.stop_subscription(ct)
                    status_text = "disabled"
                except SubscriptionMissingError:
                    status_text = "none"  # nothing to stop (AF20022); its hint, that the poller starts one, is not so
        except ConnectorError as exc:
            # The others are asked all the same: one refused (AF20023, an administrator's) stopped the command at
            # the first content type, and whether another was started depended on its place in the list.
            first_failure = first_failure or exc
            results.append({"content_type": ct, "status": "failed", "error": redact(str(exc))})
            continue
        results.append({"content_type": ct, "status": status_text})
    if first_failure is not None and all("error" in r for r in results):
        raise first_failure  # nothing done: reported as any command's failure (its exit code, its hint)
    text = "\n".join(f"{r['content_type']}: {r['status']}" + (f" ({r['error']})" if "error" in r else "")
                     for r in results)  # fmt: skip
    emit(args, {"subscriptions": results}, text)
    return EXIT_FAILED if any("error" in r for r in results) else EXIT_OK
