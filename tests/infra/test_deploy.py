"""What `azd up` deploys and how: parameters and their azd wiring, the deployer's roles, the in-deployment grant,
the order of the Sentinel steps, the table plans, the hooks and host.json."""

from __future__ import annotations

import json
import re

from .conftest import INFRA, REPO_ROOT

MAIN = (INFRA / "main.bicep").read_text()
RESOURCES = (INFRA / "resources.bicep").read_text()
PARAMS = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
MODULES = INFRA / "modules"


def decorators(text: str, param: str) -> str:
    """The decorator lines written right above `param <name>` (with their indented continuation lines)."""
    m = re.search(rf"^param {param} ", text, re.MULTILINE)
    assert m, param
    block: list[str] = []
    for line in reversed(text[: m.start()].splitlines()):
        if not line.startswith(("@", " ", ")", "]", "}")):
            break
        block.insert(0, line)
    return "\n".join(block)


def allowed(text: str, param: str) -> list[str]:
    m = re.search(r"@allowed\(\[(.*?)\]\)", decorators(text, param), re.DOTALL)
    assert m, f"{param} has no @allowed list"
    return [quoted or number for quoted, number in re.findall(r"'([^']*)'|(\d+)", m.group(1))]


def default(text: str, param: str) -> str | None:
    m = re.search(rf"^param {param} \w+(?: = (.*))?$", text, re.MULTILINE)
    assert m, param
    return m.group(1)


def test_location_is_limited_to_flex_consumption_regions_and_picked_by_azd() -> None:
    regions = allowed(MAIN, "location")
    assert len(regions) >= 25 and {"westeurope", "eastus", "swedencentral"} <= set(regions)
    assert "eastus2euap" not in regions  # a canary region, not open to customers
    assert re.search(r"@metadata\(\{\s*azd: \{\s*type: 'location'\s*\}\s*\}\)", decorators(MAIN, "location"))
    assert PARAMS["location"]["value"] == "${AZURE_LOCATION}"


def test_the_deployer_gets_key_vault_and_state_roles_when_named() -> None:
    assert default(MAIN, "principalId") == "''"
    assert PARAMS["principalId"]["value"] == "${AZURE_PRINCIPAL_ID}"
    assert PARAMS["principalType"]["value"] == "${AZURE_PRINCIPAL_TYPE=User}"
    assert allowed(MAIN, "principalType") == ["User", "ServicePrincipal", "Group"]
    kv = (MODULES / "keyvault.bicep").read_text()
    st = (MODULES / "storage.bicep").read_text()
    # Least privilege on the vault: the one kind of credential the mode stores. A certificate's deployer reads it
    # with its key (a secret) for the command line, and writes no secret; a secret's deployer imports no certificate.
    assert "var deployerSecretsRole = deployerStores == 'secret' ? keyVaultSecretsOfficer : keyVaultSecretsUser" in kv
    assert "deployerStores: o365AuthMode == 'certificate' ? 'certificate' : 'secret'" in RESOURCES
    for text, roles, condition in (
        (kv, ("deployerSecretsRole",), ""),
        (kv, ("keyVaultCertificatesOfficer",), " && deployerStores == 'certificate'"),
        (st, ("roles.queueDataContributor", "roles.tableDataContributor"), ""),
    ):
        for role in roles:
            decl = re.search(
                rf"resource \w+ 'Microsoft\.Authorization/roleAssignments@[^']+' = "
                rf"if \(!empty\(deployerPrincipalId\){re.escape(condition)}\) \{{\n"
                rf"  name: guid\((vault|storage)\.id, deployerPrincipalId, {re.escape(role)}\)\n"
                rf"  scope: (vault|storage)\n"
                rf"  properties: \{{\n    principalId: deployerPrincipalId\n    principalType: deployerPrincipalType\n",
                text,
            )
            assert decl, role
    for module, given in (("keyVault", "o365AuthMode == 'managed_identity' ? '' : principalId"),
                          ("storage", "principalId")):  # fmt: skip
        body = RESOURCES[RESOURCES.index(f"module {module} ") :]
        body = body[: body.index("\n}\n")]
        assert f"deployerPrincipalId: {given}\n" in body and "deployerPrincipalType: principalType" in body


