"""A connector process the crash tests can SIGKILL: the function entry points, as the host calls them.

python -m tests.faults.child poll
python -m tests.faults.child process FILE     # FILE holds one queue message body
python -m tests.faults.child invoke FILE      # one invocation as `process`; prints {"seconds", "raised"} as JSON
python -m tests.faults.child work LOCK MAXDQ  # work the queue (lock seconds, maxDequeueCount)
python -m tests.faults.child serve LOCK MAXDQ # work the queue as `work` does, until killed (an instance)
python -m tests.faults.child ticks INTERVAL FILE  # tick the poller every INTERVAL s until killed; each
                                                # tick's start (epoch seconds) is appended to FILE
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

from azure.functions.timer import TimerRequest


async def main(argv: list[str]) -> None:
    # What an instance logs, with its level, on stderr (the tests that read it look for error lines).
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from irm_connector.cli.queue_trigger import HostQueueOptions, QueueWorker
    from irm_connector.runtime import close_runtimes
    from tests.harness import functions

    fns = functions()
    try:
        if argv[0] == "poll":
            await fns["poller"](TimerRequest(past_due=False))
        elif argv[0] == "process":
            import azure.functions as func

            body = Path(argv[1]).read_bytes()
            await fns["processor"](func.queue.QueueMessage(id="m", body=body, dequeue_count=1))  # type: ignore[no-untyped-call]  # unannotated in azure.functions
        elif argv[0] == "invoke":
            import azure.functions as func

            body = Path(argv[1]).read_bytes()
            started, raised = time.monotonic(), ""
            try:
                await fns["processor"](func.queue.QueueMessage(id="m", body=body, dequeue_count=1))  # type: ignore[no-untyped-call]  # unannotated in azure.functions
            except Exception as exc:
                raised = f"{type(exc).__name__}: {exc}"
            print(json.dumps({"seconds": time.monotonic() - started, "raised": raised}), flush=True)
        elif argv[0] in ("work", "serve"):
            from irm_connector.runtime import get_runtime
            from irm_connector.settings import Settings

            rt = await get_runtime(Settings.from_env())
            options = HostQueueOptions(
                batch_size=1, new_batch_threshold=0, max_dequeue_count=int(argv[2]), visibility_timeout=0
            )
            worker = QueueWorker(rt.queue.main, rt.queue.poison, fns["processor"], options, lock_seconds=int(argv[1]))
            await worker.run(until_empty=True if argv[0] == "work" else asyncio.Event())
        elif argv[0] == "ticks":
            interval, ticks = float(argv[1]), Path(argv[2])
            while True:
                started = time.time()
                with ticks.open("a") as out:
                    out.write(f"{started}\n")
                with contextlib.suppress(Exception):  # a failed run is the host's to log; the timer goes on
                    await fns["poller"](TimerRequest(past_due=False))
                await asyncio.sleep(max(0.0, started + interval - time.time()))
    finally:
        await close_runtimes()
    print("child finished", flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
