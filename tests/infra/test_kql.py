"""Every KQL text of the project parses and binds against the declared schemas (tools/kql/check.mjs)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from .conftest import INFRA, REPO_ROOT, bicep_files, run_kql_check

SENTINEL = REPO_ROOT / "sentinel"


def test_all_project_kql_binds_without_errors(node_bin: str) -> None:
    rc, report, stderr = run_kql_check(node_bin)
    failing = {r["name"]: r["errors"] for r in report.get("report", []) if r["errors"]}
    assert rc == 0, f"rc={rc} {stderr}\n{json.dumps(failing, indent=2)}"
    assert report.get("errorCount") == 0, failing
    names = {r["name"] for r in report["report"]}
    # Every KQL file and every workbook query was checked, and the DCR transformations.
    for f in [*SENTINEL.glob("functions/*.kql"), *SENTINEL.glob("hunting/*.kql"), *SENTINEL.glob("analytics/*.kql")]:
        assert str(f.relative_to(REPO_ROOT)) in names, f
    for wb in SENTINEL.glob("workbooks/*.json"):
        queries = [i for i in json.loads(wb.read_text())["items"] if i.get("type") == 3]
        assert queries
        for q in queries:
            assert f"{wb.relative_to(REPO_ROOT)}#{q['name']}" in names
    transforms = sum(f.read_text().count("transformKql:") for f in bicep_files())
    assert transforms >= 3
    assert sum(":transformKql@" in n for n in names) == transforms * 3  # each bound against each stream
    assert set(report["functions"]) == {"IRMAlerts", "Compliance_IRM_AuditGeneral"}
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
    assert "sentinel/functions/IRMAlerts.kql" in failing


def test_error_inside_a_function_file_is_reported(node_bin: str, tmp_path: Path) -> None:
    root = tmp_path / "repo"
    for d in ("sentinel", "schemas", "irm_connector"):
        shutil.copytree(REPO_ROOT / d, root / d)
    (root / "package.json").write_text("{}")
    (root / "node_modules").symlink_to(REPO_ROOT / "node_modules")
    f = root / "sentinel" / "functions" / "IRMAlerts.kql"
    f.write_text(f.read_text().replace("FirstSeen = min(CreationTime)", "FirstSeen = min(CreationTimee)"))
    rc, report, _ = run_kql_check(node_bin, "--root", str(root))
    assert rc == 1
    failing = {r["name"] for r in report["report"] if r["errors"]}
    assert "sentinel/functions/IRMAlerts.kql" in failing


def test_bicep_loads_every_sentinel_file_once() -> None:
    """One copy: the Bicep loads the plain files under sentinel/; every one of them is deployed."""
    loaded: list[Path] = []
    for f in bicep_files():
        for rel in re.findall(r"loadTextContent\('([^']+)'\)", f.read_text()):
            p = (f.parent / rel).resolve()
            assert p.is_file(), f"{f}: {rel} does not exist"
            loaded.append(p)
    files = sorted(p.resolve() for p in SENTINEL.rglob("*") if p.suffix in {".kql", ".json"})
    assert sorted(loaded) == files
    content = (INFRA / "modules" / "sentinel-content.bicep").read_text()
    for fn in ("IRMAlerts", "Compliance_IRM_AuditGeneral"):
        assert f"functionAlias: '{fn}'" in content
        assert (SENTINEL / "functions" / f"{fn}.kql").is_file()
