"""What an error means to the operator: a code for scripts, one line saying what was wrong, a hint saying
what to do, and the exit code. Printed as ``error: …`` on stderr, and with ``--json`` also as
``{"error": {"code", "message", "hint"}}`` on stdout, so that ``--json`` output is always one JSON document.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
)

from irm_connector._network import network_cause
from irm_connector.errors import (
    AuthenticationError,
    ConnectorError,
    IngestionError,
    ManagementApiError,
    NotInAzureError,
    SettingsError,
    StateError,
    TransientApiError,
    UnreadableAnswerError,
    UsageError,
    storage_error_code,
)
from irm_connector.redaction import install_redaction, redact

__all__ = [
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "Failure",
    "OperatorError",
    "describe",
    "report",
    "storage_refused",
    "storage_settings",
]

#: The work was done and all is healthy.
EXIT_OK = 0
#: Unhealthy (status) or the work failed (a content type, a poisoned message, an ID not found).
EXIT_FAILED = 1
#: Bad command line or settings, or a command that cannot work where it runs: nothing was attempted.
EXIT_USAGE = 2
#: A dependency (Storage, Entra ID, the Management API, Logs Ingestion) could not be reached, or refused the credential.
EXIT_UNREACHABLE = 3
#: Stopped by Ctrl-C or SIGTERM (128 + SIGINT, as a shell reports it).
EXIT_INTERRUPTED = 130

NOT_IN_AZURE_HINT = (
    "off Azure, give this command an app registration's credential (O365_AUTH_MODE=secret or certificate with "
    "O365_CLIENT_ID); status and poison need only storage, which your own identity (az login) reaches"
)


_NETWORK_ERRORS = (ServiceRequestError, ServiceResponseError, aiohttp.ClientError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Failure:
    """An error as the CLI reports it."""

    code: str
    message: str
    hint: str
    exit_code: int
    #: every ``(setting, problem)`` of a settings error (all bad settings are reported at once)
    settings: tuple[tuple[str, str], ...] = ()
    #: what the command finished before it failed (``backfill``'s listing), as its ``--json`` result would show it
    done: dict[str, Any] | None = None

    def line(self) -> str:
        """What stderr shows: one line, or one per bad setting."""
        if self.settings:
            return "\n".join(f"settings error: setting {name}: {problem}" for name, problem in self.settings)
        prefix = {"settings": "settings error", "usage": "usage error"}.get(self.code, "error")
        return f"{prefix}: {self.message}" + (f"; {self.hint}" if self.hint else "")

    def document(self) -> dict[str, Any]:
        """What stdout shows with ``--json``."""
        error: dict[str, Any] = {"code": self.code, "message": self.message, "hint": self.hint}
        if self.settings:
            error["settings"] = [{"setting": name, "problem": problem} for name, problem in self.settings]
        return {"error": error} if self.done is None else {"error": error, "done": self.done}


class OperatorError(ConnectorError):
    """An error the CLI found itself (a preflight check), already described."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.line())
        self.failure = failure


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""


