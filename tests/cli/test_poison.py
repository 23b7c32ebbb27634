"""``poison requeue`` and ``purge`` on a poison queue that takes longer to walk than a message stays hidden
(issue 12, item 10): every message is requeued exactly once, none is seen twice, no delete fails partway.

The hold is shortened to one second (``LOCK_SECONDS``, 60 in use) and the storage answers slowly (a proxy in
front of Azurite), so the walk outlives the hold several times over without minutes of waiting."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from azure.storage.queue import TextBase64DecodePolicy, TextBase64EncodePolicy
from azure.storage.queue.aio import QueueClient

from irm_connector.cli import poison
from irm_connector.content_queue import ContentMessage, create_queue_if_missing
from irm_connector.models import ContentBlob
from standins.storage_proxy import StorageProxy
from tests.cli.conftest import Cli

LOCK = 1


@pytest.fixture
def slow(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cli]:
    """The CLI behind a storage proxy that delays every receive and delete, with a one-second hold."""
    monkeypatch.setattr(poison, "LOCK_SECONDS", LOCK)
    with StorageProxy(cli.azurite) as proxy:
        proxy.set_latency(0.3, "queue.get")
        proxy.set_latency(0.03, "queue.delete")
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        yield cli


def fill(cli: Cli, count: int, prefix: str) -> list[str]:
    """``count`` content messages in the poison queue; their content ids."""
    now = datetime.now(UTC)
    tenant = cli.standins.tenant_id
    ids = [f"{prefix}{i:04d}" for i in range(count)]

    async def send() -> None:
        async with QueueClient.from_connection_string(
            cli.azurite.connection_string, cli.poison, message_encode_policy=TextBase64EncodePolicy()
        ) as client:
            await create_queue_if_missing(client)
            for content_id in ids:
                blob = ContentBlob(
                    content_type="Audit.General",
                    content_id=content_id,
                    content_uri=f"{cli.standins.api_root}/api/v1.0/{tenant}/activity/feed/audit/{content_id}",
                    content_created=now,
                    content_expiration=now + timedelta(days=7),
                )
                await client.send_message(ContentMessage(tenant, blob).encode())

    asyncio.run(send())
    return ids


def drain(cli: Cli, name: str) -> Counter[str]:
    """How often each content id stands in queue ``name`` (every message received once)."""

    async def receive() -> Counter[str]:
        import json

        counts: Counter[str] = Counter()
        async with QueueClient.from_connection_string(
            cli.azurite.connection_string, name, message_decode_policy=TextBase64DecodePolicy()
        ) as client:
            async for message in client.receive_messages(messages_per_page=32, visibility_timeout=300):
                counts[json.loads(message.content)["contentId"]] += 1
        return counts

    return asyncio.run(receive())


def test_requeue_all_of_a_queue_longer_than_the_hold_sends_each_message_once(slow: Cli) -> None:
    ids = fill(slow, 70, "c")
    started = time.monotonic()
    code, doc = slow.json("poison", "requeue", "--all")
    # The premise, not a speed requirement: the walk lasted longer than a message stays hidden.
    assert time.monotonic() - started > LOCK
    assert code == 0, doc
    assert sorted(r["content_id"] for r in doc["requeued"]) == ids
    assert doc["not_found"] == [] and doc["not_deleted"] == []
    assert slow.depth(slow.poison) == 0
    assert drain(slow, slow.queue) == Counter(ids)


def _parked_as_the_walk_begins(cli: Cli, proxy: StorageProxy, count: int, prefix: str, *, after: float = 0) -> threading.Thread:
    """Once the command's first read of the poison queue arrives (held there), ``count`` messages are parked
    (``after`` seconds later), as the function app parks them meanwhile; then the read goes on."""
    first_read = proxy.hold("queue.get", path=re.escape(cli.poison))

    def park() -> None:
        try:
            if first_read.arrived.wait(60):
                time.sleep(after)
                fill(cli, count, prefix)
        finally:
            first_read.release(forward=True)

    parker = threading.Thread(target=park)
    parker.start()
    return parker


def test_requeue_leaves_what_was_parked_after_it_began(cli: Cli) -> None:
    """With the function app running, a requeued message that fails again is parked anew, under a new id, while
    a long walk goes on: the walk took it for a message it had not seen and requeued it again, and so on for as
    long as it lasted. What is parked after the requeue began stays, as purge leaves it."""
    old = fill(cli, 2, "old")
    with StorageProxy(cli.azurite) as proxy:
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        parker = _parked_as_the_walk_begins(cli, proxy, 3, "again", after=1.1)  # the queue's times: whole seconds
        code, doc = cli.json("poison", "requeue", "--all")
        parker.join()
    assert code == 0, doc
    assert sorted(r["content_id"] for r in doc["requeued"]) == old and doc["left_parked_since_start"] == 3
    assert drain(cli, cli.poison) == Counter(["again0000", "again0001", "again0002"])
    assert drain(cli, cli.queue) == Counter(old)


def test_requeue_by_id_of_a_message_parked_after_it_began_says_it_was_left_not_that_it_is_missing(cli: Cli) -> None:
    old = fill(cli, 2, "old")
    with StorageProxy(cli.azurite) as proxy:
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        parker = _parked_as_the_walk_begins(cli, proxy, 1, "again")
        code, doc = cli.json("poison", "requeue", old[0], "again0000")
        parker.join()
    assert code == 1, doc  # named, and not sent back: run it again
    assert [r["content_id"] for r in doc["requeued"]] == [old[0]] and doc["not_found"] == [], doc
    assert doc["left_parked_since_start"] == 1, doc
    assert drain(cli, cli.poison) == Counter([old[1], "again0000"])


def test_requeue_by_id_leaves_the_others_in_the_poison_queue(slow: Cli) -> None:
    ids = fill(slow, 60, "o")
    wanted = [ids[3], ids[41], ids[59]]
    code, doc = slow.json("poison", "requeue", *wanted, "no-such-id")
    assert code == 1, doc  # one ID was not found
    assert sorted(r["content_id"] for r in doc["requeued"]) == wanted
    assert doc["not_found"] == ["no-such-id"]
    assert drain(slow, slow.queue) == Counter(wanted)
    assert drain(slow, slow.poison) == Counter(set(ids) - set(wanted))


def test_purge_of_a_queue_longer_than_the_hold_deletes_every_message(slow: Cli) -> None:
    fill(slow, 70, "p")
    code, doc = slow.json("poison", "purge", "--yes")
    assert code == 0, doc
    assert doc == {"purged": 70, "not_deleted": [], "not_seen": 0, "left_parked_since_count": 0}
    assert slow.depth(slow.poison) == 0 and slow.depth() == 0


def test_purge_whose_deletes_are_refused_names_each_message_once(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message whose delete is refused comes round again once its hold runs out, and is refused again. Each
    refusal added its id once more: `not_deleted` named it twice and "-1 message(s) deleted" was printed."""
    monkeypatch.setattr(poison, "LOCK_SECONDS", LOCK)
    fill(cli, 3, "r")
    with StorageProxy(cli.azurite) as proxy:
        # Slow deletes: the page outlasts the hold, so the walk receives the refused messages again.
        proxy.set_latency(0.6, "queue.delete")
        proxy.add_fault("queue.delete", "status", count=100, status=403, code="AuthorizationPermissionMismatch")
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        code, out, _ = cli.run("poison", "purge", "--yes")
        refused = proxy.count("queue.delete")
        code_json, doc = cli.json("poison", "purge", "--yes")
    assert refused > 3  # the premise: some delete was refused twice
    assert code == 1 and out.startswith("0 message(s) deleted from")
    assert code_json == 1 and doc["purged"] == 0 and doc["not_seen"] == 0  # deleted: none
    assert sorted(doc["not_deleted"]) == sorted(set(doc["not_deleted"])) and len(doc["not_deleted"]) == 3
    assert cli.depth(cli.poison) == 3


