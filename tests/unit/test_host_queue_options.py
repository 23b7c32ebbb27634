"""The queue settings the worker imitates: host.json's values, and the app settings that override them in Azure."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from irm_connector.cli.queue_trigger import HOST_SETTINGS, OVERRIDE_PREFIX, HostQueueOptions, parse_timespan
from irm_connector.errors import SettingsError

HOST_JSON = Path(__file__).resolve().parents[2] / "host.json"


def test_the_defaults_are_the_values_in_host_json() -> None:
    queues = json.loads(HOST_JSON.read_text(encoding="utf-8"))["extensions"]["queues"]
    # Each option stands for a setting host.json sets: where it sets none, the host's own default applies.
    assert {setting.field for setting in HOST_SETTINGS.values()} == {f.name for f in fields(HostQueueOptions)}
    assert set(HOST_SETTINGS) <= set(queues)
    in_host_json: dict[str, Any] = {setting.field: setting.parse(str(queues[name])) for name, setting in HOST_SETTINGS.items()}
    assert HostQueueOptions() == HostQueueOptions(**in_host_json)
    assert HostQueueOptions.from_environment({}) == HostQueueOptions()


def test_app_settings_override_host_json_as_the_functions_host_reads_them() -> None:
    options = HostQueueOptions.from_environment(
        {
            "AzureFunctionsJobHost__extensions__queues__batchSize": "2",
            "AZUREFUNCTIONSJOBHOST__EXTENSIONS__QUEUES__VISIBILITYTIMEOUT": "00:01:30",  # any case, as in Azure
            "AzureFunctionsJobHost__extensions__queues__maxPollingInterval": "00:00:02",  # not imitated
            "AzureFunctionsJobHost__functionTimeout": "00:01:00",
            "batchSize": "1",
        }
    )
    assert options == HostQueueOptions(batch_size=2, new_batch_threshold=4, max_dequeue_count=5, visibility_timeout=90)
    assert options.concurrency == 6


@pytest.mark.parametrize(
    ("name", "value"),
    [("batchSize", "eight"), ("batchSize", "0"), ("batchSize", "33"), ("maxDequeueCount", "-1"),
     ("visibilityTimeout", "30s"),
     ("visibilityTimeout", "8.00:00:00")],  # Storage refuses more than 7 days
)
def test_a_bad_override_is_a_settings_error_that_names_it(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        HostQueueOptions.from_environment({OVERRIDE_PREFIX + name: value})
    assert raised.value.setting == OVERRIDE_PREFIX + name


def test_every_bad_override_is_named_at_once() -> None:
    """One run names each setting to fix, as the connector's own settings check does, not the first of them."""
    with pytest.raises(SettingsError) as raised:
        HostQueueOptions.from_environment({OVERRIDE_PREFIX + "batchSize": "0", OVERRIDE_PREFIX + "newBatchThreshold": "4",
                                           OVERRIDE_PREFIX + "visibilityTimeout": "abc"})  # fmt: skip
    assert [name for name, _ in raised.value.problems] == [OVERRIDE_PREFIX + "batchSize",
                                                           OVERRIDE_PREFIX + "visibilityTimeout"]  # fmt: skip


def test_a_visibility_timeout_over_storage_s_most_says_the_most_as_it_is_written() -> None:
    with pytest.raises(SettingsError) as raised:
        HostQueueOptions.from_environment({OVERRIDE_PREFIX + "visibilityTimeout": "7.00:00:01"})
    assert "is more than 7.00:00:00 (7 days" in str(raised.value)


def test_timespans_are_read_as_dotnet_writes_them() -> None:
    assert parse_timespan("00:00:30") == 30
    assert parse_timespan("1.02:03:04.5") == 93784.5
    assert parse_timespan("00:05") == 300  # hh:mm
    assert parse_timespan("30") == 30 * 86400  # a number alone is days
    with pytest.raises(ValueError):
        parse_timespan("30s")