def test_key_vault_purge_protection_is_a_deployment_choice() -> None:
    assert default(MAIN, "keyVaultPurgeProtection") == "false"
    assert PARAMS["keyVaultPurgeProtection"]["value"] == "${KEY_VAULT_PURGE_PROTECTION=false}"
    body = RESOURCES[RESOURCES.index("module keyVault ") :]
    assert "enablePurgeProtection: keyVaultPurgeProtection\n" in body[: body.index("\n}\n")]
    assert "enablePurgeProtection: enablePurgeProtection ? true : null" in (MODULES / "keyvault.bicep").read_text()


def test_no_secret_goes_through_the_azd_environment() -> None:
    secure = re.findall(r"@secure\(\)\n(?:@description\([^\n]*\)\n)?param (\w+) ", MAIN)
    # extraAppSettings: whatever an operator adds to the app settings may hold a secret by mistake.
    assert set(secure) == {"o365ClientSecret", "o365ClientCertificatePassword", "extraAppSettings"}
    assert not set(secure) & set(PARAMS), "a @secure parameter is mapped from .azure/<env>/.env"
    for name, p in PARAMS.items():
        assert not re.search(r"SECRET|PASSWORD|KEY\b", p["value"], re.IGNORECASE), name
    declared = set(re.findall(r"^param (\w+) ", MAIN, re.MULTILINE))
    assert set(PARAMS) <= declared


def test_connector_inputs_and_choices_are_azd_settings() -> None:
    """Each input and choice of the connector is an azd variable named as its parameter (o365AuthMode:
    O365_AUTH_MODE), whose default, when azd gives one, is the Bicep parameter's own: a deploy through azd and
    one without it make the same choices."""
    inputs = ["o365TenantId", "o365AuthMode", "o365ClientId", "o365Cloud", "o365ContentTypes", "o365PublisherId",
              "alertCategories", "ingestAllAuditRecords", "auditTablePlan", "sentinelWorkspaceResourceId",
              "createSentinelWorkspace", "grantActivityFeedPermission", "tableRetentionInDays",
              "alertsTableRetentionInDays", "deploySentinelContent"]  # fmt: skip
    for name in inputs:
        mapped = re.fullmatch(r"\$\{([A-Z0-9_]+)(?:=([^}]*))?\}", PARAMS[name]["value"])
        assert mapped, f"{name}: {PARAMS[name]['value']}"
        words = name.replace("ActivityFeed", "Activityfeed")  # the permission's name, one word as Microsoft writes it
        assert mapped.group(1) == re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", words).upper(), name
        bicep_default = default(MAIN, name)
        assert bicep_default is not None, f"{name} has no default: azd would prompt for it"
        if mapped.group(2) is None:  # unset in azd: an empty string, which the Bicep default must be
            assert bicep_default == "''", name
        else:
            assert mapped.group(2) == bicep_default.strip("'"), name
    # The defaults that are decisions: the alerts only, read with the app's own identity, into Analytics tables
    # of the workspace the operator names; the Sentinel content deployed; the grant asked for, not assumed.
    decisions = {"o365AuthMode": "'managed_identity'", "alertCategories": "'InsiderRiskManagement'",
                 "ingestAllAuditRecords": "false", "auditTablePlan": "'Analytics'", "createSentinelWorkspace": "false",
                 "deploySentinelContent": "true", "grantActivityFeedPermission": "false"}  # fmt: skip
    assert {name: default(MAIN, name) for name in decisions} == decisions
    # azd passes an unset variable as an empty string: the tenant then falls back to the deployment's own.
    assert default(MAIN, "o365TenantId") == "''"
    assert "var o365Tenant = empty(trim(o365TenantId)) ? tenant().tenantId : o365TenantId" in MAIN
    assert "    o365TenantId: o365Tenant\n" in MAIN


