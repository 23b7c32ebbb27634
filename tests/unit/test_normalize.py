"""Normalization: the rows a SOC sees, from the records the API sends, whatever their shape."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from irm_connector.blob_parse import DEEP_REPAIR, MAX_DEPTH, parse_blob
from irm_connector.errors import BadContentError
from irm_connector.normalize import BlobRows, ContentRef, Routing, blob_ref, extract_upn, normalize_blob
from irm_connector.row_writer import CUT_MARK, FIELD_LIMIT, ROW_LIMIT
from irm_connector.schema import stream_schema
from standins.stored import o365audit_record as whole_record
from standins.workload import generate_workload

REF = ContentRef("blob-1", "Audit.General", datetime(2026, 11, 27, 10, 0, tzinfo=UTC))
#: When the rows are sent: shortly after the records of these tests happened.
SENT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ALERTS = Routing("Custom-IRMAlerts")
BOTH = Routing("Custom-IRMAlerts", "Custom-O365Audit")


def irm_alert(**over: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "Id": "0f9a1c7e-0000-4000-8000-000000000001",
        "RecordType": 40,
        "CreationTime": "2026-11-27T09:15:02",
        "Operation": "AlertTriggered",
        "OrganizationId": "11111111-2222-3333-4444-555555555555",
        "UserType": 4,
        "UserKey": "SecurityComplianceAlerts",
        "Workload": "SecurityComplianceCenter",
        "UserId": "SecurityComplianceAlerts",
        "AlertId": "a-1",
        "AlertType": "Custom",
        "Name": "Data leaks by departing users",
        "PolicyId": "p-1",
        "Status": "Active",
        "Severity": "High",
        "Category": "InsiderRiskManagement",
        "Source": "Office 365 Security & Compliance",
        "Comments": "New Alert",
        "Data": json.dumps({"userPrincipalName": "alex@contoso.com", "ts": "2026-11-27T09:00:00"}),
    }
    record.update(over)
    return record


def rows(blob: BlobRows, key: str = "Custom-IRMAlerts") -> list[dict[str, Any]]:
    return [orjson.loads(r.body) for r in blob.rows.get(key, [])]


def test_irm_alert_becomes_one_alert_row_with_the_documented_columns() -> None:
    out = normalize_blob([irm_alert()], REF, ALERTS, sent_at=SENT)
    [row] = rows(out)
    assert row["TimeGenerated"] == "2026-11-27T09:15:02Z"
    assert row["RecordId"] == "0f9a1c7e-0000-4000-8000-000000000001"
    assert row["AlertId"] == "a-1" and row["Severity"] == "High" and row["Status"] == "Active"
    assert row["RecordType"] == 40
    assert row["UserPrincipalName"] == "alex@contoso.com"
    assert row["Data"] == {"userPrincipalName": "alex@contoso.com", "ts": "2026-11-27T09:00:00"}
    assert row["ContentId"] == "blob-1" and row["ContentType"] == "Audit.General"
    assert set(row) <= set(stream_schema("alerts").names)
    assert out.alerts == 1 and out.records == 1


def test_every_declared_alert_column_is_filled_from_a_full_record() -> None:
    # An entity event carries every field apis.md lists for RecordType 40: the entity it names too, which no
    # column held (with the audit stream off, as by default, it was nowhere).
    entity = irm_alert(Operation="AlertEntityGenerated", AlertEntityId="mallory@contoso.com", EntityType="User")
    [row] = rows(normalize_blob([entity], REF, ALERTS, sent_at=SENT))
    assert set(row) == set(stream_schema("alerts").names)
    assert (row["AlertEntityId"], row["EntityType"]) == ("mallory@contoso.com", "User")


def test_every_declared_audit_column_is_filled_from_a_full_record_and_each_byte_is_stored_once() -> None:
    record = irm_alert(ClientIP="10.1.2.3", ObjectId="obj", ResultStatus="Succeeded")
    [row] = rows(normalize_blob([record], REF, BOTH, sent_at=SENT), "Custom-O365Audit")
    assert set(row) == set(stream_schema("audit").names)
    assert row["UserType"] == 4 and row["ClientIP"] == "10.1.2.3" and row["TimeGenerated"] == record["CreationTime"] + "Z"
    promoted = {c.source for c in stream_schema("audit").promoted()}
    assert not promoted & set(row["Record"]), "a promoted field is stored twice"
    assert whole_record(row) == record
    assert row["BlobRef"] == blob_ref("Audit.General", "blob-1") and row["BlobRef"].startswith("G")


@pytest.mark.parametrize(
    "changes",
    [
        {"RecordType": "40"},  # read as a number: the column holds 40, the record's text stays in Record
        {"UserType": "4"},
        {"ObjectId": 12345, "ClientIP": ["10.0.0.1"]},  # made text for the column; the original stays
        {"ClientIP": ""},  # an empty column reads as absent in KQL: the empty value stays in Record
        {"CreationTime": "2026-11-27T09:15:02.1234567"},  # not the API's shape: kept as it came
        {"CreationTime": "2026-11-27 09:15:02.123456789+0000"},  # likewise, though read as 09:15:02.1234567
        {"CreationTime": "2026-11-24T06:00:00"},  # too old for Azure Monitor to keep as TimeGenerated
        {"CreationTime": "2026-11-28T06:00:00"},  # too far ahead, likewise
    ],
)
def test_an_audit_row_gives_back_the_whole_record_whatever_its_shape(changes: dict[str, Any]) -> None:
    record = irm_alert(**{"ClientIP": "10.1.2.3", "ObjectId": "obj", "ResultStatus": "Succeeded", **changes})
    [row] = rows(normalize_blob([record], REF, BOTH, sent_at=SENT), "Custom-O365Audit")
    assert whole_record(row) == record


@pytest.mark.parametrize("missing", ["Id", "CreationTime"])
def test_o365audit_does_not_pass_off_a_synthetic_id_or_the_blobs_time_as_the_records(missing: str) -> None:
    """The row's RecordId and TimeGenerated stand in for a record without them (a synthetic id, the blob's
    time): the whole record shows the field empty, not those values."""
    record = irm_alert(ClientIP="10.1.2.3", ObjectId="obj", ResultStatus="Succeeded")
    del record[missing]
    [row] = rows(normalize_blob([record], REF, BOTH, sent_at=SENT), "Custom-O365Audit")
    assert row["RecordId"] and row["TimeGenerated"]
    assert whole_record(row) == record | {missing: ""}


def test_audit_rows_of_the_benchmark_workload_are_at_most_115_percent_of_the_records() -> None:
    workload = generate_workload(seed=2026, total_records=20_000, blob_size=(200, 5000), tenant_id="t")
    row_bytes = record_bytes = 0
    for blob in workload.blobs:
        ref = ContentRef(f"{blob.content_created:%Y%m%d%H%M%S}000$audit_general$Audit_General$emea0026" * 2,
                         blob.content_type, blob.content_created)
        out = normalize_blob(blob.records, ref, BOTH, sent_at=blob.content_created)
        row_bytes += sum(len(r.body) for r in out.rows["Custom-O365Audit"])
        record_bytes += sum(len(orjson.dumps(r)) for r in blob.records)
    assert row_bytes <= 1.15 * record_bytes


@pytest.mark.parametrize(
    ("data", "upn"),
    [
        (json.dumps({"upn": "a@x.com"}), "a@x.com"),
        (json.dumps({"f3u": "b@x.com", "uid": "1"}), "b@x.com"),
        (json.dumps({"UserPrincipalName": "c@x.com"}), "c@x.com"),
        ("not json at all", ""),
        (json.dumps(["a", "list"]), ""),
        (None, ""),
        ("", ""),
    ],
)
def test_upn_is_read_from_the_spellings_seen_in_the_wild(data: str | None, upn: str) -> None:
    [row] = rows(normalize_blob([irm_alert(Data=data)], REF, ALERTS, sent_at=SENT))
    assert row["UserPrincipalName"] == upn


def test_data_that_does_not_parse_is_kept_as_the_raw_string() -> None:
    [row] = rows(normalize_blob([irm_alert(Data="{broken")], REF, ALERTS, sent_at=SENT))
    assert row["Data"] == "{broken"


@pytest.mark.parametrize("data", ["null", '"text"', "123", "true"])
def test_data_that_is_json_but_no_object_is_kept_as_the_raw_string(data: str) -> None:
    """Parsed, ``null`` left the column out and ``"123"`` became a number: the record's text was lost."""
    out = normalize_blob([irm_alert(Data=data)], REF, ALERTS, sent_at=SENT)
    [row] = rows(out)
    assert row["Data"] == data and row["UserPrincipalName"] == "" and not out.problems


