"""Every KQL text of the project parses and binds against the declared schemas (tools/kql/check.mjs)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .conftest import REPO_ROOT, bicep_files, run_kql_check, sentinel_content


def _checkout_copy(tmp_path: Path) -> Path:
    """The content, schemas and columns of the checkout, copied for a test to break, with the checker's packages."""
    root = tmp_path / "repo"
    for d in ("sentinel", "schemas", "irm_connector"):
        shutil.copytree(REPO_ROOT / d, root / d)
    (root / "package.json").write_text("{}")
    (root / "node_modules").symlink_to(REPO_ROOT / "node_modules")
    return root


def _replace(path: Path, old: str, new: str) -> None:
    """``old`` in the copied file at ``path`` made ``new``; it must be there, or the test would break nothing."""
    text = path.read_text()
    assert old in text, (path.name, old)
    path.write_text(text.replace(old, new))


def test_all_project_kql_binds_without_errors(node_bin: str) -> None:
    rc, report, stderr = run_kql_check(node_bin)
    failing = {r["name"]: r["errors"] for r in report.get("report", []) if r["errors"]}
    assert rc == 0, f"rc={rc} {stderr}\n{json.dumps(failing, indent=2)}"
    assert report.get("errorCount") == 0, failing
    names = {r["name"] for r in report["report"]}
    # Every query of every content file was checked, and the DCR transformations.
    content = sentinel_content(node_bin)
    for p in content["parsers"]:
        assert f"{p['file']}#FunctionQuery" in names, p["file"]
    for kind in ("analytics", "hunting"):
        assert content[kind], kind
        for r in content[kind]:
            assert f"{r['file']}#query" in names, r["file"]
    for wb in content["workbooks"]:
        queries = [i for i in wb["doc"]["items"] if i.get("type") == 3]
        assert queries
        for q in queries:
            assert f"{wb['file']}#{q['name']}" in names
    [dc] = content["dataconnectors"]
    connector_queries = [n for n in names if n.startswith(dc["file"] + "#")]
    assert len(connector_queries) == 2 * len(dc["doc"]["dataTypes"]) + 1, connector_queries
    transforms = sum(f.read_text().count("transformKql:") for f in bicep_files())
    assert transforms >= 3
    assert sum(":transformKql@" in n for n in names) == transforms * 3  # each bound against each stream
    assert set(report["functions"]) == {"IRMAlerts", "Compliance_IRM_AuditGeneral", "O365Audit"}
    assert {"IRMAlerts_CL", "O365Audit_CL", "IRMConnectorHealth_CL", "AuditLogs", "SigninLogs"} <= set(report["tables"])


def test_checker_reports_an_unknown_column(node_bin: str) -> None:
    rc, report, _ = run_kql_check(
        node_bin,
        "--only-extra",
        "--query",
        "bad=IRMAlerts | where NoSuchColumn == 1",
        "--query",
        "good=IRMAlerts() | where IsOpen | project AlertId, FirstSeen, UserPrincipalName",
    )
    assert rc == 1
    by_name = {r["name"]: r for r in report["report"]}
    assert by_name["good"]["errors"] == []
    [err] = by_name["bad"]["errors"]
    assert "NoSuchColumn" in err["message"]


def test_checker_reports_unknown_columns_in_other_schemas(node_bin: str) -> None:
    rc, report, _ = run_kql_check(
        node_bin,
        "--only-extra",
        "--query",
        "a=AuditLogs | project InitiatedBy, NotInAuditLogs",
        "--query",
        "b=IRMConnectorHealth_CL | where LagSecs > 7200",
        "--query",
        "c=NoSuchTable | take 1",
    )
    assert rc == 1
    assert all(r["errors"] for r in report["report"]), report


