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
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

from standins.azurite import Azurite, find_repo_root
from standins.services import StandIns
from standins.workload import generate_workload

AUDIT_STREAM = "Custom-O365Audit"
ALERTS_STREAM = "Custom-IRMAlerts"


def _print(text: str = "") -> None:
    print(text, flush=True)


async def _run(records: int, audit: bool, out_dir: Path) -> dict[str, Any]:
    # Imported here: the connector reads its settings from the environment set up below.
    import azure.functions as func
    from azure.functions.timer import TimerRequest

    from irm_connector import handlers
    from irm_connector.cli.queue_trigger import HostQueueOptions, QueueWorker
    from irm_connector.runtime import close_runtimes, get_runtime
    from irm_connector.settings import Settings

    rt = await get_runtime(Settings.from_env())
    results: list[Any] = []

    async def process(message: func.QueueMessage) -> None:
        results.append(await handlers.process(message))

    try:
        _print("==> Poller: listing the content of the last 24 hours")
        report = await handlers.poll(TimerRequest(past_due=False))
        for ct in report.content_types:
            _print(
                f"    {ct.content_type}: {ct.blobs_listed} blobs listed, {ct.blobs_queued} queued, "
                f"{ct.blobs_expired} expired, watermark {ct.watermark:%Y-%m-%d %H:%M:%S} UTC"
            )
        _print("==> Processor: working the queue as the Functions host would (host.json concurrency)")
        started = time.perf_counter()
        options = HostQueueOptions.from_environment()
        stats = await QueueWorker(rt.queue.main, rt.queue.poison, process, options).run()
        elapsed = time.perf_counter() - started
        _print(f"    {stats.processed} messages processed in {elapsed:.1f}s, {stats.poisoned} poisoned")
        _print("==> Poller again: the overlap is re-listed, nothing is queued twice")
        again = await handlers.poll(TimerRequest(past_due=False))
        _print(f"    {again.blobs_queued} blobs queued")
    finally:
        await close_runtimes()
    return {"report": report, "results": results, "elapsed": elapsed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=20_000, help="unique audit records in the simulated day")
    parser.add_argument("--alerts-only", action="store_true", help="leave the audit stream off (the default settings)")
    parser.add_argument("--out", type=Path, default=None, help="where to write the accepted rows (default .demo/)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="    [%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("azure").setLevel(logging.ERROR)

    root = find_repo_root()
    out_dir = (args.out or root / ".demo").resolve()
    shutil.rmtree(out_dir, ignore_errors=True)
    rows_dir = out_dir / "rows"
    rows_dir.mkdir(parents=True)

    _print("==> Starting Azurite and the HTTPS stand-ins of Entra ID, the Management Activity API and Logs Ingestion")
    with Azurite(location=out_dir / "azurite") as azurite, StandIns(rows_dir=rows_dir, directory=out_dir / "ca") as sim:
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
                "LOGS_AUDIT_STREAM": "" if args.alerts_only else AUDIT_STREAM,
            }
        )
        run = asyncio.run(_run(args.records, not args.alerts_only, out_dir))
        alerts = sim.ingestion.rows(ALERTS_STREAM)
        audit = sim.ingestion.rows(AUDIT_STREAM)
        health = sim.ingestion.rows("Custom-IRMConnectorHealth")

    results = run["results"]
    # Dropped because already sent, or because another blob holding the same record is sending it.
    dropped = sum(r.duplicates_dropped + r.claimed_elsewhere for r in results)
    summary = {
        "blobs": len(workload.blobs),
        "records": sum(r.records for r in results),
        "alert_records": sum(r.alerts for r in results),
        "duplicates_dropped": dropped,
        "rows": {ALERTS_STREAM: len(alerts), AUDIT_STREAM: len(audit), "Custom-IRMConnectorHealth": len(health)},
        "seconds": round(run["elapsed"], 2),
        "rows_dir": str(rows_dir),
    }
    exact_alerts = Counter(r["RecordId"] for r in alerts) == Counter(workload.irm_alert_record_ids)
    exact_audit = args.alerts_only or Counter(r["RecordId"] for r in audit) == Counter(workload.record_ids)
    _print()
    _print("==> Result")
    _print(f"    blobs processed      {summary['blobs']}")
    _print(f"    records received     {summary['records']}")
    _print(f"    IRM alert records    {summary['alert_records']}")
    _print(f"    duplicates dropped   {dropped}")
    for stream, count in summary["rows"].items():
        _print(f"    rows {stream:<26} {count}")
    _print(
        f"    every alert exactly once: {'yes' if exact_alerts else 'NO'}; "
        f"every audit record exactly once: {'yes' if exact_audit else 'NO'}"
    )
    statuses = Counter((r["Severity"], r["Status"]) for r in alerts)
    _print("    alerts by severity/status: " + ", ".join(f"{s}/{t} {n}" for (s, t), n in sorted(statuses.items())))
    _print(f"    accepted rows written to {rows_dir}/<stream>.jsonl")
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    shutil.rmtree(out_dir / "azurite", ignore_errors=True)
    shutil.rmtree(out_dir / "ca", ignore_errors=True)
    return 0 if exact_alerts and exact_audit else 1


if __name__ == "__main__":
    sys.exit(main())
