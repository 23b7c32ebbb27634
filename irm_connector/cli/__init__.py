"""``irm-connector`` (``python -m irm_connector``): operate the connector with the function app's settings.

Exit codes: 0 ok; 1 unhealthy or the work failed; 2 usage or settings error, or a command that cannot work
where it runs; 3 a dependency (Storage, Entra ID, the Management API, Logs Ingestion) could not be reached
or refused the credential; 130 interrupted.
With ``--json`` stdout holds one JSON document whatever happens: the result, or ``{"error": {...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, NoReturn, TypeVar

from irm_connector import __version__
from irm_connector.content_queue import MAX_DELAY
from irm_connector.errors import SettingsError
from irm_connector.redaction import redact_exception
from irm_connector.runtime import close_runtimes
from irm_connector.settings import Settings

from ._common import StdoutClosed, load_settings, setup_logging, signal_handler, take_done
from ._failures import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, Failure, describe, report, stdout_to_devnull

#: A queue peek returns at most 32 messages (Azure Storage's limit).
MAX_PEEK = 32

N = TypeVar("N", int, float)

__all__ = ["build_parser", "main"]

_EPILOG = """exit codes:
  0  ok (status: healthy)
  1  unhealthy (status), or the work failed (a content type, a poisoned message, an ID not found)
  2  usage or settings error (the message names the setting), or managed identity asked for outside
     Azure; nothing was done
  3  a dependency (Storage, Entra ID, the Management API, Logs Ingestion) could not be reached,
     or refused the credential (running it again does not help until that is fixed)
  130  interrupted (Ctrl-C, SIGTERM)

--json (before or after the command): stdout is one JSON document, also on errors:
{"error": {"code", "message", "hint"}}.

Settings are read from the environment, as the function app reads its app settings
(see local.settings.sample.json). process, run and backfill work the queue with host.json's
queue settings; an app setting AzureFunctionsJobHost__extensions__queues__<name> overrides
one, as it does for the Functions host."""

Command = Callable[[argparse.Namespace, Settings], Awaitable[int]]


class _Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are JSON documents too when ``--json`` is on the command line."""

    json_errors = False

    def error(self, message: str) -> NoReturn:
        if not self.json_errors:
            super().error(message)
        self.print_usage(sys.stderr)
        report(Failure("usage", f"{self.prog}: {message}", f"see `{self.prog} --help`", EXIT_USAGE), as_json=True)
        sys.exit(2)


def _within(convert: Callable[[str], N], low: N, high: N, *, what: str, unit: str = "") -> Callable[[str], N]:
    """An option's type: the number ``convert`` reads, refused (a usage error) outside ``low`` to ``high``."""

    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not between {low:g} and {high:g}{unit}")
        return value

    return parse


#: Seconds a failed message stays invisible: what a queue message's visibility timeout may be.
_retry_delay = _within(float, 0.0, float(MAX_DELAY), what="a number of seconds", unit=" seconds (7 days)")
#: How many poison messages to show: a queue peek returns at most 32.
_peek_limit = _within(int, 1, MAX_PEEK, what="a whole number")


