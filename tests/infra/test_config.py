"""App settings, parameters, outputs, azd wiring and the permission script."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Callable

import pytest

from .conftest import INFRA, REPO_ROOT, bicep_files

REQUIRED_SETTINGS = [
    "AzureWebJobsStorage__blobServiceUri",
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__credential",
    "AzureWebJobsStorage__clientId",
    "O365_TENANT_ID",
    "O365_CLIENT_ID",
    "O365_CLIENT_SECRET",
    "O365_CLIENT_CERTIFICATE",
    "O365_CLIENT_CERTIFICATE_PASSWORD",
    "O365_AUTH_MODE",
    "O365_CLOUD",
    "O365_CONTENT_TYPES",
    "O365_PUBLISHER_ID",
    "INITIAL_LOOKBACK",
    "POLL_SCHEDULE",
    "CONTENT_QUEUE",
    "ALERT_CATEGORIES",
    "LOGS_INGESTION_ENDPOINT",
    "LOGS_DCR_IMMUTABLE_ID",
    "LOGS_ALERTS_STREAM",
    "LOGS_AUDIT_STREAM",
    "LOGS_HEALTH_STREAM",
    "LISTING_OVERLAP",
    "POLL_TIME_BUDGET",
    "AZURE_CLIENT_ID",
    "APPLICATIONINSIGHTS_CONNECTION_STRING",
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
]


def _params(text: str) -> dict[str, str]:
    return dict(re.findall(r"^param (\w+) \w+(?: = (.*))?$", text, re.MULTILINE))


def _settings_read_by_the_code() -> set[str]:
    """Every setting irm_connector/settings.py reads, so a new one cannot be forgotten in the Bicep."""
    code = (INFRA.parent / "irm_connector" / "settings.py").read_text()
    names = set(re.findall(r'(?:get|duration|number)\("([A-Z][A-Z0-9_]+)"', code))
    # Overrides for proxies and tests, and the certificate file path (Azure uses O365_CLIENT_CERTIFICATE).
    return names - {"O365_API_ROOT", "O365_AUTHORITY_HOST", "O365_CLIENT_CERTIFICATE_PATH"}


def test_every_connector_setting_is_deployed() -> None:
    text = (INFRA / "resources.bicep").read_text()
    assert len(_settings_read_by_the_code()) > 20
    for name in sorted(set(REQUIRED_SETTINGS) | _settings_read_by_the_code()):
        assert re.search(rf"^\s+{name}: ", text, re.MULTILINE), f"app setting {name} missing"
    assert "AzureWebJobsStorage__credential: 'managedidentity'" in text
    # The host builds core.windows.net names from __accountName, wrong in a sovereign cloud: the account's own
    # endpoints are given, as the storage account reports them.
    assert "AzureWebJobsStorage__accountName" not in text
    storage = (INFRA / "modules" / "storage.bicep").read_text()
    for service in ("blob", "queue", "table"):
        assert f"AzureWebJobsStorage__{service}ServiceUri: storage.outputs.{service}Endpoint" in text
        assert f"output {service}Endpoint string = storage.properties.primaryEndpoints.{service}" in storage
    assert "APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${uami.properties.clientId};Authorization=AAD'" in text
    assert "@Microsoft.KeyVault(SecretUri=" in text
    assert "LOGS_AUDIT_STREAM: ingestAllAuditRecords ? outputColumns.streams.audit.stream : ''" in text
    assert "LOGS_ALERTS_STREAM: outputColumns.streams.alerts.stream" in text
    assert "LOGS_HEALTH_STREAM: outputColumns.streams.health.stream" in text
    # Defaults the bindings need (%POLL_SCHEDULE%, %CONTENT_QUEUE%).
    main = _params((INFRA / "main.bicep").read_text())
    assert main["pollSchedule"] == "'0 */5 * * * *'"
    assert main["contentQueue"] == "'irm-content'"
    assert main["o365ContentTypes"] == "'Audit.General'"
    assert main["initialLookback"] == "'24h'"
    assert main["listingOverlap"] == "'1h'"
    assert main["pollTimeBudget"] == "'4m'"
    assert main["alertCategories"] == "'InsiderRiskManagement'"


#: The settings the deployment writes, but for the one a test varies.
_DEPLOYED = {"O365_TENANT_ID": "11111111-2222-3333-4444-555555555555", "O365_AUTH_MODE": "managed_identity",
             "LOGS_INGESTION_ENDPOINT": "https://dce.example.com", "LOGS_DCR_IMMUTABLE_ID": "dcr-" + "1" * 32,
             "AzureWebJobsStorage__accountName": "irmstate"}  # fmt: skip


def _assert_the_app_holds_the_bounds(setting: str, param: str, bound: str, kind: str, spell: Callable[[int], str]) -> None:
    """``param``'s ``@min<bound>``/``@max<bound>``, in main.bicep and resources.bicep alike, are the bounds the app
    holds ``setting`` to: both ends accepted, one past either refused, naming the setting (a value spelled empty is
    the default, not a value)."""
    from irm_connector.errors import SettingsError
    from irm_connector.settings import Settings

    for path in (INFRA / "main.bicep", INFRA / "resources.bicep"):
        found = re.search(rf"@min{bound}\((\d+)\)\n@max{bound}\((\d+)\)\n(?:@description\([^\n]*\)\n)?"
                          rf"param {param} {kind}", path.read_text())  # fmt: skip
        assert found, f"{path.name}: param {param} has no @min{bound}/@max{bound}"
        low, high = int(found[1]), int(found[2])
        for good in (low, high):
            Settings.from_env({**_DEPLOYED, setting: spell(good)})
        for bad in (spell(low - 1), spell(high + 1)):
            if not bad:
                continue
            with pytest.raises(SettingsError) as refused:
                Settings.from_env({**_DEPLOYED, setting: bad})
            assert refused.value.setting == setting


def test_every_number_the_deployment_accepts_is_one_the_app_accepts() -> None:
    """An int parameter that becomes a bounded setting carries the code's own bounds, so a value the app would
    refuse at every invocation is refused at deployment instead."""
    resources = (INFRA / "resources.bicep").read_text()
    bounded = re.findall(r"^\s+([A-Z][A-Z0-9_]+): string\((\w+)\)$", resources, re.MULTILINE)
    assert ("DEDUPE_RETENTION_DAYS", "dedupeRetentionDays") in bounded
    for setting, param in bounded:
        _assert_the_app_holds_the_bounds(setting, param, "Value", "int", str)


def test_every_name_length_the_deployment_accepts_is_one_the_app_accepts() -> None:
    """A name parameter that becomes a setting carries the code's length bounds: a queue name of 57 characters
    or a prefix of 31 deployed, and then every invocation failed with a settings error."""
    resources = (INFRA / "resources.bicep").read_text()
    named = dict(re.findall(r"^\s+([A-Z][A-Z0-9_]+): (\w+)$", resources, re.MULTILINE))
    for setting in ("CONTENT_QUEUE", "STATE_TABLE_PREFIX"):
        _assert_the_app_holds_the_bounds(setting, named[setting], "Length", "string", lambda n: "a" * n)


def test_function_app_shape() -> None:
    fa = (INFRA / "modules" / "functionapp.bicep").read_text()
    for needle in (
        "kind: 'functionapp,linux'",
        "name: 'FC1'",
        "tier: 'FlexConsumption'",
        "httpsOnly: true",
        "type: 'UserAssignedIdentity'",
        "name: 'python'",
        "version: '3.11'",
        "scaleAndConcurrency",
        "keyVaultReferenceIdentity: identityId",
        "type: 'UserAssigned'",
    ):
        assert needle in fa, needle
    st = (INFRA / "modules" / "storage.bicep").read_text()
    for needle in ("allowSharedKeyAccess: false", "minimumTlsVersion: 'TLS1_2'", "allowBlobPublicAccess: false"):
        assert needle in st, needle
    kv = (INFRA / "modules" / "keyvault.bicep").read_text()
    assert "enableRbacAuthorization: true" in kv
    assert "enableSoftDelete: true" in kv
    assert "DisableLocalAuth: true" in (INFRA / "modules" / "monitoring.bicep").read_text()
    ws = (INFRA / "modules" / "sentinel-workspace.bicep").read_text()
    assert "kind: 'Direct'" in ws
    assert (
        "Microsoft.SecurityInsights/onboardingStates"
        in (INFRA / "modules" / "sentinel-new-workspace.bicep").read_text()
    )


def test_every_saved_search_overwrites_the_one_a_previous_deployment_made() -> None:
    """A saved search (KQL function, hunting query) written again without etag '*' is answered 409 Conflict: every
    `azd provision` after the first failed at the Sentinel content, and the code deploy after it never ran."""
    text = (INFRA / "modules" / "sentinel-content.bicep").read_text()
    bodies = re.split(r"(?m)^resource ", text)[1:]
    searches = [b for b in bodies if "'Microsoft.OperationalInsights/workspaces/savedSearches@" in b.split("\n", 1)[0]]
    assert len(searches) == 2  # the functions and the hunting queries
    for body in searches:
        properties = body.split("  properties: {", 1)[1]
        assert re.match(r"\s*#disable-next-line BCP037\n\s*etag: '\*'\n", properties), body.split("\n", 1)[0]


def test_role_assignments() -> None:
    guids = {
        "storage.bicep": {
            "974c5e8b-45b9-4653-ba55-5f855dd0fb88",  # Storage Queue Data Contributor (identity, deployer)
            "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",  # Storage Table Data Contributor (identity, deployer)
            "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",  # Storage Blob Data Owner (identity: deployment package)
        },
        "monitoring.bicep": {"3913510d-42f4-4e42-8a64-420c390055eb"},
        "sentinel-workspace.bicep": {"3913510d-42f4-4e42-8a64-420c390055eb"},
        "keyvault.bicep": {
            "4633458b-17de-408a-b874-0445c86b69e6",  # Key Vault Secrets User (identity)
            "b86a8fe4-44ce-4948-aee5-eccb2c155cd7",  # Key Vault Secrets Officer (deployer)
            "a4417e6f-fecd-4de8-b567-7b0420556985",  # Key Vault Certificates Officer (deployer)
        },
        # Not a role: the application id of "Office 365 Management APIs", whose ActivityFeed.Read is granted.
        "activityfeed-grant.bicep": {"c5393580-f805-4401-95e8-94b7a6ef2fc2"},
    }
    for f in bicep_files():
        found = set(re.findall(r"'([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})'", f.read_text()))
        assert found == guids.get(f.name, set()), f"{f.name}: {found}"
    # Monitoring Metrics Publisher on the DCR only (scope), and on App Insights.
    assert "scope: dcr" in (INFRA / "modules" / "sentinel-workspace.bicep").read_text()
    assert "scope: appInsights" in (INFRA / "modules" / "monitoring.bicep").read_text()


def test_a_secure_parameter_reaches_modules_only_through_secure_parameters() -> None:
    """A module's parameters are inputs of a nested deployment, kept in its history: a secure value passed to a
    plain one is readable there (`az deployment group show`). `extraAppSettings`, secure in main.bicep and
    resources.bicep, reached the function app's module merged into its plain `appSettings`."""
    secure_param = r"@secure\(\)\s*(?:@description\([^\n]*\)\s*)?param (\w+) "
    checked = 0
    for f in bicep_files():
        text = f.read_text()
        secure = set(re.findall(secure_param, text))
        for module in re.finditer(r"^module \w+ '([^']+)' = [^\n]*\n(.*?)^\}", text, re.MULTILINE | re.DOTALL):
            target = (f.parent / module.group(1)).resolve()
            params = module.group(2)[module.group(2).index("  params: {"):]
            # each parameter: its name at four spaces, its value up to the next such name
            for name, value in re.findall(r"^    (\w+): (.*?)(?=^    \w+: |^  \})", params, re.MULTILINE | re.DOTALL):
                if any(re.search(rf"\b{s}\b", value) for s in secure):
                    checked += 1
                    assert name in re.findall(secure_param, target.read_text()), (
                        f"{f.name} passes a secure value to {target.name}'s plain parameter {name}"
                    )
    assert checked >= 4  # the secret, the certificate password, the extra settings, the key vault's


