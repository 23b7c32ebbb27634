"""Which proxy each request takes: what a session trusting the environment would pick, read once per host."""

from __future__ import annotations

import pytest

from irm_connector._tls import EnvProxy

_PROXY_NAMES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NO_PROXY", "no_proxy", "ALL_PROXY",
                "IDENTITY_ENDPOINT", "MSI_ENDPOINT")


@pytest.fixture(autouse=True)
def _no_proxy_of_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _PROXY_NAMES:
        monkeypatch.delenv(name, raising=False)


def _proxy(url: str) -> str | None:
    found = EnvProxy().for_url(url).get("proxy")
    return None if found is None else str(found)


def test_no_proxy_named_means_no_proxy() -> None:
    assert _proxy("https://login.microsoftonline.com/t/oauth2/v2.0/token") is None


def test_each_scheme_takes_its_own_proxy_and_no_proxy_hosts_go_direct(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://user:p%40ss@proxy.corp:8080")
    monkeypatch.setenv("http_proxy", "http://plain.corp:3128")
    monkeypatch.setenv("NO_PROXY", "localhost,.core.windows.net")
    # Credentials stay in the proxy's URL: aiohttp sends them to the proxy, and nothing from .netrc.
    assert _proxy("https://manage.office.com/api/v1.0/t/activity/feed/subscriptions/list") == (
        "http://user:p%40ss@proxy.corp:8080"
    )
    assert _proxy("https://acct.table.core.windows.net/irmstate()") is None
    assert _proxy("http://localhost:10002/devstoreaccount1/Tables") is None
    assert _proxy("http://127.0.0.1:10001/devstoreaccount1/q") == "http://plain.corp:3128"


def test_a_proxy_named_without_a_scheme_is_an_http_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "proxy.corp:8080")
    assert _proxy("https://manage.office.com/api/v1.0/t/activity/feed/subscriptions/list") == "http://proxy.corp:8080"


def test_an_https_proxy_is_taken_as_msal_takes_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "https://proxy.corp:8443")
    monkeypatch.setenv("HTTP_PROXY", "socks5://proxy.corp:1080")  # refused by the settings check; never taken
    assert _proxy("https://dce.westeurope-1.ingest.monitor.azure.com/dataCollectionRules/x") == (
        "https://proxy.corp:8443"
    )
    assert _proxy("http://127.0.0.1:10001/devstoreaccount1/q") is None


def test_the_environment_is_read_when_the_client_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:8080")
    proxies = EnvProxy()
    assert proxies.for_url("https://a.example/1") == proxies.for_url("https://a.example/2")
    monkeypatch.setenv("NO_PROXY", "a.example")
    assert str(proxies.for_url("https://a.example/3")["proxy"]) == "http://proxy.corp:8080"
    assert EnvProxy().for_url("https://a.example/3") == {}


def test_the_managed_identity_endpoint_is_never_proxied(monkeypatch: pytest.MonkeyPatch) -> None:
    """App Service's identity endpoint is on the host's own loopback, the metadata service on a link-local address:
    no proxy reaches either, and through one every token request of managed_identity mode failed."""
    monkeypatch.setenv("HTTP_PROXY", "https://proxy.corp:8443")
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://localhost:8081/msi/token")
    assert _proxy("http://localhost:8081/msi/token?resource=x") is None
    assert _proxy("http://169.254.169.254/metadata/identity/oauth2/token") is None
    assert _proxy("http://localhost:10001/devstoreaccount1/q") == "https://proxy.corp:8443"  # another port
