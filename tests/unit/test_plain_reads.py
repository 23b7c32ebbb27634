"""The claims' plain partition reads (``Tables.query_plain``) ask what the SDK would ask and read what it would
read: the filter text and the decoded entities are checked against the SDK's own functions, which the read
skips for CPU's sake. Against Azurite, every claims test reads this way."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path
from typing import cast

import pytest
from azure.data.tables._deserialize import _convert_to_entity
from azure.data.tables._serialize import _parameter_filter_substitution
from azure.data.tables.aio import TableClient

from irm_connector.errors import StateError
from irm_connector.state.tables import _entity, _filter, _pipeline_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("query", "parameters"),
    [
        ("PartitionKey eq @pk", {"pk": "alerts|20261202"}),
        ("PartitionKey eq @pk", {"pk": "it's"}),
        (
            "PartitionKey eq @pk and ( Timestamp ge @since or S eq @pending )",
            {"pk": "p", "since": datetime(2026, 12, 2, 13, 59, 58, 123456, tzinfo=UTC), "pending": "p"},
        ),
        (
            "PartitionKey eq @pk and Timestamp gt @start",
            {"pk": "p", "start": datetime(2026, 12, 2, 15, 0, tzinfo=timezone(timedelta(hours=1)))},
        ),
    ],
)
def test_the_filter_is_the_one_the_sdk_sends(query: str, parameters: dict[str, str | datetime]) -> None:
    # The SDK annotates its parameters as strings only, yet substitutes datetimes as well: that is what is checked.
    assert _filter(query, parameters) == _parameter_filter_substitution(cast("dict[str, str]", parameters), query)


def test_an_entity_reads_as_the_sdk_reads_it() -> None:
    keys = bytes(range(48))
    raw = {
        "odata.etag": "W/\"datetime'2026-12-02T14%3A00%3A00.1234567Z'\"",
        "PartitionKey": "alerts|20261202",
        "RowKey": "owner.nonce.p1",
        "Timestamp": "2026-12-02T14:00:00.1234567Z",
        "Owner": "owner",
        "S": "p",
        "First": "2026-12-02T13:59:59.500000+00:00",
        "I0@odata.type": "Edm.Binary",
        "I0": base64.b64encode(keys).decode(),
        "I1@odata.type": "Edm.Binary",
        "I1": "",
    }
    ours, sdk = _entity(dict(raw)), _convert_to_entity(dict(raw))  # type: ignore[no-untyped-call]  # the SDK's helper is unannotated
    assert dict(ours) == dict(sdk)
    assert ours["I0"] == keys and ours["I1"] == b""
    assert ours.metadata["etag"] == sdk.metadata["etag"]
    assert (
        ours.metadata["timestamp"] == sdk.metadata["timestamp"] == datetime(2026, 12, 2, 14, 0, 0, 123456, tzinfo=UTC)
    )


def test_a_listing_without_keys_reads_as_the_sdk_reads_it() -> None:
    raw = {"odata.etag": 'W/"x"', "RowKey": "r", "S": "s", "K": "a1b2", "Timestamp": "2026-12-02T14:00:00Z"}
    ours, sdk = _entity(dict(raw)), _convert_to_entity(dict(raw))  # type: ignore[no-untyped-call]  # the SDK's helper is unannotated
    assert dict(ours) == dict(sdk) == {"RowKey": "r", "S": "s", "K": "a1b2"}
    assert ours.metadata["timestamp"] == sdk.metadata["timestamp"]


def test_the_installed_table_client_is_one_plain_reads_can_send_through() -> None:
    client = TableClient.from_connection_string(
        "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=" + base64.b64encode(b"k" * 32).decode()
        + ";TableEndpoint=https://a.table.core.windows.net",
        "t",
    )
    assert callable(_pipeline_of(client).send_request)


def test_a_table_client_without_the_pipeline_attribute_names_the_versions_to_deploy() -> None:
    # What a later azure-data-tables without the generated client's attribute would meet on every claim read.
    pinned = next(
        line for line in (ROOT / "requirements.txt").read_text().splitlines() if line.startswith("azure-data-tables")
    )
    with pytest.raises(StateError, match=re.escape(f"deploy with the versions requirements.txt pins ({pinned})")):
        _pipeline_of(cast("TableClient", object()))


def test_a_retry_after_date_is_read_against_the_answers_own_date() -> None:
    """A machine whose clock runs 10 minutes slow must wait the 30 s the server meant, not 630 s."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from irm_connector.api_answers import retry_after_of

    def headers(**given: str) -> CIMultiDictProxy[str]:
        return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in given.items()}))

    answered = datetime.now(UTC) + timedelta(minutes=10)
    said = headers(Retry_After=format_datetime(answered + timedelta(seconds=30), usegmt=True),
                   Date=format_datetime(answered, usegmt=True))  # fmt: skip
    assert retry_after_of(said) == 30.0
    assert retry_after_of(headers(Retry_After="7")) == 7.0
    # "-0000" (RFC 5322: UTC, no zone said) parses to a naive time: compared with the Date, it was read as no wait.
    unzoned = format_datetime((answered + timedelta(seconds=45)).replace(tzinfo=None))
    assert unzoned.endswith("-0000")
    assert retry_after_of(headers(Retry_After=unzoned, Date=format_datetime(answered, usegmt=True))) == 45.0
    # No Date beside it: this machine's clock is all there is.
    alone = retry_after_of(headers(Retry_After=format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)))
    assert alone is not None and 55 <= alone <= 60