def test_purge_whose_failure_records_cannot_be_cleared_still_reports_the_deletion(cli: Cli) -> None:
    """The messages are deleted first, their failure records after. Storage refusing the records' deletes (a
    reader's role on the tables) ended the command with exit 3 and a storage error: a script took the purge for
    not done, though every message was gone. The stale records are harmless; the deletion is reported."""
    fill(cli, 3, "t")
    with StorageProxy(cli.azurite) as proxy:
        proxy.add_fault("table.write", "status", count=100, status=403, code="AuthorizationPermissionMismatch")
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        code, doc = cli.json("poison", "purge", "--yes")
    assert code == 0, doc
    assert doc == {"purged": 3, "not_deleted": [], "not_seen": 0, "left_parked_since_count": 0}
    assert cli.depth(cli.poison) == 0


def test_an_abbreviated_option_is_not_taken_for_the_whole_one(cli: Cli) -> None:
    """``purge --y`` was read as ``--yes``, a yes nobody typed in full; ``status --js`` made a text error where the
    JSON one was asked for (errors look for ``--json`` itself)."""
    fill(cli, 2, "a")
    code, out, err = cli.run("poison", "purge", "--y")
    assert code == 2 and "--y" in err, (out, err)
    assert cli.depth(cli.poison) == 2
    code, out, err = cli.run("status", "--js")
    assert code == 2 and "--js" in err, (out, err)


