"""The DCR stream declarations, the custom tables (as the Bicep produces them) and columns.json agree.

The Bicep builds tables and streams from loadJsonContent('../irm_connector/columns.json') with for-expressions.
No Bicep compiler runs here, so `bicep_schemas` evaluates exactly those constructs of the Bicep text: if the
Bicep is rewritten in another shape, the evaluator fails loudly instead of passing.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import INFRA, REPO_ROOT

COLUMNS_JSON = REPO_ROOT / "irm_connector" / "columns.json"
LA_TYPES = {"string", "int", "long", "real", "boolean", "dynamic", "datetime"}
RESERVED = {"id", "_resourceid", "_subscriptionid", "tenantid", "type", "uniqueid", "title"}


def _block(text: str, start: int) -> str:
    """The text of the {...} or [...] group opening at or after `start`."""
    i = min(p for p in (text.find("{", start), text.find("[", start)) if p >= 0)
    depth = 0
    for j in range(i, len(text)):
        if text[j] in "{[":
            depth += 1
        elif text[j] in "}]":
            depth -= 1
            if depth == 0:
                return text[i : j + 1]
    raise AssertionError("unbalanced Bicep text")


def _for_columns(expr: str, streams: dict[str, str], data: dict[str, Any]) -> list[dict[str, Any]]:
    """Evaluate `[for c in X.columns: { key: c.attr ... }]`."""
    m = re.fullmatch(r"\[for (\w+) in (\w+)\.columns:\s*\{(.*)\}\s*\]", expr.strip(), re.DOTALL)
    assert m, f"unexpected column expression: {expr}"
    var, stream_var, body = m.groups()
    mapping = {}
    for line in body.strip().splitlines():
        km = re.fullmatch(rf"\s*(\w+):\s*{var}\.(\w+)\s*", line)
        assert km, f"unexpected column property: {line!r}"
        mapping[km.group(1)] = km.group(2)
    return [{k: col[a] for k, a in mapping.items()} for col in data["streams"][streams[stream_var]]["columns"]]


def bicep_schemas(infra: Path = INFRA) -> dict[str, Any]:
    """Tables, stream declarations and data flows as the Bicep would deploy them."""
    resources = (infra / "resources.bicep").read_text()
    m = re.search(r"var outputColumns = loadJsonContent\('([^']+)'\)", resources)
    assert m, "resources.bicep must load columns.json with loadJsonContent"
    loaded = (infra / m.group(1)).resolve()
    assert loaded == COLUMNS_JSON.resolve(), loaded
    data = json.loads(loaded.read_text())
    assert re.search(r"outputColumns: outputColumns", resources)

    ws = (infra / "modules" / "sentinel-workspace.bicep").read_text()
    streams = dict(re.findall(r"^var (\w+) = outputColumns\.streams\.(\w+)$", ws, re.MULTILINE))
    assert set(streams.values()) == set(data["streams"]), streams

    tables: dict[str, list[dict[str, Any]]] = {}
    plans: dict[str, str] = {}
    for t in re.finditer(
        r"^resource \w+ 'Microsoft\.OperationalInsights/workspaces/tables@[^']+' = \{", ws, re.MULTILINE
    ):
        body = _block(ws, t.end() - 1)
        name_var = re.search(r"^  name: (\w+)\.table$", body, re.MULTILINE)
        assert name_var, body[:200]
        assert re.search(rf"schema: \{{\s*name: {name_var.group(1)}\.table", body)
        plan = re.search(r"^    plan: (.+)$", body, re.MULTILINE)
        assert plan, f"{name_var.group(1)}: table without a plan"
        cols = re.search(r"columns: ", body)
        assert cols
        table = data["streams"][streams[name_var.group(1)]]["table"]
        tables[table] = _for_columns(_block(body, cols.end()), streams, data)
        plans[table] = plan.group(1).strip()

    decl_start = ws.index("streamDeclarations:")
    decl = _block(ws, decl_start)
    declarations: dict[str, list[dict[str, Any]]] = {}
    for d in re.finditer(r"'\$\{(\w+)\.stream\}': \{\s*columns: ", decl):
        declarations[data["streams"][streams[d.group(1)]]["stream"]] = _for_columns(
            _block(decl, d.end()), streams, data
        )
    assert len(re.findall(r"^\s*columns:", decl, re.MULTILINE)) == len(declarations), (
        "a stream declaration the evaluator does not understand"
    )

    flows = []
    flows_text = _block(ws, ws.index("dataFlows:"))
    for f in re.finditer(
        r"streams: \[\s*(\w+)\.stream\s*\].*?transformKql: '([^']*)'\s*outputStream: 'Custom-\$\{(\w+)\.table\}'",
        flows_text,
        re.DOTALL,
    ):
        flows.append(
            {
                "stream": data["streams"][streams[f.group(1)]]["stream"],
                "transformKql": f.group(2),
                "outputStream": "Custom-" + data["streams"][streams[f.group(3)]]["table"],
            }
        )
    assert flows_text.count("outputStream") == len(flows)
    return {"tables": tables, "plans": plans, "streamDeclarations": declarations, "dataFlows": flows}


def check_agreement(columns: dict[str, Any], deployed: dict[str, Any]) -> None:
    """Raise AssertionError unless the deployed schema matches `columns` column by column and type by type."""
    expected_tables = {s["table"]: [(c["name"], c["type"]) for c in s["columns"]] for s in columns["streams"].values()}
    expected_streams = {
        s["stream"]: [(c["name"], c["type"]) for c in s["columns"]] for s in columns["streams"].values()
    }
    got_tables = {t: [(c["name"], c["type"]) for c in cols] for t, cols in deployed["tables"].items()}
    got_streams = {s: [(c["name"], c["type"]) for c in cols] for s, cols in deployed["streamDeclarations"].items()}
    assert got_tables == expected_tables, f"tables differ from columns.json:\n{got_tables}\n!=\n{expected_tables}"
    assert got_streams == expected_streams, (
        f"DCR streams differ from columns.json:\n{got_streams}\n!=\n{expected_streams}"
    )
    expected_flows = sorted((s["stream"], f"Custom-{s['table']}") for s in columns["streams"].values())
    assert sorted((f["stream"], f["outputStream"]) for f in deployed["dataFlows"]) == expected_flows


def test_dcr_tables_and_columns_json_agree() -> None:
    check_agreement(json.loads(COLUMNS_JSON.read_text()), bicep_schemas())


def test_columns_json_is_valid_for_log_analytics() -> None:
    columns = json.loads(COLUMNS_JSON.read_text())
    assert set(columns["streams"]) == {"alerts", "audit", "health"}
    assert len(columns["streams"]) <= 10  # streams / data flows per DCR
    for s in columns["streams"].values():
        assert s["stream"].startswith("Custom-")
        assert s["table"].endswith("_CL")
        names = [c["name"] for c in s["columns"]]
        assert len(names) == len(set(names)), names
        assert ("TimeGenerated", "datetime") in [(c["name"], c["type"]) for c in s["columns"]]
        for c in s["columns"]:
            assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,44}", c["name"]), c["name"]
            assert c["name"].lower() not in RESERVED, c["name"]
            assert c["type"] in LA_TYPES, c
            assert c.get("description"), c["name"]


def test_renamed_column_in_a_copy_fails_the_agreement(tmp_path: Path) -> None:
    columns = json.loads(COLUMNS_JSON.read_text())
    renamed = copy.deepcopy(columns)
    renamed["streams"]["alerts"]["columns"][3]["name"] += "Renamed"
    (tmp_path / "columns.json").write_text(json.dumps(renamed))
    with pytest.raises(AssertionError, match=r"differ from columns\.json"):
        check_agreement(json.loads((tmp_path / "columns.json").read_text()), bicep_schemas())


def test_retyped_column_in_a_copy_fails_the_agreement() -> None:
    retyped = json.loads(COLUMNS_JSON.read_text())
    col = next(c for c in retyped["streams"]["health"]["columns"] if c["name"] == "LagSeconds")
    col["type"] = "int"
    with pytest.raises(AssertionError, match=r"differ from columns\.json"):
        check_agreement(retyped, bicep_schemas())


def test_a_hand_written_type_in_the_bicep_fails(tmp_path: Path) -> None:
    """If someone replaces `c.type` with a literal in a copy of the Bicep, the evaluator refuses it."""
    infra = tmp_path / "infra"
    (infra / "modules").mkdir(parents=True)
    (tmp_path / "irm_connector").mkdir()
    (tmp_path / "irm_connector" / "columns.json").write_text(COLUMNS_JSON.read_text())
    (infra / "resources.bicep").write_text(
        (INFRA / "resources.bicep").read_text().replace("'../irm_connector", f"'{REPO_ROOT}/irm_connector")
    )
    ws = (INFRA / "modules" / "sentinel-workspace.bicep").read_text()
    (infra / "modules" / "sentinel-workspace.bicep").write_text(ws.replace("type: c.type", "type: 'string'", 1))
    with pytest.raises(AssertionError):
        check_agreement(json.loads(COLUMNS_JSON.read_text()), bicep_schemas(infra))

