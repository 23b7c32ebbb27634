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


FEED = f"{ROOT}/api/v1.0/{TENANT}/activity/feed"


@pytest.mark.parametrize(
    ("url", "origin", "reason"),
    [
        ("https://attacker.example/api/v1.0/x/activity/feed/audit/alice@contoso.com?sig=s3cret", "https://attacker.example",
         "it is not on O365_API_ROOT (https://manage.office.com)"),
        (f"{ROOT}:8443/api/v1.0/{TENANT}/activity/feed/audit/alice@contoso.com", "https://manage.office.com:8443",
         "it is not on O365_API_ROOT"),
        (f"http://manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/alice@contoso.com", "http://manage.office.com",
         "it is not HTTPS"),
        (f"{ROOT}/api/v1.0/00000000-0000-0000-0000-000000000001/activity/feed/audit/alice@contoso.com", ROOT,
         "it is not under this tenant's audit content"),
        (f"{FEED}/subscriptions/alice@contoso.com", ROOT, "it is not under this tenant's audit content"),
        (f"{FEED}/../../../../alice@contoso.com", ROOT, "it is not under this tenant's audit content"),
        (f"https://alice:pw@manage.office.com/api/v1.0/{TENANT}/activity/feed/audit/1", ROOT,
         "it carries a user name or password"),
        (f"{FEED}/audit/alice%2f..%2fcontoso.com", ROOT, "its path holds an escaped separator"),
        ("alice@contoso.com", "", "it is not HTTPS"),
        ("https://[alice@contoso.com", "", "it is not a URL"),
    ],
)
def test_a_refused_url_is_named_by_its_origin_and_reason_never_its_path(url: str, origin: str, reason: str) -> None:
    """An operator learns where a refused contentUri pointed and what is wrong with it; what a forged message
    carries in its path or query (a user's name here, a signature) stays out of the text that is logged."""
    with pytest.raises(UntrustedUrlError) as refused:
        FeedUrls(ROOT, TENANT).check(url, "contentUri")
    text = str(refused.value)
    assert text.startswith(f"refused contentUri{f' on {origin}' if origin else ''}: {reason}")
    assert "alice" not in text and "s3cret" not in text