def _common(parser: argparse.ArgumentParser, default: Any = argparse.SUPPRESS) -> None:
    # Each level may carry the options (``poison --json list``, ``--json status``): a level that was not given
    # one must not reset what another level set, hence SUPPRESS below the top.
    parser.add_argument("--json", action="store_true", default=default, help="print one JSON document instead of text")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0 if default is False else default,
        help="log to stderr (-v info, -vv debug)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="irm-connector",
        description="Operate the IRM connector: health, polling, processing, backfill, poison messages, subscriptions.",
        epilog=_EPILOG,
        formatter_class=formatter,
        # "--js" would make a JSON result but a text error (errors look for --json itself): whole options only.
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"irm-connector {__version__}")
    _common(parser, default=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def action(
        group: argparse._SubParsersAction[_Parser],
        name: str,
        help_text: str,
        description: str | None = None,
    ) -> _Parser:
        # Whole options here too: "status --js" made a text error, "purge --y" a yes nobody typed in full.
        p = group.add_parser(name, help=help_text, description=description, epilog=_EPILOG, formatter_class=formatter,
                             allow_abbrev=False)  # fmt: skip
        _common(p)
        return p

    def command(name: str, help_text: str, description: str = "") -> _Parser:
        return action(sub, name, help_text, description or help_text)

    p = command(
        "status",
        "per content type: watermark, lag, subscription, last error; queue and poison depth",
        "Show whether the connector keeps up. Unhealthy (exit 1; 3 when the Management API cannot be reached, 2 "
        "when its credential exists only in Azure) when a watermark is more than --max-lag behind, "
        "the oldest content message was queued more than --max-lag ago, a content type has never been listed, "
        "the last run of a content type failed, a subscription is not enabled, Logs Ingestion refuses a stream, "
        "or the poison queue is not empty.",
    )
    p.add_argument("--max-lag", default="2h", metavar="DURATION", help="lag that counts as unhealthy (default 2h)")

    command("poll", "one poller run: list what is new and queue it (exit 1 if a content type failed)")

    def retry_delay(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--retry-delay",
            type=_retry_delay,
            default=None,
            metavar="SECONDS",
            help="how long a failed message stays invisible before its retry (default: host.json visibilityTimeout)",
        )

    p = command(
        "process",
        "work the content queue until it is empty (exit 1 if a message was poisoned or put off)",
        "Process content messages as the Functions host does: host.json concurrency, a failed message is "
        "retried until maxDequeueCount and then moved to the poison queue. A message put off for later (a DCR "
        "refusing the stream, a throttle, records another delivery holds) ends the run at once, since the queue "
        "would not empty before it comes back.",
    )
    p.add_argument("--max", type=int, default=None, metavar="N", help="stop after N messages")
    retry_delay(p)

    p = command(
        "run",
        "poll on POLL_SCHEDULE and process continuously, without the Functions host",
        "Poll on POLL_SCHEDULE (NCRONTAB with seconds, e.g. '0 */5 * * * *') and work the content queue "
        "continuously. SIGTERM or Ctrl-C stops it cleanly: work in flight finishes, exit 0.",
    )
    p.add_argument("--schedule", default=None, metavar="NCRONTAB", help="instead of the POLL_SCHEDULE setting")
    p.add_argument("--poll-now", action="store_true", help="poll once at start, then on the schedule")
    retry_delay(p)

    p = command(
        "backfill",
        "list a past range again (within 7 days) without moving the live watermark",
        "List a past range again and queue the blobs that were never queued (--include-queued: every blob), then "
        "process the queue. The live "
        "watermark and lease are not touched. The API keeps content for 7 days.",
    )
    p.add_argument("--since", metavar="DURATION", help="from this long ago until now, e.g. 3d or 12h")
    p.add_argument(
        "--start", metavar="TIME", help="start of the range (UTC), e.g. 2026-06-01T00:00Z; listed from a minute before"
    )
    p.add_argument("--end", metavar="TIME", help="end of the range (UTC; default now), left out as the API's endTime")
    p.add_argument("--content-type", action="append", metavar="TYPE", help="only this content type (repeatable)")
    p.add_argument("--no-process", action="store_true", help="only queue; leave processing to the function app")
    p.add_argument(
        "--include-queued",
        action="store_true",
        help="queue the blobs queued before too (their messages were purged or lost); records already sent are "
        "not sent again",
    )
    retry_delay(p)

    p = command("poison", "inspect dead messages with the reason each failed, requeue or purge them")
    poison = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = action(poison, "list", "the dead messages and why each failed")
    q.add_argument(
        "--limit", type=_peek_limit, default=MAX_PEEK, help=f"show at most this many (1-{MAX_PEEK}, default {MAX_PEEK})"
    )
    q = action(poison, "requeue", "send dead messages back to the content queue")
    q.add_argument("ids", nargs="*", metavar="ID", help="message id or content id")
    q.add_argument("--all", action="store_true", help="every message of the poison queue")
    q = action(poison, "purge", "delete every dead message (asks; --yes without a terminal)")
    q.add_argument("--yes", action="store_true", help="do not ask")

    p = command("subscriptions", "list, start or stop the Management API subscriptions")
    subscriptions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    action(subscriptions, "list", "every subscription of the tenant")
    q = action(subscriptions, "start", "start subscriptions (default: the configured content types)")
    q.add_argument("content_types", nargs="*", metavar="TYPE")
    q = action(subscriptions, "stop", "stop subscriptions (content published while stopped is lost)")
    q.add_argument("content_types", nargs="*", metavar="TYPE")
    q.add_argument("--yes", action="store_true", help="do not ask")
    return parser


def _command(args: argparse.Namespace) -> Command:
    from . import backfill, poison, poll, process, run, status, subscriptions

    table: dict[str, Command] = {
        "status": status.status,
        "poll": poll.poll,
        "process": process.process,
        "run": run.run,
        "backfill": backfill.backfill_command,
        "poison": poison.poison,
        "subscriptions": subscriptions.subscriptions,
    }
    return table[str(args.command)]


def _all_settings(args: argparse.Namespace) -> Settings:
    """The connector's settings and those only this command reads (the host's queue overrides of the commands that
    work the queue, ``run``'s ``POLL_SCHEDULE``), every problem of both named in one error, not the first group's
    alone: an operator fixing them one run at a time met them one group at a time."""
    from .queue_trigger import HostQueueOptions
    from .run import Schedule

    own: list[SettingsError] = []
    checks: list[Callable[[], object]] = []
    if args.command in ("process", "run") or (args.command == "backfill" and not args.no_process):
        checks.append(HostQueueOptions.from_environment)
    if args.command == "run" and not args.schedule:
        checks.append(Schedule.from_settings)
    for check in checks:
        try:
            check()
        except SettingsError as exc:
            own.append(exc)
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise SettingsError.combine([exc, *own]) from None
    if own:
        raise SettingsError.combine(own)
    return settings


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    # SIGTERM (a build agent's timeout, `kill`) ends a command as Ctrl-C does: cancelled, its leases released and
    # its claims given up on the way out, exit 130. `process` and `run` install a gentler stop of their own.
    main_task = asyncio.current_task()
    terminated = False

    def on_terminate() -> None:
        nonlocal terminated
        terminated = True
        if main_task is not None:
            main_task.cancel()

    with signal_handler(signal.SIGTERM, on_terminate):
        try:
            return await _command(args)(args, settings)
        except asyncio.CancelledError:
            if terminated:
                raise KeyboardInterrupt from None
            raise
        finally:
            await close_runtimes()


def _wants_json(argv: Sequence[str]) -> bool:
    options = argv[: list(argv).index("--")] if "--" in argv else argv
    return "--json" in options


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    as_json = _wants_json(argv)
    _Parser.json_errors = as_json
    args = build_parser().parse_args(argv)
    verbose = int(getattr(args, "verbose", 0) or 0)
    setup_logging(verbose)
    take_done()  # nothing of an earlier command in this process
    try:
        settings = _all_settings(args)
        return asyncio.run(_run(args, settings))
    except KeyboardInterrupt:
        report(Failure("interrupted", "interrupted", "", EXIT_INTERRUPTED, done=take_done()), as_json=as_json)
        return EXIT_INTERRUPTED
    except StdoutClosed:
        stdout_to_devnull()  # nowhere to say anything, and the work is done
        return EXIT_FAILED
    except Exception as exc:
        failure = describe(exc, " ".join(str(v) for v in (args.command, getattr(args, "action", None)) if v))
        report(replace(failure, done=take_done()), as_json=as_json)
        if verbose >= 2:
            import traceback

            # Redacted like every other line: an SDK's message may carry a token or a URL with a signature.
            traceback.print_exception(redact_exception(exc))
        return failure.exit_code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
