"""The azd hooks, run for real against stand-ins of the `az` and `azd` commands that record every call.

What matters: a deployment without a chosen workspace stops before anything is created; the grant is made by the
deployment when the deployer may make it; the client secret reaches Key Vault without ever being a command-line
argument and leaves .azure/<env>/.env; the admin steps that remain are printed.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from irm_connector import setting_forms as forms
from irm_connector.errors import SettingsError
from irm_connector.models import ALERT_CATEGORY_NAMES

from .conftest import REPO_ROOT

HOOKS = REPO_ROOT / "scripts" / "hooks"
WORKSPACE = "/subscriptions/0000/resourceGroups/rg-soc/providers/Microsoft.OperationalInsights/workspaces/soc"
PRIVILEGED_ROLE_ADMINISTRATOR = "e8611ab8-c189-46e8-94e1-60213ab1f814"
APP_ID = "/subscriptions/0000/resourceGroups/rg-irm/providers/Microsoft.Web/sites/func-irm-x"
REFRESH_URL = f"{APP_ID}/config/configreferences/appsettings/refresh?api-version=2022-03-01"

# A stand-in `az`: records its arguments, answers what the hooks and scripts ask.
FAKE_AZ = r"""#!/usr/bin/env bash
printf '%s\n' "$(__PYTHON__ -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@")" >> "$FAKE_DIR/az.log"
# As the Azure CLI on Windows under Git Bash: every line it prints ends in \r\n.
if [[ "${FAKE_AZ_CRLF:-0}" == 1 ]]; then exec > >(sed 's/$/\r/'); fi
case "$1 $2" in
  "account show")
    [[ "${FAKE_AZ_LOGGED_IN:-0}" == 1 ]] || exit 1
    if [[ "$*" == *tenantId* ]]; then echo "${FAKE_AZ_TENANT:-}"; fi ;;
  "rest --method")
    if [[ "$*" == *configreferences*refresh* ]]; then [[ "${FAKE_AZ_REFRESH_FAILS:-0}" == 0 ]] || exit 1
    elif [[ "$*" == *configreferences* ]]; then  # the reference's status: the next of FAKE_AZ_REFERENCE_STATUSES
      read -r -a statuses <<< "${FAKE_AZ_REFERENCE_STATUSES:-Resolved}"
      asked=$(cat "$FAKE_DIR/status-asked" 2>/dev/null || echo 0); echo $((asked + 1)) > "$FAKE_DIR/status-asked"
      (( asked < ${#statuses[@]} )) || asked=$((${#statuses[@]} - 1)); echo "${statuses[$asked]}"
    elif [[ "$3" == GET && "$*" == *transitiveMemberOf* ]]; then
      [[ -z "${FAKE_AZ_ROLES_REFUSED:-}" ]] || exit 1; printf '%s\n' ${FAKE_AZ_ROLES:-}
    elif [[ "$3" == GET && "$*" == *appRoleAssignments* ]]; then echo "${FAKE_AZ_ASSIGNED:-}"
    elif [[ "$3" == GET ]]; then echo ""
    else echo "{}"; fi ;;
  "ad sp")  # the API's service principal (list), its app role, or an app's service principal (sp-<app id>)
    if [[ "$3" == list ]]; then echo sp-o365; elif [[ "$*" == *appRoles* ]]; then echo role-activityfeed
    else echo "sp-$5"; fi ;;
  "cloud show") echo "${FAKE_AZ_GRAPH:-https://graph.microsoft.com/}" ;;
  "ad app") if [[ "$3" == create ]]; then echo app-irm; elif [[ "$3" == credential ]]; then echo "n3w~s3cret"; fi ;;
  "keyvault secret")
    if [[ "$3" == set ]]; then
      failed=$(cat "$FAKE_DIR/set-failures" 2>/dev/null || echo 0)
      if (( failed < ${FAKE_AZ_SET_FAILS:-0} )); then echo $((failed + 1)) > "$FAKE_DIR/set-failures"; exit 1; fi
      while [[ $# -gt 0 ]]; do [[ "$1" == --file ]] && cp "$2" "$FAKE_DIR/stored-secret"; shift; done
    else [[ -f "$FAKE_DIR/stored-secret" ]]; fi ;;
  "keyvault certificate") exit 1 ;;
  "identity list") echo "${FAKE_AZ_IDENTITY:-}" ;;
  "keyvault list-deleted") [[ -z "${FAKE_AZ_DELETED_VAULTS:-}" ]] || printf '%b\n' "${FAKE_AZ_DELETED_VAULTS}" ;;
  *) exit 0 ;;
