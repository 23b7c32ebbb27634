"""Keeping secrets out of the logs: a filter on every log handler that masks the configured secret values,
bearer tokens and token fields in each formatted record, and :func:`redact_exception` for the exception
text that leaves by other paths (what a function raises to the Functions host, which logs it with its
traceback; exceptions recorded on spans; failure reasons kept in the state tables).

The connector's own messages never carry secrets; this is the net under them, for a library that echoes a
request or a value pasted into the wrong setting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Mapping

from .errors import RedactedError

__all__ = ["LOGGER_NAME", "SECRET_SETTINGS", "RedactingFilter", "install_redaction", "redact", "redact_exception"]

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

_BEARER = re.compile(r"(?i)\b(bearer|authorization:\s*basic)\s+[A-Za-z0-9\-._~+/]+=*")
#: A JSON Web Token wherever it stands (an SDK's ``AccessToken(token='eyJ...')``): header and payload are base64url
#: JSON, so both start ``eyJ``.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{6,}\.eyJ[A-Za-z0-9_-]{6,}\.[A-Za-z0-9_-]*")
#: The user information of a URL (a proxy's ``https://user:password@proxy:8080``, or ``https://<token>@host``).
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")
#: The token of an azure-core ``AccessToken``/``AccessTokenInfo`` repr, a JWT or not (a managed identity endpoint's
#: may be opaque). Not the word "token": "the API refused the token: ..." stays readable.
_ACCESS_TOKEN_REPR = re.compile(r"(\bAccessToken(?:Info)?\(token=)(['\"])[^'\"]*\2")
#: A token field of a request or answer (``client_secret=...``, ``"access_token": "..."``, ``clientSecret``, JSON
#: quoted inside JSON with its quotes escaped, a backslash in the value as escaped pairs). Not a name that ends in
#: one (``O365_CLIENT_SECRET: is required``, a settings error): its value is masked by value if configured. Not
#: within a run of backslashes: each of its places would scan the rest of the run again (20,000 took seconds).
_QUOTE = r"(?:\\*[\"'])?"
_FIELD = re.compile(
    rf"(?i)(?<![\w\\]){_QUOTE}(?:access_?token|refresh_?token|id_?token|client_?secret|client_?assertion|password|"
    rf"sig|account_?key|shared_?access_?signature){_QUOTE}\s*[:=]\s*(?P<open>\\*[\"'])?"
)
#: An unquoted value, as a form field's runs.
_BARE = re.compile(r"(?:\\\\|[^\"'&;,\s\\])+")
#: How far a quoted value is looked into for its closing quote.
_QUOTED_MOST = 4096


def _closing(text: str, start: int, quote: str) -> int:
    """Where the value opened by ``quote`` (its escapes included: ``"``, ``\\"`` in JSON inside JSON, ...) at
    ``start`` ends: at its closing quote, or, never closed on its line (cut short, or longer than is looked into),
    at the line's end, so that no part of it shows. A secret may hold a comma, a space or a quote escaped at its
    own depth: a quote ends the value when the backslashes before it are its own plus escaped pairs."""
    own = len(quote) - 1
    line_end = text.find("\n", start)
    line_end = len(text) if line_end < 0 else line_end
    at = start
    while (at := text.find(quote[-1], at, min(line_end, start + _QUOTED_MOST))) >= 0:
        run = at
        while run > start and text[run - 1] == "\\":
            run -= 1
        if (at - run) % (2 * own + 2) == own:
            return at - own
        at += 1
    return line_end


def _mask_fields(text: str) -> str:
    parts: list[str] = []
    done = 0
    for field in _FIELD.finditer(text):
        if field.start() < done:
            continue  # within a value masked already
        start, quote = field.end(), field["open"]
        if quote:
            end = _closing(text, start, quote)
        elif (value := _BARE.match(text, start)) is not None:
            end = value.end()
        else:
            continue
        parts += [text[done:start], "***"]
        done = end
    return "".join([*parts, text[done:]]) if parts else text


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
        text = _JWT.sub("***", text)
        text = _ACCESS_TOKEN_REPR.sub(r"\1\2***\2", text)
        text = _USERINFO.sub(r"\1***@", text)
        return _mask_fields(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the handler to report
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # The whole traceback: the exceptions it chains carry text of their own.
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            # And the exception itself: OpenTelemetry's handler builds Application Insights' exception from it,
            # not from the text above.
            kind, exc, tb = record.exc_info
            record.exc_info = (kind, redact_exception(exc), tb)
        return True


_filter = RedactingFilter()


def redact(text: str) -> str:
    """``text`` with the configured secret values, bearer tokens and token fields masked."""
    return _filter.redact(text)


def redact_exception(exc: BaseException) -> BaseException:
    """``exc`` fit to leave by a path the logging filter does not see: its text, and the text of every
    exception it chains (``__cause__``, ``__context__``: a traceback prints them all), redacted. In place
    where ``str()`` reads the exception's arguments, as it does for every error of the connector, so the
    class stays; otherwise a :class:`RedactedError` with the same traceback and chain stands in for it."""
    return _redacted(exc, set())


def _redacted(exc: BaseException, seen: set[int]) -> BaseException:
    if id(exc) in seen:
        return exc
    seen.add(id(exc))
    text = _text(exc)
    clean = redact(text)
    if clean != text:
        exc = _rewritten(exc, clean)
    suppress = exc.__suppress_context__  # setting __cause__ sets it: keep what the raise said
    if exc.__cause__ is not None:
        exc.__cause__ = _redacted(exc.__cause__, seen)
    if exc.__context__ is not None:
        exc.__context__ = _redacted(exc.__context__, seen)
    exc.__suppress_context__ = suppress
    return exc


def _rewritten(exc: BaseException, clean: str) -> BaseException:
    with contextlib.suppress(AttributeError, TypeError):
        exc.args = (clean,)
    if _text(exc) == clean:
        return exc
    stand_in = RedactedError(type(exc).__name__, clean).with_traceback(exc.__traceback__)
    stand_in.__cause__, stand_in.__context__ = exc.__cause__, exc.__context__
    stand_in.__suppress_context__ = exc.__suppress_context__
    return stand_in


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__: nothing of it can be shown anyway
        return type(exc).__name__


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
