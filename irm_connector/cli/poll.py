"""poll: one poller run, as the timer trigger does it."""

from __future__ import annotations

import argparse

from azure.functions.timer import TimerRequest

from irm_connector import handlers
from irm_connector.errors import PollError
from irm_connector.models import PollReport
from irm_connector.settings import Settings

from ._common import EXIT_FAILED, EXIT_OK, emit, iso
from ._preflight import ready

__all__ = ["poll", "report_lines"]


def report_lines(report: PollReport) -> list[str]:
    """One line per content type (poll and backfill print the same)."""
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
    await ready(settings, management=True)
    try:
        report = await handlers.poll(TimerRequest(past_due=False))
    except PollError as exc:
        report = exc.report
    code = EXIT_FAILED if report.errors else EXIT_OK
    emit(
        args,
        {"ok": not report.errors, "blobs_queued": report.blobs_queued, "content_types": report.content_types},
        "\n".join(report_lines(report)),
    )
    return code
