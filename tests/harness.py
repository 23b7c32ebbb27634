"""Drives the connector through its function entry points, the way the Functions host does."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.core.pipeline.transport import AioHttpTransport
from azure.data.tables import UpdateMode
from azure.data.tables.aio import TableClient
from azure.functions.timer import TimerRequest
from azure.storage.queue import TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from irm_connector.cli.queue_trigger import HostQueueOptions, QueueWorker, WorkerStats
from irm_connector.content_queue import LenientBase64DecodePolicy, create_queue_if_missing
from irm_connector.runtime import close_runtimes
from standins import Azurite, StandIns

_FUNCTIONS: dict[str, Any] | None = None
REPO = Path(__file__).resolve().parents[1]


def functions() -> dict[str, Any]:
    """The app's functions, indexed once as the host does (``get_functions`` may run once per app)."""
    global _FUNCTIONS
    if _FUNCTIONS is None:
        from function_app import app

        _FUNCTIONS = {cast("str", f.get_function_name()): f.get_user_function() for f in app.get_functions()}  # every function is named
    return _FUNCTIONS


@dataclass
class ConnectorHarness:
    standins: StandIns
    azurite: Azurite
    env: dict[str, str]
    monkeypatch: pytest.MonkeyPatch

    @property
    def queue_name(self) -> str:
        return self.env["CONTENT_QUEUE"]

    def set(self, **settings: str) -> None:
        for name, value in settings.items():
            self.env[name] = value
            self.monkeypatch.setenv(name, value)

    async def poll(self, *, past_due: bool = False) -> Any:
        return await functions()["poller"](TimerRequest(past_due=past_due))

    async def process(self, body: str | bytes, *, dequeue_count: int = 1) -> Any:
        raw = body.encode() if isinstance(body, str) else body
        message = func.queue.QueueMessage(id="m", body=raw, dequeue_count=dequeue_count)  # type: ignore[no-untyped-call]  # azure.functions leaves it unannotated
        return await functions()["processor"](message)

    def queue_client(self, name: str | None = None) -> QueueClient:
        return QueueClient.from_connection_string(
            self.azurite.connection_string,
            name or self.queue_name,
            message_encode_policy=TextBase64EncodePolicy(),
            message_decode_policy=LenientBase64DecodePolicy(),
            # The host's side, as the Functions host does it: not the connector's code, and deaf to the proxy
            # and .netrc of the environment a test sets for the connector.
            transport=AioHttpTransport(use_env_settings=False),
        )

    async def drain(self, *, max_messages: int | None = None, max_dequeue_count: int | None = None) -> WorkerStats:
        """Work the queue as the host would until it is empty; failed messages come back at once."""
        host = HostQueueOptions.from_environment()
        options = replace(host, max_dequeue_count=max_dequeue_count or host.max_dequeue_count, visibility_timeout=0)
        async with self.queue_client() as main, self.queue_client(self.queue_name + "-poison") as poison:
            await create_queue_if_missing(main)
            worker = QueueWorker(main, poison, functions()["processor"], options)
            return await worker.run(max_messages=max_messages)

    async def messages(self, name: str | None = None) -> list[str]:
        """Peek the texts of up to 32 messages."""
        async with self.queue_client(name) as client:
            try:
                return [m.content for m in await client.peek_messages(max_messages=32)]
            except ResourceNotFoundError:  # not created yet: empty; any other failure fails the test
                return []

    async def queue_length(self, name: str | None = None) -> int:
        async with self.queue_client(name) as client:
            try:
                return int((await client.get_queue_properties()).approximate_message_count or 0)
            except ResourceNotFoundError:  # not created yet: empty; any other failure fails the test
                return 0

    async def cli(self, *argv: str) -> Any:
        """``irm-connector ARGV --json`` as an operator runs it: a process of its own, with these settings."""
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "irm_connector", *argv, "--json"],
            env={**os.environ, "PYTHONPATH": str(REPO)},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.stdout, done.stderr
        return json.loads(done.stdout)

    async def let_the_api_wait_pass(self) -> None:
        """:func:`let_the_api_wait_pass`; the runtime is built again, as an instance started after the wait would be,
        since each keeps the wait it last knew of."""
        await let_the_api_wait_pass(self.azurite.connection_string, self.env)
        await close_runtimes()

    def rows(self, stream: str = "Custom-IRMAlerts") -> list[dict[str, Any]]:
        return self.standins.ingestion.rows(stream)

    async def close(self) -> None:
        await close_runtimes()


async def let_the_api_wait_pass(connection_string: str, env: dict[str, str]) -> None:
    """The wait the Management API asked of the tenant (``Retry-After``, kept in the request budget's entity for every
    instance) is over, as after that long: a test cannot sleep ten minutes."""
    await _set_api_wait(connection_string, env, 0.0, recorded_only=True)


async def record_api_wait(connection_string: str, env: dict[str, str], seconds: float) -> None:
    """Another instance met a ``Retry-After``: the tenant's wait, in the request budget's entity (which must exist: a
    request was made), ends ``seconds`` from now (Azurite's clock is this machine's)."""
    await _set_api_wait(connection_string, env, time.time() + seconds, recorded_only=False)


async def _set_api_wait(connection_string: str, env: dict[str, str], until: float, *, recorded_only: bool) -> None:
    table_name = f"{env.get('STATE_TABLE_PREFIX', 'irm').lower()}budget"
    async with TableClient.from_connection_string(connection_string, table_name) as table:
        entities = [e async for e in table.list_entities()]
        assert entities or recorded_only, "no request budget entity yet: make a request first"
        for entity in entities:
            if "PausedUntil" in entity or not recorded_only:
                await table.update_entity({"PartitionKey": entity["PartitionKey"], "RowKey": entity["RowKey"],
                                           "PausedUntil": until}, mode=UpdateMode.MERGE)  # fmt: skip


def env(name: str) -> str:
    return os.environ[name]
