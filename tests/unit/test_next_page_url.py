"""A NextPageUri resolved against the request it answered, then held to the token's URL check."""

from __future__ import annotations

import pytest

from irm_connector.errors import UntrustedUrlError
from irm_connector.feed_urls import FeedUrls
from irm_connector.management_api import next_page_url

ROOT = "https://manage.office.com"
TENANT = "9288ef99-672d-4c8f-9c43-0e9cbf81845d"
LISTING = f"{ROOT}/api/v1.0/{TENANT}/activity/feed/subscriptions/content"
NEXT = f"/api/v1/{TENANT}/activity/feed/subscriptions/content?contentType=Audit.General&nextPage=20261204x"


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        (ROOT + NEXT, ROOT + NEXT),  # absolute, as the API documents it
        (NEXT, ROOT + NEXT),  # a path and query
        ("?contentType=Audit.General&nextPage=2", LISTING + "?contentType=Audit.General&nextPage=2"),
    ],
)
def test_a_next_page_is_the_api_s_own_url_whether_absolute_or_relative(reference: str, expected: str) -> None:
    url = next_page_url(LISTING, reference)
    assert url == expected
    assert str(FeedUrls(ROOT, TENANT).check(url, "NextPageUri")) == expected


@pytest.mark.parametrize(
    "reference",
    ["//attacker.example" + NEXT, "http://manage.office.com" + NEXT, "/api/v1/another-tenant/activity/feed/x", "https://["],
)
def test_a_relative_next_page_elsewhere_is_still_refused(reference: str) -> None:
    with pytest.raises(UntrustedUrlError):
        FeedUrls(ROOT, TENANT).check(next_page_url(LISTING, reference), "NextPageUri")
