"""Settings: defaults, every documented form, and errors that name the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from irm_connector.errors import SettingsError
from irm_connector.settings import Settings, parse_duration

REPO = Path(__file__).resolve().parents[2]
TENANT = "11111111-2222-3333-4444-555555555555"
CLIENT = "99999999-8888-7777-6666-555555555555"
KEY = "a2V5" * 8  # base64, as an account key is
BASE = {
    "O365_TENANT_ID": TENANT,
    "O365_CLIENT_ID": CLIENT,
    "O365_CLIENT_SECRET": "s3cr3t-value",
    "LOGS_INGESTION_ENDPOINT": "https://dcr-1.westeurope-1.ingest.monitor.azure.com",
    "LOGS_DCR_IMMUTABLE_ID": "dcr-" + "a" * 32,
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}


def test_defaults() -> None:
    s = Settings.from_env(BASE)
    assert s.api_root == "https://manage.office.com"
    assert s.authority_host == "https://login.microsoftonline.com"
    assert s.content_types == ("Audit.General",)
    assert s.publisher_id == TENANT
    assert s.auth_mode == "secret"
    assert s.content_queue == "irm-content" and s.poison_queue == "irm-content-poison"
    assert s.alert_categories == frozenset({"InsiderRiskManagement"})
    assert s.alerts_stream == "Custom-IRMAlerts" and s.audit_stream == ""
    assert s.initial_lookback.total_seconds() == 86400


@pytest.mark.parametrize(
    ("cloud", "api", "login"),
    [
        ("GCC", "https://manage-gcc.office.com", "https://login.microsoftonline.com"),
        ("GCCHigh", "https://manage.office365.us", "https://login.microsoftonline.us"),
        ("dod", "https://manage.protection.apps.mil", "https://login.microsoftonline.us"),
    ],
)
def test_clouds(cloud: str, api: str, login: str) -> None:
    s = Settings.from_env({**BASE, "O365_CLOUD": cloud})
    assert (s.api_root, s.authority_host) == (api, login)


@pytest.mark.parametrize(
    ("name", "audience", "login"),
    [
        (None, "https://monitor.azure.com", "login.microsoftonline.com"),
        ("AzureUSGovernment", "https://monitor.azure.us", "login.microsoftonline.us"),
        ("azurechina", "https://monitor.azure.cn", "login.chinacloudapi.cn"),
        ("AzureChinaCloud", "https://monitor.azure.cn", "login.chinacloudapi.cn"),  # as `az cloud show` names it
    ],
)
def test_azure_cloud_is_apart_from_the_microsoft_365_cloud(name: str | None, audience: str, login: str) -> None:
    s = Settings.from_env({**BASE, "O365_CLOUD": "GCC", **({"AZURE_CLOUD": name} if name else {})})
    assert (s.azure_cloud.monitor_audience, s.azure_cloud.authority_host) == (audience, login)
    assert s.api_root == "https://manage-gcc.office.com"


def test_blob_bytes_in_flight() -> None:
    assert Settings.from_env(BASE).max_blob_bytes_in_flight == 128 * 2**20
    assert Settings.from_env({**BASE, "MAX_BLOB_MB_IN_FLIGHT": "256"}).max_blob_bytes_in_flight == 256 * 2**20


def test_secret_is_not_in_repr() -> None:
    assert "s3cr3t-value" not in repr(Settings.from_env(BASE))


@pytest.mark.parametrize(
    ("change", "setting"),
    [
        ({"O365_TENANT_ID": ""}, "O365_TENANT_ID"),
        ({"O365_TENANT_ID": "contoso.onmicrosoft.com"}, "O365_TENANT_ID"),
        ({"O365_CLIENT_SECRET": ""}, "O365_CLIENT_SECRET"),
        ({"O365_AUTH_MODE": "password"}, "O365_AUTH_MODE"),
        ({"O365_AUTH_MODE": "certificate"}, "O365_CLIENT_CERTIFICATE_PATH"),
        ({"O365_CLOUD": "Mars"}, "O365_CLOUD"),
        ({"O365_API_ROOT": "http://manage.office.com"}, "O365_API_ROOT"),
        ({"O365_CONTENT_TYPES": "Audit.General,Audit.Nope"}, "O365_CONTENT_TYPES"),
        ({"INITIAL_LOOKBACK": "8d"}, "INITIAL_LOOKBACK"),
        ({"INITIAL_LOOKBACK": "soon"}, "INITIAL_LOOKBACK"),
        ({"CONTENT_QUEUE": "Bad_Queue"}, "CONTENT_QUEUE"),
        ({"LOGS_INGESTION_ENDPOINT": ""}, "LOGS_INGESTION_ENDPOINT"),
        ({"LOGS_DCR_IMMUTABLE_ID": "my-dcr"}, "LOGS_DCR_IMMUTABLE_ID"),
        ({"LOGS_AUDIT_STREAM": "O365Audit"}, "LOGS_AUDIT_STREAM"),
        # one stream for two tables: the audit rows would overwrite the alerts in the blob's rows
        ({"LOGS_AUDIT_STREAM": "Custom-IRMAlerts"}, "LOGS_AUDIT_STREAM"),
        ({"LOGS_ALERTS_STREAM": "Custom-Mine", "LOGS_HEALTH_STREAM": "Custom-Mine"}, "LOGS_HEALTH_STREAM"),
        ({"AzureWebJobsStorage": ""}, "AzureWebJobsStorage"),
        # the storage SDKs would refuse these at the first call, as an "unexpected ValueError"
        ({"AzureWebJobsStorage": "AccountName=foo"}, "AzureWebJobsStorage"),
        ({"AzureWebJobsStorage": "foo=bar"}, "AzureWebJobsStorage"),
        ({"AzureWebJobsStorage": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/s)"},
         "AzureWebJobsStorage"),
        # not base64: signing would fail on each request, read as an identity problem
        ({"AzureWebJobsStorage": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=abc"}, "AzureWebJobsStorage"),
        ({"INITIAL_LOOKBACK": "99999999999d"}, "INITIAL_LOOKBACK"),
        ({"INITIAL_LOOKBACK": "1" * 5000 + "s"}, "INITIAL_LOOKBACK"),  # past int()'s digits: a bare ValueError
        ({"LISTING_OVERLAP": "0" * 5000 + "1"}, "LISTING_OVERLAP"),
        ({"O365_PUBLISHER_ID": "me"}, "O365_PUBLISHER_ID"),
        ({"AZURE_CLOUD": "GCCHigh"}, "AZURE_CLOUD"),
        ({"MAX_BLOB_MB_IN_FLIGHT": "0"}, "MAX_BLOB_MB_IN_FLIGHT"),
        ({"MAX_BLOB_MB_IN_FLIGHT": "1.5"}, "MAX_BLOB_MB_IN_FLIGHT"),
        # longer than host.json's: claims (the timeout plus 2 minutes) could expire under a running invocation
        ({"AzureFunctionsJobHost__functionTimeout": "00:30:00"}, "AzureFunctionsJobHost__functionTimeout"),
        ({"AzureFunctionsJobHost__functionTimeout": "30m"}, "AzureFunctionsJobHost__functionTimeout"),
        # the host's "unlimited": longer than host.json's, said as such rather than "not a timespan"
        ({"AzureFunctionsJobHost__functionTimeout": "-1"}, "AzureFunctionsJobHost__functionTimeout"),
        # named in another case, as the host's configuration takes it: checked all the same
        ({"AzureFunctionsJobHost__FunctionTimeout": "00:30:00"}, "AzureFunctionsJobHost__functionTimeout"),
        ({"AzureFunctionsJobHost__functionTimeout": "1"}, "AzureFunctionsJobHost__functionTimeout"),  # a day
        ({"AzureFunctionsJobHost__functionTimeout": "0"}, "AzureFunctionsJobHost__functionTimeout"),  # no time at all
        # these used to pass and fail every connection later, as an "unexpected" error naming no setting
        ({"O365_API_ROOT": "https://manage.office.com:abc"}, "O365_API_ROOT"),
        # no host, or a space in it: a bare "Invalid URL" when the first client was built
        ({"O365_API_ROOT": "https://:8443"}, "O365_API_ROOT"),
        ({"O365_AUTHORITY_HOST": "https://login microsoftonline.com"}, "O365_AUTHORITY_HOST"),
        ({"LOGS_INGESTION_ENDPOINT": "https://dcr-x.westeurope-1.ingest monitor.azure.com"}, "LOGS_INGESTION_ENDPOINT"),
        ({"LOGS_INGESTION_ENDPOINT": "https://user:pa55@dcr.ingest.monitor.azure.com"}, "LOGS_INGESTION_ENDPOINT"),
        ({"SSL_CERT_FILE": "/nonexistent/ca.pem"}, "SSL_CERT_FILE"),
        ({"REQUESTS_CA_BUNDLE": "/"}, "REQUESTS_CA_BUNDLE"),
        ({"SSL_CERT_FILE": str(REPO / "host.json")}, "SSL_CERT_FILE"),  # a file, but no certificate in it
        # every request failed as an "unexpected ValueError", naming no setting
        ({"HTTPS_PROXY": "http://proxy.corp:notaport"}, "HTTPS_PROXY"),
        ({"https_proxy": "proxy.corp:99999"}, "https_proxy"),
        ({"HTTP_PROXY": "http://"}, "HTTP_PROXY"),
        ({"http_proxy": "socks5://proxy.corp:1080"}, "http_proxy"),  # went direct, in silence
        # a managed identity gets tokens from its own Azure cloud's Entra ID only
        ({"O365_AUTH_MODE": "managed_identity", "O365_CLIENT_SECRET": "", "O365_CLOUD": "GCCHigh"}, "O365_CLOUD"),
        ({"O365_AUTH_MODE": "managed_identity", "O365_CLIENT_SECRET": "", "AZURE_CLOUD": "AzureUSGovernment"},
         "O365_CLOUD"),
        # read as it is by requests: every token refused as "no OpenID configuration for tenant", naming the tenant
        ({"HTTPS_PROXY": "http://proxy.corp:8080 "}, "HTTPS_PROXY"),
        # a script's empty variable, or a space: a bare "Invalid URL" as the clients started
        ({"AzureWebJobsStorage": "", "AzureWebJobsStorage__queueServiceUri": "https://",
          "AzureWebJobsStorage__tableServiceUri": "https://stirm.table.core.windows.net"},
         "AzureWebJobsStorage__queueServiceUri"),
        ({"AzureWebJobsStorage": "", "AzureWebJobsStorage__queueServiceUri": "https://stirm.queue.core.windows.net",
          "AzureWebJobsStorage__tableServiceUri": "https://stirm table.core.windows.net"},
         "AzureWebJobsStorage__tableServiceUri"),
        ({"AzureWebJobsStorage": "", "AzureWebJobsStorage__accountName": "https://stirm.blob.core.windows.net/"},
         "AzureWebJobsStorage__accountName"),
        ({"AzureWebJobsStorage": "", "AzureWebJobsStorage__accountName": "stirm",
          "AzureWebJobsStorage__clientId": "my-identity"}, "AzureWebJobsStorage__clientId"),
        # clear text to an Azure account: the queue messages, the state and the request signatures
        ({"AzureWebJobsStorage": f"DefaultEndpointsProtocol=http;AccountName=stirm;AccountKey={KEY}"},
         "AzureWebJobsStorage"),
        ({"AzureWebJobsStorage": f"AccountName=stirm;AccountKey={KEY};QueueEndpoint=http://stirm.queue.core.windows.net;"
                                 "TableEndpoint=https://stirm.table.core.windows.net"}, "AzureWebJobsStorage"),
    ],
)
def test_bad_settings_name_the_setting(change: dict[str, str], setting: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, **change})
    assert info.value.setting == setting
    assert str(info.value).startswith(f"setting {setting}:")


def test_a_proxy_is_read_as_every_client_reads_it_and_its_password_never_shown() -> None:
    for proxy in ("http://proxy.corp:8080", "proxy.corp:3128", "http://user:s3cret@proxy.corp:8080", "http://[::1]:3128",
                  "https://proxy.corp:443"):
        Settings.from_env({**BASE, "HTTPS_PROXY": proxy, "http_proxy": proxy})
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, "HTTPS_PROXY": "http://user:s3cret@proxy.corp:port", "https_proxy": "proxy.corp:port"})
    assert [name for name, _ in info.value.problems] == ["HTTPS_PROXY", "https_proxy"]
    assert "s3cret" not in str(info.value)
    with pytest.raises(SettingsError) as info:  # one variable where names ignore case (Windows): said once
        Settings.from_env({**BASE, "HTTPS_PROXY": "proxy:x", "https_proxy": "proxy:x"})
    assert [name for name, _ in info.value.problems] == ["HTTPS_PROXY"]


def test_a_shorter_function_timeout_is_accepted() -> None:
    for text in ("00:00:30", "00:10:00", "00:05"):  # hh:mm too, as the host reads a timespan
        Settings.from_env({**BASE, "AzureFunctionsJobHost__functionTimeout": text})


def test_a_client_id_reaches_msal_in_the_form_entra_id_knows() -> None:
    for written in ("{" + CLIENT + "}", f"urn:uuid:{CLIENT}", CLIENT.replace("-", "").upper()):
        assert Settings.from_env({**BASE, "O365_CLIENT_ID": written}).client_id == CLIENT


def test_a_ca_bundle_and_a_local_emulator_over_http_are_accepted(tmp_path: Path) -> None:
    import certifi

    azurite = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={KEY};"
               "QueueEndpoint=http://127.0.0.1:10001/devstoreaccount1;TableEndpoint=http://azurite:10002/devstoreaccount1")  # fmt: skip
    s = Settings.from_env({**BASE, "SSL_CERT_FILE": certifi.where(), "AzureWebJobsStorage": azurite})
    assert s.storage.connection_string == azurite
    assert KEY not in repr(s)


def test_a_managed_identity_reads_the_microsoft_365_clouds_of_its_own_entra_id() -> None:
    mi = {**BASE, "O365_AUTH_MODE": "managed_identity", "O365_CLIENT_SECRET": ""}
    for o365, azure in (("Commercial", "AzurePublic"), ("GCC", "AzurePublic"), ("GCCHigh", "AzureUSGovernment"),
                        ("DoD", "AzureUSGovernment")):  # fmt: skip
        assert Settings.from_env({**mi, "O365_CLOUD": o365, "AZURE_CLOUD": azure}).cloud == o365
    # An app registration signs in at the Microsoft 365 cloud's own Entra ID, wherever the app runs.
    assert Settings.from_env({**BASE, "O365_CLOUD": "GCCHigh"}).authority_host == "https://login.microsoftonline.us"
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**mi, "O365_CLOUD": "DoD", "AZURE_CLOUD": "AzureChina"})
    assert "login.microsoftonline.us" in str(info.value) and "O365_AUTH_MODE=secret or certificate" in str(info.value)


def test_managed_identity_needs_no_client_id() -> None:
    s = Settings.from_env(
        {**BASE, "O365_AUTH_MODE": "managed_identity", "O365_CLIENT_ID": "", "O365_CLIENT_SECRET": ""}
    )
    assert s.auth_mode == "managed_identity"


def test_identity_based_storage() -> None:
    env = {
        **BASE,
        "AzureWebJobsStorage": "",
        "AzureWebJobsStorage__accountName": "stirm",
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": CLIENT,
    }
    s = Settings.from_env(env).storage
    assert s.queue_service_uri == "https://stirm.queue.core.windows.net"
    assert s.table_service_uri == "https://stirm.table.core.windows.net"
    assert (s.credential_kind, s.client_id) == ("managedidentity", CLIENT)


@pytest.mark.parametrize(
    ("cloud", "suffix"), [("AzureUSGovernment", "core.usgovcloudapi.net"), ("AzureChina", "core.chinacloudapi.cn")]
)
def test_a_storage_account_named_alone_is_reached_in_the_function_clouds_own_domain(cloud: str, suffix: str) -> None:
    env = {**BASE, "AzureWebJobsStorage": "", "AzureWebJobsStorage__accountName": "stirm", "AZURE_CLOUD": cloud}
    s = Settings.from_env(env).storage
    assert (s.queue_service_uri, s.table_service_uri) == (f"https://stirm.queue.{suffix}", f"https://stirm.table.{suffix}")


def test_the_storage_endpoints_the_deployment_gives_are_taken_as_they_are() -> None:
    """infra/ sets the account's primaryEndpoints, which end in a slash; the clients get the bare endpoint."""
    env = {
        **BASE,
        "AzureWebJobsStorage": "",
        "AzureWebJobsStorage__queueServiceUri": "https://stirm.queue.core.usgovcloudapi.net/",
        "AzureWebJobsStorage__tableServiceUri": "https://stirm.table.core.usgovcloudapi.net/",
        "AZURE_CLOUD": "AzureUSGovernment",
    }
    s = Settings.from_env(env).storage
    assert s.queue_service_uri == "https://stirm.queue.core.usgovcloudapi.net"
    assert s.table_service_uri == "https://stirm.table.core.usgovcloudapi.net"


