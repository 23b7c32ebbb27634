"""The scripts a user runs. ``scripts/azurite.sh``: the Azurite that README's local run (``func start``) uses: it starts, the SDKs the
connector uses can work against it with the development connection string's account, and Ctrl-C stops it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from azure.data.tables import TableServiceClient
from azure.storage.queue import QueueClient

from standins.azurite import ACCOUNT_KEY, ACCOUNT_NAME, free_ports

REPO = Path(__file__).resolve().parents[2]


def _wait_open(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stdout.read().decode() if process.stdout else "exited"
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"port {port} never opened")


def test_azurite_script_serves_queues_and_tables_with_the_sdks_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    blob, queue, table = free_ports(3)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "AZURITE_BLOB_PORT": str(blob),
        "AZURITE_QUEUE_PORT": str(queue),
        "AZURITE_TABLE_PORT": str(table),
        "AZURITE_LOCATION": str(tmp_path / "data"),
    }
    process = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "azurite.sh")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        for port in (queue, table):
            _wait_open(port, process)
        conn = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT_NAME};AccountKey={ACCOUNT_KEY};"
            f"QueueEndpoint=http://127.0.0.1:{queue}/{ACCOUNT_NAME};TableEndpoint=http://127.0.0.1:{table}/{ACCOUNT_NAME};"
        )
        # The SDK versions the connector ships with: an Azurite without --skipApiVersionCheck refuses them.
        with QueueClient.from_connection_string(conn, "scripttest") as client:
            client.create_queue()
            client.send_message("hello")
            assert [m.content for m in client.receive_messages()] == ["hello"]
        with TableServiceClient.from_connection_string(conn) as tables:
            tables.create_table("scripttest")
            assert [t.name for t in tables.list_tables()] == ["scripttest"]
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 0  # Azurite closes its servers on Ctrl-C and ends cleanly
        for port in (queue, table):  # nothing left listening
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, port
        output = process.stdout.read().decode() if process.stdout else ""
        assert f"queue {queue}" in output and "\x1b[" not in output  # no colour codes when not on a terminal
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_the_bootstrap_installs_the_command_that_works_from_any_directory(tmp_path: Path) -> None:
    import sys

    command = Path(sys.executable).parent / "irm-connector"
    result = subprocess.run(
        [str(command), "--version"], cwd=tmp_path, env={"PATH": os.environ["PATH"]}, capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("irm-connector "), result.stderr


def test_the_package_builds_with_the_setuptools_it_declares_and_nothing_it_deprecates(tmp_path: Path) -> None:
    """The bootstrap's editable install builds with the newest setuptools unless pyproject.toml bounds it, and
    setuptools said builds using what it deprecated "will no longer be supported" after 2027-02-18: on that
    release every fresh checkout's first command would fail. Built here in an isolated environment, as pip does."""
    import shutil
    import sys
    import zipfile

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "irm_connector", source / "irm_connector", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check", "-v", "-w",
         str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "Deprecat" not in result.stdout + result.stderr, result.stdout[-4000:] + result.stderr[-4000:]
    (wheel,) = (tmp_path / "dist").glob("irm_connector-*.whl")
    with zipfile.ZipFile(wheel) as built:
        names = built.namelist()
        entry_points = built.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "irm_connector/columns.json" in names  # the one source of the output columns travels with the code
    assert "irm-connector = irm_connector.__main__:main" in entry_points


def _processes_under(path: Path) -> list[int]:
    """The live processes whose command line names ``path`` (a zombie has none: it has ended)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(path) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:  # gone meanwhile
                continue
    return found


def _kill_leftovers(script: subprocess.Popen[Any], path: Path) -> None:
    """After a test, whatever it passed or failed: the processes naming ``path``, and the script's group."""
    for pid in _processes_under(path):
        os.kill(pid, signal.SIGKILL)
    if script.poll() is None:
        os.killpg(script.pid, signal.SIGKILL)
        script.wait()