@pytest.mark.parametrize(("data", "text"), [(False, "false"), (7, "7"), (2.5, "2.5")])
def test_data_that_is_a_bare_number_or_boolean_is_kept_as_its_text(data: object, text: str) -> None:
    """Not the JSON string the API writes, but a scalar in the record itself: it went to the dynamic column as a bare
    ``false``, which reads as neither an object nor text (the property test below found it)."""
    out = normalize_blob([irm_alert(Data=data)], REF, ALERTS, sent_at=SENT)
    [row] = rows(out)
    assert row["Data"] == text and row["UserPrincipalName"] == ""


@pytest.mark.parametrize(
    "data",
    ['{"userPrincipalName": "alex@contoso.com", "fileName": "report\\ud83d.docx"}',  # a lone surrogate's escape
     '{"userPrincipalName": "alex@contoso.com", "score": 1e400}'],  # beyond a double
    ids=["lone-surrogate", "huge-number"],
)  # fmt: skip
def test_data_that_only_the_standard_library_reads_keeps_the_alerts_user(data: str) -> None:
    """orjson refuses both; kept as text, the alert lost its user in every hunting query and rule."""
    out = normalize_blob([irm_alert(Data=data)], REF, ALERTS, sent_at=SENT)
    [row] = rows(out)
    assert row["UserPrincipalName"] == "alex@contoso.com"
    assert isinstance(row["Data"], dict) and "Data is not JSON (kept as text)" not in out.problems


