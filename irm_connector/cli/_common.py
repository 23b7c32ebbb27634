"""What the commands share: exit codes, output (readable or ``--json``), logging, error mapping, asking
before a destructive step, storage clients, durations and times."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import logging
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, is_dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.storage.queue.aio import QueueClient

from irm_connector import telemetry
from irm_connector._tls import azure_session
from irm_connector.errors import SettingsError, UsageError
from irm_connector.models import parse_http_date, utc_text
from irm_connector.redaction import install_redaction
from irm_connector.runtime import storage_clients
from irm_connector.settings import Settings, parse_duration
from irm_connector.state import StateStore

from ._failures import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE
from .queue_trigger import HostQueueOptions

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_UNREACHABLE",
    "EXIT_USAGE",
    "GracefulStop",
    "Storage",
    "UsageError",
    "confirm",
    "duration_option",
    "emit",
    "format_age",
    "iso",
    "load_settings",
    "parse_moment",
    "queue_options",
    "setup_logging",
    "storage",
]

log = logging.getLogger("irm_connector.cli")


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is when a record comes (it may be replaced, as under pytest)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


_handler: _StderrHandler | None = None


def load_settings() -> Settings:
    telemetry.configure()
    return Settings.from_env()


def setup_logging(verbose: int) -> None:
    """Log lines to stderr (warnings by default, ``-v`` info, ``-vv`` debug), secrets redacted."""
    global _handler
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    if _handler is None:
        _handler = _StderrHandler()
        _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(_handler)
    handler = _handler
    handler.setLevel(level)
    root.setLevel(min(level, root.level) if root.level else level)
    for noisy in ("azure", "msal", "urllib3", "opentelemetry"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    # DefaultAzureCredential warns with a dozen lines per failed token (one per credential it tried); the
    # CLI's own error line says what failed and what to do. -vv shows them.
    logging.getLogger("azure.identity").setLevel(logging.DEBUG if verbose >= 2 else logging.ERROR)
    install_redaction(handlers=[handler])


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return value


_done: dict[str, Any] | None = None


def note_done(document: dict[str, Any]) -> None:
    """Keep what a command has finished, for the ``--json`` error document should the rest of it fail: stdout holds
    one document, and without this the error's would be all the operator learns of the part that was done."""
    global _done
    _done = _plain(document)


def take_done() -> dict[str, Any] | None:
    """What :func:`note_done` kept, once (a command run in the same process after it starts afresh)."""
    global _done
    done, _done = _done, None
    return done


class StdoutClosed(Exception):
    """The reader of stdout went away before the result was written (``status --json | head -1``)."""


def emit(args: argparse.Namespace, document: dict[str, Any], text: str) -> None:
    """Print the result: one JSON document with ``--json``, else the readable text."""
    try:
        if getattr(args, "json", False):
            print(json.dumps(_plain(document), indent=2, sort_keys=False))
        else:
            print(text)
        sys.stdout.flush()  # here, where a closed pipe is known for what it is, not at the interpreter's exit
    except BrokenPipeError:
        raise StdoutClosed from None


def iso(moment: datetime | None) -> str | None:
    """A time as the CLI shows it: UTC to the second, or None."""
    return utc_text(moment, timespec="seconds") if moment is not None else None


def format_age(seconds: float | None) -> str:
    """``3d4h``, ``2h05m``, ``12m``, ``40s``."""
    if seconds is None:
        return "-"
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


async def confirm(args: argparse.Namespace, question: str) -> None:
    """``--yes``, or a yes at the terminal; without either a :class:`UsageError` (nothing was done)."""
    if getattr(args, "yes", False):
        return
    if not sys.stdin.isatty():
        raise UsageError(f"{question.split('?')[0]}? Refused: pass --yes (no terminal to ask)")
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)  # stdout may be --json's, piped
    answer = await _terminal_line()
    if answer.strip().lower() not in ("y", "yes"):
        raise UsageError("aborted at the prompt; nothing was done")