esac
"""
FAKE_AZD = r"""#!/usr/bin/env bash
printf '%s\n' "$(__PYTHON__ -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "$@")" >> "$FAKE_DIR/azd.log"
"""


@pytest.fixture
def fakes(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("az", FAKE_AZ), ("azd", FAKE_AZD)):
        # This interpreter by its path: the hooks run with PATH=<fakes>:/usr/bin:/bin, where a python3 installed
        # elsewhere (/usr/local/bin in the python images, pyenv, uv) is not, and every call was logged empty.
        (bin_dir / name).write_text(text.replace("__PYTHON__", shlex.quote(sys.executable)))
        (bin_dir / name).chmod(0o755)
    return tmp_path


def run(hook: str, fakes: Path, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash, "bash is required"
    base = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")}
    base.update(PATH=f"{fakes / 'bin'}:/usr/bin:/bin", FAKE_DIR=str(fakes), AZURE_ENV_NAME="test")
    return subprocess.run(
        [bash, str(HOOKS / hook)], env={**base, **env}, input=stdin, capture_output=True, text=True, timeout=60
    )


def run_script(
    script: Path, fakes: Path, env: dict[str, str], *args: str, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash, "bash is required"
    base = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "TMPDIR")}
    base.update(PATH=f"{fakes / 'bin'}:/usr/bin:/bin", FAKE_DIR=str(fakes))
    return subprocess.run(
        [bash, str(script), *args], env={**base, **env}, input=stdin, capture_output=True, text=True, timeout=60
    )


def calls(fakes: Path, tool: str) -> list[list[Any]]:
    log = fakes / f"{tool}.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_preprovision_stops_without_a_chosen_workspace(fakes: Path) -> None:
    done = run("preprovision.sh", fakes, {})
    assert done.returncode != 0
    assert "SENTINEL_WORKSPACE_RESOURCE_ID" in done.stderr and "CREATE_SENTINEL_WORKSPACE true" in done.stderr
    assert calls(fakes, "azd") == []

    bad = run("preprovision.sh", fakes, {"SENTINEL_WORKSPACE_RESOURCE_ID": "/subscriptions/0000/resourceGroups/rg"})
    assert bad.returncode != 0 and "not a Log Analytics workspace resource id" in bad.stderr

    chosen = run(
        "preprovision.sh", fakes, {"CREATE_SENTINEL_WORKSPACE": "true", "GRANT_ACTIVITYFEED_PERMISSION": "false"}
    )
    assert chosen.returncode == 0, chosen.stderr


# Values of the azd environment that become app settings, each with how the connector itself reads it.
_READERS = {
    "O365_TENANT_ID": lambda v: forms.guid(v, "O365_TENANT_ID"),
    "O365_PUBLISHER_ID": lambda v: forms.guid(v, "O365_PUBLISHER_ID"),
    "O365_CLIENT_ID": lambda v: forms.guid(v, "O365_CLIENT_ID"),
    "O365_CONTENT_TYPES": forms.content_types,
    "ALERT_CATEGORIES": forms.alert_categories,
}
_GUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"
_VALUES = [
    *[("O365_CONTENT_TYPES", ct) for ct in forms.KNOWN_CONTENT_TYPES],
    ("O365_CONTENT_TYPES", " audit.exchange ,DLP.ALL,, Audit.General "),
    ("O365_CONTENT_TYPES", "Audit.Genral"),
    ("O365_CONTENT_TYPES", "Audit.General;Audit.Exchange"),
    ("O365_CONTENT_TYPES", " , "),
    *[("ALERT_CATEGORIES", name) for name in ALERT_CATEGORY_NAMES],
    ("ALERT_CATEGORIES", "Insider risk management, data_loss-prevention"),
    ("ALERT_CATEGORIES", "*"),
    ("ALERT_CATEGORIES", "InsiderRisk"),
    ("ALERT_CATEGORIES", "*, Threats"),
    ("ALERT_CATEGORIES", ","),
    *[("O365_TENANT_ID", v) for v in (_GUID, _GUID.upper(), "{" + _GUID + "}", "urn:uuid:" + _GUID,
                                        _GUID.replace("-", ""), _GUID[:-1], _GUID + "0", "contoso.onmicrosoft.com",
                                        "00000000-0000-0000-0000-000000000000", "<your-tenant-id>")],
    ("O365_PUBLISHER_ID", _GUID),
    ("O365_PUBLISHER_ID", "publisher"),
    ("O365_CLIENT_ID", _GUID),
    ("O365_CLIENT_ID", "my-app"),
]  # fmt: skip


def _connector_takes(name: str, value: str) -> bool:
    try:
        _READERS[name](value.strip())
    except SettingsError:
        return False
    return True


@pytest.mark.parametrize(("name", "value"), _VALUES)
def test_preprovision_stops_before_deploying_what_the_connector_would_refuse(
    fakes: Path, name: str, value: str
) -> None:
    env = {"SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE, "GRANT_ACTIVITYFEED_PERMISSION": "false",
           "O365_AUTH_MODE": "secret" if name == "O365_CLIENT_ID" else "managed_identity", name: value}  # fmt: skip
    done = run("preprovision.sh", fakes, env)
    if _connector_takes(name, value):
        assert done.returncode == 0, done.stderr
    else:
        # Deployed, it would fail every invocation with a settings error: the deployer is told now, by name.
        assert done.returncode != 0
        assert name in done.stderr and "Nothing was deployed" in done.stderr
        assert calls(fakes, "azd") == []


def test_preprovision_names_every_bad_value_at_once_and_ignores_the_unused_client_id(fakes: Path) -> None:
    env = {"SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE, "GRANT_ACTIVITYFEED_PERMISSION": "false",
           "O365_CONTENT_TYPES": "Audit.General,Audit.Sharepoint,Exchange", "ALERT_CATEGORIES": "IRM",
           "O365_TENANT_ID": "contoso", "O365_CLIENT_ID": "not used in managed_identity mode"}  # fmt: skip
    done = run("preprovision.sh", fakes, env)
    assert done.returncode != 0
    assert 'O365_CONTENT_TYPES names "Exchange"' in done.stderr and "Audit.Sharepoint" not in done.stderr
    assert 'ALERT_CATEGORIES names "IRM"' in done.stderr and "O365_TENANT_ID is not a GUID" in done.stderr
    assert "O365_CLIENT_ID" not in done.stderr
    # The empty values azd passes for what was never set take the defaults.
    unset = {"O365_CONTENT_TYPES": "", "ALERT_CATEGORIES": "", "O365_TENANT_ID": "", "O365_PUBLISHER_ID": ""}
    assert run("preprovision.sh", fakes, {**env, **unset}).returncode == 0


@pytest.mark.parametrize("crlf", ["0", "1"], ids=["lf", "windows-crlf"])
def test_preprovision_stops_a_managed_identity_meant_for_another_tenant(fakes: Path, crlf: str) -> None:
    azure = "aaaaaaaa-0000-0000-0000-000000000001"
    env = {"SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE, "FAKE_AZ_LOGGED_IN": "1", "FAKE_AZ_TENANT": azure,
           "FAKE_AZ_CRLF": crlf, "GRANT_ACTIVITYFEED_PERMISSION": "false"}  # fmt: skip
    other = run("preprovision.sh", fakes, {**env, "O365_TENANT_ID": "bbbbbbbb-0000-0000-0000-000000000002"})
    assert other.returncode != 0
    assert "subscription is in tenant " + azure in other.stderr and "Microsoft 365 in another tenant" in other.stderr
    # The same tenant in capitals or another form the connector reads (it was "another tenant" then), an app
    # registration for the other tenant, or no tenant named: it goes on.
    for ok in ({"O365_TENANT_ID": azure.upper()}, {"O365_TENANT_ID": "{" + azure.upper() + "}"},
               {"O365_TENANT_ID": azure.replace("-", "")}, {"O365_TENANT_ID": f"urn:uuid:{azure}"},
               {"O365_TENANT_ID": "bbbbbbbb-0000-0000-0000-000000000002", "O365_AUTH_MODE": "secret"}, {}):  # fmt: skip
        done = run("preprovision.sh", fakes, {**env, **ok})
        assert done.returncode == 0, (ok, done.stderr)


def test_preprovision_stops_a_managed_identity_meant_for_gcc_high_or_dod(fakes: Path) -> None:
    """The Bicep deploys to public Azure: its identity gets no token from Azure Government's Entra ID, and the app
    refused the pairing at every invocation after a deployment that went through."""
    env = {"SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE, "GRANT_ACTIVITYFEED_PERMISSION": "false"}
    for cloud in ("GCCHigh", "dod"):
        done = run("preprovision.sh", fakes, {**env, "O365_CLOUD": cloud})
        assert done.returncode != 0 and f"O365_CLOUD is {cloud}" in done.stderr, done.stderr
    for ok in ({"O365_CLOUD": "GCC"}, {"O365_CLOUD": "GCCHigh", "O365_AUTH_MODE": "certificate"}):
        done = run("preprovision.sh", fakes, {**env, **ok})
        assert done.returncode == 0, (ok, done.stderr)


@pytest.mark.parametrize("crlf", ["0", "1"], ids=["lf", "windows-crlf"])
def test_preprovision_lets_the_deployment_grant_when_the_deployer_may(fakes: Path, crlf: str) -> None:
    done = run(
        "preprovision.sh",
        fakes,
        {
            "SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE,
            "FAKE_AZ_LOGGED_IN": "1",
            "FAKE_AZ_ROLES": PRIVILEGED_ROLE_ADMINISTRATOR,
            "FAKE_AZ_CRLF": crlf,
        },
    )
    assert done.returncode == 0, done.stderr
    assert calls(fakes, "azd") == [["env", "set", "GRANT_ACTIVITYFEED_PERMISSION", "true"]]
    # A cast on a membership list is one of Graph's advanced queries: the header and $count it asks for.
    [roles] = [c for c in calls(fakes, "az") if "transitiveMemberOf" in " ".join(c)]
    assert roles[roles.index("--headers") + 1] == "ConsistencyLevel=eventual" and "$count=true" in " ".join(roles)
    # The deployment reads the Management API's service principal as existing: the hook made sure it is there.
    assert ["ad", "sp", "show", "--id", "c5393580-f805-4401-95e8-94b7a6ef2fc2", "--query", "id", "-o", "tsv"] in calls(
        fakes, "az"
    )


def test_preprovision_leaves_the_grant_to_an_admin_otherwise(fakes: Path) -> None:
    done = run("preprovision.sh", fakes, {"SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE, "FAKE_AZ_LOGGED_IN": "1"})
    assert done.returncode == 0, done.stderr
    assert calls(fakes, "azd") == [["env", "set", "GRANT_ACTIVITYFEED_PERMISSION", "false"]]
    assert "GRANT_ACTIVITYFEED_PERMISSION true" in done.stdout
    assert "no Privileged Role Administrator or Global Administrator" in done.stdout

    # Graph refused the question: that is what the hook says, not that the deployer lacks the role.
    (fakes / "azd.log").unlink()
    unread = run("preprovision.sh", fakes, {"SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE, "FAKE_AZ_LOGGED_IN": "1",
                                            "FAKE_AZ_ROLES_REFUSED": "1"})  # fmt: skip
    assert unread.returncode == 0 and calls(fakes, "azd") == [["env", "set", "GRANT_ACTIVITYFEED_PERMISSION", "false"]]
    assert "did not give the signed-in az user's" in unread.stdout and "no Privileged Role" not in unread.stdout

    (fakes / "azd.log").unlink()
    kept = run(
        "preprovision.sh", fakes, {"SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE, "GRANT_ACTIVITYFEED_PERMISSION": "true"}
    )
    assert kept.returncode == 0 and calls(fakes, "azd") == []  # an explicit choice is kept
    # and the deployment that grants will find the Management API's service principal (a tenant new to the API)
    assert ["ad", "sp", "show", "--id", "c5393580-f805-4401-95e8-94b7a6ef2fc2", "--query", "id", "-o", "tsv"] in calls(
        fakes, "az"
    )
    secret = run("preprovision.sh", fakes, {"SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE, "O365_AUTH_MODE": "secret"})
    assert secret.returncode == 0 and calls(fakes, "azd") == []  # no managed identity, no grant decision


@pytest.mark.parametrize("crlf", ["0", "1"], ids=["lf", "windows-crlf"])
def test_preprovision_recovers_the_key_vault_an_earlier_removal_left_soft_deleted(fakes: Path, crlf: str) -> None:
    """After `azd down` without --purge (or with purge protection on) the vault is soft-deleted for up to 90 days,
    and a new vault of its name is refused: every `azd up` of the environment failed until it was purged."""
    ours = "kv-irm-abc123\t/subscriptions/0000/resourceGroups/RG-test/providers/Microsoft.KeyVault/vaults/kv-irm-abc123\t"
    other = "kv-irm-zzz999\t/subscriptions/0000/resourceGroups/rg-other/providers/Microsoft.KeyVault/vaults/kv-irm-zzz999\t"
    env = {"SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE, "GRANT_ACTIVITYFEED_PERMISSION": "false", "FAKE_AZ_LOGGED_IN": "1",
           "FAKE_AZ_CRLF": crlf, "AZURE_LOCATION": "westeurope"}  # fmt: skip
    deleted = run("preprovision.sh", fakes, {**env, "FAKE_AZ_DELETED_VAULTS": f"{other}westeurope\n{ours}westeurope"})
    assert deleted.returncode == 0, deleted.stderr
    assert calls(fakes, "azd") == [["env", "set", "KEY_VAULT_CREATE_MODE", "recover"]]
    assert "kv-irm-abc123 of this environment is soft-deleted" in deleted.stdout and "zzz999" not in deleted.stdout

    # Recovered by that deployment, the vault is no longer deleted: recovering it again would fail.
    (fakes / "azd.log").unlink()
    again = run("preprovision.sh", fakes, {**env, "KEY_VAULT_CREATE_MODE": "recover", "FAKE_AZ_DELETED_VAULTS": other + "westeurope"})
    assert again.returncode == 0, again.stderr
    assert calls(fakes, "azd") == [["env", "set", "KEY_VAULT_CREATE_MODE", "default"]]

    # The name an earlier deployment of the environment recorded wins over the resource group's.
    (fakes / "azd.log").unlink()
    named = run("preprovision.sh", fakes, {**env, "KEY_VAULT_NAME": "KV-IRM-ZZZ999", "FAKE_AZ_DELETED_VAULTS": f"{ours}westeurope\n{other}westeurope"})
    assert named.returncode == 0 and "kv-irm-zzz999 of this environment" in named.stdout

    # A vault is recovered where it was: another region is stopped before anything is deployed.
    (fakes / "azd.log").unlink()
    moved = run("preprovision.sh", fakes, {**env, "FAKE_AZ_DELETED_VAULTS": ours + "northeurope"})
    assert moved.returncode != 0 and "azd env set AZURE_LOCATION northeurope" in moved.stderr
    assert "Nothing was deployed" in moved.stderr and calls(fakes, "azd") == []


def test_preprovision_does_not_grant_again_what_a_failed_deployment_granted(fakes: Path) -> None:
    """A deployment that failed after its grant never reached the postprovision hook, which turns the grant off:
    the retry asked Entra ID for the same assignment again, which it refuses, and failed on the grant."""
    env = {"SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE, "FAKE_AZ_LOGGED_IN": "1", "GRANT_ACTIVITYFEED_PERMISSION": "true",
           "UAMI_PRINCIPAL_ID": "11111111-0000-0000-0000-000000000001"}  # fmt: skip
    granted = run("preprovision.sh", fakes, {**env, "FAKE_AZ_ASSIGNED": "assignment-1"})
    assert granted.returncode == 0, granted.stderr
    assert calls(fakes, "azd") == [["env", "set", "GRANT_ACTIVITYFEED_PERMISSION", "false"]]
    assert "already holds ActivityFeed.Read" in granted.stdout
    assert any("servicePrincipals/11111111-0000-0000-0000-000000000001/appRoleAssignments" in " ".join(c)
               for c in calls(fakes, "az"))  # fmt: skip
    # It asks Graph what the grant script asks before granting, so the two agree on what "granted" means.
    def lookups() -> list[list[Any]]:
        graph = [c for c in calls(fakes, "az") if c[:3] == ["rest", "--method", "GET"]]
        return [c for c in calls(fakes, "az") if c[:2] == ["ad", "sp"]] + [
            c for c in graph if "appRoleAssignments" in " ".join(c)
        ]

    by_hook = lookups()
    (fakes / "az.log").unlink()
    script = run_script(REPO_ROOT / "scripts" / "grant-activityfeed-permission.sh", fakes,
                        {"FAKE_AZ_LOGGED_IN": "1", "FAKE_AZ_ASSIGNED": "assignment-1"},
                        "managed_identity", "--principal-id", env["UAMI_PRINCIPAL_ID"])  # fmt: skip
    assert script.returncode == 0 and "already has ActivityFeed.Read" in script.stdout, script.stderr
    assert lookups() == by_hook

    (fakes / "azd.log").unlink()
    not_yet = run("preprovision.sh", fakes, env)  # the identity holds no such assignment: the grant stays on
    assert not_yet.returncode == 0 and calls(fakes, "azd") == []

    # A first provision that failed after its grant: azd saved no output, so no UAMI_PRINCIPAL_ID. The identity is
    # found in the environment's resource group; without it the retry failed on the grant again and again.
    (fakes / "az.log").unlink()
    first = {k: v for k, v in env.items() if k != "UAMI_PRINCIPAL_ID"}
    found = run("preprovision.sh", fakes, {**first, "FAKE_AZ_ASSIGNED": "assignment-1",
                                           "FAKE_AZ_IDENTITY": env["UAMI_PRINCIPAL_ID"]})  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert calls(fakes, "azd") == [["env", "set", "GRANT_ACTIVITYFEED_PERMISSION", "false"]]
    [listed] = [c for c in calls(fakes, "az") if c[:2] == ["identity", "list"]]
    assert listed[listed.index("--resource-group") + 1] == "rg-test"
    (fakes / "azd.log").unlink()
    none = run("preprovision.sh", fakes, {**first, "FAKE_AZ_ASSIGNED": "assignment-1"})  # no identity yet
    assert none.returncode == 0 and calls(fakes, "azd") == []


def test_postprovision_moves_the_secret_into_key_vault_and_out_of_the_env_file(fakes: Path) -> None:
    secret = "s3cr3t~value with spaces"
    done = run(
        "postprovision.sh",
        fakes,
        {
            "O365_AUTH_MODE": "secret",
            "O365_CLIENT_ID": "app-1",
            "O365_CLIENT_SECRET": secret,
            "KEY_VAULT_NAME": "kv-irm-x",
            "FUNCTION_APP_ID": APP_ID,
            "FAKE_AZ_LOGGED_IN": "1",
        },
    )
    assert done.returncode == 0, done.stderr
    assert (fakes / "stored-secret").read_text() == secret
    # The deployment wrote the app's reference before the secret existed: App Service is asked to read it again
    # once it is stored, not a day later.
    az_calls = calls(fakes, "az")
    stored_at = next(i for i, c in enumerate(az_calls) if c[:3] == ["keyvault", "secret", "set"])
    assert az_calls[stored_at + 1] == ["rest", "--method", "post", "--url", REFRESH_URL, "--output", "none"]
    assert "reads the new secret now" in done.stdout
    [stored] = [c for c in calls(fakes, "az") if c[:3] == ["keyvault", "secret", "set"]]
    assert stored[stored.index("--vault-name") + 1] == "kv-irm-x"
    assert stored[stored.index("--name") + 1] == "o365-client-secret"
    assert all(secret not in json.dumps(c) for c in calls(fakes, "az") + calls(fakes, "azd"))
    assert ["env", "set", "O365_CLIENT_SECRET", ""] in calls(fakes, "azd")
    assert secret not in done.stdout + done.stderr
    assert "Export alerts > On" in done.stdout and "IRMConnectorHealth_CL" in done.stdout
    assert "admin consent" in done.stdout


def test_postprovision_clears_a_secret_no_mode_but_secret_reads(fakes: Path) -> None:
    """Put into the azd environment in certificate or managed identity mode, the secret was moved nowhere and
    cleared nowhere: it stayed in .azure/<env>/.env, plain text, and in every hook's environment."""
    for mode in ("certificate", "managed_identity"):
        (fakes / "azd.log").unlink(missing_ok=True)
        warned = run("preprovision.sh", fakes, {"O365_AUTH_MODE": mode, "O365_CLIENT_SECRET": "unused",
                                                "CREATE_SENTINEL_WORKSPACE": "true",
                                                "GRANT_ACTIVITYFEED_PERMISSION": "false"})  # fmt: skip
        assert warned.returncode == 0 and "does not use it: the postprovision hook clears it" in warned.stdout
        done = run("postprovision.sh", fakes, {"O365_AUTH_MODE": mode, "O365_CLIENT_SECRET": "unused",
                                               "O365_CLIENT_ID": _GUID, "KEY_VAULT_NAME": "kv-irm-x"})  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert ["env", "set", "O365_CLIENT_SECRET", ""] in calls(fakes, "azd"), mode
        assert not (fakes / "stored-secret").exists() and "unused" not in done.stdout + done.stderr


