"""``irm-connector`` (``python -m irm_connector``): operate the connector with the function app's settings.

Exit codes: 0 ok; 1 unhealthy or the work failed; 2 usage or settings error; 3 a dependency (Storage,
Entra ID, the Management API, Logs Ingestion) could not be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence

from irm_connector import __version__
from irm_connector.runtime import close_runtimes
from irm_connector.settings import Settings

from ._common import EXIT_USAGE, exit_code, load_settings, setup_logging

__all__ = ["build_parser", "main"]

_EPILOG = """exit codes:
  0  ok (status: healthy)
  1  unhealthy (status), or the work failed (a content type, a poisoned message, an ID not found)
  2  usage or settings error (the message names the setting); nothing was done
  3  a dependency (Storage, Entra ID, the Management API, Logs Ingestion) could not be reached

Settings are read from the environment, as the function app reads its app settings
(see local.settings.sample.json). process, run and backfill work the queue with host.json's
queue settings; an app setting AzureFunctionsJobHost__extensions__queues__<name> overrides
one, as it does for the Functions host."""

Command = Callable[[argparse.Namespace, Settings], Awaitable[int]]


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-v info, -vv debug)")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="irm-connector",
        description="Operate the IRM connector: health, polling, processing, backfill, poison messages, subscriptions.",
        epilog=_EPILOG,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"irm-connector {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def action(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        help_text: str,
        description: str | None = None,
    ) -> argparse.ArgumentParser:
        p = group.add_parser(name, help=help_text, description=description, epilog=_EPILOG, formatter_class=formatter)
        _common(p)
        return p

    def command(name: str, help_text: str, description: str = "") -> argparse.ArgumentParser:
        return action(sub, name, help_text, description or help_text)

    p = command(
        "status",
        "per content type: watermark, lag, subscription, last error; queue and poison depth",
        "Show whether the connector keeps up. Unhealthy (exit 1) when a watermark is more than --max-lag behind, "
        "a content type has never been listed, the last run of a content type failed, a subscription is not "
        "enabled, or the poison queue is not empty.",
    )
    p.add_argument("--max-lag", default="2h", metavar="DURATION", help="lag that counts as unhealthy (default 2h)")

    command("poll", "one poller run: list what is new and queue it (exit 1 if a content type failed)")

    def retry_delay(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--retry-delay",
            type=float,
            default=None,
            metavar="SECONDS",
            help="how long a failed message stays invisible before its retry (default: host.json visibilityTimeout)",
        )

    p = command(
        "process",
        "work the content queue until it is empty (exit 1 if a message was poisoned)",
        "Process content messages as the Functions host does: host.json concurrency, a failed message is "
        "retried until maxDequeueCount and then moved to the poison queue.",
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
        "List a past range again and queue the blobs that were never queued, then process the queue. The live "
        "watermark and lease are not touched. The API keeps content for 7 days.",
    )
    p.add_argument("--since", metavar="DURATION", help="from this long ago until now, e.g. 3d or 12h")
    p.add_argument("--start", metavar="TIME", help="start of the range (UTC), e.g. 2026-06-01T00:00Z")
    p.add_argument("--end", metavar="TIME", help="end of the range (UTC; default now)")
    p.add_argument("--content-type", action="append", metavar="TYPE", help="only this content type (repeatable)")
    p.add_argument("--no-process", action="store_true", help="only queue; leave processing to the function app")
    retry_delay(p)

    p = command("poison", "inspect dead messages with the reason each failed, requeue or purge them")
    poison = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    q = action(poison, "list", "the dead messages and why each failed")
    q.add_argument("--limit", type=int, default=32, help="show at most this many (1-32, default 32)")
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


async def _run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return await _command(args)(args, settings)
    finally:
        await close_runtimes()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        settings = load_settings()
        return asyncio.run(_run(args, settings))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        code = exit_code(exc)
        kind = "settings error" if code == EXIT_USAGE else "error"
        print(f"{kind}: {exc}", file=sys.stderr)
        if args.verbose >= 2:
            import traceback

            traceback.print_exc()
        return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
