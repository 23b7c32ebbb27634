"""The Quick start demo: the whole pipeline against the stand-ins and a real Azurite, on this machine.

A simulated tenant publishes a day of Audit.General content (IRM alerts among ordinary records, some
records duplicated across blobs), then a few blobs listed late, behind the watermark. The poller and the
processor run through the same handlers the Functions host calls; the Sentinel stand-in keeps the accepted
rows and writes them to ``.demo/rows/<stream>.jsonl``. Run it with ``scripts/demo.sh`` (or
``python -m standins.demo``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from standins.azurite import Azurite, find_repo_root
from standins.environment import drop_foreign_settings
from standins.loopback import no_proxy_for_loopback
from standins.services import StandIns
from standins.workload import generate_workload

AUDIT_STREAM = "Custom-O365Audit"
ALERTS_STREAM = "Custom-IRMAlerts"
HEALTH_STREAM = "Custom-IRMConnectorHealth"
DEFAULT_RECORDS = 20_000
#: Seconds between progress lines while the queue is worked.
PROGRESS_EVERY = 3

DESCRIPTION = """The Quick start demo: the whole pipeline against local stand-ins of the Microsoft services and a
real Azurite, on this machine.

A simulated tenant publishes a day of Audit.General content: IRM alerts among ordinary records, some records
duplicated across blobs; then a few blobs the API lists late, behind the watermark, which the next poll's
overlap finds. The poller and the processor run through the same handlers
the Functions host calls; the Sentinel stand-in keeps the accepted rows and writes them to
.demo/rows/<stream>.jsonl. The demo sends every audit record to Custom-O365Audit too, which the product
leaves off by default (LOGS_AUDIT_STREAM empty): --alerts-only runs with the product's default."""


def _print(text: str = "") -> None:
    print(text, flush=True)


class Progress:
    """What the processor has done so far, printed every few seconds while it works."""

    def __init__(self, blobs: int, every: float) -> None:
        self.blobs = blobs
        self.every = every
        self.results: list[Any] = []
        self.started = time.perf_counter()
        self._last = self.started

    def add(self, result: Any) -> None:
        self.results.append(result)
        now = time.perf_counter()
        if now - self._last >= self.every and len(self.results) < self.blobs:
            self._last = now
            rows: Counter[str] = Counter()
            for r in self.results:
                rows.update(r.rows_sent)
            per_stream = ", ".join(f"{stream} {n:,}" for stream, n in sorted(rows.items())) or "none yet"
            _print(
                f"    ... {len(self.results)}/{self.blobs} blobs, {sum(r.records for r in self.results):,} records, "
                f"rows {per_stream} ({now - self.started:.0f}s)"
            )


async def _run(blobs: int, progress_every: float, publish_late: Callable[[], int]) -> dict[str, Any]:
    # Imported here: the connector reads its settings from the environment set up below.
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    from irm_connector import handlers
    from irm_connector.cli.queue_trigger import HostQueueOptions, QueueWorker
    from irm_connector.runtime import close_runtimes, get_runtime
    from irm_connector.settings import Settings

    rt = await get_runtime(Settings.from_env())
    progress = Progress(blobs, progress_every)
    options = HostQueueOptions.from_environment()

    async def process(message: func.QueueMessage) -> None:
        progress.add(await handlers.process(message))

    async def work_queue() -> None:
        stats = await QueueWorker(rt.queue.main, rt.queue.poison, process, options).run()
        _print(f"    {stats.processed} messages processed in {time.perf_counter() - progress.started:.1f}s, "
               f"{stats.poisoned} poisoned")  # fmt: skip

    try:
        _print("==> Poller: listing the content of the last 24 hours")
        report = await handlers.poll(TimerRequest(past_due=False))
        for ct in report.content_types:
            _print(
                f"    {ct.content_type}: {ct.blobs_listed} blobs listed, {ct.blobs_queued} queued, "
                f"{ct.blobs_expired} expired, watermark {ct.watermark:%Y-%m-%d %H:%M:%S} UTC"
            )
        _print("==> Processor: working the queue as the Functions host would (host.json concurrency)")
        await work_queue()
        late = publish_late()
        progress.blobs += late
        _print(f"==> The API now lists {late} blobs late: created before the watermark, listable only now")
        _print("==> Poller again: it re-lists LISTING_OVERLAP (1 hour) behind the watermark")
        again = await handlers.poll(TimerRequest(past_due=False))
        for ct in again.content_types:
            _print(
                f"    {ct.content_type}: {ct.blobs_listed} blobs listed, {ct.blobs_already_queued} of them queued "
                f"before (not queued twice), {ct.blobs_queued} late ones queued"
            )
        _print("==> Processor again")
        await work_queue()
        elapsed = time.perf_counter() - progress.started
    finally:
        await close_runtimes()
    return {"report": report, "results": progress.results, "elapsed": elapsed}