@pytest.mark.parametrize(
    ("value", "categories"),
    [
        ("insiderriskmanagement", {"InsiderRiskManagement"}),
        ("Insider Risk Management, data-loss prevention", {"InsiderRiskManagement", "DataLossPrevention"}),
        ("*", {"*"}),
    ],
)
def test_alert_categories_are_spelt_as_the_records_spell_them(value: str, categories: set[str]) -> None:
    assert Settings.from_env({**BASE, "ALERT_CATEGORIES": value}).alert_categories == categories


def test_an_alert_category_no_alert_carries_is_refused_not_left_to_route_nothing() -> None:
    with pytest.raises(SettingsError, match=r"^setting ALERT_CATEGORIES: name 2 is a category no alert carries") as info:
        Settings.from_env({**BASE, "ALERT_CATEGORIES": "InsiderRiskManagement,InsiderRiskManagment"})
    assert "InsiderRiskManagement, MailFlow" in str(info.value)


@pytest.mark.parametrize(
    ("text", "seconds"), [("24h", 86400), ("90m", 5400), ("1h30m", 5400), ("7d", 604800), ("45s", 45)]
)
def test_durations(text: str, seconds: int) -> None:
    assert parse_duration(text, setting="X").total_seconds() == seconds


def test_zero_needs_no_unit() -> None:
    assert Settings.from_env({**BASE, "LISTING_OVERLAP": "0"}).listing_overlap.total_seconds() == 0
    with pytest.raises(SettingsError, match=r"^setting POLL_TIME_BUDGET: ") as info:  # its range still holds
        Settings.from_env({**BASE, "POLL_TIME_BUDGET": "0"})
    assert "no unit" not in str(info.value)


