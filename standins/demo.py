"""The Quick start demo: the whole pipeline against the stand-ins and a real Azurite, on this machine.

A simulated tenant publishes a day of Audit.General content (IRM alerts among ordinary records, some
records duplicated across blobs, a few blobs listed late). The poller and the processor run through the
same handlers the Functions host calls; the Sentinel stand-in keeps the accepted rows and writes them to
``.demo/rows/<stream>.jsonl``. Run it with ``scripts/demo.sh`` (or ``python -m standins.demo``).
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
from datetime import timedelta
from pathlib import Path
from typing import Any

from standins.azurite import Azurite, find_repo_root
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
duplicated across blobs, a few blobs listed late. The poller and the processor run through the same handlers
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


async def _run(blobs: int, progress_every: float) -> dict[str, Any]:
    # Imported here: the connector reads its settings from the environment set up below.
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    from irm_connector import handlers
    from irm_connector.cli.queue_trigger import HostQueueOptions, QueueWorker
    from irm_connector.runtime import close_runtimes, get_runtime
    from irm_connector.settings import Settings

    rt = await get_runtime(Settings.from_env())
    progress = Progress(blobs, progress_every)

    async def process(message: func.QueueMessage) -> None:
        progress.add(await handlers.process(message))

    try:
        _print("==> Poller: listing the content of the last 24 hours")
        report = await handlers.poll(TimerRequest(past_due=False))
        for ct in report.content_types:
            _print(
                f"    {ct.content_type}: {ct.blobs_listed} blobs listed, {ct.blobs_queued} queued, "
                f"{ct.blobs_expired} expired, watermark {ct.watermark:%Y-%m-%d %H:%M:%S} UTC"
            )
        _print("==> Processor: working the queue as the Functions host would (host.json concurrency)")
        options = HostQueueOptions.from_environment()
        stats = await QueueWorker(rt.queue.main, rt.queue.poison, process, options).run()
        elapsed = time.perf_counter() - progress.started
        _print(f"    {stats.processed} messages processed in {elapsed:.1f}s, {stats.poisoned} poisoned")
        _print("==> Poller again: the overlap is re-listed, nothing is queued twice")
        again = await handlers.poll(TimerRequest(past_due=False))
        _print(f"    {again.blobs_queued} blobs queued")
    finally:
        await close_runtimes()
    return {"report": report, "results": progress.results, "elapsed": elapsed}


def _result_lines(summary: dict[str, Any], audit: bool, duplicated: int) -> list[str]:
    """The figures, each with one line saying what it counts."""
    rows = summary["rows"]
    copies = [f"{summary['alert_records'] - rows[ALERTS_STREAM]} alert"]
    if audit:
        copies.append(f"{summary['records'] - rows[AUDIT_STREAM]} audit")
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
            f"rows not sent again, their record Id was sent already ({' + '.join(copies)})",
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
        workload = generate_workload(
            seed=2026,
            total_records=args.records,
            tenant_id=sim.tenant_id,
            span=timedelta(hours=22),
            irm_share=0.01,
            duplicate_share=0.02,
            late_share=0.05,
            late_by=timedelta(minutes=1),
        )
        sim.management.set_subscription("Audit.General", "enabled")
        workload.publish(sim.management)
        _print(
            f"    simulated tenant {sim.tenant_id}: {len(workload.blobs)} blobs, "
            f"{workload.total_appearances} records ({workload.duplicate_appearances} duplicated across blobs), "
            f"{len(workload.irm_alert_record_ids)} IRM alert records"
        )
        os.environ.update(sim.settings_env())
        os.environ.update(
            {
                "AzureWebJobsStorage": azurite.connection_string,
                "CONTENT_QUEUE": "irm-content",
                "LOGS_AUDIT_STREAM": AUDIT_STREAM if audit else "",
            }
        )
        run = asyncio.run(_run(len(workload.blobs), args.progress))
        alerts = sim.ingestion.rows(ALERTS_STREAM)
        audit_rows = sim.ingestion.rows(AUDIT_STREAM)
        health = sim.ingestion.rows(HEALTH_STREAM)

    results = run["results"]
    summary = {
        "blobs": len(workload.blobs),
        "records": sum(r.records for r in results),
        "alert_records": sum(r.alerts for r in results),
        # Dropped because already sent, or because another blob holding the same record is sending it.
        "duplicates_dropped": sum(r.duplicates_dropped + r.claimed_elsewhere for r in results),
        "rows": {ALERTS_STREAM: len(alerts), AUDIT_STREAM: len(audit_rows), HEALTH_STREAM: len(health)},
        "seconds": round(run["elapsed"], 2),
        "rows_dir": str(rows_dir),
    }
    exact_alerts = Counter(r["RecordId"] for r in alerts) == Counter(workload.irm_alert_record_ids)
    exact_audit = Counter(r["RecordId"] for r in audit_rows) == Counter(workload.record_ids) if audit else None
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
