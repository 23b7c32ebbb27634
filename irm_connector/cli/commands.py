"""status, poll, process, backfill and subscriptions."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import azure.functions as func
from azure.functions.timer import TimerRequest
from tqdm import tqdm

from irm_connector import handlers
from irm_connector.errors import ConnectorError, SettingsError
from irm_connector.poller import ContentTypeReport, PollFailed, PollReport, backfill, plan_backfill
from irm_connector.processor import ProcessResult
from irm_connector.runtime import get_runtime
from irm_connector.settings import Settings, parse_duration
from irm_connector.worker import HostQueueOptions, QueueWorker

from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    UsageError,
    emit,
    exit_code,
    format_age,
    iso,
    parse_moment,
    storage,
)

# -- status ------------------------------------------------------------------------------------------------


async def status(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(UTC)
    max_lag = parse_duration(args.max_lag, setting="--max-lag")
    rt = await get_runtime(settings)
    async with storage(settings) as store:
        states = {s.content_type: s for s in await rt.state.list_poller_states(settings.tenant_id)}
        queue_depth = await store.depth(store.main)
        poison_depth = await store.depth(store.poison)

    subscriptions: dict[str, str] = {}
    api_error = ""
    api_unreachable = False
    try:
        subscriptions = {
            str(s.get("contentType")): str(s.get("status", "")) for s in await rt.management.list_subscriptions()
        }
    except ConnectorError as exc:
        api_error = str(exc)
        api_unreachable = exit_code(exc) == EXIT_UNREACHABLE

    problems: list[dict[str, str]] = []
    rows: list[dict[str, Any]] = []
    for content_type in settings.content_types:
        state = states.get(content_type)
        watermark = state.watermark if state else None
        lag = (now - watermark).total_seconds() if watermark else None
        subscription = subscriptions.get(content_type, "none") if not api_error else "unknown"
        row: dict[str, Any] = {
            "content_type": content_type,
            "watermark": watermark,
            "lag_seconds": int(lag) if lag is not None else None,
            "last_run": state.last_run if state else None,
            "last_error": state.last_error if state else "",
            "last_error_at": state.last_error_at if state else None,
            "lease_until": state.lease_until if state and state.lease_until and state.lease_until > now else None,
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
        if not api_error and subscription != "enabled":
            problem("subscription-not-enabled", f"subscription is {subscription}")
    if poison_depth:
        problems.append(
            {
                "code": "poison-messages",
                "content_type": "",
                "detail": f"{poison_depth} message(s) in {settings.poison_queue}: see `irm-connector poison list`",
            }
        )
    if api_error:
        code_name = "api-unreachable" if api_unreachable else "api-error"
        problems.append({"code": code_name, "content_type": "", "detail": api_error})

    healthy = not problems
    code = EXIT_OK if healthy else EXIT_UNREACHABLE if api_unreachable else EXIT_FAILED
    document = {
        "healthy": healthy,
        "tenant_id": settings.tenant_id,
        "checked_at": now,
        "max_lag_seconds": int(max_lag.total_seconds()),
        "content_types": rows,
        "queue": {"name": settings.content_queue, "depth": queue_depth},
        "poison_queue": {"name": settings.poison_queue, "depth": poison_depth},
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
    lines.append("")
    lines.append(f"queue {settings.content_queue}: {queue_depth} message(s)")
    lines.append(f"poison queue {settings.poison_queue}: {poison_depth} message(s)")
    if problems:
        lines.append("")
        lines.append("Problems (README, Operations: what to do for each):")
        for p in problems:
            where = f"{p['content_type']}: " if p["content_type"] else ""
            lines.append(f"  - [{p['code']}] {where}{p['detail']}")
    emit(args, document, "\n".join(lines))
    return code


# -- poll ----------------------------------------------------------------------------------------------------


def _report_lines(report: PollReport) -> list[str]:
    lines = []
    for ct in report.content_types:
        state = f"error: {ct.error}" if ct.error else f"skipped: {ct.skipped}" if ct.skipped else "ok"
        lines.append(
            f"{ct.content_type}: {ct.windows_listed} window(s), {ct.blobs_listed} blob(s) listed, "
            f"{ct.blobs_queued} queued, {ct.blobs_already_queued} already queued, {ct.blobs_expired} expired; "
            f"watermark {iso(ct.watermark) or '-'}; {state}"
        )
    return lines


async def poll(args: argparse.Namespace, settings: Settings) -> int:
    try:
        report = await handlers.poll(TimerRequest(past_due=False))
    except PollFailed as exc:
        report = exc.report
    code = EXIT_FAILED if report.errors else EXIT_OK
    emit(
        args,
        {"ok": not report.errors, "blobs_queued": report.blobs_queued, "content_types": report.content_types},
        "\n".join(_report_lines(report)),
    )
    return code


# -- process -------------------------------------------------------------------------------------------------


@dataclass
class Processed:
    results: list[ProcessResult] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rows: Counter[str] = Counter()
        for r in self.results:
            rows.update(r.rows_sent)
        return {
            "outcomes": dict(Counter(r.outcome for r in self.results)),
            "records": sum(r.records for r in self.results),
            "alerts": sum(r.alerts for r in self.results),
            "rows_sent": dict(rows),
            "duplicates_dropped": sum(r.duplicates_dropped + r.claimed_elsewhere for r in self.results),
        }


async def work_queue(
    settings: Settings, *, max_messages: int | None, retry_delay: float | None, desc: str = "processed"
) -> tuple[dict[str, Any], int]:
    """Work the content queue until it is empty (or ``max_messages``), as the host would."""
    host = HostQueueOptions.from_host_json()
    options = HostQueueOptions(
        batch_size=host.batch_size,
        new_batch_threshold=host.new_batch_threshold,
        max_dequeue_count=host.max_dequeue_count,
        visibility_timeout=host.visibility_timeout if retry_delay is None else retry_delay,
    )
    done = Processed()
    async with storage(settings) as store:
        await store.ensure(store.main)
        total = await store.depth(store.main)
        bar = tqdm(
            total=total if max_messages is None else min(total, max_messages),
            desc=desc,
            unit="blob",
            file=sys.stderr,
            disable=None,
            leave=False,
        )

        async def handler(message: func.QueueMessage) -> None:
            try:
                done.results.append(await handlers.process(message))
            finally:
                bar.update(1)

        try:
            stats = await QueueWorker(store.main, store.poison, handler, options).run(max_messages=max_messages)
        finally:
            bar.close()
        remaining = await store.depth(store.main)
    document = {
        "processed": stats.processed,
        "failed_attempts": stats.failed_attempts,
        "poisoned": stats.poisoned,
        "remaining": remaining,
        "max_dequeue_count": options.max_dequeue_count,
        **done.summary(),
    }
    return document, EXIT_FAILED if stats.poisoned else EXIT_OK


def _process_text(doc: dict[str, Any], poison_queue: str) -> list[str]:
    lines = [
        f"{doc['processed']} message(s) processed, {doc['failed_attempts']} failed attempt(s), "
        f"{doc['poisoned']} moved to {poison_queue}, {doc['remaining']} left on the queue",
        f"{doc['records']} record(s) received, {doc['alerts']} alert record(s), "
        f"{doc['duplicates_dropped']} duplicate(s) dropped",
    ]
    lines += [f"rows sent to {stream}: {n}" for stream, n in sorted(doc["rows_sent"].items())]
    if doc["poisoned"]:
        lines.append("see why with `irm-connector poison list`")
    return lines


async def process(args: argparse.Namespace, settings: Settings) -> int:
    if args.max is not None and args.max < 1:
        raise UsageError("--max must be at least 1")
    document, code = await work_queue(settings, max_messages=args.max, retry_delay=args.retry_delay)
    emit(args, document, "\n".join(_process_text(document, settings.poison_queue)))
    return code


# -- backfill ------------------------------------------------------------------------------------------------


async def backfill_command(args: argparse.Namespace, settings: Settings) -> int:
    now = datetime.now(UTC)
    if args.since and (args.start or args.end):
        raise UsageError("give --since or --start/--end, not both")
    if args.since:
        try:
            start = now - parse_duration(args.since, setting="--since")
        except SettingsError as exc:
            raise UsageError(str(exc)) from None
        end = now
    elif args.start:
        start = parse_moment(args.start, "--start")
        end = parse_moment(args.end, "--end") if args.end else now
    else:
        raise UsageError("give --since (e.g. 3d) or --start (and optionally --end)")
    content_types = tuple(args.content_type or settings.content_types)
    unknown = [ct for ct in content_types if ct not in settings.content_types]
    if unknown:
        raise UsageError(f"{', '.join(unknown)} not in O365_CONTENT_TYPES ({', '.join(settings.content_types)})")
    try:
        windows = plan_backfill(start, end, now)
    except ValueError as exc:
        raise UsageError(str(exc)) from None

    rt = await get_runtime(settings)
    bar = tqdm(
        total=len(windows) * len(content_types),
        desc="windows listed",
        unit="window",
        file=sys.stderr,
        disable=None,
        leave=False,
    )
    seen: dict[str, int] = {}

    def progress(report: ContentTypeReport, planned: int) -> None:
        key = report.content_type
        if report.windows_listed != seen.get(key, 0):
            bar.update(report.windows_listed - seen.get(key, 0))
            seen[key] = report.windows_listed
        bar.set_postfix(queued=report.blobs_queued, listed=report.blobs_listed, refresh=False)

    failed = False
    try:
        report = await backfill(rt, start, end, content_types=content_types, now=now, on_progress=progress)
    except PollFailed as exc:
        report, failed = exc.report, True
    finally:
        bar.close()
    document: dict[str, Any] = {
        "ok": not failed,
        "range": {"start": windows[0].start, "end": windows[-1].end},
        "requested": {"start": start, "end": end},
        "windows": len(windows),
        "blobs_queued": report.blobs_queued,
        "content_types": report.content_types,
    }
    lines = [
        f"backfill of [{iso(windows[0].start)}, {iso(windows[-1].end)}) in {len(windows)} window(s); "
        "the live watermark was not moved"
    ]
    if windows[0].start > start + timedelta(seconds=1):
        lines.append(f"(start moved to {iso(windows[0].start)}: the API lists at most 7 days back)")
    lines += _report_lines(report)
    code = EXIT_FAILED if failed else EXIT_OK
    if not args.no_process and report.blobs_queued:
        processed, process_code = await work_queue(settings, max_messages=None, retry_delay=args.retry_delay)
        document["processing"] = processed
        lines += _process_text(processed, settings.poison_queue)
        code = max(code, process_code)
    emit(args, document, "\n".join(lines))
    return code


# -- subscriptions -------------------------------------------------------------------------------------------


async def subscriptions(args: argparse.Namespace, settings: Settings) -> int:
    rt = await get_runtime(settings)
    if args.action == "list":
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
    content_types = tuple(args.content_types or (settings.content_types if args.action == "start" else ()))
    if not content_types:
        raise UsageError("name the content type(s) to stop, e.g. `subscriptions stop Audit.General --yes`")
    if args.action == "stop" and not confirm(
        args, f"Stop the subscription(s) {', '.join(content_types)}? Content published while stopped is never available"
    ):
        return EXIT_USAGE
    results = []
    for ct in content_types:
        if args.action == "start":
            status_text = await rt.management.start_subscription(ct)
        else:
            await rt.management.stop_subscription(ct)
            status_text = "disabled"
        results.append({"content_type": ct, "status": status_text})
    emit(args, {"subscriptions": results}, "\n".join(f"{r['content_type']}: {r['status']}" for r in results))
    return EXIT_OK


def confirm(args: argparse.Namespace, question: str) -> bool:
    """``--yes``, or a yes at the terminal; never without a terminal."""
    if getattr(args, "yes", False):
        return True
    if not sys.stdin.isatty():
        print(f"error: {question.split('?')[0]}? Refused: pass --yes (no terminal to ask)", file=sys.stderr)
        return False
    answer = input(f"{question} [y/N] ")
    if answer.strip().lower() in ("y", "yes"):
        return True
    print("aborted", file=sys.stderr)
    return False


__all__ = ["backfill_command", "confirm", "poll", "process", "status", "subscriptions", "work_queue"]
