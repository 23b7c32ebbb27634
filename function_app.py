"""Azure Functions entry points: bindings only. The work is in ``irm_connector.handlers``.

Importing this module does no network or credential work and reads no settings, so the host can index
it anywhere; ``%POLL_SCHEDULE%`` and ``%CONTENT_QUEUE%`` are resolved by the host from the app settings.
"""

import azure.functions as func

from irm_connector import handlers

app = func.FunctionApp()


@app.timer_trigger(schedule="%POLL_SCHEDULE%", arg_name="timer", run_on_startup=False, use_monitor=True)
async def poller(timer: func.TimerRequest) -> None:
    await handlers.poll(timer)


@app.queue_trigger(arg_name="message", queue_name="%CONTENT_QUEUE%", connection="AzureWebJobsStorage")
async def processor(message: func.QueueMessage) -> None:
    await handlers.process(message)
