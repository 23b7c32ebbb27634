"""The CLI when a dependency is missing: Entra ID unreachable, storage down or not answering, managed identity
asked for off Azure, no credential for Logs Ingestion. Each: the exit code README promises, one line that
names what is wrong and what to check, and no SDK noise (tracebacks, credential dumps, unclosed sessions)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from irm_connector._tls import azure_session
from irm_connector.auth import azure_credential
from irm_connector.settings import Settings
from standins.entra import CLOUD_SHELL_USER
from standins.storage_proxy import StorageProxy
from standins.workload import generate_workload
from tests.cli.conftest import Cli, closed_port

NOISE = ("Traceback", "Unclosed client session", "Unclosed connector", "HTTPSConnectionPool", "Attempted credentials")


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert not any(noise in err for noise in NOISE), err
    return lines[0]


def off_azure(cli: Cli) -> None:
    """As on a laptop: no managed identity endpoint in the environment, and (standing in for the instance
    metadata service of an Azure VM) nothing listening where azure-identity would ask instead."""
    cli.unset("IDENTITY_ENDPOINT", "IDENTITY_HEADER", "MSI_ENDPOINT")
    cli.set(AZURE_POD_IDENTITY_AUTHORITY_HOST=f"http://127.0.0.1:{closed_port()}")


def in_cloud_shell(cli: Cli) -> None:
    """As in Azure Cloud Shell: MSI_ENDPOINT alone, whose tokens are the signed-in operator's, while the app's
    settings (as docs/operations.md exports them) still name the app's identity in AZURE_CLIENT_ID."""
    off_azure(cli)
    cli.set(MSI_ENDPOINT=cli.standins.entra.cloud_shell_endpoint,
            AZURE_CLIENT_ID=cli.standins.entra.managed_identity_client_id)  # fmt: skip


@pytest.mark.parametrize("mode", ["secret", "certificate"])
def test_entra_unreachable_exits_3_naming_the_host_and_status_still_shows_the_queues(cli: Cli, mode: str) -> None:
    if mode == "certificate":
        cli.unset("O365_CLIENT_SECRET")
        cli.set(O365_AUTH_MODE="certificate", O365_CLIENT_CERTIFICATE_PATH=str(cli.standins.certificate_path))
    port = closed_port()
    cli.set(O365_AUTHORITY_HOST=f"https://127.0.0.1:{port}")
    cli.put('{"not": "a content message"}', cli.poison)

    # As a subprocess: an unclosed aiohttp session is reported when the interpreter exits.
    done = cli.subprocess("status")
    assert done.returncode == 3, done.stderr
    assert f"queue {cli.queue}: 0 message(s)" in done.stdout
    assert f"poison queue {cli.poison}: 1 message(s)" in done.stdout
    (problem,) = [line for line in done.stdout.splitlines() if "[api-unreachable]" in line]
    assert f"cannot reach Entra ID at 127.0.0.1:{port} (connection refused)" in problem
    assert "O365_AUTHORITY_HOST" in problem and "O365_CLOUD" in problem
    assert not any(noise in done.stdout + done.stderr for noise in NOISE), done.stderr

    done = cli.subprocess("poll", "--json")
    assert done.returncode == 3
    error = json.loads(done.stdout)["error"]
    assert error["code"] == "entra-unreachable"
    assert f"cannot reach Entra ID at 127.0.0.1:{port}" in error["message"]
    assert error["hint"] == "check O365_AUTHORITY_HOST (or O365_CLOUD) and the network"
    line = one_line(done.stderr)
    assert line.startswith("error: could not get a token for") and error["hint"] in line


def test_entra_unknown_tenant_is_not_a_network_error(cli: Cli) -> None:
    cli.set(O365_TENANT_ID="4d2c8a59-5b0e-4c63-9f1e-2a7d6b3c9e10", O365_PUBLISHER_ID=cli.standins.tenant_id)
    code, doc = cli.json("subscriptions", "list")
    assert code == 3
    assert doc["error"]["code"] == "token-refused"
    assert "has no OpenID configuration for tenant 4d2c8a59-5b0e-4c63-9f1e-2a7d6b3c9e10" in doc["error"]["message"]
    assert "O365_TENANT_ID" in doc["error"]["hint"]


