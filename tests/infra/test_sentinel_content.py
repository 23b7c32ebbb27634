"""The Sentinel content under sentinel/ keeps Sentinel's own limits, and the Bicep deploys exactly those files.

The limits are the ones Sentinel applies when a rule is created, as Azure-Sentinel's content validation
(.script/tests/detectionTemplateSchemaValidation) encodes them: query frequency and period from 5 minutes to 14
days, the period not shorter than the frequency, a frequency of at least an hour once the period reaches 2 days; at
most 3 {{placeholders}} per alert name or description; entity mappings with known entity types and identifiers,
at most 3 identifiers each, including one of the type's required ones; the ATT&CK tactic names Sentinel knows;
technique ids T1234 or T1234.001 whose tactics are listed; a GUID id, unique across all files.
`rule_problems` is the check; the tests run it on every file, and on broken copies to prove it can fail.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from .conftest import INFRA, REPO_ROOT, bicep_files, sentinel_content

SENTINEL = REPO_ROOT / "sentinel"
COLUMNS = json.loads((REPO_ROOT / "irm_connector" / "columns.json").read_text())
TABLES = {s["table"]: {c["name"]: c["type"] for c in s["columns"]} for s in COLUMNS["streams"].values()}
CONTENT_BICEP = INFRA / "modules" / "sentinel-content.bicep"

TACTICS = {
    "InitialAccess", "Execution", "Persistence", "PrivilegeEscalation", "DefenseEvasion", "CredentialAccess",
    "Discovery", "LateralMovement", "Collection", "Exfiltration", "CommandAndControl", "Impact", "Reconnaissance",
    "ResourceDevelopment", "ImpairProcessControl", "InhibitResponseFunction",
}  # fmt: skip
# The tactics MITRE ATT&CK files each technique under (for the techniques this project uses; add one here before
# using it in a rule). Sentinel refuses a technique whose tactics are not all listed.
TECHNIQUE_TACTICS = {
    "T1048": {"Exfiltration"},  # Exfiltration Over Alternative Protocol
    "T1052": {"Exfiltration"},  # Exfiltration Over Physical Medium
    "T1567": {"Exfiltration"},  # Exfiltration Over Web Service
    "T1530": {"Collection"},  # Data from Cloud Storage
    "T1213": {"Collection"},  # Data from Information Repositories
    "T1098": {"Persistence", "PrivilegeEscalation"},  # Account Manipulation
    "T1078": {"InitialAccess", "Persistence", "PrivilegeEscalation", "DefenseEvasion"},  # Valid Accounts
}
# Entity types and their identifiers, with the identifier sets of which at least one must be mapped.
ENTITIES: dict[str, tuple[set[str], list[set[str]]]] = {
    "Account": (
        {"Name", "FullName", "NTDomain", "DnsDomain", "UPNSuffix", "Sid", "AadTenantId", "AadUserId", "PUID",
         "IsDomainJoined", "DisplayName", "ObjectGuid"},
        [{"FullName"}, {"Sid"}, {"Name"}, {"AadUserId"}, {"PUID"}, {"ObjectGuid"}],
    ),
    "AzureResource": ({"ResourceId"}, [{"ResourceId"}]),
    "CloudApplication": ({"AppId", "Name", "InstanceName"}, [{"AppId"}, {"Name"}]),
    "DNS": ({"DomainName"}, [{"DomainName"}]),
    "File": ({"Directory", "Name"}, [{"Name"}]),
    "FileHash": ({"Algorithm", "Value"}, [{"Algorithm", "Value"}]),
    "Host": (
        {"DnsDomain", "NTDomain", "HostName", "FullName", "NetBiosName", "AzureID", "OMSAgentID", "OSFamily",
         "OSVersion", "IsDomainJoined"},
        [{"FullName"}, {"HostName"}, {"NetBiosName"}, {"AzureID"}, {"OMSAgentID"}],
    ),
    "IP": ({"Address"}, [{"Address"}]),
    "Mailbox": (
        {"MailboxPrimaryAddress", "DisplayName", "Upn", "ExternalDirectoryObjectId", "RiskLevel"},
        [{"MailboxPrimaryAddress"}],
    ),
    "Malware": ({"Name", "Category"}, [{"Name"}]),
    "Process": ({"ProcessId", "CommandLine", "ElevationToken", "CreationTimeUtc"}, [{"CommandLine"}, {"ProcessId"}]),
    "RegistryKey": ({"Hive", "Key"}, [{"Key"}, {"Hive"}]),
    "RegistryValue": ({"Name", "Value", "ValueType"}, [{"Name"}]),
    "SecurityGroup": ({"DistinguishedName", "SID", "ObjectGuid"}, [{"DistinguishedName"}, {"SID"}, {"ObjectGuid"}]),
    "URL": ({"Url"}, [{"Url"}]),
}  # fmt: skip
SEVERITIES = {"Informational", "Low", "Medium", "High"}
TRIGGER_OPERATORS = {"gt", "lt", "eq", "ne", "GreaterThan", "LessThan", "Equal", "NotEqual"}
DURATION = re.compile(r"(\d+)([mhd])")
PLACEHOLDER = re.compile(r"\{\{([^{}]*)\}\}")
TECHNIQUE = re.compile(r"T\d{4}(\.\d{3})?")
COLUMN_NAME = re.compile(r"[a-zA-Z_]+\w*")
DETAIL_KEY = re.compile(r"[a-zA-Z]+\w*")
VERSION = re.compile(r"\d+\.\d+\.\d+")

RULE_FIELDS = {
    "id", "name", "description", "severity", "requiredDataConnectors", "queryFrequency", "queryPeriod",
    "triggerOperator", "triggerThreshold", "tactics", "relevantTechniques", "query", "version", "kind",
    "eventGroupingSettings", "incidentConfiguration",
}  # fmt: skip
HUNTING_FIELDS = {
    "id", "name", "description", "requiredDataConnectors", "tactics", "relevantTechniques", "query",
    "entityMappings", "version",
}  # fmt: skip
PARSER_FIELDS = {"id", "Function", "Category", "FunctionName", "FunctionAlias", "FunctionQuery"}


def minutes(value: Any) -> int:
    """An Azure-Sentinel duration (<n>m, <n>h, <n>d) in minutes; the Bicep converts exactly this form."""
    m = DURATION.fullmatch(str(value))
    if not m:
        raise ValueError(f"duration {value!r} is not <number>m, <number>h or <number>d")
    return int(m.group(1)) * {"m": 1, "h": 60, "d": 1440}[m.group(2)]


def technique_problems(where: str, tactics: Any, techniques: Any, *, base_only: bool) -> list[str]:
    problems = []
    if not isinstance(tactics, list) or not isinstance(techniques, list):
        return [f"{where}: tactics and relevantTechniques must be lists"]
    problems += [f"{where}: unknown tactic {t!r}" for t in tactics if t not in TACTICS]
    for t in techniques:
        if not TECHNIQUE.fullmatch(str(t)):
            problems.append(f"{where}: technique {t!r} is not T1234 or T1234.001")
            continue
        if base_only and "." in t:
            # The alertRules API's `techniques` takes base techniques only (2025-09-01 has no subTechniques).
            problems.append(f"{where}: a rule deploys base techniques only, not {t!r}")
        base = t.split(".")[0]
        if base not in TECHNIQUE_TACTICS:
            problems.append(f"{where}: technique {t} has no entry in TECHNIQUE_TACTICS (add its ATT&CK tactics)")
        elif missing := TECHNIQUE_TACTICS[base] - set(tactics):
            problems.append(f"{where}: technique {t} needs the tactics {sorted(missing)}")
    return problems


def entity_problems(where: str, mappings: Any, query: str) -> list[str]:
    if not isinstance(mappings, list) or not 1 <= len(mappings) <= 10:
        return [f"{where}: entityMappings must list 1 to 10 entities"]
    problems = []
    for m in mappings:
        etype, fields = m.get("entityType"), m.get("fieldMappings") or []
        if etype not in ENTITIES:
            problems.append(f"{where}: unknown entity type {etype!r}")
            continue
        valid, required = ENTITIES[etype]
        if not 1 <= len(fields) <= 3:
            problems.append(f"{where}: {etype} maps {len(fields)} identifiers (1 to 3 allowed)")
        used = [f.get("identifier") for f in fields]
        problems += [f"{where}: {etype} has no identifier {i!r}" for i in used if i not in valid]
        if len(set(used)) != len(used):
            problems.append(f"{where}: {etype} maps an identifier twice")
        if not any(r <= set(used) for r in required):
            problems.append(f"{where}: {etype} needs one of {[sorted(r) for r in required]}")
        for f in fields:
            col = str(f.get("columnName", ""))
            if not COLUMN_NAME.fullmatch(col) or not re.search(rf"\b{re.escape(col)}\b", query):
                problems.append(f"{where}: {etype}.{f.get('identifier')} maps column {col!r}, not in the query")
    return problems


def rule_problems(rule: dict[str, Any], connector_id: str) -> list[str]:
    """Everything Sentinel (or this project's Bicep) would refuse in a scheduled analytics rule."""
    where = str(rule.get("name", rule.get("id")))
    problems = [f"{where}: missing {k}" for k in sorted(RULE_FIELDS - set(rule))]
    if problems:
        return problems
    if rule["kind"] != "Scheduled":
        problems.append(f"{where}: kind {rule['kind']!r}; the Bicep deploys Scheduled rules")
    try:
        freq, period = minutes(rule["queryFrequency"]), minutes(rule["queryPeriod"])
    except ValueError as e:
        return [f"{where}: {e}"]
    for label, value in (("queryFrequency", freq), ("queryPeriod", period)):
        if not 5 <= value <= 14 * 1440:
            problems.append(f"{where}: {label} {rule[label]} is outside 5 minutes to 14 days")
    if period < freq:
        problems.append(f"{where}: queryPeriod {rule['queryPeriod']} is shorter than queryFrequency")
    if period >= 2 * 1440 and freq < 60:
        problems.append(f"{where}: a period of 2 days or more needs a frequency of at least 1 hour")
    if rule["severity"] not in SEVERITIES:
        problems.append(f"{where}: severity {rule['severity']!r}")
    if rule["triggerOperator"] not in TRIGGER_OPERATORS:
        problems.append(f"{where}: triggerOperator {rule['triggerOperator']!r}")
    if not isinstance(rule["triggerThreshold"], int) or not 0 <= rule["triggerThreshold"] <= 10000:
        problems.append(f"{where}: triggerThreshold must be an integer from 0 to 10000")
    if not 0 < len(rule["query"]) <= 10000:
        problems.append(f"{where}: query length {len(rule['query'])} (1 to 10000)")
    if not 0 < len(rule["name"]) <= 256 or not 0 < len(rule["description"]) <= 5000:
        problems.append(f"{where}: name (256) or description (5000) too long or empty")
    if not VERSION.fullmatch(str(rule["version"])):
        problems.append(f"{where}: version {rule['version']!r} is not a.b.c")
    problems += technique_problems(where, rule["tactics"], rule["relevantTechniques"], base_only=True)
    if "entityMappings" in rule:
        problems += entity_problems(where, rule["entityMappings"], rule["query"])
    details = rule.get("customDetails") or {}
    if len(details) > 20:
        problems.append(f"{where}: more than 20 custom details")
    for key, col in details.items():
        if not DETAIL_KEY.fullmatch(key) or len(key) > 20 or not COLUMN_NAME.fullmatch(str(col)):
            problems.append(f"{where}: custom detail {key!r}: {col!r}")
        elif not re.search(rf"\b{re.escape(str(col))}\b", rule["query"]):
            problems.append(f"{where}: custom detail {key} reads column {col}, not in the query")
    for field, limit in (("alertDisplayNameFormat", 256), ("alertDescriptionFormat", 5000)):
        text = (rule.get("alertDetailsOverride") or {}).get(field)
        if text is None:
            continue
        found = PLACEHOLDER.findall(text)
        if len(found) > 3:
            problems.append(f"{where}: {field} has {len(found)} placeholders (at most 3)")
        if not 0 < len(text) <= limit:
            problems.append(f"{where}: {field} length {len(text)} (1 to {limit})")
        problems += [
            f"{where}: {field} placeholder {{{{{p}}}}} is no column of the query"
            for p in found
            if not re.search(rf"\b{re.escape(p)}\b", rule["query"])
        ]
    if rule["eventGroupingSettings"].get("aggregationKind") not in {"SingleAlert", "AlertPerResult"}:
        problems.append(f"{where}: eventGroupingSettings.aggregationKind")
    grouping = rule["incidentConfiguration"].get("groupingConfiguration") or {}
    try:
        if not 5 <= minutes(grouping.get("lookbackDuration")) <= 7 * 1440:
            problems.append(f"{where}: grouping lookbackDuration outside 5 minutes to 7 days")
    except ValueError as e:
        problems.append(f"{where}: grouping {e}")
    if grouping.get("matchingMethod") not in {"AllEntities", "AnyAlert", "Selected"}:
        problems.append(f"{where}: grouping matchingMethod {grouping.get('matchingMethod')!r}")
    groups = [grouping.get(k) or [] for k in ("groupByEntities", "groupByAlertDetails", "groupByCustomDetails")]
    if grouping.get("matchingMethod") == "Selected" and not any(groups):
        problems.append(f"{where}: matchingMethod Selected groups by nothing")
    problems += [f"{where}: groups by custom detail {k} it does not define" for k in groups[2] if k not in details]
    problems += connector_problems(where, rule["requiredDataConnectors"], connector_id)
    return problems


def connector_problems(where: str, required: Any, connector_id: str) -> list[str]:
    ours = [c for c in required or [] if c.get("connectorId") == connector_id]
    if len(ours) != 1:
        return [f"{where}: requiredDataConnectors must name {connector_id} once"]
    unknown = set(ours[0].get("dataTypes") or []) - set(TABLES)
    return [f"{where}: {connector_id} has no data type {t}" for t in sorted(unknown)] or (
        [f"{where}: {connector_id} lists no data type"] if not ours[0].get("dataTypes") else []
    )


@pytest.fixture(scope="module")
def content(node_bin: str) -> dict[str, Any]:
    return sentinel_content(node_bin)


@pytest.fixture(scope="module")
def connector_id(content: dict[str, Any]) -> str:
    [dc] = content["dataconnectors"]
    return str(dc["doc"]["id"])


def test_every_analytics_rule_keeps_sentinels_limits(content: dict[str, Any], connector_id: str) -> None:
    assert len(content["analytics"]) >= 5
    problems = [p for r in content["analytics"] for p in rule_problems(r["doc"], connector_id)]
    assert not problems, "\n".join(problems)


def test_the_checks_fail_on_the_rule_as_it_was(content: dict[str, Any], connector_id: str) -> None:
    """The high-severity rule as issue 14 found it (PT15M over P2D, four placeholders), and other breakages."""
    rule = copy.deepcopy(next(r["doc"] for r in content["analytics"] if "high-severity" in r["file"]))
    rule["queryFrequency"], rule["queryPeriod"] = "15m", "2d"
    rule["alertDetailsOverride"]["alertDescriptionFormat"] = "{{AlertId}} {{UserPrincipalName}} {{Change}} {{Status}}"
    rule["tactics"] = ["Exfiltration", "Exfil"]
    rule["relevantTechniques"] = ["T1530", "1567", "T1567.002"]
    rule["entityMappings"][0]["fieldMappings"].append({"identifier": "AadUserId", "columnName": "UserId"})
    rule["customDetails"]["NoSuchColumnKeyIsTooLong"] = "NoSuchColumn"
    problems = "\n".join(rule_problems(rule, connector_id))
    for expected in (
        "a period of 2 days or more needs a frequency of at least 1 hour",
        "alertDescriptionFormat has 4 placeholders",
        "unknown tactic 'Exfil'",
        "technique '1567' is not T1234",
        "a rule deploys base techniques only",
        "technique T1530 needs the tactics ['Collection']",
        "Account maps 4 identifiers",
        "maps column 'UserId', not in the query",
        "custom detail 'NoSuchColumnKeyIsTooLong'",
    ):
        assert expected in problems, f"{expected!r} not reported:\n{problems}"
    short = dict(rule, queryFrequency="1h", queryPeriod="30m")
    assert "shorter than queryFrequency" in "\n".join(rule_problems(short, connector_id))
    long = dict(rule, queryFrequency="15d", queryPeriod="15d")
    assert "outside 5 minutes to 14 days" in "\n".join(rule_problems(long, connector_id))
    unconnected = dict(rule, requiredDataConnectors=[{"connectorId": "Office365", "dataTypes": ["OfficeActivity"]}])
    assert f"must name {connector_id} once" in "\n".join(rule_problems(unconnected, connector_id))


def test_hunting_queries_and_parsers_keep_the_azure_sentinel_format(content: dict[str, Any], connector_id: str) -> None:
    assert len(content["hunting"]) >= 2 and len(content["parsers"]) >= 2
    for h in content["hunting"]:
        q, where = h["doc"], h["file"]
        assert set(q) >= HUNTING_FIELDS, f"{where}: missing {HUNTING_FIELDS - set(q)}"
        assert not technique_problems(where, q["tactics"], q["relevantTechniques"], base_only=False)
        assert not entity_problems(where, q["entityMappings"], q["query"])
        assert not connector_problems(where, q["requiredDataConnectors"], connector_id)
        assert VERSION.fullmatch(str(q["version"])), where
    for p in content["parsers"]:
        f, where = p["doc"], p["file"]
        assert set(f) >= PARSER_FIELDS, f"{where}: missing {PARSER_FIELDS - set(f)}"
        assert {"Title", "Version", "LastUpdated"} <= set(f["Function"]), where
        assert VERSION.fullmatch(str(f["Function"]["Version"])), where
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(f["Function"]["LastUpdated"])), where
        assert f["FunctionName"] == f["FunctionAlias"] == Path(where).stem
        assert f["Category"] == "Microsoft Sentinel Parser"


