"""A simulated tenant's audit content: deterministic blobs plus the ground truth.

Why: end-to-end tests and the benchmark need realistic volume (blobs of 200–5000 records,
~1% IRM alerts, ~2% records duplicated across blobs, late-listed blobs) and must assert
exactly-once arrival, so the generator returns what the connector should produce: the unique
record Ids, the alert record Ids and each alert row's key fields (named as in columns.json).

Everything comes from ``random.Random(seed)``: the same seed and ``start`` give the same workload,
Ids included (``start`` defaults to a time relative to the wall clock, so pass it to pin times).
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from standins.management import ManagementStandIn

ALERT_SOURCE = "Office 365 Security & Compliance"
ALERT_USER = "SecurityComplianceAlerts"
IRM_POLICIES = (
    "Data leaks by departing users",
    "Data theft by departing users",
    "Security policy violations",
    "Data leaks by priority users",
    "Risky browser usage",
)
OTHER_ALERTS = (
    ("ThreatManagement", "Suspicious email sending patterns detected", "System"),
    ("ThreatManagement", "Email messages containing malicious URL removed after delivery", "System"),
    ("DataLossPrevention", "DLP policy match for document containing credit card numbers", "Custom"),
)
# content type -> (RecordType, Workload, operations)
ACTIVITY = {
    "Audit.General": (25, "MicrosoftTeams", ("MessageSent", "MemberAdded", "TeamCreated", "MeetingDetail")),
    "Audit.Exchange": (2, "Exchange", ("MailItemsAccessed", "Send", "MoveToDeletedItems", "Update")),
    "Audit.SharePoint": (6, "SharePoint", ("FileAccessed", "FileModified", "FileDownloaded", "FileUploaded")),
    "Audit.AzureActiveDirectory": (15, "AzureActiveDirectory", ("UserLoggedIn", "UserLoginFailed")),
    "DLP.All": (13, "Exchange", ("DlpRuleMatch",)),
}
DATA_KEY_SETS = (
    ("userPrincipalName",),
    ("upn",),
    ("f3u",),
    ("f3u", "upn"),
    ("f3u", "upn", "userPrincipalName"),
    (),
)


#: How much older than its blob a record's ``CreationTime`` can be.
RECORD_LEAD = timedelta(minutes=90)

def format_creation_time(value: datetime) -> str:
    """Audit ``CreationTime``: UTC, seconds, no zone suffix (``2026-06-29T20:03:19``)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass(frozen=True)
class WorkloadBlob:
    content_type: str
    records: list[dict[str, Any]]
    content_created: datetime
    available_at: datetime

    @property
    def late(self) -> bool:
        return self.available_at > self.content_created


@dataclass
class Workload:
    """Blobs to publish and the truth to assert against."""

    seed: int
    tenant_id: str
    blobs: list[WorkloadBlob]
    #: Every unique record Id (each should arrive exactly once in the audit stream).
    record_ids: set[str]
    #: Record Ids of every RecordType 40 alert record (IRM and others).
    alert_record_ids: set[str]
    #: Record Ids of the Insider Risk Management alert records.
    irm_alert_record_ids: set[str]
    #: Record Id → the alert row's key fields, named as the columns in columns.json.
    alerts: dict[str, dict[str, Any]]
    #: How many record appearances are duplicates of a record in another blob.
    duplicate_appearances: int
    content_ids: list[str] = field(default_factory=list)

    @property
    def total_appearances(self) -> int:
        return sum(len(b.records) for b in self.blobs)

    def expected_alerts(self, categories: tuple[str, ...] = ("InsiderRiskManagement",)) -> dict[str, dict[str, Any]]:
        """The alert rows the connector should write for the given categories (by record Id)."""
        return {rid: row for rid, row in self.alerts.items() if row["Category"] in categories}

    def publish(self, management: ManagementStandIn, tenant: str | None = None) -> list[str]:
        """Add every blob to the stand-in; returns (and remembers) the content ids."""
        self.content_ids = [
            management.add_blob(
                b.content_type,
                b.records,
                content_created=b.content_created,
                available_at=b.available_at,
                tenant=tenant,
            )
            for b in self.blobs
        ]
        return self.content_ids


