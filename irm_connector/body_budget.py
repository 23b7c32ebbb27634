"""The bytes of blob bodies one worker process holds at once, bounded by ``MAX_BLOB_MB_IN_FLIGHT``.

Why: the queue trigger runs up to 12 deliveries per worker (host.json), and each keeps its blob's body and
the rows made from it (together about 2.5 times the body with the audit stream) until its upload ends.
Unbounded, a catch-up burst of 50 MB blobs needs more memory than a 2 GB Flex Consumption instance has, and
a worker that runs out takes every invocation on it down.

A delivery reserves its body's size before it reads the body, and keeps the reservation until it ends (its
rows live that long). The size is the answer's ``Content-Length`` when the body comes as is; a body of
unknown size (chunked, or compressed on the wire) reserves as it arrives. A delivery never waits for room
while it holds any, nor with an answer open (the wait could outlast the request's timeout): when there is
no room, it lets go of the answer and of what it held, waits for the room it now knows it needs, and
downloads again. A body larger than the bound reserves the whole bound: it waits until it is alone and is
then processed alone. Nothing is refused for its size.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

import aiohttp

from .deadline import within
from .errors import BodyRoomError

__all__ = ["BodyBudget", "BodyHold", "BodyReader", "body_digest"]

log = logging.getLogger(__name__)

#: Reads an answer's body; the Management API client calls it inside its request.
BodyReader = Callable[[aiohttp.ClientResponse], Awaitable[bytes]]
#: Bytes read at a time from a body of unknown size.
READ_STEP = 256 * 1024
#: Downloads of one body, each after a wait for room: a body of unknown size may outgrow what it waited for a few
#: times.
MAX_DOWNLOADS = 8


class BodyBudget:
    """A per-process budget of body bytes, served first come, first served: a large reservation at the head
    of the line is not overtaken by small ones, so a body as large as the bound does get its turn."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the budget must be at least one byte")
        self.limit = limit
        self.in_use = 0
        #: the most ever reserved at once; how many reservations took the whole bound (bodies that large)
        self.peak = 0
        self.whole = 0
        self._line: deque[tuple[int, asyncio.Future[None]]] = deque()

    def hold(self) -> BodyHold:
        """A reservation for one delivery, empty until it reads a body; release it when the delivery ends."""
        return BodyHold(self)

    def _try_take(self, amount: int, *, reaching: int | None = None) -> bool:
        """``reaching``: what the reservation comes to with ``amount`` (a body that grows takes steps)."""
        if self._line or self.in_use + amount > self.limit:
            return False
        self._take(amount, reaching=reaching)
        return True

    async def _wait_take(self, amount: int) -> None:
        if self._try_take(amount):
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (amount, future)
        self._line.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(amount)  # granted just as the waiter was cancelled
            else:
                with contextlib.suppress(ValueError):
                    self._line.remove(entry)
                self._serve()  # it may have been the head that kept the others waiting
            raise

    def _take(self, amount: int, *, reaching: int | None = None) -> None:
        self.in_use += amount
        self.peak = max(self.peak, self.in_use)
        if (amount if reaching is None else reaching) == self.limit:
            self.whole += 1

    def _release(self, amount: int) -> None:
        self.in_use -= amount
        self._serve()

    def _serve(self) -> None:
        while self._line:
            amount, future = self._line[0]
            if not future.done():  # a cancelled waiter is dropped, not served
                if self.in_use + amount > self.limit:
                    return
                self._take(amount)
                future.set_result(None)
            self._line.popleft()


class _NoRoom(Exception):
    """Raised by :meth:`BodyHold.read` inside a request, to be waited out after it: ``amount`` is the room
    the body needs."""

    def __init__(self, amount: int) -> None:
        super().__init__(f"a body needs {amount} bytes of room")
        self.amount = amount


class BodyHold:
    """What one delivery's body holds of the budget."""

    def __init__(self, budget: BodyBudget) -> None:
        self._budget = budget
        self.held = 0

    async def fetch(self, download: Callable[[BodyReader], Awaitable[bytes]]) -> bytes:
        """``download(self.read)``, waiting for room between attempts when the body found none."""
        for attempt in range(1, MAX_DOWNLOADS + 1):
            try:
                return await download(self.read)
            except _NoRoom as no_room:
                if attempt == MAX_DOWNLOADS:
                    break  # no download follows: the room would be waited for in vain
                budget = self._budget
                log.info(
                    "A blob body needs %.1f MiB; this worker holds %.1f of %.0f MiB of blob bodies "
                    "(MAX_BLOB_MB_IN_FLIGHT): it waits for room, then downloads again",
                    no_room.amount / 2**20, budget.in_use / 2**20, budget.limit / 2**20,
                )  # fmt: skip
                # A wait the invocation cannot hold fails it instead (the waiter's place is given up cleanly).
                await within("waiting for room among this worker's blob bodies (MAX_BLOB_MB_IN_FLIGHT)",
                             budget._wait_take(no_room.amount))  # fmt: skip
                self.held = no_room.amount
        raise BodyRoomError(
            f"a blob body found no room in this worker's blob bodies after {MAX_DOWNLOADS} downloads (each outgrew "
            "the room it had); the message is retried; if this repeats, raise MAX_BLOB_MB_IN_FLIGHT "
            "within the plan's memory"
        )

    async def read(self, response: aiohttp.ClientResponse) -> bytes:
        """The body, read once it has room in the budget; raises :class:`_NoRoom` (closing the answer) when
        there is none now."""
        if response.status >= 300:
            return await response.read()  # an error answer: small, and no blob
        size = response.content_length
        if size is not None and response.headers.get("Content-Encoding", "identity").lower() == "identity":
            self._make_room(size)
            return await response.read()
        return await self._read_growing(response)

    def _make_room(self, size: int) -> None:
        want = min(size, self._budget.limit)
        if want <= self.held:
            return
        if self._budget._try_take(want - self.held, reaching=want):
            self.held = want
            return
        self.release()  # nothing held while waiting: whoever it waits for cannot be waiting for it
        raise _NoRoom(want)

    async def _read_growing(self, response: aiohttp.ClientResponse) -> bytes:
        parts: list[bytes] = []
        got = 0
        async for part in response.content.iter_chunked(READ_STEP):
            got += len(part)
            if got > self.held:
                # Twice what has arrived (at least a sixteenth of the bound): few waits, and what the last step
                # took too much is given back below.
                self._make_room(max(2 * got, got + self._budget.limit // 16))
            parts.append(part)
        # The last step may have reserved more than the body: give it back.
        keep = min(got, self._budget.limit)
        if self.held > keep:
            extra, self.held = self.held - keep, keep
            self._budget._release(extra)
        return b"".join(parts)

    def release(self) -> None:
        if self.held:
            held, self.held = self.held, 0
            self._budget._release(held)


async def body_digest(response: aiohttp.ClientResponse) -> bytes:
    """A body reader that keeps only the body's SHA-256: to compare a second download with the first without
    holding both."""
    if response.status >= 300:
        return await response.read()
    digest = hashlib.sha256()
    async for part in response.content.iter_chunked(READ_STEP):
        digest.update(part)
    return digest.digest()
