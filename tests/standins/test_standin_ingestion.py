"""The Logs Ingestion stand-in: protocol, limits, column validation, and the real SDK client."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import MutableMapping
from typing import Any, cast

import aiohttp
import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity.aio import ManagedIdentityCredential
from azure.monitor.ingestion.aio import LogsIngestionClient

from standins import StandIns
from tests.standins.clients import msal_app

ALERTS = "Custom-IRMAlerts"
AUDIT = "Custom-O365Audit"
LIMIT = 1_048_576


def alert_row(i: int = 0, **extra: Any) -> dict[str, Any]:
    row = {
        "TimeGenerated": "2026-06-29T20:03:19Z",
        "CreationTime": "2026-06-29T20:03:19.1234567Z",
        "RecordId": f"rec-{i}",
        "AlertId": "alert-1",
        "RecordType": 40,
        "Data": {"upn": "user@contoso.com"},
        "UserPrincipalName": "user@contoso.com",
    }
    row.update(extra)
    return row


@pytest.fixture
def monitor_token(ca_env: StandIns) -> str:
    result = msal_app(ca_env).acquire_token_for_client(["https://monitor.azure.com/.default"])
    return str(result["access_token"])


class Poster:
    def __init__(self, services: StandIns, http: aiohttp.ClientSession, token: str) -> None:
        self.services, self.http, self.token = services, http, token

    async def post(
        self,
        body: bytes | list[Any],
        *,
        stream: str = ALERTS,
        gzip_it: bool = False,
        gzipped: bool = False,  # the body is gzip already: marked so, sent as it is
        dcr: str | None = None,
        token: str | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if isinstance(body, list) else body
        headers = {"Authorization": f"Bearer {token or self.token}", "Content-Type": content_type}
        if gzip_it:
            data = gzip.compress(data)
        if gzip_it or gzipped:
            headers["Content-Encoding"] = "gzip"
        dcr = dcr or self.services.dcr_immutable_id
        url = f"{self.services.ingestion_endpoint}/dataCollectionRules/{dcr}/streams/{stream}"
        async with self.http.post(url, params={"api-version": "2023-01-01"}, data=data, headers=headers) as r:
            text = await r.text()
            return r.status, json.loads(text) if text else None


@pytest.fixture
def poster(stand_ins: StandIns, http: aiohttp.ClientSession, monitor_token: str) -> Poster:
    return Poster(stand_ins, http, monitor_token)


async def test_accepts_plain_and_gzip_and_keeps_rows(poster: Poster, stand_ins: StandIns) -> None:
    plain = await poster.post([alert_row(1)])
    zipped = await poster.post([alert_row(2), alert_row(3)], gzip_it=True)

    assert (plain[0], zipped[0]) == (204, 204)
    assert [r["RecordId"] for r in stand_ins.ingestion.rows(ALERTS)] == ["rec-1", "rec-2", "rec-3"]
    stats = stand_ins.ingestion.stats()
    assert [s.gzip for s in stats] == [False, True]
    assert stats[1].uncompressed_bytes == len(json.dumps([alert_row(2), alert_row(3)]).encode())
    assert stats[1].compressed_bytes < stats[1].uncompressed_bytes
    rows_file = stand_ins.ingestion.rows_file(ALERTS)
    assert rows_file is not None
    lines = rows_file.read_text().splitlines()
    assert [json.loads(line)["RecordId"] for line in lines] == ["rec-1", "rec-2", "rec-3"]


async def test_a_dropped_answer_keeps_the_rows_a_reset_does_not(poster: Poster, stand_ins: StandIns) -> None:
    """The client sees the same broken connection; only ``drop`` took the rows first (the real service may, and
    the connector's tests must meet that case as well as the other)."""
    stand_ins.ingestion.add_fault("ingest", "reset")
    with pytest.raises(aiohttp.ClientConnectionError):
        await poster.post([alert_row(1)])
    stand_ins.ingestion.add_fault("ingest", "drop")
    with pytest.raises(aiohttp.ClientConnectionError):
        await poster.post([alert_row(2)])
    assert [r["RecordId"] for r in stand_ins.ingestion.rows(ALERTS)] == ["rec-2"]


async def test_limit_on_body_as_sent(poster: Poster, stand_ins: StandIns) -> None:
    rows = [alert_row(i, Name="x" * 1000) for i in range(1030)]  # ~1.2 MB of JSON
    body = json.dumps(rows).encode()
    assert len(body) > LIMIT

    status, error = await poster.post(body)

    assert status == 413
    assert error["error"]["code"] == "ContentLengthLimitExceeded"
    assert "Maximum allowed content length: 1048576 bytes" in error["error"]["message"]
    assert stand_ins.ingestion.rows(ALERTS) == []


async def test_limit_on_inflated_body(poster: Poster, stand_ins: StandIns) -> None:
    rows = [alert_row(i, Name="y" * 2000) for i in range(600)]  # compresses to a few KB
    status, error = await poster.post(rows, gzip_it=True)

    stat = stand_ins.ingestion.stats()[0]
    assert status == 413
    assert error["error"]["code"] == "ContentLengthLimitExceeded"
    assert stat.compressed_bytes < 100_000 < LIMIT < stat.uncompressed_bytes


async def test_just_under_the_limit_is_accepted(poster: Poster) -> None:
    row = alert_row(0, Name="")
    overhead = len(json.dumps([row]).encode())
    row["Name"] = "z" * (LIMIT - overhead)
    assert len(json.dumps([row]).encode()) == LIMIT

    status, _ = await poster.post([row], gzip_it=True)

    assert status == 204


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([alert_row(0, Bogus="x")], "'Bogus' is not declared"),
        ([alert_row(0, RecordType="40")], "'RecordType' is declared int"),
        ([alert_row(0, RecordType=True)], "'RecordType' is declared int"),
        ([alert_row(0, RecordType=2**40)], "'RecordType' is declared int"),
        ([alert_row(0, TimeGenerated="yesterday")], "'TimeGenerated' is declared datetime"),
        ([alert_row(0, Name=5)], "'Name' is declared string"),
        ([{"RecordId": "no-time"}], "TimeGenerated"),
        ([alert_row(0, TimeGenerated=None)], "TimeGenerated"),
    ],
)
async def test_row_validation(poster: Poster, stand_ins: StandIns, rows: list[dict[str, Any]], needle: str) -> None:
    status, error = await poster.post([alert_row(1), *rows])

    assert status == 400
    assert needle in error["error"]["message"]
    assert stand_ins.ingestion.rows(ALERTS) == []  # all or nothing