#: What a client secret looks like, pasted by mistake into the wrong setting: invalid for every setting below.
PASTED_SECRET = "Qx8~sEcReT.vaLue_9f3kD2-aB7cE~p0"
IDENTITY_STORAGE = {"AzureWebJobsStorage": "", "AzureWebJobsStorage__tableServiceUri": "https://st.table.example"}
SETTINGS_WITH_A_FORM = [
    "O365_TENANT_ID", "O365_CLIENT_ID", "O365_PUBLISHER_ID", "O365_CLOUD", "O365_API_ROOT", "O365_AUTHORITY_HOST",
    "O365_AUTH_MODE", "O365_CLIENT_CERTIFICATE_PATH", "O365_CONTENT_TYPES", "INITIAL_LOOKBACK", "LISTING_OVERLAP",
    "POLL_TIME_BUDGET", "HTTP_TIMEOUT", "CONTENT_QUEUE", "LOGS_INGESTION_ENDPOINT", "LOGS_DCR_IMMUTABLE_ID",
    "LOGS_ALERTS_STREAM", "LOGS_AUDIT_STREAM", "LOGS_HEALTH_STREAM", "STATE_TABLE_PREFIX",
    "O365_MAX_REQUESTS_PER_MINUTE", "DEDUPE_RETENTION_DAYS", "AzureWebJobsStorage",
    "AzureWebJobsStorage__queueServiceUri", "ALERT_CATEGORIES",
]  # fmt: skip


