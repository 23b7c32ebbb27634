"""What the workspace gives back from the rows the ingestion stand-in stored, for checks against the simulated
tenant's records (the ground truth): the KQL function ``O365Audit``'s whole record, and an alert row's values."""

from __future__ import annotations

import contextlib
import json
from typing import Any, cast

from irm_connector.normalize import extract_upn
from irm_connector.schema import stream_schema

__all__ = ["alert_values", "expected_alert_values", "o365audit_record"]


def o365audit_record(row: dict[str, Any]) -> dict[str, Any]:
    """What the KQL function ``O365Audit`` gives back from an audit row: the promoted columns under their record
    field names (empty ones left out, as ``pack_all(true)`` does), with ``Record``'s own fields winning."""
    record: dict[str, Any] = {}
    for column in stream_schema("audit").promoted():
        value = row.get(column.name)
        if value is None or value == "":
            continue
        record[column.source] = value.removesuffix("Z") if column.source == "CreationTime" else value
    return record | cast("dict[str, Any]", row.get("Record") or {})


def _record_columns() -> list[tuple[str, str, str]]:
    """(column, record field, type) of the alert columns read from one record field each."""
    return [(c.name, c.source, c.type) for c in stream_schema("alerts").columns if c.source.isidentifier()]


def alert_values(row: dict[str, Any]) -> dict[str, Any]:
    """The values an alert row holds that come from its record: the columns read from one record field each,
    and the user the row found in ``Data``. Empty and absent read alike, as in KQL."""
    values = {name: "" if row.get(name) is None else row.get(name) for name, _, _ in _record_columns()}
    return values | {"UserPrincipalName": row.get("UserPrincipalName") or ""}


def expected_alert_values(record: dict[str, Any]) -> dict[str, Any]:
    """What :func:`alert_values` should read from the row of ``record`` when nothing was lost or changed on the
    way: the API's times marked UTC, ``Data`` parsed when it is JSON."""
    values: dict[str, Any] = {}
    for name, source, column_type in _record_columns():
        value = record.get(source)
        if isinstance(value, str) and column_type == "datetime":
            value += "Z"  # the API's times carry no zone; the row's are UTC, marked so
        elif isinstance(value, str) and column_type == "dynamic":
            with contextlib.suppress(ValueError):  # a JSON text is stored parsed; any other text as it is
                value = json.loads(value)
        values[name] = "" if value is None else value
    upn = extract_upn(values.get("Data"))
    return values | {"UserPrincipalName": upn}