def test_a_wrong_secret_keeps_its_advice_however_long_entra_s_description(cli: Cli) -> None:
    """Entra's AADSTS description runs to about 300 characters with its trace id and time: the line was cut at 400
    before its advice was split off, so the operator read "check O365_CLIENT_ID, the secret or ce..." and never
    the grant it names."""
    cli.set(O365_CLIENT_SECRET="not-the-secret")
    advice = "check O365_CLIENT_ID, the secret or certificate, and that ActivityFeed.Read is granted with admin consent"
    code, doc = cli.json("subscriptions", "list")
    assert code == 3 and doc["error"]["code"] == "token-refused"
    assert "invalid_client: AADSTS7000215" in doc["error"]["message"]
    assert doc["error"]["hint"] == advice
    code, _, err = cli.run("subscriptions", "list")
    assert code == 3 and one_line(err).endswith(advice)


def test_a_page_answering_in_the_api_s_place_sends_the_operator_to_the_proxy(cli: Cli) -> None:
    cli.standins.management.add_fault("subscriptions", "malformed", count=1000)
    code, doc = cli.json("subscriptions", "list")
    assert code == 3 and doc["error"]["code"] == "api-unreachable"
    assert doc["error"]["message"].startswith("the API answered with a body that is not JSON")
    assert doc["error"]["hint"] == (
        "check the proxy on the way (its pages answer in the API's place) and O365_API_ROOT (or O365_CLOUD)"
    )


def test_a_long_retry_after_is_not_waited_out_and_the_operator_is_told_when_to_run_again(cli: Cli) -> None:
    """A command does not sit out a 15-minute Retry-After: it ends at that answer, asking nothing more."""
    cli.standins.management.add_fault("subscriptions", "status", status=403, code="AF429", retry_after=900, count=10)
    code, doc = cli.json("subscriptions", "list")
    assert code == 3
    assert cli.standins.management.count("subscriptions") == 1  # not asked again before the time it named
    assert "throttled (Retry-After 900 s)" in doc["error"]["message"]
    assert doc["error"]["hint"] == "the API asks for 900 s without requests from this tenant: run it again then"

STORAGE_COMMANDS = [
    ["status"],
    ["poll"],
    ["process"],
    ["run"],
    ["backfill", "--since", "1h"],
    ["poison", "list"],
    ["poison", "requeue", "--all"],
    ["poison", "purge", "--yes"],
    # The Management API's request budget is kept in storage: with storage down, `subscriptions` waited half a
    # minute, then failed creating the budget's table.
    ["subscriptions", "list"],
]


@pytest.mark.parametrize("command", STORAGE_COMMANDS, ids=" ".join)
def test_storage_down_exits_3_naming_the_endpoint_and_azurite(cli: Cli, command: list[str]) -> None:
    port = closed_port()
    cli.set(
        AzureWebJobsStorage="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
        f"QueueEndpoint=http://127.0.0.1:{port}/devstoreaccount1;TableEndpoint=http://127.0.0.1:{port}/devstoreaccount1;",
        HTTP_TIMEOUT="2s",
    )
    code, out, err = cli.run(*command)
    assert code == 3, err
    assert out == ""
    assert one_line(err) == (
        f"error: cannot reach Storage at http://127.0.0.1:{port} (connection refused); "
        "is Azurite running? (scripts/azurite.sh); else check AzureWebJobsStorage"
    )
    assert "Logs Ingestion" not in err and "DefaultAzureCredential" not in err


def test_storage_that_does_not_answer_fails_within_http_timeout(cli: Cli) -> None:
    """Item 5's contract: a storage account that holds every request exits 3 after HTTP_TIMEOUT, not after the SDKs'
    retries (31 s for poll before). The bound is that contract, with room for the process's start and the closing
    of its clients on a slow machine, not a speed: the message names the timeout that ended it."""
    with StorageProxy(cli.azurite) as proxy:
        proxy.set_latency(60)
        cli.set(AzureWebJobsStorage=proxy.connection_string, HTTP_TIMEOUT="2s")
        started = time.monotonic()
        code, out, err = cli.run("poll")
        elapsed = time.monotonic() - started
    assert code == 3, err
    assert out == "" and elapsed < 2 + 15, elapsed  # the retries took 31 s
    line = one_line(err)
    assert f"cannot reach Storage at {proxy.queue.base_url}" in line or f"at {proxy.table.base_url}" in line
    assert "(no answer within HTTP_TIMEOUT (2s))" in line and "Azurite" in line