def test_hunting_queries_name_their_entities_as_sentinel_reads_them(content: dict[str, Any]) -> None:
    """A saved search has no field for entity mappings: Sentinel takes a hunting result's entities from columns
    named ``<Type>_<n>_<Identifier>`` only. The YAML's entityMappings were deployed nowhere, and a result row
    (a bookmark made of it) carried no account and no IP."""
    for h in content["hunting"]:
        q, where = h["doc"], h["file"]
        extends = dict(re.findall(r"^\s*\|\s*extend\s+(\w+_\d+_\w+)\s*=\s*(\w+)\s*$", q["query"], re.M))
        seen: Counter[str] = Counter()
        wanted = {}
        for mapping in q["entityMappings"]:
            n = seen[mapping["entityType"]]
            seen[mapping["entityType"]] += 1
            for field in mapping["fieldMappings"]:
                wanted[f"{mapping['entityType']}_{n}_{field['identifier']}"] = field["columnName"]
        assert extends == wanted, f"{where}: entity columns {extends} against its entityMappings {wanted}"


def test_ids_are_guids_unique_across_all_files(content: dict[str, Any]) -> None:
    ids = [(c["doc"]["id"], c["file"]) for kind in ("analytics", "hunting", "parsers") for c in content[kind]]
    for value, where in ids:
        assert str(uuid.UUID(str(value))) == str(value).lower(), f"{where}: id {value!r} is not a GUID"
    seen: dict[str, str] = {}
    for value, where in ids:
        assert str(value).lower() not in seen, f"{where} reuses the id of {seen[str(value).lower()]}"
        seen[str(value).lower()] = where


