"""``--json`` means JSON, always: every command, the option before or after the command (or the action), the
result, a usage mistake, a refusal and a dependency that is down: stdout is exactly one JSON document."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.cli.conftest import Cli, closed_port

#: Every command and action, with arguments that let it run to its end against the stand-ins.
COMMANDS: list[list[str]] = [
    ["status"],
    ["poll"],
    ["process"],
    ["backfill", "--since", "1h"],
    ["poison", "list"],
    ["poison", "requeue", "--all"],
    ["poison", "purge", "--yes"],
    ["subscriptions", "list"],
    ["subscriptions", "start"],
    ["subscriptions", "stop", "Audit.Exchange", "--yes"],
]


def placements(command: list[str]) -> list[list[str]]:
    """``--json`` at the end, before the command, and between a command and its action."""
    out = [[*command, "--json"], ["--json", *command]]
    if command[0] in ("poison", "subscriptions"):
        out.append([command[0], "--json", *command[1:]])
    return out


def document(cli: Cli, argv: list[str]) -> tuple[int, Any]:
    code, out, err = cli.run(*argv)
    try:
        return code, json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"{argv}: stdout is not one JSON document (exit {code}):\n{out}\n{err}") from None


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_prints_one_json_document_wherever_the_option_stands(cli: Cli, command: list[str]) -> None:
    cli.standins.management.set_subscription("Audit.General", "enabled")
    for argv in placements(command):
        code, doc = document(cli, argv)
        assert "error" not in doc, (argv, doc)
        expected = 1 if command == ["status"] and doc["problems"] else 0
        assert code == expected, (argv, doc)
        assert isinstance(doc, dict) and doc


def test_run_prints_one_json_document_when_it_stops(cli: Cli) -> None:
    with cli.spawn("--json", "run", "--schedule", "0 0 0 1 1 *") as process:
        assert process.stderr is not None
        assert process.stderr.readline().startswith("running: polling on")  # stderr: stdout stays JSON
        out, err = cli.stop(process)
    assert process.returncode == 0, err
    doc = json.loads(out)
    assert doc["stopped"] is True and doc["polls"] == 0


@pytest.mark.parametrize("command", [*COMMANDS, ["run"]], ids=" ".join)
def test_every_command_reports_an_unreachable_dependency_as_a_json_error(cli: Cli, command: list[str]) -> None:
    port = closed_port()
    if command[0] == "subscriptions":  # the one command that needs no storage: Entra ID is down instead
        cli.set(O365_AUTHORITY_HOST=f"https://127.0.0.1:{port}")
        expected = "entra-unreachable"
    else:
        cli.set(
            AzureWebJobsStorage="DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=a2V5;"
            f"QueueEndpoint=http://127.0.0.1:{port}/a;TableEndpoint=http://127.0.0.1:{port}/a;"
        )
        expected = "storage-unreachable"
    for argv in placements(command):
        code, doc = document(cli, argv)
        assert code == 3, (argv, doc)
        assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "hint"}
        assert doc["error"]["code"] == expected
        assert f"127.0.0.1:{port}" in doc["error"]["message"] and doc["error"]["hint"]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["poison", "--json", "requeue"], "--all"),
        (["--json", "poison", "purge"], "--yes"),
        (["subscriptions", "stop", "Audit.Exchange", "--json"], "--yes"),
        (["backfill", "--json"], "--since"),
        (["status", "--json", "--no-such-option"], "--no-such-option"),
        (["--json", "no-such-command"], "no-such-command"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else v,
)
def test_usage_mistakes_are_json_errors_with_exit_2(cli: Cli, argv: list[str], needle: str) -> None:
    cli.put("x", cli.poison)  # purge has something to refuse to delete
    code, doc = document(cli, argv)
    assert code == 2, doc
    assert doc["error"]["code"] == "usage" and needle in doc["error"]["message"] + doc["error"]["hint"]


def test_a_settings_error_is_a_json_error(cli: Cli) -> None:
    cli.unset("LOGS_DCR_IMMUTABLE_ID")
    code, doc = document(cli, ["status", "--json"])
    assert code == 2
    assert doc["error"]["code"] == "settings" and "LOGS_DCR_IMMUTABLE_ID" in doc["error"]["message"]


def test_a_json_error_masks_what_the_line_masks_and_stays_json(capsys: pytest.CaptureFixture[str]) -> None:
    """A library's message that quotes a token field: stdout is still one JSON document, with the value masked
    as on stderr (masking the JSON text itself missed escaped fields and could cut a value's escapes)."""
    from irm_connector.cli._failures import Failure, report

    message = 'refused: {"access_token": "abc123xyz", "sig": "q\\"w"} sig="abc" end'
    report(Failure("failed", message, "", 1), as_json=True)
    out, err = capsys.readouterr()
    doc = json.loads(out)
    assert "abc123xyz" not in out and "abc123xyz" not in err
    assert doc["error"]["message"].startswith("refused: ") and doc["error"]["message"].endswith(" end")


@pytest.mark.parametrize("argv", [["status"], ["no-such-command"]], ids=["settings-error", "usage-error"])
def test_an_error_told_to_a_reader_that_went_away_keeps_its_exit_code(cli: Cli, argv: list[str]) -> None:
    """`irm-connector --json ... | head -c0`: the reader closes stdout before the error document is written. The
    failure's exit code stays (2), with its line on stderr; it was Python's 120 and a BrokenPipeError traceback."""
    import os
    import subprocess
    import sys

    from tests.cli.conftest import REPO

    cli.unset("LOGS_DCR_IMMUTABLE_ID")  # a settings error, for `status`
    read, write = os.pipe()
    os.close(read)  # gone before the command writes: its first write to stdout meets a closed pipe
    try:
        done = subprocess.run([sys.executable, "-m", "irm_connector", "--json", *argv], env=cli.process_env(),
                              cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipeError" not in done.stderr
    assert done.stderr.startswith(("settings error:", "usage", "error:")), done.stderr
