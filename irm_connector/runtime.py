"""The long-lived clients of one worker process, built on first use and reused across invocations.

msal caches tokens in its application object, aiohttp and the Azure SDKs pool connections, and the
request budget's reservations are shared by every invocation of the process: so these are kept, one set
per event loop and settings. Building them does no network work; the first call does.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from azure.core.credentials_async import AsyncTokenCredential
from azure.data.tables.aio import TableServiceClient
from azure.monitor.ingestion.aio import LogsIngestionClient
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from ._bounded import BoundedCredential, BoundedTableServiceClient, BoundedTransport
from ._tls import azure_client_kwargs, azure_session, ssl_context
from .auth import IdentityTokenProvider, ManagementTokenProvider, MsalTokenProvider, azure_credential
from .body_budget import BodyBudget
from .content_queue import ContentQueue, LenientBase64DecodePolicy
from .ingestion import SentinelIngestor, UploadRetryPolicy
from .management_api import ManagementActivityClient, RetryPolicy
from .request_budget import SharedRequestBudget
from .settings import Settings, StorageSettings
from .state import RequestSlots, StateStore

__all__ = ["Runtime", "build_runtime", "close_runtimes", "get_runtime", "storage_clients"]

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything an invocation talks to."""

    settings: Settings
    session: aiohttp.ClientSession
    #: the connection pool of the Azure SDK clients and credentials
    azure_session: aiohttp.ClientSession
    tokens: ManagementTokenProvider
    management: ManagementActivityClient
    state: StateStore
    queue: ContentQueue
    ingestor: SentinelIngestor
    credentials: list[AsyncTokenCredential]
    #: the bytes of blob bodies this process holds at once (MAX_BLOB_MB_IN_FLIGHT)
    bodies: BodyBudget

    async def close(self) -> None:
        closers = [self.queue.close, self.state.close, self.ingestor.close, self.tokens.close, self.session.close]
        closers += [c.close for c in self.credentials]
        closers.append(self.azure_session.close)
        for closer in closers:
            try:
                await closer()
            except Exception:
                log.debug("closing a client failed", exc_info=True)


# Keyed by loop id; the loop itself is kept beside it so a new loop that reuses a dead one's id is noticed.
_runtimes: dict[int, tuple[asyncio.AbstractEventLoop, Runtime]] = {}


def storage_clients(
    storage: StorageSettings,
    settings: Settings,
    credentials: list[AsyncTokenCredential],
    session: aiohttp.ClientSession,
    *,
    retried: bool = True,
) -> tuple[TableServiceClient, QueueClient, QueueClient]:
    """The table service and the two queue clients, from a connection string or identity-based settings, over
    ``session`` (the caller closes it after them). ``retried=False``: one try per call, for a check that must
    answer at once."""
    once = {} if retried else {"retry_total": 0}

    def tables_kwargs() -> dict[str, Any]:
        # The SDKs' default backoff is slow (queues: from 15 s); a short outage should cost seconds. Connection
        # failures get as many tries as the rest: a commit lost to a storage restart means rows sent again.
        # Inside an invocation, the transport ends every try and wait within its deadline.
        return {
            **azure_client_kwargs(settings, session, transport=BoundedTransport),
            "retry_total": 6, "retry_connect": 6, "retry_backoff_factor": 0.5, "retry_backoff_max": 20, **once,
        }  # fmt: skip

    def queue_kwargs() -> dict[str, Any]:
        return {
            **azure_client_kwargs(settings, session, transport=BoundedTransport),
            "message_encode_policy": TextBase64EncodePolicy(),
            "message_decode_policy": LenientBase64DecodePolicy(),
            # Read by the client's own ExponentialRetry: waits 1 s, 3 s, 5 s, 9 s, 17 s.
            "initial_backoff": 1, "increment_base": 2, "retry_total": 5, "retry_connect": 5, **once,
        }  # fmt: skip

    if storage.connection_string:
        conn = storage.connection_string
        tables = BoundedTableServiceClient.from_connection_string(conn, **tables_kwargs())
        main = QueueClient.from_connection_string(conn, settings.content_queue, **queue_kwargs())
        poison = QueueClient.from_connection_string(conn, settings.poison_queue, **queue_kwargs())
        return tables, main, poison
    assert storage.table_service_uri is not None
    assert storage.queue_service_uri is not None
    credential = azure_credential(
        settings, storage.client_id, managed_identity_only=storage.credential_kind == "managedidentity", session=session
    )
    credentials.append(credential)  # closed with the runtime
    # Inside an invocation, its token requests end within the deadline too.
    bounded = BoundedCredential(credential)
    tables = BoundedTableServiceClient(storage.table_service_uri, credential=bounded, **tables_kwargs())
    main = QueueClient(storage.queue_service_uri, settings.content_queue, credential=bounded, **queue_kwargs())
    poison = QueueClient(storage.queue_service_uri, settings.poison_queue, credential=bounded, **queue_kwargs())
    return tables, main, poison


