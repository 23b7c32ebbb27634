"""A machine whose clock is off, for the code that must not trust it."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta

import pytest


def skew_local_clock(monkeypatch: pytest.MonkeyPatch, ahead: timedelta) -> None:
    """Every ``datetime.now`` the state package makes runs ``ahead`` for the rest of the test."""

    class Skewed(datetime):
        @classmethod
        def now(cls, tz=None):  # type: ignore[no-untyped-def, override]
            return datetime.now(tz) + ahead

    for name, module in list(sys.modules.items()):
        if name.startswith("irm_connector.state") and getattr(module, "datetime", None) is datetime:
            monkeypatch.setattr(module, "datetime", Skewed)