@pytest.mark.parametrize(
    ("code", "advice"),
    [("AuthorizationFailure", "add it to the storage firewall"),
     ("AuthorizationPermissionMismatch", "give your identity Storage Queue Data Contributor")],
)  # fmt: skip
def test_storage_refusing_the_identity_or_the_address_exits_3_with_the_fix(cli: Cli, code: str, advice: str) -> None:
    """The queue service's refusal, read by its code (the queue SDK gives it as an enum, not the text)."""
    with StorageProxy(cli.azurite) as proxy:
        proxy.add_fault("queue.admin", "status", status=403, code=code, count=100)
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        status, out, err = cli.run("status")
    assert out == ""
    assert status == 3, err
    assert one_line(err).startswith(f"error: Storage at {proxy.queue.base_url} refused the request (HTTP 403, {code}); ")
    assert advice in err

@pytest.mark.parametrize(("status", "code"), [(403, "AuthorizationPermissionMismatch"), (503, "ServerBusy")])
def test_storage_failing_while_the_queue_is_worked_ends_process_with_exit_3(cli: Cli, status: int, code: str) -> None:
    """The role is removed, or the account fails, after `process` started: every receive was logged as a warning
    and tried again a second later, for ever, so a cron job or a build agent hung and exit 3 never came. A
    refusal ends it at once; a failing account once it has failed for a minute."""
    cli.put('{"contentUri": "not one of ours"}')
    with StorageProxy(cli.azurite) as proxy:
        proxy.add_fault("queue.get", "status", status=status, code=code, count=10_000)
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        done = cli.subprocess("process", timeout=150)
    assert done.returncode == 3, done.stderr
    line = one_line("\n".join(ln for ln in done.stderr.splitlines() if ln.startswith("error:")))
    assert line.startswith(f"error: Storage at {proxy.queue.base_url} refused the request (HTTP {status}, {code})")


@pytest.mark.parametrize("where", [off_azure, in_cloud_shell], ids=["laptop", "cloud-shell"])
def test_managed_identity_off_azure_says_so_and_storage_commands_still_work(
    cli: Cli, where: Callable[[Cli], None]
) -> None:
    where(cli)
    cli.set(O365_AUTH_MODE="managed_identity")
    cli.unset("O365_CLIENT_SECRET")
    cli.put('{"contentUri": "not one of ours"}')

    code, out, err = cli.run("status")
    assert code == 2, err
    assert f"queue {cli.queue}: 1 message(s)" in out and f"poison queue {cli.poison}: 0 message(s)" in out
    (problem,) = [line for line in out.splitlines() if "[not-in-azure]" in line]
    assert "not running in Azure" in problem and "O365_AUTH_MODE=secret or certificate" in problem
    assert "ActivityFeed.Read" not in out + err and "Attempted credentials" not in err

    for command in (["poll"], ["process"], ["subscriptions", "list"], ["backfill", "--since", "1h"]):
        code, doc = cli.json(*command)
        assert code == 2, (command, doc)
        assert doc["error"]["code"] == "not-in-azure"
        assert "not running in Azure" in doc["error"]["message"]
        assert "O365_AUTH_MODE=secret or certificate" in doc["error"]["hint"]
    # process stopped before it touched the queue: nothing was failed into the poison queue.
    assert cli.depth() == 1 and cli.depth(cli.poison) == 0

    code, doc = cli.json("poison", "list")
    assert code == 0 and doc["depth"] == 0


