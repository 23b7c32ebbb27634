"""A machine whose clock is off, for the code that must not trust it."""

from __future__ import annotations

import importlib
import sys
from datetime import datetime, timedelta, tzinfo

import pytest


class _AnyDatetime(type):
    """A skewed module's ``isinstance(value, datetime)`` stays true of the plain datetimes it meets (its answers,
    what it reads), or it would take them for something else."""

    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, datetime)


def skew_local_clock(
    monkeypatch: pytest.MonkeyPatch, ahead: timedelta | list[timedelta], package: str = "irm_connector.state"
) -> None:
    """Every ``datetime.now`` the modules of ``package`` make runs ``ahead`` for the rest of the test (given as a
    one-item list, the test moves the clock by setting it; a second call would not take: the modules' ``datetime``
    is no longer the standard one)."""
    offset = ahead if isinstance(ahead, list) else [ahead]
    # A module not imported yet would keep the true clock: a test run alone, before anything imported the poller
    # (the function entry points import it lazily), would not be skewed at all.
    importlib.import_module("irm_connector.handlers")
    importlib.import_module(package)

    class Skewed(datetime, metaclass=_AnyDatetime):
        @classmethod
        def now(cls, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]  # a plain datetime, not a Skewed, on purpose
            return datetime.now(tz) + offset[0]

    for name, module in list(sys.modules.items()):
        if name.startswith(package) and getattr(module, "datetime", None) is datetime:
            monkeypatch.setattr(module, "datetime", Skewed)


def pass_time(monkeypatch: pytest.MonkeyPatch, ahead: list[timedelta]) -> None:
    """Time moves on by ``ahead[0]`` for this machine and for the storage service alike: the local clock as
    :func:`skew_local_clock` moves it, and the storage service's time the poller reads from its lease's write (by
    which it spaces subscription starts and plans windows)."""
    skew_local_clock(monkeypatch, ahead, package="irm_connector")
    from irm_connector import poller

    real = poller._storage_time
    monkeypatch.setattr(poller, "_storage_time", lambda written, at: real(written, at) + ahead[0])