def test_health_rules_carry_no_attack_tactics(content: dict[str, Any]) -> None:
    """A connector going quiet is an operations problem: no ATT&CK tactic (certainly not DefenseEvasion)."""
    health = COLUMNS["streams"]["health"]["table"]
    health_rules = [r["doc"] for r in content["analytics"] if health in r["doc"]["query"]]
    assert len(health_rules) == 6
    for rule in health_rules:
        assert rule["tactics"] == [] and rule["relevantTechniques"] == [], rule["name"]
    irm = [r["doc"] for r in content["analytics"] if health not in r["doc"]["query"]]
    assert irm and all({"Exfiltration", "Collection"} <= set(r["tactics"]) for r in irm)


def test_health_rules_raise_one_incident_per_tenant_and_an_alert_per_finding(content: dict[str, Any]) -> None:
    """Several connectors feed one workspace, one per Microsoft 365 tenant. Grouped by any alert, one tenant's
    outage joined another's open incident and raised nothing new; the stale rule's one alert per run took its title
    from the first tenant's row. The silent rule is a rule per tenant already."""
    health = COLUMNS["streams"]["health"]["table"]
    shared = [r for r in content["analytics"] if health in r["doc"]["query"] and "silent" not in r["file"]]
    assert len(shared) == 5
    for rule in (r["doc"] for r in shared):
        grouping = rule["incidentConfiguration"]["groupingConfiguration"]
        assert grouping["matchingMethod"] == "Selected" and grouping["groupByCustomDetails"] == ["O365TenantId"]
        assert rule["customDetails"]["O365TenantId"] == "O365TenantId"
        assert rule["eventGroupingSettings"]["aggregationKind"] == "AlertPerResult", rule["name"]


