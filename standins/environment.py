"""The settings of the machine's own environment that would point a local run elsewhere.

The tests, the demo and the benchmark run the connector against the stand-ins and Azurite, with settings of
their own. An operator who exported the deployed app's settings into the shell (docs/operations.md), or a
build agent with a service principal in ``AZURE_CLIENT_*``, must get the same results as a clean machine: and
none of those credentials may travel to a real service from a local run.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableMapping

__all__ = ["CONNECTOR_SETTINGS", "CONNECTOR_SETTING_PREFIXES", "FOREIGN_SETTINGS", "drop_foreign_settings",
           "foreign_settings"]  # fmt: skip

#: Settings that would point the connector elsewhere: azure-identity reads the first six, the connector
#: AZURE_CLOUD, and a connection string would send the connector's telemetry to Azure. Host settings
#: (``AzureFunctionsJobHost__…``, among the prefixes below) would change how a local queue worker retries.
FOREIGN_SETTINGS = (
    "AZURE_CLIENT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_TENANT_ID",
    "AZURE_AUTHORITY_HOST",
    "MSI_ENDPOINT",
    "MSI_SECRET",
    "AZURE_CLOUD",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    # the worker's debug switch (telemetry.py keeps the SDK's lines then) and the OpenTelemetry sampler it honours
    "PYTHON_ENABLE_DEBUG_LOGGING",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
)

#: The connector's own settings, azure-identity's and the identity endpoint's, by prefix (lower case).
CONNECTOR_SETTING_PREFIXES = ("o365_", "logs_", "azure_", "azurewebjobs", "azurefunctionsjobhost__", "identity_",
                              "msi_")  # fmt: skip
#: And those without a prefix of their own.
CONNECTOR_SETTINGS = ("INITIAL_LOOKBACK", "LISTING_OVERLAP", "POLL_TIME_BUDGET", "POLL_SCHEDULE", "HTTP_TIMEOUT",
                      "CONTENT_QUEUE", "ALERT_CATEGORIES", "STATE_TABLE_PREFIX", "DEDUPE_RETENTION_DAYS",
                      "MAX_BLOB_MB_IN_FLIGHT")  # fmt: skip


def foreign_settings(names: Iterable[str]) -> list[str]:
    """Which of ``names`` (an environment's) a local run must not inherit."""
    named = set(FOREIGN_SETTINGS + CONNECTOR_SETTINGS)
    return [name for name in names if name in named or name.lower().startswith(CONNECTOR_SETTING_PREFIXES)]


def drop_foreign_settings(environ: MutableMapping[str, str]) -> list[str]:
    """Remove :func:`foreign_settings` from ``environ``; returns their names (never their values)."""
    dropped = foreign_settings(list(environ))
    for name in dropped:
        del environ[name]
    return dropped