@pytest.mark.parametrize("setting", SETTINGS_WITH_A_FORM)
def test_a_settings_error_never_shows_the_value(setting: str) -> None:
    env = {**BASE, **(IDENTITY_STORAGE if setting.startswith("AzureWebJobsStorage__") else {})}
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**env, setting: PASTED_SECRET})
    assert info.value.setting == setting
    assert PASTED_SECRET not in str(info.value)
    assert PASTED_SECRET[4:-4] not in str(info.value)  # nor a part of it
    assert len(info.value.problem) > 10  # but it says what is wrong


@pytest.mark.parametrize("setting", ["O365_API_ROOT", "LOGS_INGESTION_ENDPOINT", "AzureWebJobsStorage__queueServiceUri"])
def test_a_url_that_does_not_parse_is_a_settings_error(setting: str) -> None:
    env = {**BASE, **(IDENTITY_STORAGE if setting.startswith("AzureWebJobsStorage__") else {})}
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**env, setting: "https://["})
    assert info.value.setting == setting


@pytest.mark.parametrize(
    ("given", "read"),
    [
        # The default port would go into the token's audience (https://manage.office.com:443/.default), which Entra
        # ID does not know by that name.
        ("https://manage.office.com:443", "https://manage.office.com"),
        ("HTTPS://Manage.Office.com/", "https://manage.office.com"),
        ("https://manage.office365.us:8443", "https://manage.office365.us:8443"),
        ("https://[::1]:8443", "https://[::1]:8443"),
    ],
)
def test_an_api_root_is_read_as_its_plain_https_origin(given: str, read: str) -> None:
    assert Settings.from_env({**BASE, "O365_API_ROOT": given}).api_root == read


