"""Launch Azurite (the real storage emulator) for tests, the demo and the benchmark.

Why a launcher: every test session needs its own emulator on free ports, with its data on
disk so a test can stop and restart it on the same ports (a storage outage the connector must
ride out) and find its queues and tables intact. The process runs in its own process group
that :meth:`Azurite.stop` (and an ``atexit`` hook) kills, so no emulator outlives Python; a SIGTERM, which
ends Python without running ``atexit``, stops them first (CI's timeout, ``kill``, a stopped container).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from pathlib import Path
from types import TracebackType

ACCOUNT_NAME = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
HOST = "127.0.0.1"

_live: weakref.WeakSet[Azurite] = weakref.WeakSet()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: each socket is held until all are chosen, or the system may hand out one
    port twice (3 times in 20,000 draws of three), and Azurite would not start."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


def find_repo_root(start: Path | None = None) -> Path:
    """The nearest directory above ``start`` holding ``package.json`` (where npm ci ran)."""
    here = (start or Path(__file__)).resolve()
    for candidate in [here, *here.parents]:
        if (candidate / "package.json").is_file():
            return candidate
    raise FileNotFoundError(f"no package.json above {here}")


def find_azurite(repo_root: Path | None = None) -> Path:
    root = repo_root or find_repo_root()
    binary = root / "node_modules" / ".bin" / "azurite"
    if not binary.exists():
        raise FileNotFoundError(f"Azurite is not installed ({binary} is missing): run `npm ci` in {root} first.")
    return binary


class Azurite:
    """One Azurite process (blob, queue, table) on free ports with data in ``location``."""

    def __init__(
        self,
        location: Path | str | None = None,
        *,
        repo_root: Path | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        self.binary = find_azurite(repo_root)
        self._tmp: str | None = None
        if location is None:
            self._tmp = tempfile.mkdtemp(prefix="azurite-")
            location = self._tmp
        self.location = Path(location)
        self.location.mkdir(parents=True, exist_ok=True)
        self.startup_timeout = startup_timeout
        self.blob_port = self.queue_port = self.table_port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self.log_path = self.location / "azurite.log"

    # ---- endpoints ---------------------------------------------------------------------
    @property
    def blob_endpoint(self) -> str:
        return f"http://{HOST}:{self.blob_port}/{ACCOUNT_NAME}"

    @property
    def queue_endpoint(self) -> str:
        return f"http://{HOST}:{self.queue_port}/{ACCOUNT_NAME}"

    @property
    def table_endpoint(self) -> str:
        return f"http://{HOST}:{self.table_port}/{ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        """The devstoreaccount1 connection string with this instance's http endpoints."""
        if not self.blob_port:
            raise RuntimeError("Azurite has not been started yet")
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};QueueEndpoint={self.queue_endpoint};"
            f"TableEndpoint={self.table_endpoint};"
        )

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    # ---- lifecycle ---------------------------------------------------------------------
    def start(self) -> Azurite:
        """Start (or restart on the same ports) and wait until all three ports accept."""
        if self.running:
            return self
        if not self.blob_port:
            self.blob_port, self.queue_port, self.table_port = free_ports(3)
        ports = (self.blob_port, self.queue_port, self.table_port)
        busy = [p for p in ports if _port_open(p)]
        if busy:
            raise RuntimeError(f"ports {busy} are already in use; cannot start Azurite on them")
        args = [
            str(self.binary),
            "--silent",
            "--skipApiVersionCheck",
            "--loose",
            "--disableProductStyleUrl",
            "--disableTelemetry",
            "--location",
            str(self.location),
            "--blobHost",
            HOST,
            "--blobPort",
            str(self.blob_port),
            "--queueHost",
            HOST,
            "--queuePort",
            str(self.queue_port),
            "--tableHost",
            HOST,
            "--tablePort",
            str(self.table_port),
        ]
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                args,
                cwd=self.location,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: node and its children die together
            )
        _live.add(self)
        _stop_on_signals()
        deadline = time.monotonic() + self.startup_timeout
        while not all(_port_open(p) for p in ports):
            if self._process.poll() is not None:
                output = self.log_path.read_text(errors="replace")[-2000:]
                self._process = None
                raise RuntimeError(f"Azurite exited during startup:\n{output}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Azurite did not open ports {ports} within {self.startup_timeout}s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Kill the process group and wait; data in ``location`` stays."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout)
        # Whatever the leader did, make sure no child of the group survives.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        ports = (self.blob_port, self.queue_port, self.table_port)
        while any(_port_open(p) for p in ports) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> Azurite:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop, and delete ``location`` if this instance created it."""
        self.stop()
        _live.discard(self)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> Azurite:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@atexit.register
def _stop_all() -> None:
    for instance in list(_live):
        with contextlib.suppress(Exception):
            instance.close()


def _stop_on_signals() -> None:
    """SIGTERM (a ``kill``) and SIGHUP (a closed terminal) stop every emulator of this process, then end it as the
    signal would have: the emulator runs in a session of its own, which neither signal reaches, and Python ends on
    them without running ``atexit``. Only for a signal nobody handles yet, and only from the main thread (Python's
    rule for signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def stop_then_die(signum: int, frame: object) -> None:
        _stop_all()
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) == signal.SIG_DFL:
            signal.signal(signum, stop_then_die)
