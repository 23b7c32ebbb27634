"""The refusals table, shared by every instance, against the real Azurite (behind the fault proxy where a request
must be held)."""

from __future__ import annotations

import asyncio

from azure.data.tables.aio import TableServiceClient

from irm_connector.state import Tables
from irm_connector.state.refusals import RefusalStore
from standins import Azurite
from standins.storage_proxy import StorageProxy

DCR = "dcr-00000000000000000000000000000001"
STREAM = "Custom-IRMAlerts"


async def test_a_refusal_recorded_across_a_clear_dates_from_now_not_from_the_refusal_cleared(
    azurite: Azurite, proxy: StorageProxy, prefix: str
) -> None:
    """An instance reads the stream's refusal, and another clears it (the stream accepted again) before the first
    writes its own: written over the row it read, the new refusal kept the old one's Since, and the 2 hours of
    patience its messages are given were counted from before the clear."""
    async with TableServiceClient.from_connection_string(proxy.connection_string) as held_service, \
            TableServiceClient.from_connection_string(azurite.connection_string) as other_service:  # fmt: skip
        mine = RefusalStore(Tables(held_service, prefix=prefix))
        other = RefusalStore(Tables(other_service, prefix=prefix))
        first = await other.record(DCR, STREAM, 403, "OperationFailed", probe_after=5)
        await asyncio.sleep(1.1)
        write = proxy.hold("table.write", path="refusals")
        recording = asyncio.create_task(mine.record(DCR, STREAM, 403, "OperationFailed", probe_after=5))
        for _ in range(600):
            if write.arrived.is_set():
                break
            await asyncio.sleep(0.05)
        assert write.arrived.is_set(), "the refusal's write never came"
        assert await other.clear(DCR, STREAM) is not None
        write.release(forward=True)
        recorded = await recording
        # Since when this refusal was met: after the one cleared (a second on, at least), not that one's time.
        assert recorded.since > first.since
        assert (await other.current(DCR, fresh=True))[STREAM].since == recorded.since