def test_rules_alert_on_poison_backlog_and_refused_ingestion(content: dict[str, Any]) -> None:
    queries: dict[str, str] = {r["file"]: r["doc"]["query"] for r in content["analytics"]}

    def rule_reading(pattern: str) -> str:
        found = [f for f, q in queries.items() if re.search(pattern, q)]
        assert len(found) == 1, (pattern, found)
        return found[0]

    # Every rise between rows counts: a fall (a requeue, messages expired) must not cancel new failures after it.
    poison = rule_reading(r"where PoisonAdded > 0")
    assert "max_of(PoisonDepth - prev(PoisonDepth), 0)" in queries[poison]
    # A late row between two rows seen before adds only the rises it reveals: the rises over every row, less those
    # over the rows that had arrived before the hour (the rises it splits were reported when first seen).
    assert 'sumif(Added, Basis == "all") - sumif(Added, Basis == "before")' in queries[poison]
    assert 'iff(InWindow, dynamic(["all"]), dynamic(["all", "before"]))' in queries[poison]
    # Each basis a sequence of its own, in the order the rows were written.
    assert "sort by O365TenantId asc, Basis asc, TimeGenerated asc" in queries[poison]
    assert "prev(O365TenantId) == O365TenantId and prev(Basis) == Basis" in queries[poison]
    backlog = rule_reading(r"where BacklogSeconds > thresholdSeconds")
    assert re.search(r"let thresholdSeconds = 7200;", queries[backlog])
    # A backlog put back for later is invisible to the poller's peek (0 with messages waiting): the age seen last.
    assert "OldestQueuedSeconds == 0 and QueueDepth > 0" in queries[backlog]
    rule_reading(r'where IngestionState startswith "refused"')
    # Content lost to expiry (before queueing, or on the queue: the health row counts both), each row once.
    lost = rule_reading(r"where BlobsExpired > 0 or isnotempty\(Unlisted\)")
    assert "summarize BlobsLost = sum(BlobsExpired)" in queries[lost]
    # And a stretch the poller could no longer list (behind by more than 7 days), which no blob count shows: the
    # rule reads the poller's own words for it.
    [phrase] = re.findall(r'LastError has "([^"]+)"', queries[lost])
    assert phrase in (REPO_ROOT / "irm_connector" / "poller.py").read_text()
    stale = rule_reading(r"No connector health row for more than 2 hours")
    # The stale rule groups by tenant: an empty table has no tenant, so a fresh deployment raises nothing there...
    assert "summarize LastRun = max(TimeGenerated) by O365TenantId" in queries[stale]
    # ...and the silent rule, which knows its tenant, raises it: without a group an empty input is one row.
    silent = rule_reading(r"No connector health row since the deployment")
    assert re.search(r"\| summarize LastRun = max\(TimeGenerated\)\n", queries[silent])
    assert "where isnull(LastRun) and now() > deployedAt + silentAfter" in queries[silent]
    # Runs that all fail leave Watermark and LagSeconds empty (the lease could not be read): lag cannot see them.
    failing = rule_reading(r"Every run failed for more than 2 hours")
    assert failing == stale and re.search(r"Succeeded = countif\(Errors == 0\)", queries[stale])
    assert re.search(r"where Succeeded == 0 and FirstRow < ago\(staleAfter\)", queries[stale])
    # One alert per tenant and content type, its first reason (a missing grant is both never listed and failing).
    assert re.search(r"union \(noRuns \| extend Rank = 0\), \(failing \| extend Rank = 1\), \(neverListed \| extend Rank = 2\), "
                     r"\(lagging \| extend Rank = 3\)\s*\| summarize arg_min\(Rank, \*\) by O365TenantId, ContentType", queries[stale])