def _result_lines(summary: dict[str, Any], audit: bool, duplicated: int) -> list[str]:
    """The figures, each with one line saying what it counts."""
    rows = summary["rows"]
    # The copies the tenant published, from the simulated truth: the connector's own count must come to as many.
    copies = [f"{summary['alert_copies']} alert"]
    if audit:
        copies.append(f"{summary['audit_copies']} audit")
    figures = [
        ("blobs processed", summary["blobs"], "content blobs listed by the poller and fetched by the processor"),
        (
            "records received",
            summary["records"],
            f"audit records in them; {duplicated} are copies of a record in another blob (the API sends duplicates)",
        ),
        (
            "IRM alert records",
            summary["alert_records"],
            "IRM alerts among them (RecordType 40, Category InsiderRiskManagement), copies included",
        ),
        (
            "duplicates dropped",
            summary["duplicates_dropped"],
            f"rows not sent again, their record Id was sent already (the tenant's copies: {' + '.join(copies)})",
        ),
        (f"rows {ALERTS_STREAM}", rows[ALERTS_STREAM], "one per unique IRM alert record, table IRMAlerts_CL"),
    ]
    if audit:
        figures.append(
            (f"rows {AUDIT_STREAM}", rows[AUDIT_STREAM], "one per unique audit record, O365Audit_CL (default: off)")
        )
    figures.append((f"rows {HEALTH_STREAM}", rows[HEALTH_STREAM], "one per poller run and content type"))
    return [f"    {name:<31} {value:>7}  {meaning}" for name, value, meaning in figures]


#: Marks a folder as the demo's output, which its next run may empty.
_MARKER = ".irm-demo"