def test_no_secret_in_outputs_or_defaults() -> None:
    for f in bicep_files():
        text = f.read_text()
        secure = re.findall(r"@secure\(\)\s*(?:@description\([^\n]*\)\s*)?param (\w+) (?:string|object)(?: = (.*))?", text)
        for name, default in secure:
            assert default in ("", "''", "{}"), f"{f.name}: secure param {name} has a default"
        for line in re.findall(r"^output .*$", text, re.MULTILINE):
            assert (
                not re.search(
                    r"(?i)secret\b(?!Name)|password\b(?!Name)|connectionString\b|key\b",
                    line.replace("KEY_VAULT_NAME", ""),
                )
                or "connectionString string = appInsights" in line
            ), f"{f.name}: {line}"
        for name, _ in secure:
            assert not re.search(rf"^output .*\b{name}\b", text, re.MULTILINE), name
    outputs = re.findall(r"^output (\w+)", (INFRA / "main.bicep").read_text(), re.MULTILINE)
    for needed in (
        "FUNCTION_APP_NAME",
        "FUNCTION_APP_ID",  # the hook's and store-client-secret.sh's Key Vault reference refresh
        "UAMI_PRINCIPAL_ID",
        "UAMI_CLIENT_ID",
        "DCR_ID",
        "LOGS_INGESTION_ENDPOINT",
        "SENTINEL_WORKSPACE_ID",
        "KEY_VAULT_NAME",
    ):
        assert needed in outputs