FUZZY_UNION = re.compile(r"union isfuzzy=true\s*\(datatable\(([^)]*)\)\[\]\),\s*(\(\s*(\w+_CL)[^)]*\)|(\w+_CL))")


def _union_legs(query: str) -> list[tuple[str, str, str]]:
    """(datatable columns, table, table leg) of every `union isfuzzy=true (datatable(...)[]), <table leg>`."""
    text = re.sub(r"//[^\n]*", "", query)
    return [(cols, in_parens or bare, leg) for cols, leg, in_parens, bare in FUZZY_UNION.findall(text)]


def test_rules_tolerate_a_table_that_is_not_queryable_yet(content: dict[str, Any]) -> None:
    """Sentinel refuses to create a rule whose table does not resolve, which a table created minutes earlier may
    not. Each rule reads its table through `union isfuzzy=true` with an empty datatable of the table's own columns
    (names and types from columns.json, so the placeholder cannot drift from the table)."""
    for r in content["analytics"]:
        query, where = r["doc"]["query"], r["file"]
        tables = set(re.findall(r"\b\w+_CL\b", query))
        legs = _union_legs(query)
        assert tables and {t for _, t, _ in legs} == tables, f"{where}: {tables} read without a fuzzy union"
        for cols, table, leg in legs:
            extended = set(re.findall(r"extend\s+(\w+)\s*=", leg))
            for name, ctype in re.findall(r"(\w+)\s*:\s*(\w+)", cols):
                if name in extended:
                    continue
                assert TABLES[table].get(name) == ctype, f"{where}: datatable column {name}:{ctype} vs {table}"