def test_purge_deletes_what_was_there_when_it_was_confirmed_not_what_was_parked_since(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The prompt counts the messages ("Delete the 2 message(s)"), and the function app parks more while the
    operator reads it. The walk deleted until the queue was empty: blobs nobody had seen in `poison list`, whose
    records were then lost unless someone requeued them. It now leaves what came after the count."""
    fill(cli, 2, "old")

    async def parked_while_asking(args: object, question: str) -> None:
        assert question.startswith("Delete the 2 message(s)")
        await asyncio.sleep(1.1)  # the queue's times are whole seconds
        await asyncio.to_thread(fill, cli, 3, "new")  # its own loop, in a thread

    monkeypatch.setattr(poison, "confirm", parked_while_asking)
    code, doc = cli.json("poison", "purge")
    assert code == 0, doc
    assert doc["purged"] == 2
    assert drain(cli, cli.poison) == Counter(["new0000", "new0001", "new0002"])


def test_purge_leaves_a_message_parked_in_the_second_it_counted_and_says_so(
    cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue's times are whole seconds: a message parked just after the count, in its second, read as parked by
    then and was deleted, unseen by the operator who confirmed two. The count is now taken as a second begins, and
    what was parked in its second is left, said in a line of its own."""
    fill(cli, 2, "old")

    async def parked_at_once(args: object, question: str) -> None:
        assert question.startswith("Delete the 2 message(s)")
        await asyncio.to_thread(fill, cli, 1, "new")

    monkeypatch.setattr(poison, "confirm", parked_at_once)
    code, doc = cli.json("poison", "purge")
    assert code == 0, doc
    assert (doc["purged"], doc["left_parked_since_count"], doc["not_seen"]) == (2, 1, 0), doc
    assert drain(cli, cli.poison) == Counter(["new0000"])  # and held for 5 minutes, as another reader would
    # One counted and held by another reader, one counted and deleted, one parked since: the one left takes no
    # place of the one held, which is said unseen.
    fill(cli, 1, "again")
    code, out, err = cli.run("poison", "purge")
    assert code == 1, (out, err)
    assert "1 message(s) deleted" in out and "1 message(s) parked since the count are left" in out, out
    assert "1 message(s) of" in out and "were not seen: another reader holds them" in out, out


@pytest.mark.parametrize("argv", [("poison", "list"), ("poison", "requeue", "--all")], ids=["list", "requeue"])
def test_storage_refusing_the_poison_queue_is_named_with_what_to_do(cli: Cli, argv: tuple[str, ...]) -> None:
    """The storage firewall refuses this address halfway (the checks before the work passed): one line naming
    Storage and the firewall, exit 3, and not an "unexpected error, report it" with a traceback to read."""
    fill(cli, 2, "refused")
    with StorageProxy(cli.azurite) as proxy:
        cli.set(AzureWebJobsStorage=proxy.connection_string)
        proxy.add_fault("queue.get", "status", status=403, code="AuthorizationFailure", count=100)
        code, document = cli.json(*argv)
    assert code == 3
    error = document["error"]
    assert error["code"] == "storage-refused"
    assert error["message"] == f"Storage at {proxy.queue.base_url} refused the request (HTTP 403, AuthorizationFailure)"
    assert "firewall" in error["hint"]
    assert cli.depth(cli.poison) == 2


def test_poison_list_sends_a_message_that_is_not_a_content_notification_to_purge_not_requeue(cli: Cli) -> None:
    """`poison list` told the operator to requeue every message it showed; requeue leaves one that is not a
    content notification where it is ("0 message(s) sent back"). It says what does remove such a message."""
    cli.put('{"note": "not a notification"}', cli.poison)
    code, out, err = cli.run("poison", "list")
    assert code == 0, err
    assert "poison requeue" not in out
    assert "1 not a content notification: nothing can process them and requeue leaves them" in out
    assert "`irm-connector poison purge` deletes them" in out
    fill(cli, 1, "readable")
    code, out, err = cli.run("poison", "list")
    assert code == 0, err
    assert "send them back with `irm-connector poison requeue --all`" in out and "1 not a content notification" in out


def test_poison_list_masks_a_secret_in_a_message_that_is_not_a_content_notification(cli: Cli) -> None:
    """`poison list` shows the start of a message it cannot read, as it came. Every other output of the command
    line masks the configured secrets (and token-shaped text); this one did not."""
    secret = cli.standins.client_secret
    cli.put(f'{{"note": "pasted by mistake", "client_secret": "{secret}"}}', cli.poison)
    code, out, err = cli.run("poison", "list")
    assert code == 0, err
    assert "pasted by mistake" in out and secret not in out + err
    code, doc = cli.json("poison", "list")
    assert secret not in str(doc)
    # The secret where the shown start of the text cuts it: masked by its whole value, it had to be masked
    # before the cut, or its first characters showed in clear.
    cli.put("x" * 181 + secret, cli.poison)
    code, doc = cli.json("poison", "list")
    [listed] = [m for m in doc["messages"] if (m["text"] or "").startswith("x")]
    assert listed["text"].startswith("x" * 181) and secret[:8] not in listed["text"], listed["text"]


def test_an_operators_netrc_login_does_not_reach_storage(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An operator whose ``.netrc`` has a ``default`` login (package feeds and build agents write one) lists
    and requeues the poison queue: the storage clients must not look in ``.netrc``, whose login aiohttp cannot
    send beside the shared key's ``Authorization`` (every request failed), and which is not Storage's to see."""
    fill(cli, 2, "netrc")
    netrc = tmp_path / "netrc"
    netrc.write_text("default login operator password not-for-microsoft\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    code, doc = cli.json("poison", "list")
    assert code == 0, doc
    assert doc["depth"] == 2
    code, doc = cli.json("poison", "requeue", "--all")
    assert code == 0, doc
    monkeypatch.delenv("NETRC")  # for this test's own client, which trusts the environment
    assert drain(cli, cli.queue) == Counter(["netrc0000", "netrc0001"])
    assert cli.depth(cli.poison) == 0


def test_requeue_and_purge_say_so_when_another_reader_hides_messages(cli: Cli) -> None:
    """A `poison` command stopped mid-walk leaves its page hidden for a minute; one run again meanwhile saw an
    empty queue and said "0 message(s) sent back" (or "deleted"), exit 0, with every message still there."""
    ids = fill(cli, 3, "h")

    async def hide() -> None:  # as a killed walk leaves them
        async with QueueClient.from_connection_string(cli.azurite.connection_string, cli.poison) as client:
            assert len([m async for m in client.receive_messages(max_messages=32, visibility_timeout=60)]) == 3

    asyncio.run(hide())
    code, out, _ = cli.run("poison", "list")
    assert code == 0 and "3 message(s), showing 0" in out and "were not seen: another reader holds them" in out
    code, out, _ = cli.run("poison", "requeue", "--all")
    assert code == 1 and "0 message(s) sent back" in out
    assert "3 message(s) of" in out and "were not seen: another reader holds them" in out
    code, doc = cli.json("poison", "purge", "--yes")
    assert code == 1 and doc == {"purged": 0, "not_deleted": [], "not_seen": 3, "left_parked_since_count": 0}
    assert cli.depth(cli.poison) == len(ids) and cli.depth() == 0