async def _terminal_line() -> str:
    """A line typed at the terminal, waited for on the loop: read in a blocking call, the loop's signal handlers
    (Ctrl-C, SIGTERM) ran only after Enter. A terminal in line mode is readable once the line is whole."""
    loop = asyncio.get_running_loop()
    typed: asyncio.Future[None] = loop.create_future()
    fd = sys.stdin.fileno()

    def readable() -> None:
        if not typed.done():
            typed.set_result(None)

    try:
        loop.add_reader(fd, readable)
    except (NotImplementedError, OSError, ValueError):  # Windows' loop watches no terminal
        return sys.stdin.readline()
    try:
        await typed
    finally:
        loop.remove_reader(fd)
    return sys.stdin.readline()


def parse_moment(text: str, name: str) -> datetime:
    """An ISO time (``2026-06-01``, ``2026-06-01T12:00``, ``...Z``); naive means UTC."""
    try:
        # "z" as "Z": ISO 8601 allows either, and fromisoformat reads the capital only.
        value = datetime.fromisoformat(re.sub(r"[zZ]$", "+00:00", text.strip()))
    except ValueError:
        raise UsageError(f"{name} {text!r} is not a time; write e.g. 2026-06-01T12:00Z") from None
    try:
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:00-01:00: its UTC instant is past the calendar's end
        raise UsageError(f"{name} {text!r} is outside the times the connector can use") from None


def duration_option(text: str, option: str) -> timedelta:
    """A duration option (``--since 3d``); a usage error, naming the accepted forms, when it is not one."""
    try:
        return parse_duration(text, setting=option)
    except SettingsError as exc:
        raise UsageError(f"{option} {text!r} {exc.problem}") from None


def queue_options(retry_delay: float | None) -> HostQueueOptions:
    """The host's queue settings; ``--retry-delay``, when given, for ``visibilityTimeout``."""
    options = HostQueueOptions.from_environment()
    return options if retry_delay is None else replace(options, visibility_timeout=retry_delay)


#: How long a count waits for the storage service's next second (a second, unless its clock stalls), and how often
#: it asks meanwhile.
_SECOND_WAIT = 2.0
_SECOND_POLL = 0.05


class Storage:
    """The storage clients of the CLI: the state tables, the content queue and its poison queue."""

    def __init__(self, state: StateStore, main: QueueClient, poison: QueueClient) -> None:
        self.state = state
        self.main = main
        self.poison = poison

    async def depth(self, client: QueueClient) -> int:
        """The queue's approximate length."""
        return (await self.depth_at(client))[0]

    async def depth_at(self, client: QueueClient, *, as_a_second_begins: bool = False) -> tuple[int, datetime]:
        """The queue's approximate length, and the storage service's time when it was counted (the answer's
        ``Date``; this machine's time if there was none).

        ``as_a_second_begins``: counted by the first answer of a new second (asked again for up to
        :data:`_SECOND_WAIT` s; at once when it counts none). A message's time in the queue is a whole second, so
        one parked in the count's second may have come before the count or after it; counted early in that second,
        few can, and whoever acts on "parked before the count's second" leaves fewer for a second run."""
        from azure.core.exceptions import ResourceNotFoundError

        dates: list[str] = []

        def hook(response: Any) -> None:
            dates.append(response.http_response.headers.get("Date") or "")

        async def count() -> tuple[int, datetime | None]:
            try:
                properties = await client.get_queue_properties(raw_response_hook=hook)
                depth = int(properties.approximate_message_count or 0)
            except ResourceNotFoundError:
                depth = 0
            return depth, parse_http_date(dates[-1] if dates else None)

        depth, when = await count()
        # Nothing counted (or no queue): nothing can be parked in the count's second before it. An answer without a
        # Date would set this machine's clock against the queue's: the count before it stands.
        if as_a_second_begins and depth and when is not None:
            first, give_up = when, time.monotonic() + _SECOND_WAIT
            while when <= first and time.monotonic() < give_up:
                await asyncio.sleep(_SECOND_POLL)
                again, at = await count()
                if at is None:
                    break
                depth, when = again, at
        return depth, when or datetime.now(UTC)