def test_other_records_and_other_alert_categories_stay_out_of_the_alerts_stream() -> None:
    records = [
        irm_alert(Id="1", Category="ThreatManagement"),
        {"Id": "2", "RecordType": 15, "CreationTime": "2026-11-27T09:00:00", "Operation": "UserLoggedIn"},
        irm_alert(Id="3"),
    ]
    out = normalize_blob(records, REF, ALERTS, sent_at=SENT)
    assert [r["RecordId"] for r in rows(out)] == ["3"]
    assert "Custom-O365Audit" not in out.rows
    out = normalize_blob(records, REF, Routing("Custom-IRMAlerts", alert_categories=frozenset({"*"})), sent_at=SENT)
    assert [r["RecordId"] for r in rows(out)] == ["1", "3"]


def test_audit_stream_gets_every_record_when_on() -> None:
    records = [irm_alert(Id="1"), {"Id": "2", "RecordType": 15, "CreationTime": "2026-11-27T09:00:00"}]
    out = normalize_blob(records, REF, BOTH, sent_at=SENT)
    assert [r["RecordId"] for r in rows(out, "Custom-O365Audit")] == ["1", "2"]
    assert [r["RecordId"] for r in rows(out)] == ["1"]


def test_same_id_twice_in_a_blob_is_one_row() -> None:
    out = normalize_blob([irm_alert(), irm_alert()], REF, ALERTS, sent_at=SENT)
    assert len(rows(out)) == 1 and out.duplicates_in_blob == 1


def test_alerts_only_counts_no_duplicate_or_problem_of_a_record_it_does_not_send() -> None:
    """With alerts only (the default), the log's "duplicates dropped" and the problems line counted the audit
    records a blob repeats or that lack an Id, though none of them was ever to be sent."""
    other = {"Id": "2", "RecordType": 15, "CreationTime": "2026-11-27T09:00:00"}
    no_id = {"RecordType": "15", "CreationTime": "2026-11-27T09:00:00"}
    out = normalize_blob([irm_alert(), other, dict(other), no_id, irm_alert()], REF, ALERTS, sent_at=SENT)
    assert len(rows(out)) == 1 and out.duplicates_in_blob == 1 and not out.problems, out.problems
    both = normalize_blob([irm_alert(), other, dict(other), no_id, irm_alert()], REF, BOTH, sent_at=SENT)
    assert both.duplicates_in_blob == 2 and both.problems["record without Id (synthetic Id used)"] == 1


def test_alert_updates_share_alert_id_but_are_separate_rows() -> None:
    out = normalize_blob([irm_alert(Id="1"), irm_alert(Id="2", Status="Investigating")], REF, ALERTS, sent_at=SENT)
    assert [(r["AlertId"], r["Status"]) for r in rows(out)] == [("a-1", "Active"), ("a-1", "Investigating")]


def test_record_without_id_gets_a_stable_synthetic_id() -> None:
    record = irm_alert()
    del record["Id"]
    a = rows(normalize_blob([record], REF, ALERTS, sent_at=SENT))[0]["RecordId"]
    b = rows(normalize_blob([dict(record)], REF, ALERTS, sent_at=SENT))[0]["RecordId"]
    assert a == b and len(a) == 36


@pytest.mark.parametrize("creation", [None, "yesterday", "2026-13-45T99:00:00", 12345])
def test_unreadable_creation_time_falls_back_to_content_created(creation: str | int | None) -> None:
    out = normalize_blob([irm_alert(CreationTime=creation)], REF, ALERTS, sent_at=SENT)
    assert rows(out)[0]["TimeGenerated"].startswith("2026-11-27T10:00:00")
    assert sum(out.problems.values()) == 1


@pytest.mark.parametrize(
    ("creation", "utc"),
    [("2026-11-27T09:15:02+01:00", "2026-11-27T08:15:02Z"), ("2026-11-27T23:30:00.5-05:30", "2026-11-28T05:00:00.5Z"),
     ("2026-11-27T09:15:02-00:00", "2026-11-27T09:15:02Z"), ("2026-11-27T09:15:02+0100", "2026-11-27T08:15:02Z"),
     ("2026-11-27 09:15:02", "2026-11-27T09:15:02Z"), ("2026-11-27t09:15:02z", "2026-11-27T09:15:02Z"),
     ("2026-11-27T09:15:02.123456789", "2026-11-27T09:15:02.1234567Z")],
)  # fmt: skip
def test_a_creation_time_in_another_iso_form_is_read_as_utc(creation: str, utc: str) -> None:
    """Not the API's shape (UTC, no zone, a ``T``), but a time all the same: it was replaced by the blob's time,
    in TimeGenerated and in CreationTime, and the alert row kept no copy of it."""
    out = normalize_blob([irm_alert(CreationTime=creation)], REF, ALERTS, sent_at=SENT)
    [row] = rows(out)
    assert (row["TimeGenerated"], row["CreationTime"]) == (utc, utc) and not out.problems