@pytest.mark.parametrize("setting", ["O365_TENANT_ID", "O365_CLIENT_ID"])
def test_a_guid_setting_says_it_is_not_a_guid(setting: str) -> None:
    with pytest.raises(SettingsError, match=rf"^setting {setting}: is not a GUID") as info:
        Settings.from_env({**BASE, setting: PASTED_SECRET})
    assert PASTED_SECRET not in str(info.value)


def test_every_bad_setting_is_reported_at_once() -> None:
    env = {**BASE, "O365_TENANT_ID": "contoso", "O365_CLOUD": "Mars", "HTTP_TIMEOUT": "0s", "LOGS_DCR_IMMUTABLE_ID": ""}
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    named = [setting for setting, _ in info.value.problems]
    assert named == ["O365_TENANT_ID", "O365_CLOUD", "HTTP_TIMEOUT", "LOGS_DCR_IMMUTABLE_ID"]
    assert info.value.setting == "O365_TENANT_ID"  # the first, for callers that show one
    assert str(info.value).count("setting ") == 4
    # A bad tenant id is reported once, not again as the publisher id that defaults to it.
    assert "O365_PUBLISHER_ID" not in str(info.value)


def test_the_sample_settings_are_refused_until_filled_in() -> None:
    """local.settings.sample.json as shipped: placeholders and all-zero ids, each named once."""
    values = json.loads((REPO / "local.settings.sample.json").read_text())["Values"]
    with pytest.raises(SettingsError) as info:
        Settings.from_env(values)
    problems = dict(info.value.problems)
    assert sorted(problems) == [
        "LOGS_DCR_IMMUTABLE_ID", "LOGS_INGESTION_ENDPOINT", "O365_CLIENT_ID", "O365_CLIENT_SECRET", "O365_TENANT_ID",
    ]  # fmt: skip
    assert len(info.value.problems) == len(problems)
    assert problems["LOGS_INGESTION_ENDPOINT"].startswith("still holds a placeholder of the sample settings")
    assert problems["O365_TENANT_ID"].startswith("is the all-zero GUID")
    assert problems["O365_CLIENT_ID"].startswith("is the all-zero GUID")
    assert problems["LOGS_DCR_IMMUTABLE_ID"].startswith("is the all-zero id")
    assert "<your-dcr>" not in str(info.value)


