"""process: work the content queue until it is empty, as the Functions host would."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import azure.functions as func

from irm_connector import handlers
from irm_connector.content_queue import create_queue_if_missing
from irm_connector.models import LOST_OUTCOMES, ProcessResult
from irm_connector.settings import Settings

from ._common import EXIT_FAILED, EXIT_OK, GracefulStop, UsageError, emit, queue_options, storage
from ._failures import EXIT_INTERRUPTED
from ._preflight import ready
from ._progress import Progress
from .queue_trigger import QueueWorker

__all__ = ["process", "process_lines", "work_queue"]


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
    settings: Settings, *, max_messages: int | None, retry_delay: float | None
) -> tuple[dict[str, Any], int]:
    """Work the content queue until it is empty (or ``max_messages``), as the host would."""
    options = queue_options(retry_delay)
    done = Processed()
    async with storage(settings) as store:
        await create_queue_if_missing(store.main)
        total = await store.depth(store.main)
        bar = Progress(
            total=total if max_messages is None else min(total, max_messages),
            desc="processed",
            unit="blob",
        )

        # A refusing DCR reschedules every message: they come back after a delay, so the queue never empties
        # while it lasts. Stop at the first one rather than wait; the error above names the fix.
        refused = asyncio.Event()

        async def handler(message: func.QueueMessage) -> None:
            # The bar counts messages done; a failed attempt is retried (or poisoned) and counted in the report.
            result = await handlers.process(message)
            done.results.append(result)
            bar.update(1)
            if result.outcome == "rescheduled":
                refused.set()

        try:
            worker = QueueWorker(store.main, store.poison, handler, options)
            with GracefulStop(refused).installed() as interrupt:
                stats = await worker.run(max_messages=max_messages, stop=refused)
        finally:
            bar.close()
        remaining = await store.depth(store.main)
    # The host moves a message that failed too often; the processor parks one no retry could help at once.
    poisoned = stats.poisoned + sum(r.parked for r in done.results)
    rescheduled = sum(r.outcome == "rescheduled" for r in done.results)
    document = {
        "processed": stats.processed,
        "rescheduled": rescheduled,
        "failed_attempts": stats.failed_attempts,
        "poisoned": poisoned,
        "remaining": remaining,
        "not_visible": stats.left_invisible,
        "awaiting_retry": stats.awaiting_retry,
        "max_dequeue_count": options.max_dequeue_count,
        **done.summary(),
    }
    if interrupt.signalled:
        document["interrupted"] = True
        return document, EXIT_INTERRUPTED
    return document, EXIT_FAILED if poisoned or rescheduled or stats.awaiting_retry else EXIT_OK


def process_lines(doc: dict[str, Any], poison_queue: str) -> list[str]:
    lines = [
        f"{doc['processed']} message(s) processed, {doc['failed_attempts']} failed attempt(s), "
        f"{doc['poisoned']} moved to {poison_queue}, {doc['remaining']} left on the queue",
        f"{doc['records']} record(s) received, {doc['alerts']} alert record(s), "
        f"{doc['duplicates_dropped']} duplicate(s) dropped",
    ]
    lines += [f"rows sent to {stream}: {n}" for stream, n in sorted(doc["rows_sent"].items())]
    lost = sum(doc["outcomes"].get(outcome, 0) for outcome in LOST_OUTCOMES)
    if lost:
        lines.append(
            f"{lost} blob(s) lost: gone from the Management API before they were processed (past their 7 days, or "
            "removed); their records cannot be fetched any more; the error lines name them"
        )
    if doc.get("interrupted"):
        lines.append("interrupted: the messages in flight were finished; run `process` again for the rest")
    if doc.get("awaiting_retry"):
        lines.append(f"{doc['awaiting_retry']} message(s) failed and wait on the queue for a retry this run did not "
                     "see (--max, or the function app took it): run `process` again")  # fmt: skip
    if doc.get("rescheduled"):
        lines.append(f"{doc['rescheduled']} message(s) put back for later and stopped: Logs Ingestion refuses the "
                     "rows, the Management API asked for a long wait, or another delivery holds its records (the lines "
                     "above say which); run `process` again once that is over")  # fmt: skip
    elif doc.get("not_visible"):
        lines.append(f"{doc['not_visible']} message(s) left are not visible yet (put off for later, or being processed "
                     "by the function app or an earlier run): they come back by themselves; run `process` again "
                     "later rather than wait")  # fmt: skip
    if doc["poisoned"]:
        lines.append("see why with `irm-connector poison list`")
    return lines


async def process(args: argparse.Namespace, settings: Settings) -> int:
    if args.max is not None and args.max < 1:
        raise UsageError("--max must be at least 1")
    queue_options(args.retry_delay)  # its settings errors (exit 2) before any call, as every setting's
    await ready(settings, management=True, ingestion=True)
    document, code = await work_queue(settings, max_messages=args.max, retry_delay=args.retry_delay)
    emit(args, document, "\n".join(process_lines(document, settings.poison_queue)))
    return code