@pytest.mark.parametrize(
    ("given", "problem"),
    [("40", "RecordType given as text (read as a number)"),
     (40.0, "RecordType given as a decimal (read as a whole number)")],
)  # fmt: skip
def test_record_type_not_given_as_an_integer_still_routes_and_the_warning_says_how_it_came(
    given: object, problem: str
) -> None:
    """A float RecordType was counted as "given as text", which sent an operator to look for strings."""
    out = normalize_blob([irm_alert(RecordType=given)], REF, ALERTS, sent_at=SENT)
    [row] = rows(out)
    assert row["RecordType"] == 40 and out.problems == {problem: 1}


def test_a_number_given_as_thousands_of_digits_does_not_fail_the_blob() -> None:
    """int() refuses a text of over 4,300 digits: the record keeps it as it came, and the rest of the blob goes."""
    wild = {"Id": "w", "RecordType": "9" * 5000, "UserType": "1" * 5000, "CreationTime": "2026-11-27T09:15:02"}
    out = normalize_blob([irm_alert(), wild], REF, BOTH, sent_at=SENT)
    assert len(rows(out)) == 1
    audit = [orjson.loads(r.body) for r in out.rows["Custom-O365Audit"]]
    assert {r["RecordId"] for r in audit} == {"0f9a1c7e-0000-4000-8000-000000000001", "w"}


def test_a_row_over_1_mb_of_escaped_text_loses_what_it_must_and_no_more() -> None:
    """Three 65,000-character values of a control character: each is under the 64 KB cut as text but six JSON
    bytes a character, so the row is over 1 MB. One column loses what the row must (about 130,000 JSON bytes,
    21,700 characters), counted once; the others keep every character."""
    text = "\x01" * 65_000
    out = normalize_blob([irm_alert(Name=text, Comments=text, PolicyId=text)], REF, ALERTS, sent_at=SENT)
    [r] = out.rows["Custom-IRMAlerts"]
    row = orjson.loads(r.body)
    assert ROW_LIMIT - 4096 < len(r.body) <= ROW_LIMIT
    kept = sorted(len(row[name]) for name in ("Name", "Comments", "PolicyId"))
    assert kept[1:] == [65_000, 65_000] and kept[0] > 40_000
    assert sum(row[name].endswith(CUT_MARK) for name in ("Name", "Comments", "PolicyId")) == 1
    assert [k for k in out.problems if k.startswith("row over 1 MB")] and sum(
        n for k, n in out.problems.items() if k.startswith("row over 1 MB")) == 1  # fmt: skip


def test_a_record_over_64_kb_stays_an_object_queries_can_read() -> None:
    """A long recipient list (or a large Data): the service would cut the value as text, into JSON no query
    reads a field of. The object is kept, its longest list shortened and marked."""
    recipients = [f"user{i}@contoso.com" for i in range(4000)]
    record = irm_alert(Subject="keep me", Recipients=recipients, Data=json.dumps({"upn": "a@b", "list": recipients}))
    out = normalize_blob([record], REF, BOTH, sent_at=SENT)
    [audit] = rows(out, "Custom-O365Audit")
    [alert] = rows(out, "Custom-IRMAlerts")
    for value in (audit["Record"], alert["Data"]):
        assert isinstance(value, dict) and len(orjson.dumps(value)) <= FIELD_LIMIT
    kept = audit["Record"]["Recipients"]
    assert kept[:-1] == recipients[: len(kept) - 1] and len(kept) > 1000  # Data, as large, kept as much
    assert kept[-1] == f"{4000 - (len(kept) - 1)} more items {CUT_MARK}"
    assert audit["Record"]["Subject"] == "keep me" and alert["Data"]["upn"] == "a@b"
    assert out.problems["value over 64 KB cut to fit (column Record)"] == 1


def test_a_text_over_64_kb_is_cut_and_says_so() -> None:
    """An alert's text over 64 KB was cut to the limit with no mark, unlike an object's: read in Sentinel, it
    looked whole."""
    out = normalize_blob([irm_alert(Comments="é" * 40_000)], REF, ALERTS, sent_at=SENT)
    [alert] = rows(out)
    assert alert["Comments"].endswith(CUT_MARK) and set(alert["Comments"].removesuffix(CUT_MARK)) == {"é"}
    assert FIELD_LIMIT - 8 <= len(alert["Comments"].encode()) <= FIELD_LIMIT
    assert out.problems["value over 64 KB cut to fit (column Comments)"] == 1


@pytest.mark.parametrize("column", ["Comments", "Data"])
def test_a_text_over_64_kb_with_unpaired_surrogates_is_cut_as_it_is_written(column: str) -> None:
    """An unpaired surrogate is written as U+FFFD, three bytes, but was measured and cut as ``?``, one: 20,000 of
    them in 40,000 characters (a 100 KB value as written) passed for 40 KB and went uncut, for the service to cut
    unmarked; and a cut one read ``?`` where the value uncut reads U+FFFD."""
    out = normalize_blob([irm_alert(**{column: "x\ud800" * 20_000})], REF, ALERTS, sent_at=SENT)
    [alert] = rows(out)
    value = alert[column]
    assert isinstance(value, str) and value.endswith(CUT_MARK), value[-40:]
    assert FIELD_LIMIT - 8 <= len(value.encode()) <= FIELD_LIMIT
    assert set(value.removesuffix(CUT_MARK)) == {"x", "\ufffd"}
    assert out.problems[f"value over 64 KB cut to fit (column {column})"] == 1