def test_the_tenant_reaches_the_resources_in_the_one_form_the_health_rows_carry() -> None:
    """The connector reads a tenant id written {braced}, as urn:uuid: or as bare hex, and its health rows carry the
    8-4-4-4-12 lower-case form. Passed on as written, the silent-connector rule watched a tenant no row names and
    reported a working connector silent every hour. It is made one in resources.bicep, which is deployed by itself
    too (into an existing resource group): made one in main.bicep alone, that path passed it on as written. No Bicep
    runs here: the expression is checked as text, each of its steps named, and every use of the tenant after it
    takes the one form."""
    strip = re.search(r"^var tenantHex = (.*)$", RESOURCES, re.MULTILINE)
    assert strip, "resources.bicep no longer reduces the tenant to its hex digits"
    for step in ("toLower(trim(o365TenantId))", "'urn:', ''", "'uuid:', ''", "'{', ''", "'}', ''", "'-', ''"):
        assert step in strip.group(1), step
    assert "var tenantDigits = padLeft(take(tenantHex, 32), 32, '0')" in RESOURCES
    cuts = re.findall(r"substring\(tenantDigits, (\d+), (\d+)\)", RESOURCES)
    assert [(int(a), int(b)) for a, b in cuts] == [(0, 8), (8, 4), (12, 4), (16, 4), (20, 12)]
    assert "var o365Tenant = length(tenantHex) == 32 ? tenantGuid : o365TenantId" in RESOURCES
    # Past the parameter and the normalising lines, the raw parameter is read nowhere.
    raw = [line for line in RESOURCES.splitlines() if re.search(r"\bo365TenantId\b(?!:)", line)]
    assert raw == [
        "param o365TenantId string = tenant().tenantId",
        strip.group(0),
        "var o365Tenant = length(tenantHex) == 32 ? tenantGuid : o365TenantId",
    ], raw


def test_a_new_workspace_is_an_explicit_choice_with_enough_retention() -> None:
    assert default(MAIN, "createSentinelWorkspace") == "false"
    assert "var createWorkspace = !useWorkspaceId && !useWorkspaceName && createSentinelWorkspace" in RESOURCES
    # Neither an existing workspace nor createSentinelWorkspace: the deployment stops with a name that says why.
    assert "'no-workspace-set-sentinelWorkspaceResourceId-or-createSentinelWorkspace'" in RESOURCES
    assert re.search(
        r"@minValue\(30\)\n@maxValue\(730\)\n(?:@description\([^\n]*\)\n)?param newWorkspaceRetentionInDays int = 90",
        MAIN,
    )
    ws = (MODULES / "sentinel-new-workspace.bicep").read_text()
    assert "retentionInDays: retentionInDays" in ws and "@minValue(30)" in ws
    assert "name: 'PerGB2018'" in ws
    assert "retentionInDays: tableRetentionInDays" not in ws


def test_the_grant_happens_before_the_function_app_exists() -> None:
    grant = (MODULES / "graph" / "activityfeed-grant.bicep").read_text()
    assert "resource o365ManagementApi 'Microsoft.Graph/servicePrincipals@v1.0' existing = {" in grant
    assert "appId: o365ManagementApiAppId" in grant
    assert "resource activityFeedRead 'Microsoft.Graph/appRoleAssignedTo@v1.0' = {" in grant
    assert "role.value == 'ActivityFeed.Read'" in grant
    assert "resourceId: o365ManagementApi.id" in grant and "principalId: principalId" in grant
    # The Graph extension comes from this folder's bicepconfig.json (pycep, in checkov and bicep-typecheck,
    # cannot parse an `extension` statement).
    config = json.loads((MODULES / "graph" / "bicepconfig.json").read_text())
    assert config["extensions"]["microsoftGraphV1"] == "br:mcr.microsoft.com/bicep/extensions/microsoftgraph/v1.0:1.0.0"
    assert {"az", "microsoftGraphV1"} == set(config["implicitExtensions"])
    assert not re.search(r"^extension ", grant, re.MULTILINE)
    assert "module activityFeedGrant 'modules/graph/activityfeed-grant.bicep' = if (grantInDeployment) {" in RESOURCES
    assert (
        "var grantInDeployment = o365AuthMode == 'managed_identity' && grantActivityFeedPermission"
        " && toLower(o365Tenant) == toLower(tenant().tenantId)" in RESOURCES  # a GUID in capitals is the same tenant
    )
    app = RESOURCES[RESOURCES.index("module functionApp ") :]
    assert re.search(r"dependsOn: \[\s*activityFeedGrant\s*\]", app)
    assert "principalId: uami.properties.principalId" in RESOURCES[RESOURCES.index("module activityFeedGrant") :]
    assert "output ACTIVITYFEED_GRANTED_IN_DEPLOYMENT bool = resources.outputs.activityFeedGranted" in MAIN


def test_sentinel_content_comes_after_the_tables_and_learns_the_workspace_region_from_a_module() -> None:
    content = RESOURCES[RESOURCES.index("module sentinelContent ") :]
    content = content[: content.index("\n}\n")]
    assert re.search(r"dependsOn: \[\s*sentinelWorkspace\s*\]", content)
    assert "location: workspaceInfo.outputs.location" in content
    ws = RESOURCES[RESOURCES.index("module sentinelWorkspace ") :]
    assert "location: workspaceInfo.outputs.location" in ws[: ws.index("\n}\n")]
    info = (MODULES / "workspace-info.bicep").read_text()
    assert "existing = {" in info and "output location string = workspace.location" in info
    dcr = (MODULES / "sentinel-workspace.bicep").read_text()
    assert "location: workspace.location" not in dcr