async def test_managed_identity_storage_setting_off_azure_uses_the_operators_identity(cli: Cli) -> None:
    """The deployed app's settings say AzureWebJobsStorage__credential=managedidentity; off Azure the CLI reaches
    storage with DefaultAzureCredential (az login) instead of an identity that is not there."""
    settings = Settings.from_env({**cli.env, "AzureWebJobsStorage": ""} | {
        "AzureWebJobsStorage__accountName": "irmstate", "AzureWebJobsStorage__credential": "managedidentity",
    })  # fmt: skip
    sim = cli.standins
    storage = "https://storage.azure.com"
    async with azure_session() as session:
        async with azure_credential(settings, managed_identity_only=True, session=session) as in_azure:
            token = await in_azure.get_token(f"{storage}/.default")
        info = sim.tokens.validate(token.token, storage)
        assert info is not None and info.kind == "managed_identity"  # the app's identity, where there is one
        off_azure(cli)
        # The operator, here a service principal (a build agent's) in the environment, as `az login` would be.
        cli.set(AZURE_TENANT_ID=sim.tenant_id, AZURE_CLIENT_ID=sim.client_id, AZURE_CLIENT_SECRET=sim.client_secret,
                AZURE_AUTHORITY_HOST=sim.authority_host)  # fmt: skip
        async with azure_credential(settings, managed_identity_only=True, session=session) as off:
            token = await off.get_token(f"{storage}/.default")
        info = sim.tokens.validate(token.token, storage)
        assert info is not None and (info.kind, info.client_id) == ("client_secret", sim.client_id)


async def test_in_cloud_shell_storage_is_reached_as_the_signed_in_operator(cli: Cli) -> None:
    """Cloud Shell's identity endpoint is the operator's: with the deployed app's settings (a client id for the
    app's identity) the CLI's storage credential gets the operator's token there, instead of azure-identity
    refusing the client id ("client_id should not be set for cloud shell managed identity")."""
    settings = Settings.from_env({**cli.env, "AzureWebJobsStorage": ""} | {
        "AzureWebJobsStorage__accountName": "irmstate", "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": cli.standins.entra.managed_identity_client_id,
    })  # fmt: skip
    in_cloud_shell(cli)
    async with (
        azure_session() as session,
        azure_credential(settings, settings.storage.client_id, managed_identity_only=True, session=session) as credential,
    ):
        token = await credential.get_token("https://storage.azure.com/.default")
    info = cli.standins.tokens.validate(token.token, "https://storage.azure.com")
    assert info is not None and (info.kind, info.client_id) == ("cloud_shell", CLOUD_SHELL_USER)


def test_logs_ingestion_with_the_operators_identity(cli: Cli, tmp_path: Path) -> None:
    """Off Azure, process sends rows with the operator's identity (here a service principal through
    DefaultAzureCredential's environment credential); without one it stops before the queue, in one line."""
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(
        seed=3, total_records=200, blob_size=(100, 100), irm_share=0.1, tenant_id=sim.tenant_id
    )
    workload.publish(sim.management)
    off_azure(cli)
    # No credential anywhere: no az, azd or pwsh on PATH, no token cache in HOME.
    (tmp_path / "bin").mkdir()
    cli.set(PATH=str(tmp_path / "bin"), HOME=str(tmp_path))
    blobs = len(workload.blobs)

    # poll queues the blobs; its health row cannot be sent, which it says in one warning, not as "HTTP 0".
    code, out, err = cli.run("poll")
    assert code == 0 and f"{blobs} queued" in out
    (warning,) = err.strip().splitlines()
    assert "Could not write the health row" in warning and "could not get a token for Logs Ingestion" in warning
    assert "az login" in warning and "HTTP 0" not in warning and "Attempted credentials" not in err

    code, doc = cli.json("process")
    assert code == 3
    assert doc["error"]["code"] == "ingestion-token"
    assert doc["error"]["message"].startswith("no token for Logs Ingestion (https://monitor.azure.com)")
    assert "az login" in doc["error"]["hint"] and "Monitoring Metrics Publisher" in doc["error"]["hint"]
    code, out, err = cli.run("process")
    assert code == 3 and out == "" and "HTTP 0" not in one_line(err)
    assert cli.depth() == blobs and cli.depth(cli.poison) == 0

    # A service principal in the environment with a wrong secret: it is the one tried first, and the hint says so
    # instead of sending the operator to `az login`.
    cli.set(AZURE_TENANT_ID=sim.tenant_id, AZURE_CLIENT_ID=sim.client_id, AZURE_CLIENT_SECRET="not-the-secret",
            AZURE_AUTHORITY_HOST=sim.authority_host)  # fmt: skip
    code, doc = cli.json("process")
    assert code == 3 and doc["error"]["code"] == "ingestion-token", doc
    assert "AZURE_CLIENT_SECRET" in doc["error"]["hint"] and "sign in with `az login`" not in doc["error"]["hint"]
    assert "not-the-secret" not in json.dumps(doc)

    cli.set(
        AZURE_TENANT_ID=sim.tenant_id,
        AZURE_CLIENT_ID=sim.client_id,
        AZURE_CLIENT_SECRET=sim.client_secret,
        AZURE_AUTHORITY_HOST=sim.authority_host,
    )
    code, doc = cli.json("process")
    assert code == 0, doc
    assert doc["processed"] == blobs and doc["poisoned"] == 0
    assert sorted(r["RecordId"] for r in cli.rows()) == sorted(set(workload.irm_alert_record_ids))