def test_non_object_records_are_counted_and_the_rest_kept() -> None:
    out = normalize_blob([1, "x", None, irm_alert()], REF, ALERTS, sent_at=SENT)
    assert len(rows(out)) == 1 and out.problems["record is not a JSON object"] == 3


def test_huge_values_are_cut_below_the_limits() -> None:
    out = normalize_blob([irm_alert(Name="n" * 200_000, Data=json.dumps({"blob": "d" * 300_000}))], REF, BOTH, sent_at=SENT)
    for stream in ("Custom-IRMAlerts", "Custom-O365Audit"):
        [r] = out.rows[stream]
        assert len(r.body) <= ROW_LIMIT
        row = orjson.loads(r.body)
        for value in row.values():
            size = len(value.encode()) if isinstance(value, str) else len(orjson.dumps(value))
            assert size <= FIELD_LIMIT
    assert any("64 KB" in p for p in out.problems)


def test_parse_blob_refuses_what_is_not_an_array() -> None:
    for whole in (b'{"a": 1}', b"<html>", b'[{"a": 1]', b'[{"a": 1}, <br>{"b": 2}]', b"[1, 2] and more"):
        with pytest.raises(BadContentError, match=r"not an array|not JSON") as refused:
            parse_blob(whole)
        assert not refused.value.cut, whole  # whole but wrong: the API would serve the same bytes again
    with pytest.raises(BadContentError, match="stops before") as refused:
        parse_blob(b"[{")
    assert refused.value.cut


def test_a_byte_order_mark_changes_nothing_of_how_a_blob_is_read() -> None:
    """A blob that begins with a UTF-8 BOM is read as the same blob without: record by record when one is nested
    too deep (it cost the whole blob), a segment at a time when large, and cut short told from wrong."""
    from irm_connector.blob_parse import SEGMENT_BYTES, iter_blob

    deep = b'[{"Id": "a"}, {"Id": "b", "D": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}]"
    bom = b"\xef\xbb\xbf"
    assert [r["Id"] for r in parse_blob(bom + deep)] == ["a", "b"]
    with pytest.raises(BadContentError) as cut:
        parse_blob(bom + b'[{"Id": "a"}, {"Id": ')
    assert cut.value.cut
    large = b"[" + b",".join(b'{"Id": "%d", "pad": "%s"}' % (i, b"x" * 1000) for i in range(9000)) + b"]"
    assert len(large) > 2 * SEGMENT_BYTES
    assert sum(1 for _ in iter_blob(bom + large)) == 9000


_SEGMENT = 64 * 1024
_LISTED = b', "P": [' + b",".join(b'{"k": %d}' % i for i in range(40)) + b"]"


@pytest.mark.parametrize(
    ("first", "listed", "repair"),
    [
        (b'{"Id": "0", "Name": "bad \\ud800 name"}', b"", None),  # an unpaired surrogate: orjson refuses it
        (b'{"Id": "0", "Name": "bad \xff name"}', b"", "utf8"),
        (b'{"Id": "0", "Name": "tab\there"}', b"", "control"),
        (b'{"Id": "0"}', _LISTED, None),  # every record hides the boundary behind more nested "},{" than are tried
    ],
    ids=["surrogate", "not-utf8", "raw-control", "deeply-listed"],
)
def test_a_record_the_fast_parser_refuses_leaves_a_large_blob_read_a_segment_at_a_time(
    first: bytes, listed: bytes, repair: str | None
) -> None:
    """A record orjson refuses near the start of a large blob, or records whose nested lists hide the boundary
    between them: the rest of the blob was read in one piece, every record of it at once (the memory a worker's
    MAX_BLOB_MB_IN_FLIGHT leaves for it, many times over). It is still read a segment at a time, every record
    once, the repair counted once."""
    import tracemalloc
    from collections import Counter

    from irm_connector.blob_parse import CONTROL_REPAIR, UTF8_REPAIR, iter_blob

    rest = [b'{"Id": "%d", "pad": "%s"%s}' % (i, b"x" * 600, listed) for i in range(1, 4000)]
    body = b"[" + b",".join([first, *rest]) + b"]"
    assert len(body) > 35 * _SEGMENT
    problems: Counter[str] = Counter()
    ids = []
    tracemalloc.start()
    try:
        for record in iter_blob(body, problems, segment_bytes=_SEGMENT):
            ids.append(record["Id"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ids == [str(i) for i in range(4000)]
    # A segment's records and copies (about 20 times the segment), not the whole blob's (over 7 times the blob).
    assert peak < len(body)
    assert problems == {"utf8": {UTF8_REPAIR: 1}, "control": {CONTROL_REPAIR: 1}, None: {}}[repair]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        (b'{"Id": "bad", "Name": "caf\xc3\xa9", "Ok": tru}', "JSONDecodeError"),  # not JSON, brackets matched
        (b'{"Id": "bad", "Name": "caf\xc3\xa9"]', "a misplaced ']'"),
    ],
    ids=["not-json", "misplaced-bracket"],
)
def test_a_large_blob_tells_where_it_is_wrong_counted_from_its_start(bad: bytes, problem: str) -> None:
    """The poison entry of a large blob that is not JSON names the byte to look at. Read a segment at a time, the
    byte was counted from the start of the last piece read, a place that does not exist in the blob."""
    from irm_connector.blob_parse import iter_blob

    records = [b'{"Id": "%d", "Name": "caf\xc3\xa9 %s"}' % (i, b"x" * 600) for i in range(1000)]
    body = b"[" + b",".join([*records[:700], bad, *records[700:]]) + b"]"
    assert len(body) > 8 * _SEGMENT
    with pytest.raises(BadContentError) as whole:
        parse_blob(body)
    with pytest.raises(BadContentError) as segmented:
        list(iter_blob(body, segment_bytes=_SEGMENT))
    found = segmented.value
    assert str(found) == str(whole.value) and found.problem.endswith(problem) and not found.cut
    assert found.byte is not None and body.index(bad) < found.byte < body.index(bad) + len(bad)