def test_table_plans() -> None:
    """O365Audit_CL's plan is a deployment choice (Analytics or Basic); the rules need the other two Analytics."""
    for text in (MAIN, RESOURCES, (MODULES / "sentinel-workspace.bicep").read_text()):
        assert allowed(text, "auditTablePlan") == ["Analytics", "Basic"]
        assert default(text, "auditTablePlan") == "'Analytics'"
    assert "auditTablePlan: auditTablePlan" in MAIN and "auditTablePlan: auditTablePlan" in RESOURCES
    from .test_schema_agreement import bicep_schemas

    plans = bicep_schemas()["plans"]
    assert plans == {
        "IRMAlerts_CL": "'Analytics'",
        "IRMConnectorHealth_CL": "'Analytics'",
        "O365Audit_CL": "auditTablePlan",
    }
    ws = (MODULES / "sentinel-workspace.bicep").read_text()
    audit = ws[ws.index("resource auditTable ") : ws.index("resource healthTable ")]
    # A Basic table's interactive retention is fixed at 30 days (retentionInDays is read-only there).
    assert "retentionInDays: auditTablePlan == 'Analytics' ? tableRetentionInDays : null" in audit
    assert "totalRetentionInDays: auditTablePlan == 'Analytics' ? null : max(30, tableRetentionInDays)" in audit
    assert "workspaces/tables@2025-07-01" in audit


def test_the_alerts_table_outlives_an_open_alert() -> None:
    """IRMAlerts takes FirstSeen from an alert's first row and the workbook lists every open alert: the alerts
    table keeps two years by default, whatever the other tables keep."""
    ws = (MODULES / "sentinel-workspace.bicep").read_text()
    for text in (MAIN, RESOURCES, ws):
        assert default(text, "alertsTableRetentionInDays") == "730"
        assert re.search(r"@minValue\(4\)\n@maxValue\(730\)\n(?:@description\([^\n]*\)\n)?param alertsTableRetentionInDays ", text)
    assert "alertsTableRetentionInDays: alertsTableRetentionInDays" in MAIN
    assert "alertsTableRetentionInDays: alertsTableRetentionInDays" in RESOURCES
    alerts = ws[ws.index("resource alertsTable ") : ws.index("resource auditTable ")]
    health = ws[ws.index("resource healthTable ") :]
    assert "retentionInDays: alertsTableRetentionInDays" in alerts
    assert "retentionInDays: tableRetentionInDays" in health


def test_azure_yaml_hooks_and_azd_version() -> None:
    azure_yaml = (REPO_ROOT / "azure.yaml").read_text()
    assert re.search(r'^requiredVersions:\n  azd: ">= 1\.24\.1"$', azure_yaml, re.MULTILINE)
    for hook in ("preprovision", "postprovision"):
        m = re.search(rf"^  {hook}:\n    shell: sh\n    run: (\S+)$", azure_yaml, re.MULTILINE)
        assert m, hook
        script = REPO_ROOT / m.group(1)
        assert script.is_file() and script.stat().st_mode & 0o111, script
    assert re.search(r"^  postprovision:\n(?:    .*\n)*    interactive: true$", azure_yaml, re.MULTILINE)


def test_host_json_has_no_sampling_that_opentelemetry_ignores() -> None:
    host = json.loads((REPO_ROOT / "host.json").read_text())
    assert host["telemetryMode"] == "OpenTelemetry"
    assert "samplingSettings" not in json.dumps(host)
    assert "applicationInsights" not in host.get("logging", {})


def test_app_settings_an_operator_adds_survive_a_provision_and_win() -> None:
    """The deployment writes the app's whole list of settings: one set by hand is gone after the next provision.
    extraAppSettings is how an operator keeps one, and it is merged last, so it can replace one of the defaults."""
    assert "    extraAppSettings: extraAppSettings\n" in MAIN
    settings = RESOURCES[RESOURCES.index("    appSettings: union({") :]
    merged = re.search(r"^    \}, ([\w, ]+)\)$", settings, re.MULTILINE)
    assert merged and merged.group(1).split(", ")[-1] == "extraAppSettings", merged