async def build_runtime(settings: Settings) -> Runtime:
    """Build the clients for ``settings``; no network or token work happens here. What was built before a
    constructor refused its settings is closed again: left open, each failed invocation logged two unclosed
    sessions beside the reason it failed."""
    # A certificate that does not load raises here, before a connection pool exists that nothing would close.
    msal_tokens = None if settings.auth_mode == "managed_identity" else MsalTokenProvider(settings)
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ssl_context(), limit=64),
        raise_for_status=False,
    )
    azure = azure_session()
    credentials: list[AsyncTokenCredential] = []
    try:
        return _runtime_on(settings, msal_tokens, session, azure, credentials)
    except BaseException:
        for credential in credentials:
            await credential.close()
        await session.close()
        await azure.close()
        raise


def _runtime_on(
    settings: Settings,
    msal_tokens: MsalTokenProvider | None,
    session: aiohttp.ClientSession,
    azure: aiohttp.ClientSession,
    credentials: list[AsyncTokenCredential],
) -> Runtime:
    tokens: ManagementTokenProvider = msal_tokens or IdentityTokenProvider(settings, azure)
    credentials.append(azure_credential(settings, session=azure))
    tables, main, poison = storage_clients(settings.storage, settings, credentials, azure)
    state = StateStore.from_settings(tables, settings)
    # One request budget for every instance of the tenant, kept in Table Storage.
    budget = SharedRequestBudget(RequestSlots(state.tables), settings.tenant_id, settings.max_requests_per_minute)
    management = ManagementActivityClient(
        api_root=settings.api_root,
        tenant_id=settings.tenant_id,
        publisher_id=settings.publisher_id,
        tokens=tokens,
        session=session,
        limiter=budget,
        retry=RetryPolicy(timeout=settings.http_timeout.total_seconds()),
    )
    ingestion = LogsIngestionClient(
        endpoint=settings.ingestion_endpoint,
        credential=credentials[0],
        # The SDK asks for the public cloud's audience unless told: every upload fails in the other clouds.
        credential_scopes=[f"{settings.azure_cloud.monitor_audience}/.default"],
        retry_policy=UploadRetryPolicy(),
        **azure_client_kwargs(settings, azure),
    )
    return Runtime(
        settings=settings,
        session=session,
        azure_session=azure,
        tokens=tokens,
        management=management,
        state=state,
        queue=ContentQueue(main, poison),
        ingestor=SentinelIngestor(ingestion, settings.dcr_immutable_id, endpoint=settings.ingestion_endpoint),
        credentials=credentials,
        bodies=BodyBudget(settings.max_blob_bytes_in_flight),
    )


async def get_runtime(settings: Settings) -> Runtime:
    """The runtime of the running event loop for ``settings``, built on first use."""
    loop = asyncio.get_running_loop()
    entry = _runtimes.get(id(loop))
    if entry is not None and entry[0] is loop:
        if entry[1].settings == settings:
            return entry[1]
        await entry[1].close()
    runtime = await build_runtime(settings)
    _runtimes[id(loop)] = (loop, runtime)
    return runtime


async def close_runtimes() -> None:
    """Close the runtime of the running loop (tests, the CLI, shutdown)."""
    loop = asyncio.get_running_loop()
    entry = _runtimes.pop(id(loop), None)
    if entry is not None and entry[0] is loop:
        await entry[1].close()
