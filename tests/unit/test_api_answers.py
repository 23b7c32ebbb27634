"""What the connector quotes of a service's error answer."""

from __future__ import annotations

import orjson

from irm_connector.api_answers import error_of


def test_an_error_message_is_quoted_on_one_line_of_printable_text() -> None:
    """A gateway's or proxy's answer is quoted in a log line, LastError and the failure reasons: a newline in it
    would start a line that reads like the connector's own."""
    body = orjson.dumps({"error": {"code": "AF50000\r\n", "message": "gateway\nERROR forged line\x1b[2J\ttab  end"}})
    assert error_of(body) == ("AF50000", "gateway ERROR forged line [2J tab end")


def test_a_long_message_is_cut_and_a_missing_one_is_empty() -> None:
    assert len(error_of(orjson.dumps({"error": {"code": "X", "message": "m" * 1000}}))[1]) == 300
    assert error_of(orjson.dumps({"error": {"code": "AF20022"}})) == ("AF20022", "")
    assert error_of(b"not json") == ("", "")


def test_a_listing_entry_s_times_are_read_in_any_case_of_their_zone() -> None:
    """``z`` as well as ``Z``, as the command line reads a time: one listing entry that spelt it so made its whole
    window unreadable on every run, until the window passed the API's 7 days."""
    from datetime import UTC, datetime

    from irm_connector.models import ContentBlob

    blob = ContentBlob.from_api({
        "contentType": "Audit.General", "contentId": "20261207231500abc", "contentUri": "https://x.test/c",
        "contentCreated": "2026-12-07T23:15:00.123z", "contentExpiration": "2026-12-14T23:15:00Z",
    })  # fmt: skip
    assert blob.content_created == datetime(2026, 12, 7, 23, 15, 0, 123000, tzinfo=UTC)
    assert blob.content_expiration == datetime(2026, 12, 14, 23, 15, tzinfo=UTC)