@asynccontextmanager
async def storage(settings: Settings) -> AsyncIterator[Storage]:
    """Storage clients built as the runtime builds them (connection string or identity)."""
    credentials: list[AsyncTokenCredential] = []
    async with azure_session() as session:  # never the SDK's own: it trusts the environment (see _tls.EnvProxy)
        tables, main, poison = storage_clients(settings.storage, settings, credentials, session)
        state = StateStore.from_settings(tables, settings)
        try:
            yield Storage(state, main, poison)
        finally:
            for closer in (main.close, poison.close, state.close, *(c.close for c in credentials)):
                try:
                    await closer()
                except Exception:
                    log.debug("closing a storage client failed", exc_info=True)


#: The handlers of each signal on the running loop, innermost last (see :func:`signal_handler`).
_signal_handlers: dict[signal.Signals, list[Callable[[], None]]] = {}
#: Each signal's Python handler from before the loop's first: the loop's removal of its last sets the default.
_handlers_before: dict[signal.Signals, Any] = {}


@contextmanager
def signal_handler(sig: signal.Signals, callback: Callable[[], None]) -> Iterator[bool]:
    """``callback`` handles ``sig`` on the running loop while inside, and the handler before it again after: the
    loop's own removal sets the default back, and SIGTERM's ends the process with 143 and nothing said, where the
    command's stop still had its last requests to make. Yields whether signals can be handled here at all (not on
    Windows, nor off the main thread)."""
    loop = asyncio.get_running_loop()
    stack = _signal_handlers.setdefault(sig, [])
    before = signal.getsignal(sig) if not stack else None
    try:
        loop.add_signal_handler(sig, callback)
    except (NotImplementedError, RuntimeError):
        yield False
        return
    if not stack:
        _handlers_before[sig] = before
    stack.append(callback)
    try:
        yield True
    finally:
        stack.remove(callback)
        if stack:
            loop.add_signal_handler(sig, stack[-1])
        else:
            # The one before the command's, not the default: in a process that started Azurite (the tests), its
            # handler stops the emulator on SIGTERM, and the default left it running, holding its ports. Only when
            # the loop still had it: a second Ctrl-C removes it itself, and what came before (asyncio.run's own
            # SIGINT handler) is then its closed runner's, which would keep the next asyncio.run from its own.
            previous = _handlers_before.pop(sig, None)
            if loop.remove_signal_handler(sig) and previous is not None:
                signal.signal(sig, previous)


class GracefulStop:
    """Ctrl-C (SIGINT) or SIGTERM while messages are worked: the first takes no new message and lets those in flight
    finish — their rows sent and marked, their claims released — saying so on stderr; a second abandons them at once,
    as a crash would (what was sent but not marked may be sent again, after the claims expire), except that a
    delivery cut while it uploads marks what had arrived and releases its claim on the way out."""

    def __init__(self, stop: asyncio.Event) -> None:
        self.stop = stop
        self.signalled = False

    @contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            if self.signalled:
                # Abandoned as a second Ctrl-C does, whichever signal came: SIGINT's default is KeyboardInterrupt,
                # which ends the command with its JSON document and 130; SIGTERM's own default ended the process
                # with 143 and nothing said.
                loop.remove_signal_handler(signal.SIGINT)
                signal.raise_signal(signal.SIGINT)
                return
            self.signalled = True
            print("stopping: no new message is taken; those in flight finish (a second Ctrl-C or SIGTERM abandons "
                  "them)", file=sys.stderr, flush=True)  # fmt: skip
            self.stop.set()

        with contextlib.ExitStack() as handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                handlers.enter_context(signal_handler(sig, functools.partial(on_signal, sig)))
            yield self