def test_a_drifted_placeholder_column_is_caught() -> None:
    query = "union isfuzzy=true (datatable(TimeGenerated: datetime, PoisonDepth: long)[]), IRMConnectorHealth_CL"
    [(cols, table, _)] = _union_legs(query)
    assert table == "IRMConnectorHealth_CL"
    assert dict(re.findall(r"(\w+)\s*:\s*(\w+)", cols))["PoisonDepth"] != TABLES[table]["PoisonDepth"]


def test_bicep_deploys_every_content_file_once() -> None:
    """One source: each file under sentinel/ is loaded by the Bicep exactly once, and nothing else is."""
    loaded: list[Path] = []
    for f in bicep_files():
        for rel in re.findall(r"load(?:Yaml|Json|Text)Content\('([^']+)'\)", f.read_text()):
            p = (f.parent / rel).resolve()
            assert p.is_file(), f"{f}: {rel} does not exist"
            if SENTINEL in p.parents:
                loaded.append(p)
    files = sorted(p.resolve() for p in SENTINEL.rglob("*") if p.is_file())
    assert sorted(loaded) == files
    text = CONTENT_BICEP.read_text()
    assert "loadTextContent" not in text  # YAML and JSON are loaded as data, not pasted as text


def test_bicep_maps_the_yaml_to_the_api() -> None:
    """The alertRules API wants ISO 8601 durations and long operator names; the Bicep converts the YAML's."""
    text = CONTENT_BICEP.read_text()
    for field in (
        "rule.queryFrequency",
        "rule.queryPeriod",
        "rule.incidentConfiguration.groupingConfiguration.lookbackDuration",
    ):
        assert f"endsWith({field}, 'd') ? 'P${{toUpper({field})}}' : 'PT${{toUpper({field})}}'" in text, field
    operators = re.search(r"var triggerOperators = \{(.*?)\n\}", text, re.DOTALL)
    assert operators
    assert set(re.findall(r"^\s*(\w+): '", operators.group(1), re.MULTILINE)) == TRIGGER_OPERATORS
    assert "triggerOperator: triggerOperators[rule.triggerOperator]" in text
    assert "techniques: rule.relevantTechniques" in text
    # Saved searches one at a time (409 NewerDataExists on parallel writes), functions before hunting queries.
    for name in ("functions", "hunting"):
        assert re.search(
            rf"@batchSize\(1\)\nresource {name} 'Microsoft\.OperationalInsights/workspaces/savedSearches@", text
        )
    hunting = text[text.index("resource hunting ") : text.index("resource rules ")]
    assert re.search(r"dependsOn: \[\s*functions\s*\]", hunting)


