"""What every measured child process shares: its CPU clock, its entry point's way of failing, and the
connector's settings as the benchmark gives them."""

from __future__ import annotations

import functools
import logging
import os
import resource
import traceback
from collections.abc import Callable
from typing import Any

from standins.environment import drop_foreign_settings

Result = dict[str, Any]


def cpu() -> float:
    """This process's CPU seconds: every thread, user and system (gzip threads included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB: the kernel's high-water mark (``VmHWM``), which starts afresh with the
    process's program. ``ru_maxrss`` does not: a spawned child read its parent's peak (415 for a 17 MiB child)."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: the next best (KiB on Linux)


def entry(run: Callable[[dict[str, Any]], Result]) -> Callable[[dict[str, Any]], Result]:
    """A child's entry point: what it raises comes back as ``{"error": traceback}`` for the parent to report,
    instead of a pickled exception that may not unpickle."""

    @functools.wraps(run)
    def guarded(cfg: dict[str, Any]) -> Result:
        try:
            return run(cfg)
        except BaseException:
            return {"error": traceback.format_exc()}

    return guarded


def use_connector_settings(env: dict[str, str]) -> None:
    """The connector's settings in this process, and nothing of the machine's own Azure credentials (the
    stand-ins' app registration signs in); only errors are logged."""
    drop_foreign_settings(os.environ)
    os.environ.update(env)
    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("azure").setLevel(logging.ERROR)
    logging.getLogger("irm_connector").setLevel(logging.ERROR)
