"""The Management Activity API stand-in: auth, subscriptions, listing rules, paging, content."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from standins import StandIns
from tests.standins.clients import Mgmt, msal_app

GENERAL = "Audit.General"
FMT = "%Y-%m-%dT%H:%M:%S"


def window(start: datetime, end: datetime) -> dict[str, str]:
    return {"startTime": start.strftime(FMT), "endTime": end.strftime(FMT)}


def freeze(services: StandIns) -> datetime:
    now = datetime(2026, 6, 30, 12, 0, 0, tzinfo=UTC)
    services.clock.set(now)
    return now


async def list_all(mgmt: Mgmt, **params: str) -> tuple[list[dict[str, Any]], int]:
    """Follow NextPageUri/NextPageUrl until a page has none; returns items and page count."""
    status, headers, body = await mgmt.call("GET", "subscriptions/content", **params)
    assert status == 200, body
    items, pages = list(body), 1
    header = mgmt.services.management.next_page_header
    while header in headers:
        status, headers, body = await mgmt.call("GET", headers[header])
        assert status == 200, body
        items += body
        pages += 1
    return items, pages


async def test_no_token_wrong_audience_and_revoked_permission(mgmt: Mgmt, ca_env: StandIns) -> None:
    monitor = msal_app(ca_env).acquire_token_for_client(["https://monitor.azure.com/.default"])

    no_token = await mgmt.call("GET", "subscriptions/list", token="nonsense")
    wrong_audience = await mgmt.call("GET", "subscriptions/list", token=monitor["access_token"])
    ca_env.management.revoke_permission(ca_env.client_id)
    revoked = await mgmt.call("GET", "subscriptions/list")

    for status, _, body in (no_token, wrong_audience, revoked):
        assert status == 401
        assert body["error"]["code"] == "AF10001"
    assert "ActivityFeed.Read" in revoked[2]["error"]["message"]


async def test_expired_token_is_rejected(mgmt: Mgmt, ca_env: StandIns) -> None:
    ca_env.tokens.revoke_all()
    status, _, body = await mgmt.call("GET", "subscriptions/list")
    assert (status, body["error"]["code"]) == (401, "AF10001")


async def test_tenant_errors(mgmt: Mgmt, ca_env: StandIns) -> None:
    other = "44444444-4444-4444-8444-444444444444"
    mismatch = await mgmt.call("GET", mgmt.url("subscriptions/list", tenant=other))
    not_guid = await mgmt.call("GET", mgmt.url("subscriptions/list", tenant="contoso"))
    ca_env.management.set_audit_enabled(False)
    audit_off = await mgmt.call("GET", "subscriptions/list")

    assert (mismatch[0], mismatch[2]["error"]["code"]) == (401, "AF20010")
    assert not_guid[2]["error"]["code"] == "AF20013"
    assert (audit_off[0], audit_off[2]["error"]["code"]) == (400, "AF20011")


async def test_subscription_lifecycle(mgmt: Mgmt) -> None:
    started = await mgmt.start()
    listed = await mgmt.call("GET", "subscriptions/list")
    stopped = await mgmt.call("POST", "subscriptions/stop", contentType=GENERAL)
    after_stop = await mgmt.call("GET", "subscriptions/list")

    assert started[:1] == (200,)
    assert started[2] == {"contentType": GENERAL, "status": "enabled", "webhook": None}
    assert listed[2] == [{"contentType": GENERAL, "status": "enabled", "webhook": None}]
    assert stopped[0] == 200
    assert after_stop[2] == [{"contentType": GENERAL, "status": "disabled", "webhook": None}]


@pytest.mark.parametrize(("knob", "expected"), [(200, (200, None)), (400, (400, "AF20024"))])
async def test_start_when_already_enabled(mgmt: Mgmt, knob: int, expected: tuple[int, str | None]) -> None:
    mgmt.services.management.already_enabled_status = knob
    await mgmt.start()
    status, _, body = await mgmt.start()

    assert (status, body.get("error", {}).get("code")) == expected


async def test_start_errors(mgmt: Mgmt) -> None:
    mgmt.services.management.set_subscription(GENERAL, None)
    mgmt.services.management.set_admin_disabled("Audit.Exchange")
    disabled = await mgmt.start("Audit.Exchange")
    invalid = await mgmt.start("Audit.Nonsense")
    no_sub = await mgmt.call("GET", "subscriptions/content", contentType=GENERAL)

    assert (disabled[0], disabled[2]["error"]["code"]) == (400, "AF20023")
    assert (invalid[0], invalid[2]["error"]["code"]) == (400, "AF20020")
    assert (no_sub[0], no_sub[2]["error"]["code"]) == (400, "AF20022")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"startTime": "2026-06-30T00:00:00"}, "AF20030"),  # only one
        ({"endTime": "2026-06-30T00:00:00"}, "AF20030"),
        ({"startTime": "2026-06-29T10:00:00", "endTime": "2026-06-30T10:00:01"}, "AF20030"),  # > 24 h
        ({"startTime": "2026-06-30T10:00:00Z", "endTime": "2026-06-30T11:00:00Z"}, "AF20030"),  # format
        ({"startTime": "2026-06-30T10:00:00.000", "endTime": "2026-06-30T11:00"}, "AF20030"),
        ({"startTime": "2026-06-23T11:00:00", "endTime": "2026-06-23T12:00:00"}, "AF20055"),  # > 7 d
        ({"startTime": "2026-06-30T10:00:00", "endTime": "2026-06-30T10:00:00"}, "AF20055"),  # start = end
        ({"startTime": "2026-06-30T11:00:00", "endTime": "2026-06-30T10:00:00"}, "AF20055"),
    ],
)
async def test_window_rules(mgmt: Mgmt, params: dict[str, str], code: str) -> None:
    freeze(mgmt.services)
    await mgmt.start()
    status, _, body = await mgmt.call("GET", "subscriptions/content", contentType=GENERAL, **params)

    assert (status, body["error"]["code"]) == (400, code)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2026-06-30", "2026-07-01"),
        ("2026-06-30T01:00", "2026-06-30T02:00"),
        ("2026-06-23T12:00:00", "2026-06-24T12:00:00"),  # exactly 7 days back, exactly 24 h
    ],
)
async def test_accepted_window_formats(mgmt: Mgmt, start: str, end: str) -> None:
    freeze(mgmt.services)
    await mgmt.start()
    status, _, body = await mgmt.call("GET", "subscriptions/content", contentType=GENERAL, startTime=start, endTime=end)
    assert (status, body) == (200, [])


async def test_listing_filters_on_content_created_half_open(mgmt: Mgmt) -> None:
    now = freeze(mgmt.services)
    m = mgmt.services.management
    await mgmt.start()
    start, end = now - timedelta(hours=2), now - timedelta(hours=1)
    at_start = m.add_blob(GENERAL, [{"Id": "a"}], content_created=start)
    inside = m.add_blob(GENERAL, [{"Id": "b"}], content_created=start + timedelta(minutes=30))
    m.add_blob(GENERAL, [{"Id": "c"}], content_created=end)  # end is exclusive
    m.add_blob("Audit.Exchange", [{"Id": "d"}], content_created=start + timedelta(minutes=5))
    m.add_blob(GENERAL, [{"Id": "e"}], content_created=now - timedelta(hours=30))  # outside default

    items, _ = await list_all(mgmt, contentType=GENERAL, **window(start, end))
    default_items, _ = await list_all(mgmt, contentType=GENERAL)

    assert [i["contentId"] for i in items] == [at_start, inside]
    assert items[0]["contentCreated"] == start.strftime(FMT) + ".000Z"
    assert items[0]["contentExpiration"] == (start + timedelta(days=7)).strftime(FMT) + ".000Z"
    assert items[0]["contentUri"] == m.content_uri(at_start)
    assert len(default_items) == 3  # neither time given: the last 24 hours


async def test_a_start_at_a_blobs_exact_content_created_can_be_made_to_miss_it(mgmt: Mgmt) -> None:
    """apis.md, observed: such a startTime "can return a partial result"; an earlier start lists the blob."""
    now = freeze(mgmt.services)
    m = mgmt.services.management
    m.exact_start_misses = True
    await mgmt.start()
    start = now - timedelta(hours=2)
    blob = m.add_blob(GENERAL, [{"Id": "a"}], content_created=start)
    exact, _ = await list_all(mgmt, contentType=GENERAL, **window(start, now))
    earlier, _ = await list_all(mgmt, contentType=GENERAL, **window(start - timedelta(seconds=1), now))
    assert exact == [] and [i["contentId"] for i in earlier] == [blob]


@pytest.mark.parametrize("header", ["NextPageUri", "NextPageUrl"])
async def test_paging_to_the_end(mgmt: Mgmt, header: str) -> None:
    now = freeze(mgmt.services)
    m = mgmt.services.management
    m.page_size, m.next_page_header = 7, header
    await mgmt.start()
    ids = [m.add_blob(GENERAL, [{"Id": str(i)}], content_created=now - timedelta(minutes=100 - i)) for i in range(30)]

    _, headers, first = await mgmt.call(
        "GET", "subscriptions/content", contentType=GENERAL, **window(now - timedelta(hours=3), now)
    )
    items, pages = await list_all(mgmt, contentType=GENERAL, **window(now - timedelta(hours=3), now))

    assert len(first) == 7
    assert f"/api/v1/{mgmt.services.tenant_id}/activity/feed/subscriptions/content?" in headers[header]
    assert "nextPage=" in headers[header]
    assert [i["contentId"] for i in items] == ids  # in order, each once
    assert pages == 5
    assert m.count("list", status=200) == 6


async def test_bad_next_page_token(mgmt: Mgmt) -> None:
    await mgmt.start()
    status, _, body = await mgmt.call("GET", "subscriptions/content", contentType=GENERAL, nextPage="forged")
    assert (status, body["error"]["code"]) == (400, "AF20031")


async def test_late_listed_blob_appears_in_an_already_listed_window(mgmt: Mgmt) -> None:
    now = freeze(mgmt.services)
    m = mgmt.services.management
    await mgmt.start()
    params = window(now - timedelta(hours=1), now)
    on_time = m.add_blob(GENERAL, [{"Id": "x"}], content_created=now - timedelta(minutes=30))
    late = m.add_blob(
        GENERAL,
        [{"Id": "y"}],
        content_created=now - timedelta(minutes=20),
        available_at=now + timedelta(minutes=40),
    )

    before, _ = await list_all(mgmt, contentType=GENERAL, **params)
    m.clock.advance(timedelta(hours=1))
    after, _ = await list_all(mgmt, contentType=GENERAL, **params)

    assert [i["contentId"] for i in before] == [on_time]
    assert [i["contentId"] for i in after] == [on_time, late]


async def test_content_retrieval_and_errors(mgmt: Mgmt) -> None:
    now = freeze(mgmt.services)
    m = mgmt.services.management
    await mgmt.start()
    records = [{"Id": "r1", "RecordType": 40}, {"Id": "r2", "RecordType": 25}]
    fresh = m.add_blob(GENERAL, records, content_created=now - timedelta(hours=1))
    old = m.add_blob(
        GENERAL, [{"Id": "o"}], content_created=now - timedelta(days=6), expiration=now - timedelta(seconds=1)
    )
    well_formed_unknown = fresh[:-4] + "9999"

    got = await mgmt.call("GET", m.content_uri(fresh), PublisherIdentifier="pub-1")
    expired = await mgmt.call("GET", m.content_uri(old))
    unknown = await mgmt.call("GET", m.content_uri(well_formed_unknown))
    bad_id = await mgmt.call("GET", m.content_uri("not-an-id"))
    via_v1 = await mgmt.call("GET", m.content_uri(fresh).replace("/api/v1.0/", "/api/v1/"))

    assert got[:1] == (200,)
    assert got[2] == records
    assert (expired[0], expired[2]["error"]["code"]) == (400, "AF20051")
    assert unknown[2]["error"]["code"] == "AF20050"
    assert bad_id[2]["error"]["code"] == "AF20052"
    assert via_v1[2] == records
    assert m.publisher_identifiers("content")[0] == "pub-1"
    assert m.publisher_identifiers("content")[1] is None


async def test_lenient_time_format_knob(mgmt: Mgmt) -> None:
    freeze(mgmt.services)
    mgmt.services.management.strict_time_format = False
    await mgmt.start()
    status, _, _ = await mgmt.call(
        "GET",
        "subscriptions/content",
        contentType=GENERAL,
        startTime="2026-06-30T10:00:00Z",
        endTime="2026-06-30T11:00:00.000Z",
    )
    assert status == 200


async def test_answers_are_dated_by_the_service_clock(mgmt: Mgmt, ca_env: StandIns) -> None:
    """The connector takes an answer's ``Date`` for the API's time (its watermark never passes it, a blob is
    given up as expired by it): a stand-in whose windows and 7 days follow its clock must date its answers by
    that clock too, or the paths that read ``Date`` run against a time the stand-in's rules do not use."""
    from email.utils import parsedate_to_datetime

    now = freeze(ca_env)
    _, listed, _ = await mgmt.call("GET", "subscriptions/content", contentType=GENERAL, **window(now - timedelta(hours=1), now))
    _, refused, _ = await mgmt.call("GET", "subscriptions/content", contentType="Audit.Nope")
    assert parsedate_to_datetime(listed["Date"]) == now and parsedate_to_datetime(refused["Date"]) == now