def test_the_silent_rule_is_deployed_once_per_tenant_with_its_tenant_and_time(content: dict[str, Any]) -> None:
    """The silent-connector rule's query holds two stand-in values the Bicep replaces, each its own whole `let`, so
    that a rule deployed with the stand-ins still in it cannot pass: it would watch a tenant no connector has and
    report every deployment silent."""
    [rule] = [r["doc"] for r in content["analytics"] if r["file"].endswith("/irm-connector-silent.yaml")]
    text = CONTENT_BICEP.read_text()
    replaced = re.search(r"var silentQuery = replace\(replace\(silentTemplate\.query, '([^']*)', silentTenant\), "
                         r"'([^']*)', silentDeployedAt\)", text)
    assert replaced, "sentinel-content.bicep no longer replaces the silent rule's two values"
    for stand_in in replaced.groups():
        assert rule["query"].count(stand_in) == 1, stand_in
    assert "var tenant = toLower(o365TenantId)" in text
    assert """var silentTenant = 'let tenant = "${tenant}";'""" in text
    assert "var silentDeployedAt = 'let deployedAt = datetime(${deployedAt});'" in text
    assert "param deployedAt string = utcNow(" in text
    # Several connectors feed one workspace: one rule each, named for its tenant, in the list the others deploy by.
    assert "id: guid(silentTemplate.id, tenant)" in text
    assert re.search(r"loadYamlContent\('\.\./\.\./sentinel/analytics/irm-connector-content-lost\.yaml'\)"
                     r"\n  silentRule\n\]", text)
    resources = (INFRA / "resources.bicep").read_text()
    module = resources[resources.index("module sentinelContent ") :]
    assert re.search(r"^    o365TenantId: o365Tenant$", module[: module.index("\n}")], re.MULTILINE)


def test_data_connector_definition(content: dict[str, Any]) -> None:
    [dc] = content["dataconnectors"]
    ui = dc["doc"]
    for field in ("id", "title", "publisher", "descriptionMarkdown", "graphQueries", "dataTypes",
                  "connectivityCriteria", "permissions", "instructionSteps"):  # fmt: skip
        assert ui.get(field), field
    assert re.fullmatch(r"[a-z0-9A-Z-_]+", ui["id"])  # the resource name pattern of dataConnectorDefinitions
    assert {d["name"] for d in ui["dataTypes"]} == set(TABLES)
    for d in ui["dataTypes"]:
        assert d["lastDataReceivedQuery"].startswith(d["name"] + "\n"), d
    assert {g["baseQuery"] for g in ui["graphQueries"]} == set(TABLES)
    [criterion] = ui["connectivityCriteria"]
    assert criterion["type"] == "IsConnectedQuery"
    [query] = criterion["value"]
    health = COLUMNS["streams"]["health"]["table"]
    # Connected when every tenant that wrote a row today wrote one within 30 minutes: not the newest row of all.
    assert query.startswith(health) and "by O365TenantId" in query and "countif(LastRun < ago(30m))" in query
    steps = " ".join(s["title"].lower() for s in ui["instructionSteps"])
    for word in ("deploy", "grant", "export", "verify"):
        assert word in steps, word
    text = CONTENT_BICEP.read_text()
    assert "resource connectorDefinition 'Microsoft.SecurityInsights/dataConnectorDefinitions@" in text
    assert "kind: 'Customizable'" in text
    assert "loadJsonContent('../../sentinel/dataconnectors/IRMConnector.json')" in text


def test_views_of_a_shared_workspace_name_each_tenant(content: dict[str, Any]) -> None:
    """Several tenants' connectors may feed one workspace: the freshness tile showed the newest row of all (a stopped
    tenant hidden behind another's fresh rows), and a High-severity incident named the user but not the tenant."""
    [wb] = content["workbooks"]
    [fresh] = [i for i in wb["doc"]["items"] if i.get("name") == "freshness"]
    branches = re.findall(r"\(\w+_CL \| summarize Newest = [^|]*\|", fresh["content"]["query"])
    assert len(branches) == 4 and all("by O365TenantId" in b for b in branches), branches
    # Over a fixed range: tied to the time range, a tenant stopped longer ago than it showed no row at all. And by
    # the record's own time: Azure Monitor replaces the TimeGenerated of a row over 2 days old.
    assert "timeContextFromParameter" not in fresh["content"], fresh["content"]
    assert fresh["content"]["timeContext"]["durationMs"] >= 7 * 86400 * 1000
    assert "IRMAlerts_CL | summarize Newest = max(CreationTime)" in fresh["content"]["query"]
    trends = {i["name"]: i["content"]["query"] for i in wb["doc"]["items"] if i.get("name", "").endswith("-over-time")}
    assert set(trends) == {"queue-over-time", "lag-over-time"}
    for name, query in trends.items():  # a backlog or a lag tells its tenant, not a sum or a maximum of them all
        assert re.search(r"summarize [^\n]* by bin\(TimeGenerated, 1h\), [^\n]*O365TenantId", query), name
    [high] = [r for r in content["analytics"] if r["doc"]["id"] == "bd37c659-36c0-4903-b1f4-2d56ebb746c1"]
    assert high["doc"]["customDetails"]["O365TenantId"] == "O365TenantId"
    assert "O365TenantId = OrganizationId" in high["doc"]["query"]