def _shortened(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


#: How the connector's messages begin their advice: ``…(connection refused): check O365_AUTHORITY_HOST``.
_ADVICE = re.compile(r"(?:: |; | - )((?:check|grant|fix|set|sign in|give|wait|assign|turn on|re-enable) .*)$")


def _split_hint(text: str, default: str = "") -> tuple[str, str]:
    """``(what was wrong, what to do)`` from a message that ends with its advice. Only what was wrong is
    shortened: it may quote a service at length (Entra's AADSTS descriptions), and the advice is the line's point."""
    match = _ADVICE.search(text)
    if match is None:
        return _shortened(text), default
    return _shortened(text[: match.start()]), _shortened(match.group(1))


def describe(exc: BaseException, command: str = "COMMAND") -> Failure:
    """The failure ``exc`` means (see the module docstring); ``command`` for the usage hint."""
    install_redaction()  # masked before it is shortened: a secret cut short is no longer masked by its value
    line = _first_line(redact(str(exc)))
    text = _shortened(line, 4000 if isinstance(exc, SettingsError) else 400)
    if isinstance(exc, OperatorError):
        return exc.failure
    if isinstance(exc, SettingsError):
        count = len(exc.problems)
        message = text if count == 1 else f"{count} settings are not usable: {text}"
        hint = "fix them where the settings live: the app settings in Azure, the environment or local.settings.json"
        return Failure("settings", message, hint, EXIT_USAGE, tuple(exc.problems))
    if isinstance(exc, UsageError):
        return Failure("usage", text, f"see `irm-connector {command} --help`", EXIT_USAGE)
    if isinstance(exc, NotInAzureError):
        message = f"could not get a token for {exc.audience}: {exc.detail}"
        return Failure("not-in-azure", message, NOT_IN_AZURE_HINT, EXIT_USAGE)
    if isinstance(exc, AuthenticationError):
        code = "entra-unreachable" if exc.transient else "token-refused"
        return Failure(code, *_split_hint(line), EXIT_UNREACHABLE)
    if isinstance(exc, UnreadableAnswerError):
        return Failure("api-unreachable", text, exc.advice, EXIT_UNREACHABLE)
    if isinstance(exc, TransientApiError):
        hint = "check O365_API_ROOT (or O365_CLOUD), the network and Microsoft 365 service health"
        if exc.retry_after is not None:
            hint = f"the API asks for {exc.retry_after:.0f} s without requests from this tenant: run it again then"
        return Failure("api-unreachable", text, hint, EXIT_UNREACHABLE)
    if isinstance(exc, ManagementApiError):
        return Failure("api-error", text, "", EXIT_FAILED)
    if isinstance(exc, IngestionError):
        unreachable = exc.status == 0
        return Failure("ingestion", *_split_hint(line), EXIT_UNREACHABLE if unreachable else EXIT_FAILED)
    if isinstance(exc, StateError):
        return Failure("storage", text, f"check {storage_settings()} and the storage account", EXIT_UNREACHABLE)
    if isinstance(exc, ClientAuthenticationError) and not exc.status_code:
        return Failure("token-unavailable", f"no token: {text}", "sign in with `az login`", EXIT_UNREACHABLE)
    if isinstance(exc, HttpResponseError) and exc.status_code:
        # The commands' own storage calls (the poison queue's walk, say) raise the SDK's errors as they come.
        return storage_refused(exc, storage_settings())
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        # azure-core's: the commands' own storage calls (the queue's walk, the poison queue's) raise them as they
        # come; the connector's other clients raise errors of their own, which name their service.
        return Failure(
            "storage-unreachable",
            f"cannot reach Storage ({network_cause(exc)})",
            f"check {storage_settings()}, the network and the storage account's firewall (locally: is Azurite "
            "running?), then run the command again",
            EXIT_UNREACHABLE,
        )
    if isinstance(exc, _NETWORK_ERRORS):
        return Failure("unreachable", f"a service could not be reached ({network_cause(exc)})", "", EXIT_UNREACHABLE)
    if isinstance(exc, ConnectorError):
        return Failure("failed", text, "", EXIT_FAILED)
    return Failure(
        "internal",
        f"unexpected {type(exc).__name__}: {text}",
        "run again with -vv for the traceback, and report it",
        EXIT_FAILED,
    )


def storage_settings(*, connection_string: bool | None = None) -> str:
    """The settings that point at the storage account: a connection string, or the identity-based family."""
    if connection_string is None:
        connection_string = bool(os.environ.get("AzureWebJobsStorage", "").strip())  # noqa: SIM112 (the host's name)
    return "AzureWebJobsStorage" if connection_string else "AzureWebJobsStorage__*"


def storage_refused(exc: HttpResponseError, where: str) -> Failure:
    """Azure Storage answered a request with an error; ``where`` names the settings that point at it."""
    code = storage_error_code(exc)
    request = getattr(exc.response, "request", None)
    parts = urlsplit(str(getattr(request, "url", "") or ""))
    at = f" at {parts.scheme}://{parts.netloc}" if parts.netloc else ""  # never the path or query: a SAS
    hint = {
        "AuthorizationPermissionMismatch": "give your identity Storage Queue Data Contributor and Storage "
        "Table Data Contributor on the account (the deployment gives them to the deployer)",
        "AuthorizationFailure": "the account's network rules refuse this address: add it to the storage "
        "firewall, or run the command from an allowed network",
        "AuthenticationFailed": f"the credential was refused: check the account key in {where}"
        if where == "AzureWebJobsStorage"
        else "the token was refused: check AzureWebJobsStorage__clientId and the identity's tenant",
    }.get(code, f"check {where} and your identity's roles on the account")
    if exc.status_code is not None and exc.status_code >= 500:
        hint = "Storage is failing or busy: run the command again later; check Azure service health if it persists"
    return Failure(
        "storage-refused",
        f"Storage{at} refused the request (HTTP {exc.status_code}{', ' + code if code else ''})",
        hint,
        EXIT_UNREACHABLE,
    )


def report(failure: Failure, *, as_json: bool) -> None:
    """The line on stderr; with ``as_json`` the JSON document on stdout too. Secrets are masked in both, the
    same way as in the log (a library's message may echo a value)."""
    install_redaction()  # learns the configured secrets, if logging was not set up before the failure
    print(redact(failure.line()), file=sys.stderr)
    if as_json:
        try:
            # Each text masked before it is escaped: masked after, a token field's pattern would see the JSON
            # escapes (\" ends no value there), miss the secret and cut the document short of valid JSON.
            print(json.dumps(_masked(failure.document()), indent=2))
            sys.stdout.flush()
        except BrokenPipeError:
            # The reader went away (`--json ... | true`): the line on stderr said it, and the exit code is the
            # failure's.
            stdout_to_devnull()


def stdout_to_devnull() -> None:
    """Nothing more reaches a stdout whose reader went away: Python's own flush at exit would fail on the same pipe
    (exit 120, a BrokenPipeError traceback)."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: _masked(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value
