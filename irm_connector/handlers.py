"""What each trigger does: read the settings, get the process's clients, run the poller or the processor.

``function_app.py`` binds these to the Functions triggers; the CLI, the demo and the tests call the
same code.
"""

from __future__ import annotations

import logging

import azure.functions as func

from .errors import SettingsError
from .poller import PollReport, run_poller
from .processor import ProcessResult, process_message
from .runtime import get_runtime
from .settings import Settings

__all__ = ["poll", "process"]

log = logging.getLogger("irm_connector")


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        log.error("Configuration error: %s", exc)
        raise


async def poll(timer: func.TimerRequest) -> PollReport:
    """Timer trigger: one poller run."""
    settings = _settings()
    if timer.past_due:
        log.info("Poller timer is past due; the watermark catches up whatever was missed")
    report = await run_poller(await get_runtime(settings))
    log.info(
        "Poller run: %d blobs queued (%s)",
        report.blobs_queued,
        ", ".join(f"{r.content_type}: {r.blobs_queued} queued, watermark {r.watermark}" for r in report.content_types),
    )
    return report


async def process(message: func.QueueMessage) -> ProcessResult:
    """Queue trigger: one content blob."""
    settings = _settings()
    dequeue_count = message.dequeue_count or 1
    return await process_message(await get_runtime(settings), message.get_body(), dequeue_count=dequeue_count)
