"""docs/operations.md's snippet that exports the app settings for ``irm-connector`` (Operations, "The deployed app's
settings"), run in bash as written: values with ``*``, ``<``, spaces, quotes and ``$`` arrive unchanged, from
``az functionapp config appsettings list`` (a stand-in ``az`` and ``azd`` on PATH) and from
``local.settings.json``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SAMPLE = {
    "POLL_SCHEDULE": "0 */5 * * * *",
    "LOGS_INGESTION_ENDPOINT": "https://<your-dcr>.<region>-1.ingest.monitor.azure.com",
    "O365_CLIENT_SECRET": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/o365-client-secret)",
    "ODD": "it's \"quoted\" $HOME `date` ; touch owned",
    "EMPTY": "",
}


def snippet() -> list[str]:
    """The bash block under docs/operations.md's "The deployed app's settings" heading, as lines."""
    readme = (REPO / "docs" / "operations.md").read_text()
    start = readme.index("## The deployed app's settings")
    block = re.search(r"```bash\n(.*?)```", readme[start:], flags=re.DOTALL)
    assert block is not None, "docs/operations.md lost the settings snippet"
    return block.group(1).replace("\\\n", "").strip().splitlines()


def run(script: str, tmp_path: Path) -> dict[str, str]:
    """``script`` in bash in ``tmp_path``, with stand-ins of az and azd first on PATH; the environment after it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    listing = [{"name": k, "slotSetting": False, "value": v} for k, v in SAMPLE.items()]
    listing.append({"name": "APPLICATIONINSIGHTS_CONNECTION_STRING", "slotSetting": False, "value": "InstrumentationKey=x"})
    # A host setting no shell variable can be named after (extraAppSettings may add one): left out, not an error.
    listing.append({"name": "AzureFunctionsJobHost__logging__logLevel__Host.Results", "slotSetting": False,
                    "value": "Error"})  # fmt: skip
    (tmp_path / "appsettings.json").write_text(json.dumps(listing))
    fakes = {
        "azd": 'case "$*" in "env get-value AZURE_RESOURCE_GROUP") echo rg-irm;; "env get-value FUNCTION_APP_NAME") '
        'echo func-irm;; *) echo "azd: unexpected $*" >&2; exit 1;; esac',
        "az": f'[[ "$*" == "functionapp config appsettings list -g rg-irm -n func-irm -o json" ]] || '
        f'{{ echo "az: unexpected $*" >&2; exit 1; }}; cat {tmp_path / "appsettings.json"}',
    }
    for name, body in fakes.items():
        path = bin_dir / name
        path.write_text(f"#!/usr/bin/env bash\n{body}\n")
        path.chmod(0o755)
    (bin_dir / "python3").symlink_to(sys.executable)  # the snippet quotes values with Python's shlex
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    dump = 'python3 -c "import json, os; print(json.dumps(dict(os.environ)))"'
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", f"{script}\n{dump}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    result: dict[str, str] = json.loads(done.stdout)
    return result


def test_the_snippet_exports_the_deployed_apps_settings_unchanged(tmp_path: Path) -> None:
    lines = snippet()
    upto = next(i for i, line in enumerate(lines) if "source irm.env" in line)
    env = run("\n".join(lines[: upto + 1]), tmp_path)
    for name, value in SAMPLE.items():
        assert env[name] == value, name
    assert "APPLICATIONINSIGHTS_CONNECTION_STRING" not in env
    assert not (tmp_path / "owned").exists()


def test_the_snippet_exports_local_settings_json_unchanged(tmp_path: Path) -> None:
    (line,) = [line for line in snippet() if "local.settings.json" in line and "python3" in line]
    sample = json.loads((REPO / "local.settings.sample.json").read_text())
    sample["Values"].update(SAMPLE)
    (tmp_path / "local.settings.json").write_text(json.dumps(sample))
    env = run(line, tmp_path)
    for name, value in sample["Values"].items():
        assert env[name] == value, name
    assert env["LOGS_INGESTION_ENDPOINT"] == "https://<your-dcr>.<region>-1.ingest.monitor.azure.com"
    assert env["POLL_SCHEDULE"] == "0 */5 * * * *"
