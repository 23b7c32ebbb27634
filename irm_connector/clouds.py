"""The Azure cloud of the function's identity and the Sentinel workspace (``AZURE_CLOUD``).

It is a setting of its own, apart from the Microsoft 365 cloud of the tenant being read (``O365_CLOUD``, see
:mod:`.setting_forms`), because they can differ: a GCC tenant may well send to a workspace in commercial
Azure. The Microsoft 365 cloud decides the Management API's host and login. The Azure cloud decides the
audience of Logs Ingestion tokens (azure-monitor-ingestion asks for the public cloud's unless told) and the
authority azure-identity signs in at when the identity is not a managed identity (a service principal from
``AZURE_CLIENT_SECRET``, workload identity, a developer's sign-in), and the DNS suffix of a storage account
given by ``AzureWebJobsStorage__accountName`` alone (the function's storage is in the function's cloud).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .errors import SettingsError

__all__ = ["AZURE_CLOUDS", "AzureCloud", "azure_cloud", "identity_authority"]


@dataclass(frozen=True)
class AzureCloud:
    """Where an Azure cloud signs in and what its Logs Ingestion tokens are for."""

    name: str
    #: azure-identity's authority host
    authority_host: str
    #: the audience of Logs Ingestion tokens
    monitor_audience: str
    #: the DNS suffix of its storage accounts (``<account>.queue.<suffix>``)
    storage_suffix: str


AZURE_CLOUDS = {
    "AzurePublic": AzureCloud(
        "AzurePublic", "login.microsoftonline.com", "https://monitor.azure.com", "core.windows.net"
    ),
    "AzureUSGovernment": AzureCloud(
        "AzureUSGovernment", "login.microsoftonline.us", "https://monitor.azure.us", "core.usgovcloudapi.net"
    ),
    "AzureChina": AzureCloud(
        "AzureChina", "login.chinacloudapi.cn", "https://monitor.azure.cn", "core.chinacloudapi.cn"
    ),
}
#: The names the Azure CLI gives two of them (`az cloud show`), read the same.
_CLI_NAMES = {"azurecloud": "AzurePublic", "azurechinacloud": "AzureChina"}


def azure_cloud(name: str) -> AzureCloud:
    """The cloud named (any case); raises :class:`SettingsError` for ``AZURE_CLOUD`` otherwise."""
    by_name = {key.lower(): key for key in AZURE_CLOUDS} | _CLI_NAMES
    key = by_name.get(name.strip().lower())
    if key is None:
        raise SettingsError("AZURE_CLOUD", f"is not one of {', '.join(AZURE_CLOUDS)}")
    return AZURE_CLOUDS[key]


def identity_authority(cloud: AzureCloud) -> dict[str, str]:
    """azure-identity's ``authority`` keyword for ``cloud``; none when ``AZURE_AUTHORITY_HOST`` is set, which
    azure-identity reads itself (its own override, for a sovereign proxy or a test authority)."""
    return {} if os.environ.get("AZURE_AUTHORITY_HOST", "").strip() else {"authority": cloud.authority_host}
