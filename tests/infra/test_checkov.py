"""checkov's Bicep checks pass on every .bicep file, every file really parses, and every skip is justified."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from .conftest import INFRA, bicep_files, run_checkov

SKIP_COMMENT = re.compile(r"//\s*checkov:skip=([A-Z0-9_]+)(?::\s*(.*))?$")
RESOURCE_DECL = re.compile(r"^\s*resource\s+\w+\s+'[^']+'", re.MULTILINE)


def _failures(report: dict[str, Any]) -> list[str]:
    return [
        f"{c['check_id']} {c['check_name']} -- {c['resource']} in {c['file_path']}:{c['file_line_range']}"
        for c in report["results"]["failed_checks"]
    ]


def test_checkov_bicep_checks_pass(checkov_report: dict[str, Any]) -> None:
    assert not _failures(checkov_report), "checkov failures:\n" + "\n".join(_failures(checkov_report))


def test_checkov_parsed_every_bicep_file(checkov_report: dict[str, Any]) -> None:
    # checkov exits 0 when it cannot parse a file: it only lists it under parsing_errors.
    assert checkov_report["results"]["parsing_errors"] == []
    assert checkov_report["summary"]["parsing_errors"] == 0
    assert checkov_report["summary"]["resource_count"] > 0


def test_every_bicep_file_parses_with_pycep(checkov_python: Path) -> None:
    """Parse each file with checkov's own parser (pycep) and compare resource counts with the source."""
    files = bicep_files()
    assert len(files) >= 7, files
    script = (
        "import json, sys\nfrom pathlib import Path\nfrom pycep import BicepParser\n"
        "out = {}\n"
        "for f in sys.argv[1:]:\n"
        "    try:\n"
        "        t = BicepParser().parse(file_path=Path(f))\n"
        "        out[f] = {'resources': len(t.get('resources', {}))}\n"
        "    except Exception as e:\n"
        "        out[f] = {'error': f'{type(e).__name__}: {e}'[:2000]}\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [str(checkov_python), "-c", script, *map(str, files)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr
    parsed = json.loads(proc.stdout)
    errors = {f: r["error"] for f, r in parsed.items() if "error" in r}
    assert not errors, "pycep cannot parse:\n" + "\n".join(f"{f}: {e}" for f, e in errors.items())
    for f in files:
        # Every top-level declaration must be in pycep's tree (it may also list some nested children).
        top_level = len(re.findall(r"^resource\s+\w+\s+'[^']+'", f.read_text(), re.MULTILINE))
        seen = parsed[str(f)]["resources"]
        assert seen >= top_level, f"{f}: pycep saw {seen} resources, {top_level} are declared at top level"


def test_a_parse_failure_is_detected(checkov_bin: Path, tmp_path: Path) -> None:
    """Proves the checks above can fail: checkov reports (and we catch) a file it cannot parse."""
    (tmp_path / "broken.bicep").write_text(
        "param x string\nresource s 'Microsoft.Storage/storageAccounts@2023-01-01' = {\n  name: x\n"
    )
    report = run_checkov(checkov_bin, tmp_path)
    assert [Path(p).name for p in report["results"]["parsing_errors"]] == ["broken.bicep"]


def test_every_skip_has_a_reason_and_is_used(checkov_report: dict[str, Any]) -> None:
    declared: list[tuple[str, str, str]] = []
    for f in bicep_files():
        for line in f.read_text().splitlines():
            if "checkov:skip" in line:
                m = SKIP_COMMENT.search(line)
                assert m, f"{f}: malformed skip comment: {line.strip()}"
                assert m.group(2), f"{f}: skip without a reason: {line.strip()}"
                assert len(m.group(2).strip()) >= 20, f"{f}: reason too short: {line.strip()}"
                declared.append((f.name, m.group(1), m.group(2).strip()))
    skipped = checkov_report["results"]["skipped_checks"]
    used = {(Path(c["file_path"]).name, c["check_id"]) for c in skipped}
    stale = [d for d in declared if (d[0], d[1]) not in used]
    assert not stale, f"skip comments that match no check (remove them): {stale}"
    for c in skipped:
        assert c["check_result"].get("suppress_comment", "No comment provided") != "No comment provided", c
    assert {d[0] for d in declared} <= {f.name for f in bicep_files()}


def test_infra_folder_layout() -> None:
    assert (INFRA / "main.bicep").is_file()
    assert (INFRA / "resources.bicep").is_file()
    assert RESOURCE_DECL.search((INFRA / "modules" / "functionapp.bicep").read_text())