def _json_of(rows: list[Any]) -> bytes:
    return json.dumps(rows).encode()


@pytest.mark.parametrize(
    ("body", "gzipped", "needle"),
    [
        (_json_of([alert_row(0, Name=float("nan"))]), False, "NaN is not a JSON value"),
        (_json_of([alert_row(0, Name=float("inf"))]), False, "Infinity is not a JSON value"),
        (json.dumps([alert_row(0)]).encode("utf-16"), False, "not valid JSON"),
        (_json_of([alert_row(0, Name="\ud800")]), False, "unpaired surrogate"),
        (gzip.compress(_json_of([alert_row(0)]))[:-8], True, "ended before its end of stream"),
    ],
    ids=["nan", "infinity", "utf-16", "lone-surrogate", "gzip-without-trailer"],
)
async def test_a_body_a_strict_reader_refuses_is_refused(
    poster: Poster, stand_ins: StandIns, body: bytes, gzipped: bool, needle: str
) -> None:
    """What Python's json reads and a strict JSON, UTF-8 and gzip reader does not: a connector that sent it would
    pass here and fail at the service (a lone surrogate answered 500, as a fault of the service's)."""
    status, error = await poster.post(body, gzipped=gzipped)
    assert status == 400
    assert error["error"]["code"] == "InvalidContent"
    assert needle in error["error"]["message"]
    assert stand_ins.ingestion.rows(ALERTS) == []


async def test_a_raw_stream_refuses_a_cut_gzip_body_as_the_declared_ones_do(
    poster: Poster, stand_ins: StandIns
) -> None:
    """The benchmark baseline's stream without column checks: a body cut short answered 500, a fault of the
    service's, where the declared streams answer 400."""
    stand_ins.ingestion.accept_raw("Custom-Raw")
    status, error = await poster.post(gzip.compress(_json_of([alert_row(0)]))[:-8], stream="Custom-Raw", gzipped=True)
    assert (status, error["error"]["code"]) == (400, "InvalidContent")
    status, _ = await poster.post(_json_of([alert_row(0)]), stream="Custom-Raw", gzip_it=True)
    assert status == 204


async def test_paired_surrogate_escapes_are_taken(poster: Poster, stand_ins: StandIns) -> None:
    status, _ = await poster.post(_json_of([alert_row(0, Name="\U0001f600")]))
    assert status == 204
    assert stand_ins.ingestion.rows(ALERTS)[0]["Name"] == "\U0001f600"


async def test_column_types_per_stream(poster: Poster, stand_ins: StandIns) -> None:
    audit = {
        "TimeGenerated": "2026-06-29T20:03:19",
        "RecordId": "a",
        "RecordType": 25,
        "UserType": 0,
        "Record": {"Id": "a", "nested": [1, 2]},
        "ResultStatus": None,
    }
    health = {"TimeGenerated": "2026-06-29T20:03:19Z", "LagSeconds": 2**40, "BlobsListed": 3}

    assert (await poster.post([audit], stream=AUDIT))[0] == 204
    assert (await poster.post([health], stream="Custom-IRMConnectorHealth"))[0] == 204
    assert len(stand_ins.ingestion.rows(AUDIT)) == 1