class _Gen:
    def __init__(self, seed: int, tenant_id: str, users: int) -> None:
        self.rng = random.Random(seed)
        self.tenant_id = tenant_id
        self.users = [f"user{i:03d}@contoso.com" for i in range(users)]

    def guid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def ip(self) -> str:
        return f"203.0.113.{self.rng.randint(1, 254)}"

    def activity(self, content_type: str, when: datetime) -> dict[str, Any]:
        record_type, workload, operations = ACTIVITY[content_type]
        user = self.rng.choice(self.users)
        return {
            "CreationTime": format_creation_time(when),
            "Id": self.guid(),
            "Operation": self.rng.choice(operations),
            "OrganizationId": self.tenant_id,
            "RecordType": record_type,
            "UserKey": f"1003{self.rng.getrandbits(40):012X}",
            "UserType": 0,
            "Version": 1,
            "Workload": workload,
            "ClientIP": self.ip(),
            "ObjectId": f"https://contoso.sharepoint.com/sites/s{self.rng.randint(1, 40)}/d{self.rng.randint(1, 999)}",
            "UserId": user,
            "ResultStatus": self.rng.choice(("Succeeded", "Succeeded", "Succeeded", "Failed")),
        }

    def alert(
        self,
        when: datetime,
        *,
        category: str,
        name: str,
        alert_type: str,
        alert_id: str,
        policy_id: str,
        status: str,
        update: bool,
        upn: str,
    ) -> dict[str, Any]:
        keys = self.rng.choice(DATA_KEY_SETS) if category == "InsiderRiskManagement" else ("f3u",)
        data: dict[str, Any] = {key: upn for key in keys}
        data.update({"ts": format_creation_time(when) + "Z", "uid": self.guid(), "an": name})
        return {
            "CreationTime": format_creation_time(when),
            "Id": self.guid(),
            "Operation": "AlertUpdated" if update else "AlertTriggered",
            "OrganizationId": self.tenant_id,
            "RecordType": 40,
            "ResultStatus": "Succeeded",
            "UserKey": ALERT_USER,
            "UserType": 4,
            "Version": 1,
            "Workload": "SecurityComplianceCenter",
            "ObjectId": alert_id,
            "UserId": ALERT_USER,
            "AlertId": alert_id,
            "AlertLinks": [],
            "AlertType": alert_type,
            "Category": category,
            "Comments": "Alert Updated" if update else "New Alert",
            "Data": json.dumps(data, separators=(",", ":")),
            "Name": name,
            "PolicyId": policy_id,
            "Severity": self.rng.choice(("Low", "Medium", "High")),
            "Source": ALERT_SOURCE,
            "Status": status,
        }


def _expected_row(record: dict[str, Any], content_type: str) -> dict[str, Any]:
    data = json.loads(record["Data"])
    upn = data.get("userPrincipalName") or data.get("upn") or data.get("f3u") or ""
    row = {
        key: record[key]
        for key in (
            "AlertId",
            "Name",
            "Severity",
            "Status",
            "Category",
            "Source",
            "AlertType",
            "Comments",
            "Operation",
            "Workload",
            "PolicyId",
            "OrganizationId",
            "RecordType",
            "CreationTime",
        )
    }
    row.update({"RecordId": record["Id"], "UserPrincipalName": upn, "ContentType": content_type})
    return row


