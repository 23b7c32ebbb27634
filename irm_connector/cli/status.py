"""status: whether the connector keeps up, per content type, and what to do when it does not."""

from __future__ import annotations

import argparse
from datetime import timedelta
from typing import Any

from irm_connector import refusals
from irm_connector.errors import ConnectorError, TransientApiError
from irm_connector.redaction import redact
from irm_connector.runtime import get_runtime
from irm_connector.settings import Settings

from ._common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, duration_option, emit, format_age, iso, storage
from ._failures import describe
from ._preflight import check_management_token, check_storage

__all__ = ["status"]


async def status(args: argparse.Namespace, settings: Settings) -> int:
    max_lag = duration_option(args.max_lag, "--max-lag")
    await check_storage(settings)
    rt = await get_runtime(settings)
    async with storage(settings) as store:
        states = {s.content_type: s for s in await rt.state.watermarks.list_states(settings.tenant_id)}
        # The lag by the storage service's time, as the poller moves the watermark: this machine's clock, hours
        # fast, would call a watermark just moved "lagging", and slow, hide a real lag behind it.
        queue_depth, now = await store.depth_at(store.main)
        poison_depth = await store.depth(store.poison)
    # The watermark says the poller keeps up; the backlog's age says the processor does (it may be stopped, too
    # few instances, or put off by throttling while the poller lists on).
    # None: messages on the queue, none of them visible (all put off for later, or being processed).
    oldest_queued = await rt.queue.oldest_age(now) if queue_depth else 0
    # The processor's record of a DCR refusing a stream: its messages are rescheduled, not poisoned, and the
    # poller runs clean meanwhile, so nothing above shows that no row reaches Sentinel.
    refused = await refusals.standing(rt)

    # What storage knows is shown whatever the Management API says. The token is asked for once, outside the
    # API client's retries: no token (Entra unreachable, not in Azure) is reported at once.
    subscriptions: dict[str, str] = {}
    api_error = ""
    api_failure = None
    api_waits_until = None
    try:
        await check_management_token(rt)
        subscriptions = {
            str(s.get("contentType")): str(s.get("status", "")) for s in await rt.management.list_subscriptions()
        }
    except ConnectorError as exc:
        if isinstance(exc, TransientApiError) and exc.throttled and exc.retry_after:
            # The API asked the tenant to wait (a Retry-After over 2 minutes, met by any instance): the connector
            # keeps it, which is no fault, and the subscriptions are not asked meanwhile.
            api_waits_until = now + timedelta(seconds=exc.retry_after)
        else:
            api_failure = describe(exc)
            api_error = redact(api_failure.line().removeprefix("error: "))  # it reaches stdout, past the log filter

    problems: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    for content_type in settings.content_types:
        state = states.get(content_type)
        watermark = state.watermark if state else None
        lag = (now - watermark).total_seconds() if watermark else None
        unasked = api_error or api_waits_until is not None
        subscription = subscriptions.get(content_type, "none") if not unasked else "unknown"
        row: dict[str, Any] = {
            "content_type": content_type,
            "watermark": watermark,
            "lag_seconds": int(lag) if lag is not None else None,
            "last_run": state.last_run if state else None,
            "last_error": state.last_error if state else "",
            "last_error_at": state.last_error_at if state else None,
            # When the lease runs out by the storage service's clock, as pollers judge it: the holder's LeaseUntil is
            # its own clock's, hours off on a machine whose clock is.
            "lease_until": lease if state and (lease := state.lease_expires()) and lease > now else None,
            # Informational: the poller judges it by the storage service's clock.
            "throttled_until": (
                state.throttled_until if state and state.throttled_until and state.throttled_until > now else None
            ),
            "subscription": subscription,
        }
        rows.append(row)

        def problem(code: str, detail: str, content_type: str = content_type) -> None:
            problems.append({"code": code, "content_type": content_type, "detail": detail})

        if watermark is None:
            problem("never-polled", "no watermark yet: no poller run has listed a window to its end")
        elif lag is not None and lag > max_lag.total_seconds():
            problem("lagging", f"watermark {format_age(lag)} behind now (more than {args.max_lag})")
        if state and state.last_error:
            problem("last-error", state.last_error)
        if not unasked and subscription != "enabled":
            problem("subscription-not-enabled", f"subscription is {subscription}")
    if oldest_queued is not None and oldest_queued > max_lag.total_seconds():
        problems.append(
            {
                "code": "backlog",
                "content_type": "",
                "detail": f"the oldest message in {settings.content_queue} was queued {format_age(oldest_queued)} "
                f"ago (more than {args.max_lag}): the processor does not keep up",
            }
        )
    for stream, refusal in sorted(refused.items()):
        answer = f"HTTP {refusal.status}{', ' + refusal.code if refusal.code else ''}"
        problems.append(
            {
                "code": "ingestion-refused",
                "content_type": "",
                "detail": f"Logs Ingestion refuses {stream} ({answer}) since {iso(refusal.since)}: "
                + (
                    # The health rows are no queue messages: they go to Application Insights meanwhile.
                    "the health rows go to Application Insights instead (an error trace from irm_connector.health)"
                    if stream == settings.health_stream
                    else "its messages are put back for later, and go to the poison queue after 2 hours"
                )
                + " (README: `Logs Ingestion refuses stream`)",
            }
        )
    if poison_depth:
        problems.append(
            {
                "code": "poison-messages",
                "content_type": "",
                "detail": f"{poison_depth} message(s) in {settings.poison_queue}: see `irm-connector poison list`",
            }
        )
    if api_failure is not None:
        code_name = {EXIT_UNREACHABLE: "api-unreachable", EXIT_USAGE: api_failure.code}.get(
            api_failure.exit_code, "api-error"
        )
        problems.append({"code": code_name, "content_type": "", "detail": api_error})

    healthy = not problems
    code = EXIT_OK if healthy else api_failure.exit_code if api_failure and api_failure.exit_code > 1 else EXIT_FAILED
    document = {
        "healthy": healthy,
        "tenant_id": settings.tenant_id,
        "checked_at": now,
        "max_lag_seconds": int(max_lag.total_seconds()),
        "content_types": rows,
        "queue": {"name": settings.content_queue, "depth": queue_depth, "oldest_seconds": oldest_queued},
        "poison_queue": {"name": settings.poison_queue, "depth": poison_depth},
        "api_waits_until": api_waits_until,
        "problems": problems,
    }
    lines = [f"IRM connector, tenant {settings.tenant_id}: {'HEALTHY' if healthy else 'UNHEALTHY'}", ""]
    header = f"{'content type':<28} {'watermark (UTC)':<21} {'behind':>8}  {'subscription':<13} {'last run (UTC)':<21}"
    lines.append(header)
    for row in rows:
        lines.append(
            f"{row['content_type']:<28} {iso(row['watermark']) or '-':<21} {format_age(row['lag_seconds']):>8}  "
            f"{row['subscription']:<13} {iso(row['last_run']) or '-':<21}"
        )
        if row["last_error"]:
            lines.append(f"    last error ({iso(row['last_error_at']) or '?'}): {row['last_error']}")
        if row["throttled_until"]:
            lines.append(f"    throttled: the poller asks the Management API again after {iso(row['throttled_until'])}")
    lines.append("")
    if api_waits_until is not None:
        lines.append(f"the Management API asked the tenant to wait (Retry-After): no request to it until "
                     f"{iso(api_waits_until)}, subscriptions not asked")  # fmt: skip
    oldest = "" if not queue_depth else (
        ", none visible now (put off for later, or being processed)" if oldest_queued is None
        else f", the oldest queued {format_age(oldest_queued)} ago"
    )  # fmt: skip
    lines.append(f"queue {settings.content_queue}: {queue_depth} message(s){oldest}")
    lines.append(f"poison queue {settings.poison_queue}: {poison_depth} message(s)")
    if problems:
        lines.append("")
        lines.append("Problems (docs/operations.md, \"What `status` reports and what to do\"):")
        for p in problems:
            where = f"{p['content_type']}: " if p["content_type"] else ""
            lines.append(f"  - [{p['code']}] {where}{p['detail']}")
    emit(args, document, "\n".join(lines))
    return code