async def test_request_errors(poster: Poster, stand_ins: StandIns, mgmt_token: str) -> None:
    unknown_dcr = await poster.post([alert_row()], dcr="dcr-nope")
    unknown_stream = await poster.post([alert_row()], stream="Custom-Nope")
    not_array = await poster.post(b'{"TimeGenerated": "2026-06-29T20:03:19Z"}')
    not_json = await poster.post(b"[{")
    wrong_type = await poster.post([alert_row()], content_type="text/plain")
    wrong_audience = await poster.post([alert_row()], token=mgmt_token)
    stand_ins.ingestion.deny_role()
    denied = await poster.post([alert_row()])

    assert unknown_dcr[0] == 404
    assert (unknown_stream[0], unknown_stream[1]["error"]["code"]) == (400, "InvalidStream")
    assert not_array[0] == 400
    assert not_json[0] == 400
    assert wrong_type[0] == 415
    assert wrong_audience[0] == 401
    assert denied[0] == 403
    assert len(stand_ins.ingestion.rejected()) == 7


@pytest.fixture
def msi_env(stand_ins: StandIns, monkeypatch: pytest.MonkeyPatch) -> StandIns:
    for name in ("MSI_ENDPOINT", "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "AZURE_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    for name, value in stand_ins.settings_env().items():
        monkeypatch.setenv(name, value)
    return stand_ins


async def upload(services: StandIns, rows: list[dict[str, Any]], **kwargs: Any) -> None:
    verify = str(services.ca_path)
    async with (
        ManagedIdentityCredential(connection_verify=verify) as credential,
        LogsIngestionClient(services.ingestion_endpoint, credential, connection_verify=verify) as client,
    ):
        await client.upload(services.dcr_immutable_id, ALERTS, cast("list[MutableMapping[str, Any]]", rows), **kwargs)


async def test_real_logs_ingestion_client_upload(msi_env: StandIns) -> None:
    rows = [alert_row(i, Name="n" * 500) for i in range(1000)]  # ~0.7 MB: one chunk

    await upload(msi_env, rows)

    stats = msi_env.ingestion.stats()
    assert [r["RecordId"] for r in msi_env.ingestion.rows(ALERTS)] == [r["RecordId"] for r in rows]
    assert len(stats) == 1
    assert stats[0].gzip
    assert stats[0].status == 204
    assert stats[0].client_id == msi_env.entra.managed_identity_client_id
    assert msi_env.tokens.issued("managed_identity") == 1


async def test_sdk_full_chunk_passes_the_real_limit(msi_env: StandIns) -> None:
    """azure-monitor-ingestion 1.1.0 sizes a chunk without brackets and separators, so a full
    1 MiB chunk of small rows inflates to more than 1,048,576 bytes and the service answers 413:
    callers must chunk below the limit themselves."""
    rows = [alert_row(i, Name="n" * 500) for i in range(3000)]
    failures: list[Any] = []

    async def on_error(error: Any) -> None:
        failures.append(error)

    await upload(msi_env, rows, on_error=on_error)

    assert failures
    assert failures[0].error.status_code == 413
    assert msi_env.ingestion.stats()[0].uncompressed_bytes > LIMIT
    assert len(msi_env.ingestion.rows(ALERTS)) + sum(len(f.failed_logs) for f in failures) == len(rows)


async def test_sdk_retries_429_with_retry_after(msi_env: StandIns) -> None:
    msi_env.ingestion.add_fault("ingest", "status", status=429, retry_after=0)
    msi_env.ingestion.add_fault("ingest", "status", status=503)

    await upload(msi_env, [alert_row(1)], retry_backoff_factor=0.01)

    assert [r["RecordId"] for r in msi_env.ingestion.rows(ALERTS)] == ["rec-1"]
    assert msi_env.ingestion.count("ingest") == 3


async def test_sdk_reports_rejected_chunk(msi_env: StandIns) -> None:
    failures: list[Any] = []

    async def on_error(error: Any) -> None:
        failures.append(error)

    await upload(msi_env, [alert_row(1, Bogus=1)], on_error=on_error)

    assert len(failures) == 1
    assert isinstance(failures[0].error, HttpResponseError)
    assert failures[0].error.status_code == 400
    assert msi_env.ingestion.rows(ALERTS) == []


def test_settings_env_points_at_the_stand_ins(stand_ins: StandIns) -> None:
    env = stand_ins.settings_env()
    assert env["LOGS_INGESTION_ENDPOINT"].startswith("https://127.0.0.1:")
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == str(stand_ins.ca_path)
    assert os.path.exists(env["SSL_CERT_FILE"])
    assert env["IDENTITY_ENDPOINT"].endswith("/msi/token")