def test_the_scripts_say_when_the_azure_cli_is_not_installed(fakes: Path) -> None:
    """`command -v az` found the scripts' own `az` wrapper function, so a machine without the Azure CLI was told to
    run `az login`, or retried "command not found" for minutes and then blamed a Key Vault role."""
    (fakes / "bin" / "az").unlink()
    stored = run_script(REPO_ROOT / "scripts" / "store-client-secret.sh", fakes,
                        {"STORE_SECRET_RETRY_SECONDS": "0"}, "--vault", "kv-irm-x", "--attempts", "3", stdin="s")  # fmt: skip
    assert stored.returncode != 0 and "the Azure CLI (az) is required" in stored.stderr
    assert "retrying" not in stored.stderr
    granted = run_script(REPO_ROOT / "scripts" / "grant-activityfeed-permission.sh", fakes, {},
                         "managed_identity", "--principal-id", _GUID)  # fmt: skip
    assert granted.returncode != 0 and "the Azure CLI (az) is required" in granted.stderr


def test_postprovision_asks_for_the_secret_when_it_cannot_store_it(fakes: Path) -> None:
    done = run(
        "postprovision.sh",
        fakes,
        {"O365_AUTH_MODE": "secret", "O365_CLIENT_SECRET": "kept", "KEY_VAULT_NAME": "kv-irm-x"},
    )
    assert done.returncode == 0, done.stderr
    assert not (fakes / "stored-secret").exists()
    assert calls(fakes, "azd") == []  # not cleared: it is not in Key Vault yet
    assert "still in plain text" in done.stdout and "scripts/store-client-secret.sh --vault kv-irm-x" in done.stdout