def test_renamed_column_breaks_the_queries(node_bin: str, tmp_path: Path) -> None:
    """KQL and columns.json are coupled: renaming a column in (a copy of) columns.json fails the check."""
    columns = json.loads((REPO_ROOT / "irm_connector" / "columns.json").read_text())
    for c in columns["streams"]["alerts"]["columns"]:
        if c["name"] == "UserPrincipalName":
            c["name"] = "Upn"
    copy = tmp_path / "columns.json"
    copy.write_text(json.dumps(columns))
    rc, report, _ = run_kql_check(node_bin, "--columns", str(copy))
    assert rc == 1
    failing = [r["name"] for r in report["report"] if r["errors"]]
    assert "sentinel/parsers/IRMAlerts.yaml#FunctionQuery" in failing
    # The analytics rules still bind: their empty placeholder datatable declares the column. That placeholder is
    # held to columns.json by test_sentinel_content.py::test_rules_tolerate_a_table_that_is_not_queryable_yet.


def test_error_inside_a_parser_file_is_reported(node_bin: str, tmp_path: Path) -> None:
    root = _checkout_copy(tmp_path)
    _replace(
        root / "sentinel" / "parsers" / "IRMAlerts.yaml",
        "FirstSeen = min(CreationTime)",
        "FirstSeen = min(CreationTimee)",
    )
    rc, report, _ = run_kql_check(node_bin, "--root", str(root))
    assert rc == 1
    failing = {r["name"] for r in report["report"] if r["errors"]}
    assert "sentinel/parsers/IRMAlerts.yaml#FunctionQuery" in failing


def test_error_inside_a_data_connector_query_is_reported(node_bin: str, tmp_path: Path) -> None:
    root = _checkout_copy(tmp_path)
    f = root / "sentinel" / "dataconnectors" / "IRMConnector.json"
    dc = json.loads(f.read_text())
    dc["connectivityCriteria"][0]["value"][0] = dc["connectivityCriteria"][0]["value"][0].replace(
        "IRMConnectorHealth_CL", "IRMConnectorHealth"
    )
    f.write_text(json.dumps(dc))
    rc, report, _ = run_kql_check(node_bin, "--root", str(root))
    assert rc == 1
    failing = {r["name"] for r in report["report"] if r["errors"]}
    assert failing == {"sentinel/dataconnectors/IRMConnector.json#connectivityCriteria[0][0]"}


def test_settings_naming_columns_the_result_lacks_are_reported(node_bin: str, tmp_path: Path) -> None:
    """A rule's entity mappings, custom details and {{placeholders}}, and a hunting query's entity columns, name
    columns of the query's result. A column the result lost still bound (the query itself is valid KQL) and
    passed every check that looked for its name anywhere in the text; Sentinel then maps no entity."""
    root = _checkout_copy(tmp_path)
    _replace(root / "sentinel" / "analytics" / "irm-high-severity-alert.yaml",
             "      UserPrincipalName, AccountName, AccountUPNSuffix, Comments, RecordId, O365TenantId = OrganizationId\n",
             "      Comments, RecordId, O365TenantId = OrganizationId\n")  # fmt: skip
    _replace(
        root / "sentinel" / "hunting" / "irm-alerted-user-signins.yaml", "  | extend IP_0_Address = IPAddress\n", ""
    )
    rc, report, _ = run_kql_check(node_bin, "--root", str(root))
    assert rc == 1
    failing = {r["name"]: [e["message"] for e in r["errors"]] for r in report["report"] if r["errors"]}
    assert set(failing) == {"sentinel/analytics/irm-high-severity-alert.yaml#query",
                            "sentinel/hunting/irm-alerted-user-signins.yaml#query"}  # fmt: skip
    rule_errors = "\n".join(failing["sentinel/analytics/irm-high-severity-alert.yaml#query"])
    for told in (
        "entity Account.FullName names UserPrincipalName",
        "entity Account.Name names AccountName",
        "entity Account.UPNSuffix names AccountUPNSuffix",
        "alertDescriptionFormat names UserPrincipalName",
    ):
        assert told in rule_errors, rule_errors  # fmt: skip
    assert failing["sentinel/hunting/irm-alerted-user-signins.yaml#query"] == [
        "hunting entity column names IP_0_Address, not a column of the query's result"
    ]
