"""poll: one poller run, as the timer trigger does it."""

from __future__ import annotations

import argparse

from azure.functions.timer import TimerRequest

from irm_connector import handlers
from irm_connector.errors import PollError
from irm_connector.models import PollReport
from irm_connector.settings import Settings

from ._common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, emit, iso
from ._failures import describe
from ._preflight import ready

__all__ = ["failed_exit", "poll", "report_lines"]


def failed_exit(error: PollError) -> int:
    """A failed run's exit code: 3 when every content type that failed could not reach a dependency (run it again
    later), as any command's unreachable dependency is; 1 when one failed for another reason."""
    failed = [ct.content_type for ct in error.report.content_types if ct.error]
    codes = {describe(error.causes[name]).exit_code if name in error.causes else EXIT_FAILED for name in failed}
    return EXIT_UNREACHABLE if codes == {EXIT_UNREACHABLE} else EXIT_FAILED


def report_lines(report: PollReport, *, watermark: bool = True) -> list[str]:
    """One line per content type (poll and backfill print the same; a backfill moves no watermark, so it shows
    none with ``watermark=False``)."""
    lines = []
    for ct in report.content_types:
        state = f"error: {ct.error}" if ct.error else f"skipped: {ct.skipped}" if ct.skipped else "ok"
        moved = f"watermark {iso(ct.watermark) or '-'}; " if watermark else ""
        lines.append(
            f"{ct.content_type}: {ct.windows_listed} window(s), {ct.blobs_listed} blob(s) listed, "
            f"{ct.blobs_queued} queued, {ct.blobs_already_queued} already queued, {ct.blobs_expired} expired; "
            f"{moved}{state}"
        )
    return lines


async def poll(args: argparse.Namespace, settings: Settings) -> int:
    await ready(settings, management=True)
    code = EXIT_OK
    try:
        report = await handlers.poll(TimerRequest(past_due=False))
    except PollError as exc:
        report, code = exc.report, failed_exit(exc)
    emit(
        args,
        {"ok": not report.errors, "blobs_queued": report.blobs_queued, "content_types": report.content_types},
        "\n".join(report_lines(report)),
    )
    return code