def generate_workload(
    seed: int = 0,
    *,
    total_records: int = 10_000,
    blob_size: tuple[int, int] = (200, 5000),
    irm_share: float = 0.01,
    other_alert_share: float = 0.002,
    update_share: float = 0.3,
    duplicate_share: float = 0.02,
    late_share: float = 0.0,
    late_by: timedelta = timedelta(hours=2),
    start: datetime | None = None,
    span: timedelta = timedelta(hours=6),
    content_types: tuple[str, ...] = ("Audit.General",),
    tenant_id: str = "00000000-0000-4000-8000-000000000001",
    users: int = 50,
) -> Workload:
    """Build a workload of ``total_records`` unique records (plus duplicates).

    Alerts go into ``Audit.General`` blobs only (where the service publishes them). Blobs are
    spread over ``[start, start + span)`` by ``contentCreated``; each record's ``CreationTime``
    is up to 90 minutes before its blob's. ``late_share`` of the blobs become listable only
    ``late_by`` after their ``contentCreated``. ``start`` defaults to ``span`` + 1 hour ago.
    """
    if blob_size[0] < 1 or blob_size[0] > blob_size[1]:
        raise ValueError("blob_size must be (low, high) with 1 <= low <= high")
    gen = _Gen(seed, tenant_id, users)
    rng = gen.rng
    if start is None:
        start = datetime.now(UTC).replace(microsecond=0) - span - timedelta(hours=1)
    start = start if start.tzinfo else start.replace(tzinfo=UTC)

    sizes: list[int] = []
    remaining = total_records
    while remaining > 0:
        size = min(remaining, rng.randint(*blob_size))
        sizes.append(size)
        remaining -= size
    count = len(sizes)
    created = sorted(start + span * ((i + rng.random()) / max(count, 1)) for i in range(count))
    types = [content_types[i % len(content_types)] for i in range(count)]
    general = [i for i, ct in enumerate(types) if ct == "Audit.General"]

    n_irm = round(total_records * irm_share) if general else 0
    n_other = round(total_records * other_alert_share) if general else 0
    alert_slots: dict[int, list[str]] = {}
    for kind in ["irm"] * n_irm + ["other"] * n_other:
        alert_slots.setdefault(rng.choice(general), []).append(kind)

    blobs_records: list[list[dict[str, Any]]] = []
    alerts: dict[str, dict[str, Any]] = {}
    irm_ids: set[str] = set()
    open_alerts: list[tuple[str, str, str, str]] = []  # (alert_id, name, policy_id, upn)
    policy_ids = {name: gen.guid() for name in IRM_POLICIES}
    for index, size in enumerate(sizes):
        kinds = alert_slots.get(index, [])[:size]
        records: list[dict[str, Any]] = []
        for kind in kinds:
            when = created[index] - timedelta(minutes=rng.uniform(0, RECORD_LEAD / timedelta(minutes=1)))
            if kind == "irm":
                if open_alerts and rng.random() < update_share:
                    alert_id, name, policy_id, upn = rng.choice(open_alerts)
                    status = rng.choice(("Investigating", "Resolved", "Dismissed", "Active"))
                    update = True
                else:
                    name = rng.choice(IRM_POLICIES)
                    alert_id, policy_id, upn = gen.guid(), policy_ids[name], rng.choice(gen.users)
                    open_alerts.append((alert_id, name, policy_id, upn))
                    status, update = "Active", False
                record = gen.alert(
                    when,
                    category="InsiderRiskManagement",
                    name=name,
                    alert_type="Custom",
                    alert_id=alert_id,
                    policy_id=policy_id,
                    status=status,
                    update=update,
                    upn=upn,
                )
                irm_ids.add(record["Id"])
            else:
                category, name, alert_type = rng.choice(OTHER_ALERTS)
                record = gen.alert(
                    when,
                    category=category,
                    name=name,
                    alert_type=alert_type,
                    alert_id=gen.guid(),
                    policy_id=gen.guid(),
                    status="Active",
                    update=False,
                    upn=rng.choice(gen.users),
                )
            alerts[record["Id"]] = _expected_row(record, types[index])
            records.append(record)
        for _ in range(size - len(records)):
            when = created[index] - timedelta(minutes=rng.uniform(0, RECORD_LEAD / timedelta(minutes=1)))
            records.append(gen.activity(types[index], when))
        rng.shuffle(records)
        blobs_records.append(records)

    record_ids = {r["Id"] for records in blobs_records for r in records}
    duplicates = 0
    if count > 1:
        originals = [list(records) for records in blobs_records]
        by_type: dict[str, list[int]] = {}
        for i, ct in enumerate(types):
            by_type.setdefault(ct, []).append(i)
        placed: set[tuple[str, int]] = set()
        wanted = round(total_records * duplicate_share)
        attempts = 0
        while duplicates < wanted and attempts < wanted * 10:
            attempts += 1
            source = rng.randrange(count)
            targets = [i for i in by_type[types[source]] if i != source]
            if not targets:
                continue
            record = rng.choice(originals[source])
            target = rng.choice(targets)
            if (record["Id"], target) in placed:
                continue  # at most one copy per blob: duplicates are *across* blobs
            placed.add((record["Id"], target))
            blobs_records[target].append(dict(record))
            duplicates += 1

    blobs = []
    for i, records in enumerate(blobs_records):
        late = rng.random() < late_share
        blobs.append(WorkloadBlob(types[i], records, created[i], created[i] + late_by if late else created[i]))
    return Workload(
        seed=seed,
        tenant_id=tenant_id,
        blobs=blobs,
        record_ids=record_ids,
        alert_record_ids=set(alerts),
        irm_alert_record_ids=irm_ids,
        alerts=alerts,
        duplicate_appearances=duplicates,
    )