def test_the_command_line_asks_for_logs_ingestion_tokens_of_the_workspaces_cloud(cli: Cli) -> None:
    """A workspace in Azure Government: the check before the work asks for the token the uploads use."""
    sim = cli.standins
    sim.management.set_subscription("Audit.General", "enabled")
    workload = generate_workload(seed=5, total_records=200, blob_size=(100, 100), irm_share=0.1,
                                 tenant_id=sim.tenant_id)  # fmt: skip
    workload.publish(sim.management)
    sim.ingestion.accept_audience("https://monitor.azure.us")
    off_azure(cli)
    cli.set(AZURE_CLOUD="AzureUSGovernment", AZURE_TENANT_ID=sim.tenant_id, AZURE_CLIENT_ID=sim.client_id,
            AZURE_CLIENT_SECRET=sim.client_secret, AZURE_AUTHORITY_HOST=sim.authority_host)  # fmt: skip
    assert cli.run("poll")[0] == 0
    code, doc = cli.json("process")
    assert code == 0, doc
    assert sorted(r["RecordId"] for r in cli.rows()) == sorted(set(workload.irm_alert_record_ids))
    assert "https://monitor.azure.com" not in sim.entra.tokens.audiences()


@pytest.mark.parametrize(
    ("env", "named"),
    [({"AzureWebJobsStorage": "UseDevelopmentStorage=true"}, "check AzureWebJobsStorage and"),
     ({"AzureWebJobsStorage__accountName": "stirm"}, "check AzureWebJobsStorage__* and")],
)  # fmt: skip
def test_a_storage_failure_mid_run_names_the_storage_settings_in_use(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], named: str
) -> None:
    """A storage failure after the preflight (a table write that failed its retries) told an app with
    identity-based storage to check AzureWebJobsStorage, a setting it does not have; the preflight's own failures
    already named AzureWebJobsStorage__*."""
    from irm_connector.cli._failures import describe
    from irm_connector.errors import StateError

    monkeypatch.delenv("AzureWebJobsStorage", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    failure = describe(StateError("could not write the watermark of Audit.General (HTTP 503)"))
    assert failure.code == "storage" and failure.hint.startswith(named), failure.hint


async def test_storage_lost_after_the_startup_check_is_named_with_its_settings(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The startup check names Storage when it cannot be reached; a connection lost later, in the commands' own
    queue calls (the poison queue's walk, the queue worked by `process`), came out as "a service could not be
    reached (ServiceRequestError)", naming no service, no setting and no fix."""
    from azure.storage.queue.aio import QueueClient

    from irm_connector.cli._failures import describe

    monkeypatch.setenv("AzureWebJobsStorage", cli.azurite.connection_string)
    with StorageProxy(cli.azurite) as proxy:
        proxy.add_fault("queue.get", "reset", count=10)  # receiving messages, as the walks do
        failures = []
        nobody = re.sub(r"QueueEndpoint=[^;]+", f"QueueEndpoint=http://127.0.0.1:{closed_port()}/x", proxy.connection_string)
        for connection_string in (proxy.connection_string, nobody):
            async with QueueClient.from_connection_string(connection_string, "irm-content", retry_total=0) as client:
                with pytest.raises(Exception) as raised:
                    await client.receive_message()
            failures.append(describe(raised.value))
    causes = ["connection closed before an answer", "connection refused"]
    for failure, cause in zip(failures, causes, strict=True):
        assert (failure.code, failure.exit_code) == ("storage-unreachable", 3), failure
        assert failure.message == f"cannot reach Storage ({cause})", failure.message
        assert failure.hint.startswith("check AzureWebJobsStorage, the network"), failure.hint