def test_workbook_alert_tiles_read_a_long_fixed_range_and_filter_inside(content: dict[str, Any]) -> None:
    [wb] = content["workbooks"]
    tiles = [i for i in wb["doc"]["items"] if i.get("type") == 3]
    alert_tiles = [t for t in tiles if re.match(r"\s*IRMAlerts\b", t["content"]["query"])]
    assert len(alert_tiles) >= 5
    for t in alert_tiles:
        c = t["content"]
        assert "timeContextFromParameter" not in c, t["name"]
        assert c["timeContext"]["durationMs"] >= 365 * 86400 * 1000, t["name"]
        if t["name"] != "open-alerts":  # every open alert, whatever the range
            assert "{TimeRange}" in c["query"], t["name"]
    health_text = " ".join(t["content"]["query"] for t in tiles)
    for column in ("BlobsRefused", "QueueDepth", "OldestQueuedSeconds", "PoisonDepth", "IngestionState"):
        assert column in health_text, column
    assert "fallbackResourceIds: [\n        workspace.id\n      ]" in CONTENT_BICEP.read_text()


def test_every_irm_view_of_the_alerts_reads_the_irm_category_only(content: dict[str, Any]) -> None:
    """ALERT_CATEGORIES may bring other categories into IRMAlerts_CL (a DLP alert, ``*``); the rules, hunting
    queries and workbook tiles made for Insider Risk Management alerts must not count those as IRM alerts."""
    queries = {r["file"]: r["doc"]["query"] for kind in ("analytics", "hunting") for r in content[kind]}
    [wb] = content["workbooks"]
    queries |= {f"{wb['file']}#{i['name']}": i["content"]["query"] for i in wb["doc"]["items"] if i.get("type") == 3}
    readers = {name: q for name, q in queries.items() if re.search(r"\bIRMAlerts(_CL)?\b", q)}
    # The freshness tile asks whether any alert row arrives at all: a connector health measure, any category.
    del readers[f"{wb['file']}#freshness"]
    assert len(readers) >= 9, sorted(readers)
    for name, query in readers.items():
        assert 'where Category == "InsiderRiskManagement"' in query, name


def _top_level_items(text: str) -> list[str]:
    """A KQL list split at its commas outside parentheses and string literals."""
    items, depth, quoted, start = [], 0, False, 0
    for i, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
        elif not quoted and char == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return [*items, text[start:]]


def test_the_o365audit_function_puts_back_every_promoted_column_under_its_record_field_name(
    content: dict[str, Any],
) -> None:
    """columns.json's promoted audit columns are exactly what the function packs into Record: a column added or
    renamed there and not here would silently drop a field from the whole record."""
    [parser] = [p["doc"] for p in content["parsers"] if p["doc"]["FunctionAlias"] == "O365Audit"]
    query = parser["FunctionQuery"]
    first = query[query.index("| project") : query.index("| extend Record")]
    packed = {}
    for item in _top_level_items(first.removeprefix("| project").strip()):
        name, _, expr = (part.strip() for part in item.partition("="))
        packed[name] = expr or name
    packed = {k: v for k, v in packed.items() if k not in ("TimeGenerated", "BlobRef", "Rest")}
    columns = json.loads((REPO_ROOT / "irm_connector" / "columns.json").read_text())["streams"]["audit"]["columns"]
    promoted = [c for c in columns if c.get("promoted")]
    assert {c["source"] for c in promoted} == set(packed)
    for column in promoted:
        assert column["name"] in packed[column["source"]], (column, packed[column["source"]])


def test_the_o365audit_function_s_body_runs_on_a_basic_table_as_it_is(content: dict[str, Any]) -> None:
    """A Basic O365Audit_CL runs no KQL functions, so README and docs/deploy.md tell its users to paste the body of
    O365Audit instead: the body must keep to what Basic allows, one table and no function of the workspace."""
    [parser] = [p["doc"] for p in content["parsers"] if p["doc"]["FunctionAlias"] == "O365Audit"]
    body = "\n".join(line.split("//", 1)[0] for line in parser["FunctionQuery"].splitlines()).strip()
    assert body.startswith("O365Audit_CL\n"), body[:40]
    assert not re.findall(r"\b(join|union|lookup|let|find|search|externaldata|invoke)\b", body)
    workspace = {p["doc"]["FunctionAlias"] for p in content["parsers"]}
    workspace |= {name for name in re.findall(r"\b\w+_CL\b", json.dumps(content)) if name != "O365Audit_CL"}
    assert workspace - {"O365Audit"}, "no other function or table found to check against"
    assert not [name for name in workspace if re.search(rf"\b{re.escape(name)}\b", body.removeprefix("O365Audit_CL"))]