@pytest.mark.parametrize("setting", ["O365_TENANT_ID", "O365_CLIENT_ID", "O365_PUBLISHER_ID"])
def test_the_nil_guid_is_refused(setting: str) -> None:
    with pytest.raises(SettingsError, match=rf"^setting {setting}: is the all-zero GUID"):
        Settings.from_env({**BASE, setting: "00000000-0000-0000-0000-000000000000"})


@pytest.mark.parametrize("setting", ["INITIAL_LOOKBACK", "LISTING_OVERLAP", "POLL_TIME_BUDGET", "HTTP_TIMEOUT"])
def test_a_duration_without_a_unit_is_refused_with_the_accepted_forms(setting: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, setting: "24"})
    assert info.value.setting == setting
    assert info.value.problem == "has no unit; write a number and a unit: 45s, 90m, 24h, 7d, or combined like 1h30m"


def test_a_placeholder_is_not_looked_for_in_secrets() -> None:
    s = Settings.from_env({**BASE, "O365_CLIENT_SECRET": "a<b>c-secret"})
    assert s.client_secret == "a<b>c-secret"


def test_a_content_type_listed_twice_in_any_spelling_is_polled_once() -> None:
    settings = Settings.from_env({**BASE, "O365_CONTENT_TYPES": "Audit.General, audit.general,AUDIT.Exchange"})
    assert settings.content_types == ("Audit.General", "Audit.Exchange")


@pytest.mark.parametrize(
    "setting", ["O365_CLIENT_SECRET", "O365_CLIENT_CERTIFICATE", "O365_CLIENT_CERTIFICATE_PASSWORD", "O365_CLIENT_ID"]
)
def test_a_key_vault_reference_the_app_could_not_resolve_is_named_as_such(setting: str) -> None:
    """App Service passes an unresolved reference's own text to the app: it must not be taken for a malformed
    certificate or a wrong secret (which Entra would refuse as invalid_client)."""
    reference = "@Microsoft.KeyVault(SecretUri=https://kv-irm.vault.azure.net/secrets/o365-client-secret)"
    mode = "certificate" if "CERTIFICATE" in setting else "secret"
    with pytest.raises(SettingsError) as info:
        Settings.from_env({**BASE, "O365_AUTH_MODE": mode, setting: reference})
    [problem] = [text for name, text in info.value.problems if name == setting]
    assert problem.startswith("is a Key Vault reference, which only the Function App resolves: on the command line")
    assert "Key Vault Secrets User" in problem and reference not in str(info.value)
    # A restart does not make App Service read the reference again: the message gives what does.
    assert "config/configreferences/appsettings/refresh" in problem and "restart the app" not in problem