def test_a_script_killed_by_sigterm_stops_its_demo_and_the_emulator_with_it(tmp_path: Path) -> None:
    """bash runs no trap while a foreground child runs: `kill` of scripts/demo.sh (a supervisor's, a build agent's)
    ended bash alone, and the demo and its Azurite ran on, their temporary directory deleted under them."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", str(tmp_path)), "TMPDIR": str(tmp_path)}
    # A demo long enough (a million records) to be running still when the script is killed.
    script = subprocess.Popen(
        ["bash", str(REPO / "scripts" / "demo.sh"), "--records", "1000000", "--progress", "0", "--out", str(tmp_path / "demo")],
        env=env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # stdin not a terminal, as under a supervisor: a terminal keeps the child in front
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not any("azurite" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
                      for pid in _processes_under(tmp_path) if Path(f"/proc/{pid}").exists()):  # fmt: skip
            assert script.poll() is None and time.monotonic() < deadline, "the demo never started its emulator"
            time.sleep(0.2)
        os.kill(script.pid, signal.SIGTERM)  # the script alone, as `kill <pid>` does
        ended = script.wait(timeout=60)
        deadline = time.monotonic() + 30
        while _processes_under(tmp_path) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes_under(tmp_path)
        assert ended == 128 + signal.SIGTERM  # the script ends as its child did
        # Nothing of the run is left but its output: not the emulator's data, not the test CA and its keys (they
        # stayed in the output folder).
        assert not list(tmp_path.rglob("*.pem")) and not list(tmp_path.rglob("*azurite*"))
        assert {p.name for p in tmp_path.iterdir()} <= {"demo"}
    finally:
        _kill_leftovers(script, tmp_path)


def test_a_script_killed_while_it_installs_ends_the_installer_with_it(tmp_path: Path) -> None:
    """pip and npm ran as plain children of the script: a `kill` of scripts/demo.sh or test.sh during the first
    install ended bash alone, and pip went on installing into .venv, unstamped, beside the next run's. They run as
    the script's children now (run_installer); killed, the script ends with the signal's status, not "failed"."""
    marker = tmp_path / "installing"
    script = tmp_path / "install.sh"
    script.write_text(
        "set -euo pipefail\n"
        f"source {REPO / 'scripts' / '_children.sh'}\n"
        f"if ! run_installer {sys.executable} -c 'import time; time.sleep(300)' {marker} >{tmp_path / 'log'} 2>&1; then\n"
        "  echo 'install failed'; exit 2\nfi\n"
    )
    process = subprocess.Popen(["bash", str(script)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not _processes_under(marker):
            assert process.poll() is None and time.monotonic() < deadline, "the installer never started"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGTERM)  # the script alone, as `kill <pid>` does
        out, _ = process.communicate(timeout=30)
        deadline = time.monotonic() + 10
        while _processes_under(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _processes_under(marker)
        assert process.returncode == 128 + signal.SIGTERM
        assert "install failed" not in out
    finally:
        _kill_leftovers(process, marker)


def test_a_child_s_leftover_process_goes_with_it(tmp_path: Path) -> None:
    """A command run by run_child that starts a process and ends without stopping it: the process went on after
    the script ended, holding whatever it held (a port, the temporary directory)."""
    marker = tmp_path / "leftover"
    script = tmp_path / "leaves.sh"
    starts_and_leaves = (
        f"import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)', '{marker}'])"
    )
    script.write_text(
        "set -euo pipefail\n"
        f"source {REPO / 'scripts' / '_children.sh'}\n"
        f"run_child {sys.executable} -c \"{starts_and_leaves}\"\n"
    )
    process = subprocess.Popen(["bash", str(script)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    try:
        assert process.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while _processes_under(marker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _processes_under(marker)
    finally:
        _kill_leftovers(process, marker)


def test_a_missing_file_the_install_stamps_is_named(tmp_path: Path) -> None:
    """A checkout without package-lock.json (or a requirements file): the bootstrap ended with status 1 and not a
    word, the hash's pipeline failing under pipefail."""
    script = tmp_path / "stamps.sh"
    script.write_text(
        "set -euo pipefail\n"
        "die() { printf 'error: %s\\n' \"$*\" >&2; exit 2; }\n"
        + _function_from(REPO / "scripts" / "_bootstrap.sh", "stamp")
        + f'want="$(stamp {tmp_path / "requirements.txt"} {tmp_path / "package-lock.json"})"\n'
        "echo unreachable\n"
    )
    (tmp_path / "requirements.txt").write_text("orjson\n")
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "unreachable" not in done.stdout
    assert f"{tmp_path / 'package-lock.json'} is missing from the checkout" in done.stderr


def _function_from(script: Path, name: str) -> str:
    """The definition of shell function ``name`` in ``script``, from its first line to the closing brace."""
    lines = script.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}() {{"))
    end = next(i for i in range(start, len(lines)) if lines[i] == "}")
    return "\n".join(lines[start : end + 1]) + "\n"
