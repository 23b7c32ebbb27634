"""Exports Microsoft 365 Insider Risk Management alerts (and, on request, every audit record) from the
Office 365 Management Activity API into Microsoft Sentinel through the Logs Ingestion API.

The public surface is small: :class:`Settings`, the two trigger handlers in :mod:`.handlers`, and the
errors in :mod:`.errors`. Everything else is an implementation detail that may change.
"""

__version__ = "0.1.0"

from .errors import ConnectorError, SettingsError
from .settings import Settings

__all__ = ["ConnectorError", "Settings", "SettingsError", "__version__"]
