"""Checks a command makes before it starts work: can it reach storage, and can it get the tokens it needs?

The connector's own clients retry a failing call for half a minute and more (right for the function app,
where a storage restart must not cost a commit), and a credential that cannot work where the command runs
would fail every queue message until each lands in the poison queue. One unretried request per service,
bounded by ``HTTP_TIMEOUT``, finds both at once and names the endpoint and the likely cause.
"""

from __future__ import annotations

import asyncio
import os
from urllib.parse import urlsplit

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)

from irm_connector._network import network_cause
from irm_connector._tls import azure_session
from irm_connector.auth import identity_endpoint_known
from irm_connector.redaction import redact
from irm_connector.runtime import Runtime, get_runtime, storage_clients
from irm_connector.settings import Settings

from ._failures import EXIT_UNREACHABLE, Failure, OperatorError, storage_refused, storage_settings

__all__ = ["check_ingestion_token", "check_management_token", "check_storage", "ready"]



def _first_line(exc: ClientAuthenticationError) -> str:
    text = redact(str(exc.message or exc)).strip()  # masked before it is cut, as a whole secret is masked
    return (text.splitlines()[0] if text else type(exc).__name__)[:200].rstrip(".")


def _endpoint(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _local(url: str) -> bool:
    return (urlsplit(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


def _storage_failure(exc: BaseException, url: str, settings: Settings) -> Failure:
    endpoint = _endpoint(url)
    where = storage_settings(connection_string=bool(settings.storage.connection_string))
    if isinstance(exc, ClientAuthenticationError) and not exc.status_code:
        return Failure(
            "storage-token",
            f"no token for Storage at {endpoint}: {_first_line(exc)}",
            _identity_hint("Storage Queue Data Contributor and Storage Table Data Contributor on the account"),
            EXIT_UNREACHABLE,
        )
    if isinstance(exc, HttpResponseError) and exc.status_code in (401, 403):
        return storage_refused(exc, where)
    cause = network_cause(exc)
    if cause == "no answer (timed out)":
        cause = f"no answer within HTTP_TIMEOUT ({settings.http_timeout.total_seconds():g}s)"
    hint = (
        "is Azurite running? (scripts/azurite.sh); else check AzureWebJobsStorage"
        if _local(url)
        else f"check {where} (the account name or endpoints), the network and the storage account's firewall"
    )
    return Failure("storage-unreachable", f"cannot reach Storage at {endpoint} ({cause})", hint, EXIT_UNREACHABLE)


def _identity_hint(roles: str) -> str:
    if identity_endpoint_known():
        return f"check AZURE_CLIENT_ID (the function app's identity) and that it has {roles}"
    if os.environ.get("AZURE_CLIENT_ID") and os.environ.get("AZURE_TENANT_ID") and any(
        os.environ.get(name) for name in ("AZURE_CLIENT_SECRET", "AZURE_CLIENT_CERTIFICATE_PATH")
    ):
        # DefaultAzureCredential tries the environment's service principal before `az login`.
        return (f"the service principal of AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET (or "
                f"AZURE_CLIENT_CERTIFICATE_PATH) is used first: check them (-vv shows its error), and that it has "
                f"{roles}; unset them to use `az login`")  # fmt: skip
    return f"off Azure this is your own identity: sign in with `az login` as an account with {roles}"


async def check_storage(settings: Settings) -> None:
    """One request to the content queue and one to the state table, unretried; raises
    :class:`OperatorError` naming the endpoint and the likely cause."""
    credentials: list[AsyncTokenCredential] = []
    async with azure_session() as session:
        tables, queue, poison = storage_clients(settings.storage, settings, credentials, session, retried=False)

        async def queue_probe() -> None:
            await queue.get_queue_properties()

        async def table_probe() -> None:
            table = tables.get_table_client(f"{settings.table_prefix}state")
            async for _ in table.query_entities("PartitionKey eq 'preflight'", results_per_page=1):
                break

        try:
            results = await asyncio.gather(queue_probe(), table_probe(), return_exceptions=True)
        finally:
            for closer in (queue.close, poison.close, tables.close, *(c.close for c in credentials)):
                await closer()
    for result, url in zip(results, (queue.url, tables.url), strict=True):
        if isinstance(result, ResourceNotFoundError):
            continue  # reachable: the queue or table is created when first needed
        if isinstance(result, HttpResponseError | ServiceRequestError | ServiceResponseError):
            raise OperatorError(_storage_failure(result, url, settings)) from result
        if isinstance(result, BaseException):
            raise result


async def check_management_token(rt: Runtime) -> None:
    """A token for the Management API, once, without the API client's retries: an
    :class:`~irm_connector.errors.AuthenticationError` says why not."""
    await rt.tokens.get_token()


async def check_ingestion_token(rt: Runtime) -> None:
    """A token for Logs Ingestion from the runtime's Azure credential."""
    audience = rt.settings.azure_cloud.monitor_audience  # the workspace's cloud's, as the runtime's client asks
    try:
        await rt.credentials[0].get_token(f"{audience}/.default")
    except ClientAuthenticationError as exc:
        first = _first_line(exc)
        raise OperatorError(
            Failure(
                "ingestion-token",
                f"no token for Logs Ingestion ({audience}): {first}",
                _identity_hint("Monitoring Metrics Publisher on the data collection rule"),
                EXIT_UNREACHABLE,
            )
        ) from exc


async def ready(settings: Settings, *, management: bool = False, ingestion: bool = False) -> None:
    """The checks a command needs: storage (every command: the tenant's Management API request budget is kept
    there too), a Management API token (the commands that ask the API), a Logs Ingestion token (the commands that
    send rows)."""
    await check_storage(settings)
    if management or ingestion:
        rt = await get_runtime(settings)
        if management:
            await check_management_token(rt)
        if ingestion:
            await check_ingestion_token(rt)
