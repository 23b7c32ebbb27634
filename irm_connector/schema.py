"""The output columns, read from ``columns.json``: the one list the code, the tests and infra/ share."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["Column", "StreamSchema", "stream_schema", "streams"]

COLUMN_TYPES = frozenset({"string", "int", "long", "real", "boolean", "dynamic", "datetime"})


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    #: The record field it comes from; equal to ``name`` for fields copied as they are.
    source: str = ""
    #: An audit column that holds a record field: the field is then not repeated inside ``Record``.
    promoted: bool = False


@dataclass(frozen=True)
class StreamSchema:
    """One output stream: its key in columns.json (``alerts``, ``audit``, ``health``), its default
    stream name, its table and its columns in order."""

    key: str
    stream: str
    table: str
    columns: tuple[Column, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def promoted(self) -> tuple[Column, ...]:
        """The columns that hold a record field (``source``) taken out of ``Record``."""
        return tuple(c for c in self.columns if c.promoted)

    def copied(self, column_type: str) -> tuple[str, ...]:
        """Columns of ``column_type`` copied from the same-named record field."""
        return tuple(c.name for c in self.columns if c.source == c.name and c.type == column_type)


def _load(raw: dict[str, Any]) -> dict[str, StreamSchema]:
    out: dict[str, StreamSchema] = {}
    for key, spec in raw["streams"].items():
        cols = tuple(
            Column(c["name"], c["type"], c.get("source", ""), bool(c.get("promoted", False))) for c in spec["columns"]
        )
        for col in cols:
            if col.type not in COLUMN_TYPES:
                raise ValueError(f"columns.json: {key}.{col.name} has unknown type {col.type!r}")
        out[key] = StreamSchema(key=key, stream=spec["stream"], table=spec["table"], columns=cols)
    return out


@cache
def streams() -> dict[str, StreamSchema]:
    """All streams of columns.json, by key."""
    text = resources.files(__package__).joinpath("columns.json").read_text(encoding="utf-8")
    return _load(json.loads(text))


def stream_schema(key: str) -> StreamSchema:
    return streams()[key]