def test_postprovision_after_a_grant_in_the_deployment(fakes: Path) -> None:
    done = run(
        "postprovision.sh",
        fakes,
        {"ACTIVITYFEED_GRANTED_IN_DEPLOYMENT": "true", "UAMI_PRINCIPAL_ID": "uami-1", "FAKE_AZ_LOGGED_IN": "1"},
    )
    assert done.returncode == 0, done.stderr
    # Later provisions need no directory role and do not create the assignment twice.
    assert calls(fakes, "azd") == [["env", "set", "GRANT_ACTIVITYFEED_PERMISSION", "false"]]
    assert not [c for c in calls(fakes, "az") if c[:1] == ["rest"]]
    assert "nothing to wait for" in done.stdout


@pytest.mark.parametrize("crlf", ["0", "1"], ids=["lf", "windows-crlf"])
def test_postprovision_grants_or_prints_the_grant_with_its_wait(fakes: Path, crlf: str) -> None:
    granted = run("postprovision.sh", fakes, {"UAMI_PRINCIPAL_ID": "uami-1", "FAKE_AZ_LOGGED_IN": "1",
                                              "FAKE_AZ_CRLF": crlf})  # fmt: skip
    assert granted.returncode == 0, granted.stderr
    [post] = [c for c in calls(fakes, "az") if c[:3] == ["rest", "--method", "POST"]]
    assert json.loads(post[post.index("--body") + 1]) == {
        "principalId": "uami-1",
        "resourceId": "sp-o365",
        "appRoleId": "role-activityfeed",
    }
    assert "24 hours" in granted.stdout

    # A later `azd up`: the grant is there, so nothing is posted and there is no token wait to warn about.
    (fakes / "az.log").unlink()
    again = run("postprovision.sh", fakes, {"UAMI_PRINCIPAL_ID": "uami-1", "FAKE_AZ_LOGGED_IN": "1",
                                           "FAKE_AZ_ASSIGNED": "assignment-1"})  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "already has ActivityFeed.Read" in again.stdout and "24 hours" not in again.stdout
    assert not [c for c in calls(fakes, "az") if c[:3] == ["rest", "--method", "POST"]]

    (fakes / "az.log").unlink()
    printed = run("postprovision.sh", fakes, {"UAMI_PRINCIPAL_ID": "uami-1"})  # az not signed in
    assert printed.returncode == 0, printed.stderr
    assert "scripts/grant-activityfeed-permission.sh managed_identity --principal-id uami-1" in printed.stdout
    assert "24 hours" in printed.stdout
    assert not [c for c in calls(fakes, "az") if c[:1] == ["rest"]]


