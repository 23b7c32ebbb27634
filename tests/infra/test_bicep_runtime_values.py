"""No resource's `name`, `location`, `scope` or `parent` depends on a value only known while the deployment runs.

ARM needs those four when a deployment starts. Of an `existing` resource only `id`, `name`, `type` and `apiVersion`
are known then; any other property (`location`, `properties.*`, `tags`, ...) is read at run time, as are a module's
outputs and any resource's `properties`. Bicep rejects such a use (BCP120); no Bicep compiler runs here, so this
test finds it in the text: every resource and module declaration, nested ones too, with variables followed to
what they are built from.
"""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import bicep_files

DEPLOY_TIME = {"id", "name", "type", "apiVersion"}
GUARDED = ("name", "location", "scope", "parent")
DECLARATION = re.compile(
    r"^(?P<indent>[ \t]*)(?:resource|module)\s+(?P<sym>\w+)\s+'[^']*'(?P<existing>\s+existing)?\s*=\s*"
    r"(?:if\s*\((?:[^()]|\([^()]*\))*\)\s*)?(?:\[\s*for\s[^:]*:\s*)?\{",
    re.MULTILINE,
)


def _block_end(text: str, open_at: int) -> int:
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] in "{[(":
            depth += 1
        elif text[i] in "}])":
            depth -= 1
            if depth == 0:
                return i
    raise AssertionError("unbalanced Bicep text")


def _top_level_assignments(body: str) -> list[tuple[str, str]]:
    """`key: value` pairs at the first level of a `{...}` body (value up to the end of its line or bracket)."""
    pairs = []
    depth = 0
    i = 0
    while i < len(body):
        ch = body[i]
        if ch in "{[(":
            depth += 1
        elif ch in "}])":
            depth -= 1
        elif depth == 1 and (body[i - 1] == "\n" if i else False):
            m = re.match(r"[ \t]*(\w+):[ \t]*(.*)", body[i:])
            if m:
                value = m.group(2)
                if value.rstrip().endswith(("{", "[", "(")):
                    start = i + m.start(2) + len(value.rstrip()) - 1
                    value = body[i + m.start(2) : _block_end(body, start) + 1]
                pairs.append((m.group(1), value))
        i += 1
    return pairs


def _runtime_reference(expr: str, existing: set[str], modules: set[str], resources: set[str]) -> str | None:
    m: re.Match[str] | None
    for sym in existing:
        for m in re.finditer(rf"\b{sym}\.(\??)(\w+)", expr):
            if m.group(2) not in DEPLOY_TIME:
                return m.group(0)
    for sym in modules:
        if m := re.search(rf"\b{sym}\.outputs\b", expr):
            return m.group(0)
    for sym in resources:
        if m := re.search(rf"\b{sym}\.properties\b", expr):
            return m.group(0)
    if m := re.search(r"\b(reference|list\w*)\(", expr):
        return m.group(0)
    return None


def runtime_uses(text: str) -> list[str]:
    """Every `name`/`location`/`scope`/`parent` of a declaration whose value is known only at run time."""
    existing = set(re.findall(r"^\s*resource\s+(\w+)\s+'[^']*'\s+existing\s*=", text, re.MULTILINE))
    modules = set(re.findall(r"^\s*module\s+(\w+)\s", text, re.MULTILINE))
    resources = set(re.findall(r"^\s*resource\s+(\w+)\s", text, re.MULTILINE))
    runtime_vars: dict[str, str] = {}
    variables = dict(re.findall(r"^var\s+(\w+)\s*=\s*(.*)$", text, re.MULTILINE))
    changed = True
    while changed:  # variables built from variables
        changed = False
        for name, expr in variables.items():
            if name in runtime_vars:
                continue
            why = _runtime_reference(expr, existing, modules, resources) or next(
                (f"{v} ({runtime_vars[v]})" for v in runtime_vars if re.search(rf"\b{v}\b", expr)), None
            )
            if why:
                runtime_vars[name] = why
                changed = True
    found = []
    for decl in DECLARATION.finditer(text):
        body = text[decl.end() - 1 : _block_end(text, decl.end() - 1) + 1]
        for key, value in _top_level_assignments(body):
            if key not in GUARDED:
                continue
            why = _runtime_reference(value, existing, modules, resources) or next(
                (f"{v} ({runtime_vars[v]})" for v in runtime_vars if re.search(rf"\b{v}\b", value)), None
            )
            if why:
                found.append(f"{decl.group('sym')}.{key} = {value.strip()} -> run-time value {why}")
    return found


def test_no_declaration_needs_a_run_time_value_at_the_start() -> None:
    problems = {f.name: runtime_uses(f.read_text()) for f in bicep_files()}
    assert not any(problems.values()), problems
    # The checker saw every declaration (nested and looped ones too).
    declared = sum(len(DECLARATION.findall(f.read_text())) for f in bicep_files())
    assert declared == sum(
        len(re.findall(r"^\s*(?:resource|module)\s+\w+\s+'", f.read_text(), re.MULTILINE)) for f in bicep_files()
    )


def test_the_location_of_an_existing_workspace_is_caught(tmp_path: Path) -> None:
    """The bug issue 14 found, and its relatives: all reported; the allowed forms are not."""
    bad = """
param workspaceName string
resource workspace 'Microsoft.OperationalInsights/workspaces@2025-07-01' existing = {
  name: workspaceName
}
module info 'info.bicep' = {
  name: 'info'
}
var region = workspace.location
var regionCopy = toLower(region)
resource dcr 'Microsoft.Insights/dataCollectionRules@2023-03-11' = {
  name: 'dcr'
  location: workspace.location
  properties: {
    description: workspace.properties.customerId
  }
}
resource dcr2 'Microsoft.Insights/dataCollectionRules@2023-03-11' = if (true) {
  name: 'dcr-${info.outputs.suffix}'
  location: regionCopy
}
resource rules 'Microsoft.SecurityInsights/alertRules@2025-09-01' = [for r in []: {
  name: guid(workspace.id, r)
  scope: workspace
  kind: 'Scheduled'
}]
resource child 'Microsoft.OperationalInsights/workspaces/savedSearches@2025-07-01' = {
  parent: workspace
  name: workspace.properties.customerId
}
"""
    found = "\n".join(runtime_uses(bad))
    assert "dcr.location = workspace.location" in found
    assert "dcr2.name = 'dcr-${info.outputs.suffix}'" in found
    assert "dcr2.location = regionCopy" in found and "region (workspace.location)" in found
    assert "child.name = workspace.properties.customerId" in found
    assert "rules." not in found and "child.parent" not in found
    assert "description" not in found  # properties may be run-time values
    assert len(runtime_uses(bad)) == 4
