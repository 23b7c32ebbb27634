"""What the workspace gives back from the rows the ingestion stand-in stored, for checks against the simulated
tenant's records (the ground truth): the KQL function ``O365Audit``'s whole record, and an alert row's values."""

from __future__ import annotations

import contextlib
import json
from typing import Any, cast

from irm_connector.schema import stream_schema

__all__ = ["alert_values", "o365audit_record"]


def o365audit_record(row: dict[str, Any]) -> dict[str, Any]:
    """What the KQL function ``O365Audit`` gives back from an audit row: the promoted columns under their record
    field names (empty ones left out, as ``pack_all(true)`` does), with ``Record``'s own fields winning."""
    record: dict[str, Any] = {}
    for column in stream_schema("audit").promoted():
        value = row.get(column.name)
        if value is None or value == "":
            continue
        record[column.source] = value.removesuffix("Z") if column.source == "CreationTime" else value
    return record | cast("dict[str, Any]", row["Record"])


def alert_values(row: dict[str, Any] | None = None, *, record: dict[str, Any] | None = None) -> dict[str, Any]:
    """The alert columns read from one record field each, as an alert row holds them (``row``) or as the record
    should give them (``record``): the two are equal when nothing was lost or changed on the way. Empty and
    absent read alike, as in KQL."""
    values: dict[str, Any] = {}
    for column in stream_schema("alerts").columns:
        source = column.source
        if not source.isidentifier():  # read from several fields, or from the blob: not one record field
            continue
        value = (row or {}).get(column.name) if record is None else record.get(source)
        if record is not None and isinstance(value, str):
            if column.type == "datetime":
                value += "Z"  # the API's times carry no zone; the row's are UTC, marked so
            elif column.type == "dynamic":
                with contextlib.suppress(ValueError):  # a JSON text is stored parsed; any other text as it is
                    value = json.loads(value)
        values[column.name] = "" if value is None else value
    return values
