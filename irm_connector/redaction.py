"""Keeping secrets out of the logs: a filter on every log handler that masks the configured secret values,
bearer tokens and token fields in each formatted record.

The connector's own messages never carry secrets; this is the net under them, for a library that echoes a
request or a value pasted into the wrong setting.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

__all__ = ["LOGGER_NAME", "SECRET_SETTINGS", "RedactingFilter", "install_redaction"]

LOGGER_NAME = "irm_connector"
#: App settings whose values must never appear in a log line.
SECRET_SETTINGS = (
    "O365_CLIENT_SECRET",
    "O365_CLIENT_CERTIFICATE",
    "O365_CLIENT_CERTIFICATE_PASSWORD",
    "AZURE_CLIENT_SECRET",
    "AzureWebJobsStorage",
    "IDENTITY_HEADER",
    "MSI_SECRET",
)

_BEARER = re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9\-._~+/]+=*")
_TOKEN_FIELD = re.compile(
    r"(?i)([\"']?(?:access_token|refresh_token|id_token|client_secret|client_assertion|sig|accountkey|"
    r"sharedaccesssignature)[\"']?\s*[:=]\s*[\"']?)([^\"'&;,\s]+)"
)


class RedactingFilter(logging.Filter):
    """Replaces known secret values, bearer tokens and token fields in every formatted record."""

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__("")
        self.secrets = [s for s in (secrets or []) if len(s) >= 6]

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, "***")
        text = _BEARER.sub(r"\1 ***", text)
        return _TOKEN_FIELD.sub(r"\1***", text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = str(exc)
            if self.redact(text) != text:
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True


_filter = RedactingFilter()


def _secrets(env: Mapping[str, str]) -> list[str]:
    values = [env.get(name, "").strip() for name in SECRET_SETTINGS]
    # A storage connection string: its AccountKey, not the whole string.
    for value in list(values):
        match = re.search(r"AccountKey=([^;]+)", value)
        if match:
            values.append(match.group(1))
    return [v for v in values if v and v != "UseDevelopmentStorage=true"]


def install_redaction(env: Mapping[str, str] | None = None, *, handlers: list[logging.Handler] | None = None) -> None:
    """Attach the redacting filter to the handlers of the root and ``irm_connector`` loggers (and to
    ``handlers``), learning the secret values from ``env``. Safe to call again."""
    env = os.environ if env is None else env
    for secret in _secrets(env):
        if len(secret) >= 6 and secret not in _filter.secrets:
            _filter.secrets.append(secret)
    targets = [*logging.getLogger().handlers, *logging.getLogger(LOGGER_NAME).handlers, *(handlers or [])]
    for handler in targets:
        if _filter not in handler.filters:
            handler.addFilter(_filter)
