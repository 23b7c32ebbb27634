"""Scripted faults and latency, seen through a real aiohttp client."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from standins import StandIns
from tests.standins.clients import Mgmt

GENERAL = "Audit.General"


async def raw_get(mgmt: Mgmt, path: str, **params: str) -> tuple[int, dict[str, str], bytes]:
    headers = {"Authorization": f"Bearer {mgmt.token}"}
    async with mgmt.http.get(mgmt.url(path), params=params, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.read()


@pytest.fixture
async def listing(mgmt: Mgmt) -> Mgmt:
    await mgmt.start()
    for i in range(3):
        mgmt.services.management.add_blob(GENERAL, [{"Id": str(i)}])
    return mgmt


@pytest.mark.parametrize(
    ("status", "code", "expected_code"),
    [(429, None, "AF429"), (403, "AF429", "AF429"), (500, None, "AF50000"), (503, "AF50001", "AF50001")],
)
async def test_status_fault_with_af_code_and_retry_after(
    listing: Mgmt, status: int, code: str | None, expected_code: str
) -> None:
    listing.services.management.add_fault("list", "status", count=2, status=status, code=code, retry_after=7)

    answers = [await raw_get(listing, "subscriptions/content", contentType=GENERAL) for _ in range(3)]

    for got_status, headers, body in answers[:2]:
        assert got_status == status
        assert headers["Retry-After"] == "7"
        assert json.loads(body)["error"]["code"] == expected_code
    assert answers[2][0] == 200
    assert len(json.loads(answers[2][2])) == 3
    assert listing.services.management.count("list", fault="status") == 2
    assert listing.services.management.count("list", error_code=expected_code) == 2


async def test_reset_closes_the_connection(listing: Mgmt) -> None:
    """aiohttp retries an idempotent request once when a *reused* connection drops, so one reset
    is invisible to a keep-alive GET; two in a row reach the caller."""
    listing.services.management.add_fault("list", "reset", count=3)

    with pytest.raises(aiohttp.ServerDisconnectedError):
        await raw_get(listing, "subscriptions/content", contentType=GENERAL)
    status, _, _ = await raw_get(listing, "subscriptions/content", contentType=GENERAL)

    resets = [r for r in listing.services.management.requests("list") if r.fault == "reset"]
    assert status == 200
    assert len(resets) == 3
    assert {r.status for r in resets} == {None}


async def test_delay_trips_a_client_timeout(listing: Mgmt) -> None:
    listing.services.management.add_fault("content", "delay", seconds=1.0)
    uri = listing.services.management.blobs()[0].content_id
    url = listing.services.management.content_uri(uri)
    headers = {"Authorization": f"Bearer {listing.token}"}

    with pytest.raises(asyncio.TimeoutError):
        async with listing.http.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    async with listing.http.get(url, headers=headers) as resp:
        assert resp.status == 200


async def test_malformed_and_truncated_bodies(listing: Mgmt) -> None:
    m = listing.services.management
    m.add_fault("list", "malformed")
    m.add_fault("list", "truncated")

    malformed = await raw_get(listing, "subscriptions/content", contentType=GENERAL)
    truncated = await raw_get(listing, "subscriptions/content", contentType=GENERAL)
    whole = await raw_get(listing, "subscriptions/content", contentType=GENERAL)

    for status, _, body in (malformed, truncated):
        assert status == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
    assert whole[2].startswith(truncated[2])
    assert len(truncated[2]) == len(whole[2]) // 2


async def test_steady_latency(listing: Mgmt) -> None:
    # Only the listing waits the latency: the stand-in's own record of each request says how long it held it
    # (what the client measures adds the machine's load, which is no property of the stand-in).
    management = listing.services.management
    management.set_latency(3.0, route="list")
    await raw_get(listing, "subscriptions/content", contentType=GENERAL)
    await raw_get(listing, "subscriptions/list")
    *_, slow, fast = management.requests()
    assert (slow.route, fast.route) == ("list", "subscriptions")
    assert slow.duration >= 3.0
    assert fast.duration < 3.0


def test_fault_validation(stand_ins: StandIns) -> None:
    with pytest.raises(ValueError, match="unknown route"):
        stand_ins.management.add_fault("ingest", "reset")
    with pytest.raises(ValueError, match="unknown fault kind"):
        stand_ins.ingestion.add_fault("ingest", "explode")
    with pytest.raises(ValueError, match="status"):
        stand_ins.entra.add_fault("token", "status")
    stand_ins.management.add_fault("start", "reset", count=3)
    assert stand_ins.management.pending_faults("start") == 3
