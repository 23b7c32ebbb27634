"""The Azurite launcher: free ports, data kept across stop/start, nothing left running."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from azure.data.tables import TableServiceClient

from standins import Azurite
from standins.azurite import find_azurite


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_restart_keeps_data_and_close_leaves_nothing(tmp_path: Path) -> None:
    with Azurite(tmp_path / "azurite") as azurite:
        ports = (azurite.blob_port, azurite.queue_port, azurite.table_port)
        assert f"TableEndpoint=http://127.0.0.1:{azurite.table_port}/devstoreaccount1;" in (azurite.connection_string)
        service = TableServiceClient.from_connection_string(azurite.connection_string)
        service.create_table("state").upsert_entity({"PartitionKey": "p", "RowKey": "r", "Watermark": "w1"})
        first_pid = azurite.pid
        assert first_pid is not None

        azurite.stop()
        assert not any(port_open(p) for p in ports)
        assert not pid_alive(first_pid)
        azurite.start()

        assert (azurite.blob_port, azurite.queue_port, azurite.table_port) == ports
        again = TableServiceClient.from_connection_string(azurite.connection_string)
        assert again.get_table_client("state").get_entity("p", "r")["Watermark"] == "w1"
        pid = azurite.pid
        assert pid is not None
    assert not pid_alive(pid)
    assert not any(port_open(p) for p in ports)


#: A command of the CLI run in the same process before the signal, as tests/cli run them: its SIGTERM handler on
#: the event loop, once removed, set the default back over the emulator's stop, and Azurite outlived the tests.
_A_COMMAND_RAN = (
    "import asyncio, signal\n"
    "from irm_connector.cli._common import signal_handler\n"
    "async def command():\n"
    "    with signal_handler(signal.SIGTERM, lambda: None):\n"
    "        await asyncio.sleep(0)\n"
    "asyncio.run(command())\n"
)


@pytest.mark.parametrize(
    ("signame", "before"),
    [("SIGTERM", ""), ("SIGHUP", ""), ("SIGTERM", _A_COMMAND_RAN)],
    ids=["SIGTERM", "SIGHUP", "SIGTERM after a command ran"],
)
def test_a_python_stopped_by_sigterm_or_sighup_leaves_no_emulator(tmp_path: Path, signame: str, before: str) -> None:
    """SIGTERM (CI's timeout, ``kill``) and SIGHUP (a closed terminal) end Python without its atexit hooks, and the
    emulator, in a session of its own, gets neither: it goes with Python all the same."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys, time\n"
        "from standins import Azurite\n"
        f"azurite = Azurite({str(tmp_path / 'azurite')!r}).start()\n"
        f"{before}"
        "print(azurite.pid, azurite.table_port, flush=True)\n"
        "time.sleep(120)\n"
    )
    repo = Path(__file__).resolve().parents[2]
    child = subprocess.Popen([sys.executable, "-c", script], cwd=repo, stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(repo)})  # fmt: skip
    pid = 0
    try:
        assert child.stdout is not None
        pid, port = (int(word) for word in child.stdout.readline().split())
        assert pid_alive(pid) and port_open(port)
        signum = getattr(signal, signame)
        child.send_signal(signum)
        assert child.wait(30) == -signum  # still ends as the signal says
        deadline = time.monotonic() + 10
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(pid) and not port_open(port)
    finally:
        child.kill()
        child.wait()
        if pid and pid_alive(pid):  # the test failed: its Azurite must not outlive it
            os.kill(pid, signal.SIGKILL)


def test_missing_install_says_npm_ci(tmp_path: Path) -> None:
    (tmp_path / "package.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="npm ci"):
        find_azurite(tmp_path)