def test_a_byte_that_is_not_utf8_costs_no_record() -> None:
    from collections import Counter

    from irm_connector.blob_parse import UTF8_REPAIR

    body = (b'[{"Id": "a", "RecordType": 40, "Category": "InsiderRiskManagement", "Name": "bad \xff name"},'
            b' {"Id": "b", "RecordType": 40, "Category": "InsiderRiskManagement", "Name": "fine"}]')  # fmt: skip
    problems: Counter[str] = Counter()
    out = normalize_blob(parse_blob(body, problems), REF, ALERTS, sent_at=SENT)
    names = {r["RecordId"]: r["Name"] for r in rows(out)}
    assert names == {"a": "bad \ufffd name", "b": "fine"}
    assert problems == {UTF8_REPAIR: 1}
    with pytest.raises(BadContentError) as cut:  # cut short in the middle of a character: still cut short
        parse_blob(body[:40] + b"\xe2\x82")
    assert cut.value.cut


def test_a_control_character_left_unescaped_in_a_string_costs_no_record() -> None:
    """JSON requires control characters in strings escaped; both parsers refused a body with one raw (a tab, a
    newline), and the blob went to the poison queue whole, every record of it lost when its content expired."""
    from collections import Counter

    from irm_connector.blob_parse import CONTROL_REPAIR

    body = (b'[{"Id": "a", "RecordType": 40, "Category": "InsiderRiskManagement", "Name": "tab\there\nline"},'
            b' {"Id": "b", "RecordType": 40, "Category": "InsiderRiskManagement", "Name": "fine"}]')  # fmt: skip
    assert b"\t" in body and b"\n" in body  # raw bytes, not escapes
    problems: Counter[str] = Counter()
    out = normalize_blob(parse_blob(body, problems), REF, ALERTS, sent_at=SENT)
    written = {orjson.loads(r.body)["RecordId"]: orjson.loads(r.body)["Name"] for r in out.rows["Custom-IRMAlerts"]}
    assert written == {"a": "tab\there\nline", "b": "fine"}  # written escaped: each row is valid JSON
    assert problems == {CONTROL_REPAIR: 1}
    for whole_but_wrong in (b'[{"Id": "a\t"} {"Id": "b"}]', b'[{"Id": "a\t"}, nope]'):
        with pytest.raises(BadContentError) as refused:  # not JSON with or without its raw control characters
            parse_blob(whole_but_wrong)
        assert not refused.value.cut


def test_unpaired_surrogates_are_read_and_written_safely() -> None:
    # Each becomes U+FFFD, as a byte that is not UTF-8 does: "?" (as written before) reads as a real question mark,
    # in a promoted column whose value the audit row's Record does not keep.
    body = (b'[{"Id": "x", "RecordType": 40, "Category": "InsiderRiskManagement", "Name": "bad \\ud800 name",'
            b' "UserId": "a\\udc80b"}]')  # fmt: skip
    out = normalize_blob(parse_blob(body), REF, BOTH, sent_at=SENT)
    assert orjson.loads(out.rows["Custom-IRMAlerts"][0].body)["Name"] == "bad \ufffd name"
    assert orjson.loads(out.rows["Custom-O365Audit"][0].body)["UserId"] == "a\ufffdb"


@pytest.mark.parametrize(
    "odd",
    [
        {"Category": ["InsiderRiskManagement"]},  # not hashable: the category test must not raise
        {"Category": {"a": 1}},
        {"RecordType": "--40"},  # passes a sign-stripping isdigit(), refused by int()
        {"RecordType": "4\u00b2"},  # a superscript: isdigit() says yes, int() says no
        {"UserType": "\u00b2"},
        {"CreationTime": "\u0662\u0660\u0662\u0666-11-27T09:15:02"},  # Arabic-Indic digits
        {"CreationTime": "2026-11-27T09:1\u00b2:02"},
    ],
)
def test_an_odd_value_in_one_record_never_stops_the_blob(odd: dict[str, Any]) -> None:
    good = irm_alert(Id="good")
    out = normalize_blob([irm_alert(**odd), good], REF, BOTH, sent_at=SENT)
    audit = {row["RecordId"]: row for row in rows(out, "Custom-O365Audit")}
    assert set(audit) == {good["Id"], irm_alert()["Id"]}  # both records, each once
    assert [row["RecordId"] for row in rows(out)][-1] == "good"
    odd_row = audit[irm_alert()["Id"]]
    assert odd_row["TimeGenerated"][:4] in ("2026",) and odd_row["TimeGenerated"].isascii()
    assert odd_row["RecordType"] in (40, None) and odd_row.get("UserType") in (4, None)


