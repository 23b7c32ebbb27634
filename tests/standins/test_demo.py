"""The Quick start demo (``scripts/demo.sh`` runs ``python -m standins.demo``), end to end: what it prints
(each figure explained, progress while it works, no claim about a stream that is off) and its help."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def demo(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "standins.demo", *argv],
        env={**(os.environ if env is None else env), "PYTHONPATH": str(REPO)},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.usefixtures("clean_environment")
def test_demo_on_a_machine_behind_a_proxy_reaches_its_local_servers_directly(tmp_path: Path) -> None:
    """A corporate laptop names a proxy (HTTPS_PROXY) and no NO_PROXY: requests, aiohttp and azure-core sent the
    demo's calls to Azurite and the stand-ins, on this machine's loopback, through it, and the demo failed."""
    env = {k: v for k, v in os.environ.items() if k.lower() != "no_proxy"}
    env |= {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}  # nothing listens there
    done = demo("--records", "1000", "--out", str(tmp_path / "demo"), "--progress", "0", env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "every alert exactly once: yes; every audit record exactly once: yes" in done.stdout


def figures(stdout: str) -> dict[str, tuple[int, str]]:
    """The result section's ``name  value  meaning`` lines."""
    result = stdout[stdout.index("==> Result") :]
    found = re.findall(r"^    (\S.*?) +(\d+)  (\S.*)$", result, flags=re.MULTILINE)
    return {name: (int(value), meaning) for name, value, meaning in found}


@pytest.mark.usefixtures("clean_environment")
def test_demo_runs_the_quick_start(tmp_path: Path) -> None:
    done = demo("--records", "2000", "--out", str(tmp_path / "demo"), "--progress", "0")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "audit stream on (Custom-O365Audit); the product's default is alerts only" in out
    assert "every alert exactly once: yes; every audit record exactly once: yes" in out
    assert re.search(
        r"^    \.\.\. \d+/\d+ blobs, [\d,]+ records, rows Custom-IRMAlerts [\d,]+, Custom-O365Audit", out, re.M
    )
    assert "npm" not in out + done.stderr and "\x1b[" not in out

    shown = figures(out)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert shown["blobs processed"][0] == summary["blobs"]
    assert shown["records received"][0] == summary["records"]
    assert shown["IRM alert records"][0] == summary["alert_records"]
    assert shown["duplicates dropped"][0] == summary["duplicates_dropped"]
    for stream in ("Custom-IRMAlerts", "Custom-O365Audit", "Custom-IRMConnectorHealth"):
        assert shown[f"rows {stream}"][0] == summary["rows"][stream] > 0
    assert all(len(meaning) > 20 for _, meaning in shown.values()), shown  # each figure says what it counts
    # The tenant's copies, known from the simulated truth, come to the connector's own count of rows dropped.
    alert_copies, audit_copies = map(int, re.findall(r"copies: (\d+) alert \+ (\d+) audit\)", out)[0])
    assert (alert_copies, audit_copies) == (summary["alert_copies"], summary["audit_copies"])
    assert alert_copies + audit_copies == summary["duplicates_dropped"] > 0
    # Late listing, shown: the second poll re-lists the overlap, queues the blobs listed late and none twice.
    assert "Audit.General: 4 blobs listed, 2 of them queued before (not queued twice), 2 late ones queued" in out
    assert re.search(r"^    \d+ messages processed in .*\n==> The API now lists 2 blobs late", out, re.M)


@pytest.mark.usefixtures("clean_environment")
def test_demo_alerts_only_claims_nothing_about_the_audit_stream(tmp_path: Path) -> None:
    done = demo("--records", "2000", "--out", str(tmp_path / "demo"), "--alerts-only")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "audit stream off (--alerts-only), as in the product's default settings" in out
    assert "every alert exactly once: yes" in out and "audit record exactly once" not in out
    shown = figures(out)
    assert "rows Custom-O365Audit" not in shown
    assert f"copies: {shown['duplicates dropped'][0]} alert)" in shown["duplicates dropped"][1]


def test_demo_in_a_shell_holding_a_deployed_app_s_settings_uses_its_own(tmp_path: Path) -> None:
    """An operator who loaded the app's settings (docs/operations.md) or a build agent's service principal into the
    shell: the demo took them (certificate mode failed, AZURE_CLOUD refused every upload, AZURE_CLIENT_SECRET went
    to the real Entra ID). It leaves them out, names them, and shows none of their values."""
    secret = "operator-secret-Zq7"
    env = {**os.environ, "AZURE_CLIENT_SECRET": secret, "AZURE_CLIENT_ID": "11111111-2222-3333-4444-555555555555",
           "AZURE_TENANT_ID": "66666666-7777-8888-9999-000000000000", "AZURE_CLOUD": "AzureUSGovernment",
           "O365_AUTH_MODE": "certificate", "O365_CLIENT_CERTIFICATE": "-----BEGIN nothing",
           "CONTENT_QUEUE": "prod-queue", "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "1"}  # fmt: skip
    done = demo("--records", "1000", "--out", str(tmp_path / "demo"), "--progress", "0", env=env)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "every alert exactly once: yes; every audit record exactly once: yes" in done.stdout
    assert "left out of this run: AZURE_CLIENT_ID, AZURE_CLIENT_SECRET, AZURE_CLOUD, AZURE_TENANT_ID" in done.stdout
    assert secret not in done.stdout + done.stderr


def test_demo_help_shows_the_defaults_in_plain_text() -> None:
    done = demo("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())  # argparse wraps to the terminal's width
    assert "``" not in text
    assert "(default 20,000)" in text and "(default 3)" in text
    assert "--alerts-only runs with the product's default" in text


def test_demo_never_empties_a_folder_that_is_not_its_own(tmp_path: Path) -> None:
    """``--out`` naming a folder of the user's: the demo empties its folder before it starts, so it refuses one
    that holds anything but an earlier demo's output, before it touches it."""
    kept = tmp_path / "results" / "notes.txt"
    kept.parent.mkdir()
    kept.write_text("mine")
    done = demo("--records", "200", "--out", str(kept.parent))
    assert done.returncode == 2
    assert "neither empty nor an earlier demo's output; give a new or empty folder" in done.stderr
    assert kept.read_text() == "mine"
