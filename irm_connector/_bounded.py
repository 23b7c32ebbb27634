"""The storage clients' transport: inside an invocation, no Table Storage or queue call outlives its deadline.

The SDKs bound a call only by their own retry settings: up to seven tries of up to ``HTTP_TIMEOUT`` each,
with waits between them. Storage that answers slowly would let one call run past the function timeout, and
a timed-out invocation makes the host restart the worker, killing its other invocations half-way. Every try
and every retry wait of azure-core passes through the transport (``send`` and ``sleep``), so the bound sits
here, for every storage call at once: it reads the deadline of the running invocation from the context
(:meth:`Deadline.applied <irm_connector.deadline.Deadline.applied>`) and raises
:class:`~irm_connector.errors.StorageDeadlineError`, a storage failure like any other, when the time left
cannot hold a try or a wait. Outside an invocation (the CLI) calls are not bounded.

With identity-based storage settings, a call first needs a token, and azure-identity sends that request
through a transport of its own: :class:`BoundedCredential` bounds it the same way, by the deadline of the
invocation that asks. Not bounded: azure-core's token policy, with its lock, is shared by the invocations of a
process, so while one invocation's token request hangs, another's storage calls wait for that lock until the
first one's deadline, not their own (a token is asked for about once an hour, and the endpoint is this host's).
"""

from __future__ import annotations

from collections.abc import Awaitable
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import urlsplit

from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.credentials_async import AsyncTokenCredential
from azure.data.tables.aio import TableClient, TableServiceClient

from . import deadline as _deadline
from ._tls import ProxyTransport
from .errors import StorageDeadlineError

__all__ = ["BoundedCredential", "BoundedTableServiceClient", "BoundedTransport", "within"]

_T = TypeVar("_T")

#: The storage call this task last sent, for the error of a retry wait (``sleep`` is not told the request).
_last_call: ContextVar[str] = ContextVar("irm_connector_storage_call", default="a storage call")


async def within(what: str, call: Awaitable[_T]) -> _T:
    """``call``, cut short with :class:`StorageDeadlineError` when it would outlast the invocation's deadline."""
    return await _deadline.within(what, call, error=StorageDeadlineError)


class BoundedTransport(ProxyTransport):
    """azure-core's aiohttp transport (with the environment's proxy), each try and each retry wait ended within
    the invocation's deadline."""

    async def send(self, request: Any, **kwargs: Any) -> Any:
        # The path without its query (it can hold a SAS token) or entity keys: the table or queue is enough.
        what = f"{request.method} {urlsplit(request.url).path.split('(', 1)[0]}"
        _last_call.set(what)
        return await within(f"storage call {what}", super().send(request, **kwargs))

    async def sleep(self, duration: float) -> None:
        deadline = _deadline.current_deadline()
        if deadline is not None and not deadline.allows(duration):
            what = f"retrying storage call {_last_call.get()}"
            raise deadline.expire(what, duration, error=StorageDeadlineError)
        await super().sleep(duration)


class BoundedCredential(AsyncTokenCredential):
    """The storage clients' credential, each token request ended within the invocation's deadline. Closing
    it is left to the owner of the credential it wraps."""

    def __init__(self, credential: AsyncTokenCredential) -> None:
        self._credential = credential

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return await within("token request for storage", self._credential.get_token(*scopes, **kwargs))

    async def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        # azure-core asks for this first when a credential has it; azure-identity's credentials all do.
        get_token_info = getattr(self._credential, "get_token_info", None)
        if get_token_info is None:
            token = await self.get_token(*scopes)
            return AccessTokenInfo(token.token, token.expires_on)
        info: AccessTokenInfo = await within("token request for storage", get_token_info(*scopes, options=options))
        return info

    async def close(self) -> None:
        return None

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class BoundedTableServiceClient(TableServiceClient):
    """The table service client whose tables' clients send through its own transport. azure-data-tables' own
    ``get_table_client`` hands them that transport in a wrapper that forwards ``send`` but not ``sleep``: the
    retry waits of every entity call, claims and marks among them, escaped the invocation's deadline (a 16 s wait
    begun just inside it ended past the function timeout). Each table's client here is built as the service was,
    with the same transport (shared: the transport does not own its session) and retry settings."""

    def __init__(self, endpoint: str, *, credential: Any = None, **kwargs: Any) -> None:
        super().__init__(endpoint, credential=credential, **kwargs)
        self._table_kwargs = kwargs

    def get_table_client(self, table_name: str, **kwargs: Any) -> TableClient:
        return TableClient(self.url, table_name=table_name, credential=self.credential,
                           **{**self._table_kwargs, **kwargs})  # fmt: skip