def test_text_spelling_a_number_is_read_as_one() -> None:
    out = normalize_blob([irm_alert(RecordType=" +40 ", UserType="-1")], REF, BOTH, sent_at=SENT)
    [row] = rows(out, "Custom-O365Audit")
    assert (row["RecordType"], row["UserType"]) == (40, -1) and len(rows(out)) == 1


@pytest.mark.parametrize("name", ["bad name", "bad \\ud800 name"], ids=["plain", "needs-the-slow-writer"])
def test_nan_and_infinities_read_the_same_in_every_column(name: str) -> None:
    """Not JSON, but the standard library's fallback reads them (and a number beyond a double, as an infinity).
    Each was written three ways: null in ``Record``, "NaN" in a promoted text column, "nan" in a row the slow
    writer wrote; now as they came."""
    body = (
        b'[{"Id": "x", "RecordType": 40, "Category": "InsiderRiskManagement", "CreationTime": "2026-11-27T09:15:02", '
        b'"Name": "' + name.encode() + b'", "ObjectId": NaN, "Score": Infinity, "Floor": -Infinity, "Big": 1e400, '
        b'"ClientIP": -1e400}]'
    )
    out = normalize_blob(parse_blob(body), REF, BOTH, sent_at=SENT)
    [audit] = rows(out, "Custom-O365Audit")
    [alert] = rows(out)
    record = whole_record(audit)
    assert (record["ObjectId"], record["Score"], record["Floor"]) == ("NaN", "Infinity", "-Infinity")
    assert (record["Big"], record["ClientIP"]) == ("1e400", "-1e400")  # beyond a double: read as an infinity
    assert (audit["ObjectId"], audit["ClientIP"]) == ("NaN", "-1e400") and alert["Name"].startswith("bad ")


def test_a_long_text_with_an_unpaired_surrogate_is_cut_safely() -> None:
    # orjson refuses the blob, the standard library keeps the lone surrogate: the 64 KB cut must write it.
    body = b'[{"Id": "x", "RecordType": 40, "Category": "InsiderRiskManagement", "CreationTime": "2026-11-27T09:15:02",'
    body += b' "Comments": "' + b"c" * 70_000 + b'\\ud800", "ObjectId": "' + b"o" * 70_000 + b'\\ud800"}]'
    out = normalize_blob(parse_blob(body), REF, BOTH, sent_at=SENT)
    [alert] = rows(out)
    [audit] = rows(out, "Custom-O365Audit")
    kept = FIELD_LIMIT - len(CUT_MARK.encode())
    assert alert["Comments"] == "c" * kept + CUT_MARK and audit["ObjectId"] == "o" * kept + CUT_MARK
    assert out.problems["value over 64 KB cut to fit (column Comments)"] == 1


def test_a_text_long_only_in_its_json_escapes_is_kept_whole() -> None:
    # 20,000 control characters: 20 KB of text, 120 KB of JSON; Azure Monitor's 64 KB is the value's.
    out = normalize_blob([irm_alert(Comments="\x01" * 20_000)], REF, ALERTS, sent_at=SENT)
    assert rows(out)[0]["Comments"] == "\x01" * 20_000 and not out.problems


def test_extract_upn_ignores_non_strings() -> None:
    assert extract_upn({"upn": 5, "f3u": "z@x.com"}) == "z@x.com"


#: texts that look like numbers or times to a careless reader: signs, superscripts, other scripts' digits
number_like = st.text(alphabet="0123456789+- \u00b2\u0662\u06f4T:", max_size=8) | st.sampled_from(["40", "--40", "4\u00b2"])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text() | number_like,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@pytest.mark.parametrize("categories", [frozenset({"*"}), frozenset({"InsiderRiskManagement"})])
@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            json_values,
            st.dictionaries(
                st.sampled_from(
                    ["Id", "RecordType", "CreationTime", "Category", "Data", "UserType", "Name", "Operation"]
                ),
                json_values,
            ),
        ),
        max_size=8,
    )
)
def test_normalization_never_raises_and_rows_fit_the_declared_columns(
    categories: frozenset[str], records: list[object]
) -> None:
    out = normalize_blob(records, REF, Routing("Custom-IRMAlerts", "Custom-O365Audit", categories), sent_at=SENT)
    for stream, key in (("Custom-IRMAlerts", "alerts"), ("Custom-O365Audit", "audit")):
        schema = {c.name: c.type for c in stream_schema(key).columns}
        for r in out.rows.get(stream, []):
            assert len(r.body) <= ROW_LIMIT
            row = orjson.loads(r.body)
            assert set(row) <= set(schema)
            assert isinstance(row["TimeGenerated"], str) and row["TimeGenerated"].endswith("Z")
            for name, value in row.items():
                if value is None:
                    continue
                kind = schema[name]
                if kind == "string":
                    assert isinstance(value, str)
                elif kind == "int":
                    assert isinstance(value, int) and -(2**31) <= value < 2**31
                elif kind == "datetime":  # a time Azure Monitor reads as UTC, or the row is dropped
                    assert isinstance(value, str) and value.endswith("Z"), (name, value)
                    assert datetime.fromisoformat(value).utcoffset() == timedelta(0), (name, value)
                elif name == "Record":  # O365Audit merges it: an object, whatever the record held
                    assert isinstance(value, dict), value
                else:  # Data: parsed when it is JSON, the text as it came otherwise
                    assert kind == "dynamic" and isinstance(value, dict | list | str), (name, value)


