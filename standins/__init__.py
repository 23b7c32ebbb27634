"""Local HTTPS stand-ins for the Microsoft services the IRM connector talks to.

Entra ID (msal and managed identity tokens), the Office 365 Management Activity API and the
Azure Monitor Logs Ingestion API, each a real aiohttp HTTPS server on 127.0.0.1 behaving as the
Microsoft documentation says, so the real SDKs run their real code paths; plus a launcher for
Azurite and a deterministic workload generator. See standins/README.md.
"""

from standins.azurite import Azurite
from standins.base import ApiError, Clock, RequestRecord
from standins.entra import EntraStandIn
from standins.ingestion import IngestionStandIn, IngestStat, load_streams
from standins.management import ManagementStandIn
from standins.services import StandIns
from standins.tls import ClientCertificate, TestCA
from standins.tokens import TokenInfo, TokenRegistry
from standins.workload import Workload, WorkloadBlob, generate_workload

__all__ = [
    "ApiError",
    "Azurite",
    "ClientCertificate",
    "Clock",
    "EntraStandIn",
    "IngestStat",
    "IngestionStandIn",
    "ManagementStandIn",
    "RequestRecord",
    "StandIns",
    "TestCA",
    "TokenInfo",
    "TokenRegistry",
    "Workload",
    "WorkloadBlob",
    "generate_workload",
    "load_streams",
]