def test_store_client_secret_reads_stdin_and_refuses_nothing(fakes: Path) -> None:
    bash = shutil.which("bash")
    assert bash
    env = {"PATH": f"{fakes / 'bin'}:/usr/bin:/bin", "FAKE_DIR": str(fakes), "HOME": os.environ.get("HOME", "/tmp")}
    script = str(REPO_ROOT / "scripts" / "store-client-secret.sh")
    empty = subprocess.run([bash, script, "--vault", "kv"], env=env, input="", capture_output=True, text=True)
    assert empty.returncode != 0 and "empty secret" in empty.stderr
    assert not (fakes / "stored-secret").exists()
    ok = subprocess.run([bash, script, "--vault", "kv"], env=env, input="abc", capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert (fakes / "stored-secret").read_text() == "abc"
    assert subprocess.run([bash, script], env=env, input="abc", capture_output=True, text=True).returncode != 0


def test_store_client_secret_has_the_app_read_it_now_or_says_when_it_will(fakes: Path) -> None:
    """App Service reads a Key Vault reference again only once a day: a replaced secret would wait that long."""
    script = REPO_ROOT / "scripts" / "store-client-secret.sh"
    failed = run_script(script, fakes, {"FAKE_AZ_REFRESH_FAILS": "1"}, "--vault", "kv", "--app", APP_ID, stdin="new")
    # Stored all the same: only the wait differs, and the warning gives the command that ends it.
    assert failed.returncode == 0, failed.stderr
    assert (fakes / "stored-secret").read_text() == "new"
    assert "within 24 hours" in failed.stderr and f'az rest --method post --url "{REFRESH_URL}"' in failed.stderr

    # The app's own Key Vault role, assigned by the same provisioning, may not apply yet: asked again until the
    # secret's reference resolves, within the attempts the store was allowed.
    (fakes / "az.log").unlink()
    waited = run_script(script, fakes, {"FAKE_AZ_REFERENCE_STATUSES": "AccessToKeyVaultDenied AccessToKeyVaultDenied "
                                        "Resolved", "STORE_SECRET_RETRY_SECONDS": "0"},
                        "--vault", "kv", "--app", APP_ID, "--attempts", "5", stdin="new")  # fmt: skip
    assert waited.returncode == 0 and "reads the new secret now" in waited.stdout, waited.stderr
    assert len([c for c in calls(fakes, "az") if c[:4] == ["rest", "--method", "post", "--url"]]) == 3
    assert "AccessToKeyVaultDenied; asking again" in waited.stderr

    (fakes / "status-asked").unlink()
    denied = run_script(script, fakes, {"FAKE_AZ_REFERENCE_STATUSES": "AccessToKeyVaultDenied",
                                        "STORE_SECRET_RETRY_SECONDS": "0"},
                        "--vault", "kv", "--app", APP_ID, "--attempts", "2", stdin="new")  # fmt: skip
    assert denied.returncode == 0 and (fakes / "stored-secret").read_text() == "new"
    assert "is AccessToKeyVaultDenied" in denied.stderr and "within 24 hours" in denied.stderr

    (fakes / "az.log").unlink()
    unnamed = run_script(script, fakes, {}, "--vault", "kv", stdin="newer")
    assert unnamed.returncode == 0, unnamed.stderr
    assert (fakes / "stored-secret").read_text() == "newer"
    assert not [c for c in calls(fakes, "az") if c[:1] == ["rest"]]
    assert "within 24 hours" in unnamed.stderr and "--app <FUNCTION_APP_ID>" in unnamed.stderr


def test_store_client_secret_waits_for_a_new_key_vault_role(fakes: Path) -> None:
    """Right after provisioning, the deployer's Key Vault role may not apply yet (403): the store is retried."""
    bash = shutil.which("bash")
    assert bash
    env = {
        "PATH": f"{fakes / 'bin'}:/usr/bin:/bin",
        "FAKE_DIR": str(fakes),
        "FAKE_AZ_SET_FAILS": "2",
        "STORE_SECRET_RETRY_SECONDS": "0",
    }
    script = str(REPO_ROOT / "scripts" / "store-client-secret.sh")
    short = subprocess.run(
        [bash, script, "--vault", "kv", "--attempts", "2"], env=env, input="abc", capture_output=True, text=True
    )
    assert short.returncode != 0 and "could not store the secret" in short.stderr
    (fakes / "set-failures").unlink()
    enough = subprocess.run(
        [bash, script, "--vault", "kv", "--attempts", "3"], env=env, input="abc", capture_output=True, text=True
    )
    assert enough.returncode == 0, enough.stderr
    assert (fakes / "stored-secret").read_text() == "abc"
    assert len([c for c in calls(fakes, "az") if c[:3] == ["keyvault", "secret", "set"]]) == 5


def consented(made: list[list[Any]]) -> list[tuple[str, str]]:
    """The app role assignments posted, as (Graph root, principal), each checked to be ActivityFeed.Read of the
    Management API's service principal given to that principal."""
    out = []
    for call in made:
        if call[:3] == ["rest", "--method", "POST"] and "appRoleAssignments" in call[call.index("--url") + 1]:
            url = call[call.index("--url") + 1]
            root, _, rest = url.partition("/servicePrincipals/")
            principal = rest.split("/")[0]
            body = json.loads(call[call.index("--body") + 1])
            assert body == {"principalId": principal, "resourceId": "sp-o365", "appRoleId": "role-activityfeed"}
            out.append((root, principal))
    return out


def test_admin_consent_is_an_app_role_assignment_in_the_cloud_az_is_signed_in_to(fakes: Path) -> None:
    """`az ad app permission admin-consent` calls a portal API the Azure CLI refuses in sovereign clouds, where
    GCC High and DoD tenants sign in: consent is the app role assignment, posted to that cloud's Graph, once."""
    script = REPO_ROOT / "scripts" / "grant-activityfeed-permission.sh"
    us_gov = {"FAKE_AZ_LOGGED_IN": "1", "FAKE_AZ_GRAPH": "https://graph.microsoft.us/"}
    done = run_script(script, fakes, us_gov, "consent", "--app-id", "app-7")
    assert done.returncode == 0, done.stderr
    made = calls(fakes, "az")
    assert consented(made) == [("https://graph.microsoft.us/v1.0", "sp-app-7")]
    assert not [c for c in made if "admin-consent" in c]
    assert all("graph.microsoft.com" not in " ".join(c) for c in made)

    (fakes / "az.log").unlink()
    identity = run_script(script, fakes, us_gov, "managed_identity", "--principal-id", "uami-1")
    assert identity.returncode == 0, identity.stderr
    assert consented(calls(fakes, "az")) == [("https://graph.microsoft.us/v1.0", "uami-1")]

    # Consented already: nothing is posted again (Entra ID refuses the same assignment twice).
    (fakes / "az.log").unlink()
    again = run_script(script, fakes, {**us_gov, "FAKE_AZ_ASSIGNED": "assignment-1"}, "consent", "--app-id", "app-7")
    assert again.returncode == 0, again.stderr
    assert consented(calls(fakes, "az")) == []

    # The preprovision hook asks the same cloud's Graph whether the deployer may grant.
    (fakes / "az.log").unlink()
    hook = run("preprovision.sh", fakes, {**us_gov, "SENTINEL_WORKSPACE_RESOURCE_ID": WORKSPACE})
    assert hook.returncode == 0, hook.stderr
    [roles] = [c for c in calls(fakes, "az") if c[:3] == ["rest", "--method", "GET"] and "transitiveMemberOf" in str(c)]
    assert roles[roles.index("--url") + 1].startswith("https://graph.microsoft.us/v1.0/me/")


def test_certificate_grant_uploads_the_public_part_only(fakes: Path, tmp_path: Path) -> None:
    """The cross-tenant path: an app registration with consent whose credential is the certificate's public part;
    a file with a private key is refused before anything is created."""
    script = REPO_ROOT / "scripts" / "grant-activityfeed-permission.sh"
    public = tmp_path / "cert.pem"
    public.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    env = {"FAKE_AZ_LOGGED_IN": "1"}
    done = run_script(script, fakes, env, "certificate", "--cert-file", str(public))
    assert done.returncode == 0, done.stderr
    assert "O365_CLIENT_ID=app-irm" in done.stdout and "O365_AUTH_MODE certificate" in done.stdout
    made = calls(fakes, "az")
    assert consented(made) == [("https://graph.microsoft.com/v1.0", "sp-app-irm")]
    assert ["ad", "app", "credential", "reset", "--id", "app-irm", "--append", "--cert", f"@{public}", "--output", "none"] in made
    assert not any("password" in " ".join(c) for c in made)  # no secret is made in certificate mode
    [listed] = [c for c in made if c[:3] == ["ad", "app", "list"]]
    assert "displayName eq 'irm-connector'" in listed  # that name exactly, not every name starting with it

    (fakes / "az.log").unlink()
    private = tmp_path / "both.pem"
    private.write_text(public.read_text() + "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
    refused = run_script(script, fakes, env, "certificate", "--cert-file", str(private))
    assert refused.returncode == 1 and "holds a private key" in refused.stderr
    assert calls(fakes, "az") == []


@pytest.mark.parametrize("mode", ["secret", "certificate"])
def test_the_consent_step_the_hook_prints_grants_the_configured_app_and_makes_no_credential(
    fakes: Path, mode: str
) -> None:
    """The app registration is the user's (O365_CLIENT_ID, any name): the command the hook prints consents that
    one, and neither makes another app nor adds a credential to it."""
    done = run(
        "postprovision.sh",
        fakes,
        {
            "O365_AUTH_MODE": mode,
            "O365_CLIENT_ID": "app-7",
            "O365_CLIENT_SECRET": "s",
            "KEY_VAULT_NAME": "kv-irm-x",
            "FAKE_AZ_LOGGED_IN": "1",
        },
    )
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if "grant-activityfeed-permission.sh" in line]
    command = line.split("): ", 1)[1].split()
    assert command[:2] == ["scripts/grant-activityfeed-permission.sh", "consent"]
    (fakes / "az.log").unlink()
    granted = run_script(REPO_ROOT / command[0], fakes, {"FAKE_AZ_LOGGED_IN": "1"}, *command[1:])
    assert granted.returncode == 0, granted.stderr
    made = calls(fakes, "az")
    assert consented(made) == [("https://graph.microsoft.com/v1.0", "sp-app-7")]
    assert not any(c[:3] == ["ad", "app", "create"] or c[:4] == ["ad", "app", "credential", "reset"] for c in made)


def test_a_new_client_secret_goes_to_a_private_file_never_to_the_terminal(fakes: Path, tmp_path: Path) -> None:
    """Without --key-vault, or with a vault that refuses the store, the grant script printed the new secret: it
    stayed in the terminal's scrollback, a CI log or a `| tee` file. It goes to a file only its owner reads."""
    script = REPO_ROOT / "scripts" / "grant-activityfeed-permission.sh"
    for extra, env in (((), {}), (("--key-vault", "kv-irm-x"), {"FAKE_AZ_SET_FAILS": "100"})):
        private = tmp_path / f"tmp{len(extra)}"
        private.mkdir()
        done = run_script(script, fakes, {"FAKE_AZ_LOGGED_IN": "1", "TMPDIR": str(private), "STORE_SECRET_RETRY_SECONDS": "0",
                                          **env}, "secret", *extra)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "n3w~s3cret" not in done.stdout + done.stderr
        [kept] = list(private.glob("o365-client-secret.*"))
        assert kept.read_text() == "n3w~s3cret" and kept.stat().st_mode & 0o777 == 0o600
        assert f"< {kept} && rm {kept}" in done.stdout