@settings(max_examples=50)
@given(st.lists(json_values, max_size=4))
def test_every_body_cut_short_is_told_from_a_wrong_one(records: list[object]) -> None:
    # One lone surrogate (orjson refuses it; the standard library reads it) and text of 1 to 3 UTF-8 bytes.
    last = b'{"Name": "h\xc3\xa9 \\ud800 \xe2\x98\x83", "v": [1, 2.5, null, true]}]'
    raw = json.dumps(records, ensure_ascii=False).encode()[:-1] + (b", " if records else b"") + last
    for end in range(1, len(raw)):
        with pytest.raises(BadContentError) as refused:
            parse_blob(raw[:end])
        assert refused.value.cut, raw[:end]


def test_a_record_too_deep_to_parse_keeps_its_deep_part_as_text() -> None:
    deep = b"[" * 5000 + b'"x"' + b"]" * 5000
    body = b'[{"Id": "a"}, {"Id": "b", "Deep": ' + deep + b', "Name": "\\ud800"}, {"Id": "c"}]'
    problems: Counter[str] = Counter()
    records = parse_blob(body, problems)
    assert [r["Id"] for r in records] == ["a", "b", "c"]
    assert problems == {DEEP_REPAIR: 1}
    kept = records[1]["Deep"]
    for _ in range(MAX_DEPTH - 1):  # the record itself is the first level
        (kept,) = kept
    below = 5000 - MAX_DEPTH + 1
    assert kept == "[" * below + '"x"' + "]" * below  # the deeper part, as the JSON text it was


def test_records_nested_deeper_than_the_writers_go_keep_their_deep_part() -> None:
    """A record nested about 900 levels deep: orjson reads it (up to 1,024) but writes at most 255, and the
    standard library's writer ran out of recursion below that. The deep part was written as the text
    "<class 'dict'>": its content lost, and two records without Id that differed only there got the same
    synthetic Id, the second dropped as a duplicate of the first."""

    def nested(leaf: str, depth: int = 900) -> str:
        return '{"d": ' * depth + json.dumps(leaf) + "}" * depth

    body = ('[{"RecordType": 1, "CreationTime": "2026-11-27T10:00:00", "Deep": ' + nested("first") + "},"
            ' {"RecordType": 1, "CreationTime": "2026-11-27T10:00:00", "Deep": ' + nested("second") + "}]")  # fmt: skip
    out = normalize_blob(parse_blob(body.encode()), REF, BOTH, sent_at=SENT)
    audit = [orjson.loads(r.body) for r in out.rows["Custom-O365Audit"]]
    assert out.duplicates_in_blob == 0 and len(audit) == 2
    written = sorted(json.dumps(row["Record"]) for row in audit)
    assert '\\"first\\"' in written[0] and '\\"second\\"' in written[1], [w[-200:] for w in written]


def test_an_alert_category_spelt_otherwise_is_routed_and_an_unknown_one_is_counted() -> None:
    records = [
        irm_alert(Id="1", Category="insider risk management"),
        irm_alert(Id="2", Category="Insider_Risk_Management"),
        irm_alert(Id="3", Category="RiskyAI"),
        irm_alert(Id="4", Category=["InsiderRiskManagement"]),
        irm_alert(Id="5", Category="ThreatManagement"),
        irm_alert(Id="6", Category="threat management"),  # known, not routed: as ThreatManagement, not counted
        irm_alert(Id="1", Category="insider risk management"),  # a duplicate: one record, counted once
        irm_alert(Id="3", Category="RiskyAI"),  # so is this one, left out
    ]
    out = normalize_blob(records, REF, ALERTS, sent_at=SENT)
    assert [(r["RecordId"], r["Category"]) for r in rows(out)] == [
        ("1", "InsiderRiskManagement"),
        ("2", "InsiderRiskManagement"),
    ]
    assert out.problems == {
        "alert Category spelt otherwise (the known name written)": 2,
        "alert with no known Category (sent as an alert only with ALERT_CATEGORIES=*)": 2,
    }
    everything = Routing("Custom-IRMAlerts", alert_categories=frozenset({"*"}))
    out = normalize_blob(records, REF, everything, sent_at=SENT)
    assert [r.get("Category") for r in rows(out)] == [
        "InsiderRiskManagement", "InsiderRiskManagement", "RiskyAI", '["InsiderRiskManagement"]', "ThreatManagement",
        "ThreatManagement",
    ]  # fmt: skip