def test_parameters_file_and_azure_yaml() -> None:
    params = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = _params((INFRA / "main.bicep").read_text())
    assert set(params) <= set(declared), set(params) - set(declared)
    assert params["environmentName"]["value"] == "${AZURE_ENV_NAME}"
    assert params["location"]["value"] == "${AZURE_LOCATION}"
    # Every azd variable a hook reads to check what the deployment set up is the one the deployment is given.
    hooks = "".join(p.read_text() for p in (REPO_ROOT / "scripts" / "hooks").glob("*.sh"))
    # (but the secret, which is never a deployment parameter: the hook moves it into Key Vault)
    for name in set(re.findall(r"\$\{(O365_[A-Z_]+):-", hooks)) - {"O365_CLIENT_SECRET"}:
        assert any(f"${{{name}" in p["value"] for p in params.values() if isinstance(p.get("value"), str)), name
    azure_yaml = (REPO_ROOT / "azure.yaml").read_text()
    for needle in ("connector:", "language: python", "host: function", "project: .", "path: infra"):
        assert needle in azure_yaml
    assert "'azd-service-name': 'connector'" in (INFRA / "resources.bicep").read_text()


def test_grant_script() -> None:
    script = REPO_ROOT / "scripts" / "grant-activityfeed-permission.sh"
    text = script.read_text()
    graph = (REPO_ROOT / "scripts" / "_graph.sh").read_text()  # the lookups it shares with the preprovision hook
    assert "set -euo pipefail" in text
    assert 'source "$(dirname "$0")/_graph.sh"' in text
    assert "c5393580-f805-4401-95e8-94b7a6ef2fc2" in graph
    assert "appRoleAssignments" in text and "appRoleAssignments" in graph
    assert "permission admin-consent --id" not in text  # refused in sovereign clouds: consent is an assignment
    bash = shutil.which("bash")
    assert bash, "bash is required"
    assert subprocess.run([bash, "-n", str(script)], check=False).returncode == 0
    out = subprocess.run([bash, str(script), "--help"], capture_output=True, text=True, check=False)
    assert out.returncode == 0
    assert "managed_identity" in out.stdout
    bad = subprocess.run([bash, str(script), "bogus"], capture_output=True, text=True, check=False)
    assert bad.returncode != 0