def _may_clear(folder: Path) -> bool:
    """Whether ``folder`` may be emptied: missing, empty, or an earlier demo's output."""
    if not folder.exists():
        return True
    return folder.is_dir() and (not any(folder.iterdir()) or (folder / _MARKER).is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo.sh", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--records",
        type=int,
        default=DEFAULT_RECORDS,
        help=f"unique audit records in the simulated day (default {DEFAULT_RECORDS:,})",
    )
    parser.add_argument(
        "--alerts-only",
        action="store_true",
        help="leave the audit stream off, as the product's default settings do (default: on)",
    )
    parser.add_argument("--out", type=Path, default=None, help="where to write the accepted rows (default .demo/)")
    parser.add_argument(
        "--progress",
        type=float,
        default=PROGRESS_EVERY,
        metavar="SECONDS",
        help=f"seconds between progress lines while the queue is worked (default {PROGRESS_EVERY})",
    )
    args = parser.parse_args(argv)
    audit = not args.alerts_only
    logging.basicConfig(level=logging.WARNING, format="    [%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.ERROR)

    root = find_repo_root()
    out_dir = (args.out or root / ".demo").resolve()
    if args.out is not None and not _may_clear(out_dir):
        parser.error(f"--out {args.out}: the demo empties its folder first, and this one is neither empty nor an "
                     "earlier demo's output; give a new or empty folder")  # fmt: skip
    shutil.rmtree(out_dir, ignore_errors=True)
    rows_dir = out_dir / "rows"
    rows_dir.mkdir(parents=True)
    (out_dir / _MARKER).write_text("The demo's output (scripts/demo.sh); its next run into this folder replaces it.\n")

    no_proxy_for_loopback()  # the servers below are on this machine: a proxy the machine names cannot reach them
    _print("==> Starting Azurite and the HTTPS stand-ins of Entra ID, the Management Activity API and Logs Ingestion")
    if audit:
        _print(f"    audit stream on ({AUDIT_STREAM}); the product's default is alerts only (--alerts-only)")
    else:
        _print("    audit stream off (--alerts-only), as in the product's default settings")
    # The emulator's data and the test CA (its private key too) live in a scratch folder that goes whatever
    # happens (scripts/demo.sh's private TMPDIR goes on a kill as well): only the rows and the summary stay.
    with (
        tempfile.TemporaryDirectory(prefix="irm-demo-") as scratch,
        Azurite(location=Path(scratch) / "azurite") as azurite,
        StandIns(rows_dir=rows_dir, directory=Path(scratch) / "ca") as sim,
    ):
        now = datetime.now(UTC).replace(microsecond=0)
        # Up to 10 minutes ago: the next poll's overlap (an hour behind the watermark) lists the last blobs again.
        workload = generate_workload(
            seed=2026,
            total_records=args.records,
            tenant_id=sim.tenant_id,
            start=now - timedelta(hours=22, minutes=10),
            span=timedelta(hours=22),
            irm_share=0.01,
            duplicate_share=0.02,
        )
        # Four blobs created 40 to 20 minutes ago, inside the next poll's overlap: two listed at once, two only
        # after the first poll, whose watermark is past them already (the API lists some content late).
        size = max(10, args.records // 200)
        recent = generate_workload(seed=2027, total_records=4 * size, tenant_id=sim.tenant_id,
                                   start=now - timedelta(minutes=40), span=timedelta(minutes=20), irm_share=0.05,
                                   duplicate_share=0.0, blob_size=(size, size))  # fmt: skip
        early, late = replace(recent, blobs=recent.blobs[:2]), replace(recent, blobs=recent.blobs[2:])
        sim.management.set_subscription("Audit.General", "enabled")
        workload.publish(sim.management)
        early.publish(sim.management)
        _print(
            f"    simulated tenant {sim.tenant_id}: {len(workload.blobs) + len(early.blobs)} blobs, "
            f"{workload.total_appearances + early.total_appearances} records "
            f"({workload.duplicate_appearances} duplicated across blobs), "
            f"{len(workload.irm_alert_record_ids)} IRM alert records; {len(late.blobs)} more blobs to be listed late"
        )
        dropped = drop_foreign_settings(os.environ)
        if dropped:
            # Exported from a deployed app (docs/operations.md) or a build agent's: the demo must not send them to
            # the real services, nor let them point it elsewhere.
            _print(f"    left out of this run: {', '.join(sorted(dropped))} (this shell's; the demo uses its own)")
        os.environ.update(sim.settings_env())
        os.environ.update(
            {
                "AzureWebJobsStorage": azurite.connection_string,
                "CONTENT_QUEUE": "irm-content",
                "LOGS_AUDIT_STREAM": AUDIT_STREAM if audit else "",
            }
        )
        published = len(workload.blobs) + len(early.blobs)
        run = asyncio.run(_run(published, args.progress, lambda: len(late.publish(sim.management))))
        alerts = sim.ingestion.rows(ALERTS_STREAM)
        audit_rows = sim.ingestion.rows(AUDIT_STREAM)
        health = sim.ingestion.rows(HEALTH_STREAM)

    # A message retried after a failure is one blob: its last delivery's figures count.
    results = list({r.content_id: r for r in run["results"]}.values())
    irm_alerts = workload.irm_alert_record_ids | recent.irm_alert_record_ids
    alert_appearances = sum(r["Id"] in irm_alerts for b in workload.blobs + recent.blobs for r in b.records)
    summary = {
        "blobs": len(results),
        "records": sum(r.records for r in results),
        "alert_records": sum(r.alerts for r in results),
        # Dropped because already sent, or because another blob holding the same record is sending it.
        "duplicates_dropped": sum(r.duplicates_dropped + r.claimed_elsewhere for r in results),
        "alert_copies": alert_appearances - len(irm_alerts),
        "audit_copies": (workload.total_appearances + recent.total_appearances
                         - len(workload.record_ids | recent.record_ids)),
        "rows": {ALERTS_STREAM: len(alerts), AUDIT_STREAM: len(audit_rows), HEALTH_STREAM: len(health)},
        "seconds": round(run["elapsed"], 2),
        "rows_dir": str(rows_dir),
    }
    exact_alerts = Counter(r["RecordId"] for r in alerts) == Counter(irm_alerts)
    records = workload.record_ids | recent.record_ids
    exact_audit = Counter(r["RecordId"] for r in audit_rows) == Counter(records) if audit else None
    _print()
    _print("==> Result")
    for line in _result_lines(summary, audit, workload.duplicate_appearances):
        _print(line)
    verdict = f"    every alert exactly once: {'yes' if exact_alerts else 'NO'}"
    if exact_audit is not None:
        verdict += f"; every audit record exactly once: {'yes' if exact_audit else 'NO'}"
    _print(verdict)
    statuses = Counter((r["Severity"], r["Status"]) for r in alerts)
    _print("    alerts by severity/status: " + ", ".join(f"{s}/{t} {n}" for (s, t), n in sorted(statuses.items())))
    _print(f"    accepted rows written to {rows_dir}/<stream>.jsonl")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return 0 if exact_alerts and exact_audit is not False else 1


if __name__ == "__main__":
    sys.exit(main())
