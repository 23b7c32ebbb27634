"""The CLI against Azurite and the HTTPS stand-ins: ``main([...])`` in-process with capsys, or as a
subprocess with the same environment."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from subprocess import Popen  # in Cli, `subprocess` is its method of that name
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from irm_connector.cli import main
from irm_connector.content_queue import create_queue_if_missing
from standins import Azurite, StandIns
from standins.workload import Workload, generate_workload

REPO = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    """A port nothing listens on (bound, then released): an unreachable service."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Cli:
    standins: StandIns
    azurite: Azurite
    env: dict[str, str]
    capsys: pytest.CaptureFixture[str]
    monkeypatch: pytest.MonkeyPatch

    @property
    def queue(self) -> str:
        return self.env["CONTENT_QUEUE"]

    @property
    def poison(self) -> str:
        return self.env["CONTENT_QUEUE"] + "-poison"

    def set(self, **settings: str) -> None:
        for name, value in settings.items():
            self.env[name] = value
            self.monkeypatch.setenv(name, value)

    def unset(self, *names: str) -> None:
        for name in names:
            self.env.pop(name, None)
            self.monkeypatch.delenv(name, raising=False)

    def run(self, *argv: str) -> tuple[int, str, str]:
        """``irm-connector ARGV`` in this process: (exit code, stdout, stderr)."""
        self.capsys.readouterr()
        try:
            code = main(list(argv))
        except SystemExit as exc:  # argparse: --help, usage errors
            code = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return code, out, err

    def json(self, *argv: str) -> tuple[int, Any]:
        code, out, err = self.run(*argv, "--json")
        try:
            return code, json.loads(out)
        except json.JSONDecodeError:
            raise AssertionError(f"not one JSON document (exit {code}):\n{out}\nstderr:\n{err}") from None

    def subprocess(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "irm_connector", *argv],
            env=self.process_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @contextlib.contextmanager
    def spawn(self, *argv: str) -> Iterator[Popen[str]]:
        """``irm-connector ARGV`` as a process of its own, its stdout and stderr piped; killed on the way out
        if it still runs."""
        process = subprocess.Popen(
            [sys.executable, "-m", "irm_connector", *argv],
            env=self.process_env(),
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()

    @staticmethod
    def wait_for(process: Popen[str], condition: Callable[[], bool], *, seconds: float = 60,
                 every: float = 0.05) -> None:  # fmt: skip
        """Wait until ``condition`` holds; fail with the process's output if it ends first or ``seconds`` pass.
        Killed before its output is read: a command that still runs (`run`) would hold the read for ever."""
        deadline = time.monotonic() + seconds
        while not condition():
            if process.poll() is not None or time.monotonic() >= deadline:
                if process.poll() is None:
                    process.kill()
                    what = f"the condition did not hold within {seconds:g} s (the process, still running, was killed)"
                else:
                    what = f"the process ended with {process.returncode} before the condition held"
                out, err = process.communicate()
                raise AssertionError(f"{what}:\n{out}\nstderr:\n{err}")
            time.sleep(every)

    @staticmethod
    def stop(process: Popen[str]) -> tuple[str, str]:
        """Stop a spawned process as the host would (SIGTERM): its stdout and stderr."""
        process.send_signal(signal.SIGTERM)
        return process.communicate(timeout=60)

    def process_env(self) -> dict[str, str]:
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = str(REPO)
        return env

    def publish(self, *, seed: int, records: int, blob_size: tuple[int, int], irm_share: float = 0.05) -> Workload:
        """A subscribed Audit.General whose API lists a fresh workload."""
        self.standins.management.set_subscription("Audit.General", "enabled")
        workload = generate_workload(seed=seed, total_records=records, blob_size=blob_size, irm_share=irm_share,
                                     tenant_id=self.standins.tenant_id)  # fmt: skip
        workload.publish(self.standins.management)
        return workload

    # -- storage ------------------------------------------------------------------------------------

    def _client(self, name: str) -> QueueClient:
        return QueueClient.from_connection_string(
            self.azurite.connection_string,
            name,
            message_encode_policy=TextBase64EncodePolicy(),
            message_decode_policy=TextBase64DecodePolicy(),
        )

    def messages(self, name: str | None = None) -> list[str]:
        async def peek() -> list[str]:
            async with self._client(name or self.queue) as client:
                try:
                    return [m.content for m in await client.peek_messages(max_messages=32)]
                except ResourceNotFoundError:  # not created yet: empty; any other failure fails the test
                    return []

        return asyncio.run(peek())

    def depth(self, name: str | None = None) -> int:
        async def count() -> int:
            async with self._client(name or self.queue) as client:
                try:
                    return int((await client.get_queue_properties()).approximate_message_count or 0)
                except ResourceNotFoundError:  # not created yet: empty; any other failure fails the test
                    return 0

        return asyncio.run(count())

    def put(self, text: str, name: str | None = None) -> None:
        async def send() -> None:
            async with self._client(name or self.queue) as client:
                await create_queue_if_missing(client)
                await client.send_message(text)

        asyncio.run(send())

    def hold_one_message(self, seconds: int) -> str:
        """Receive one message of the content queue and keep it invisible for ``seconds``, as a worker that died
        holding it would; returns its content id."""

        async def hold() -> str:
            async with self._client(self.queue) as client:
                message = await anext(client.receive_messages(visibility_timeout=seconds))
                return str(json.loads(message.content)["contentId"])

        return asyncio.run(hold())

    def age_messages(self, by: timedelta) -> int:
        """Make every content message as old as if the poller had queued it ``by`` earlier and nothing had worked
        the queue since; returns how many."""

        def older(data: dict[str, Any]) -> dict[str, Any]:
            queued = datetime.fromisoformat(data["queuedAt"].replace("Z", "+00:00"))
            return {**data, "queuedAt": (queued - by).strftime("%Y-%m-%dT%H:%M:%SZ")}

        return self._move_all(older, self.queue)

    def park(self, **fields: Any) -> int:
        """Move every content message to the poison queue, as the host does after ``maxDequeueCount``, with
        ``fields`` of its JSON changed (what earlier deliveries left in it); returns how many."""
        return self._move_all(lambda data: {**data, **fields}, self.poison)

    def _move_all(self, rewrite: Callable[[dict[str, Any]], dict[str, Any]], to: str) -> int:
        """Every message of the content queue, its JSON rewritten, sent to queue ``to`` and deleted here."""

        async def move() -> int:
            async with self._client(self.queue) as source, self._client(to) as target:
                await create_queue_if_missing(target)
                # All taken first (invisible for a minute), so that none is met again when ``to`` is this queue.
                taken = [m async for m in source.receive_messages(messages_per_page=32, visibility_timeout=60)]
                for message in taken:
                    await target.send_message(json.dumps(rewrite(json.loads(message.content))))
                    await source.delete_message(message)
            return len(taken)

        return asyncio.run(move())

    def rows(self, stream: str = "Custom-IRMAlerts") -> list[dict[str, Any]]:
        return self.standins.ingestion.rows(stream)


@pytest.fixture
def cli(
    standins: StandIns,
    azurite: Azurite,
    connector_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Cli:
    return Cli(standins=standins, azurite=azurite, env=connector_env, capsys=capsys, monkeypatch=monkeypatch)
