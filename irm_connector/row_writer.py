"""Serializing output rows within Azure Monitor's limits: a value above 64 KB is truncated by the service
(so it is cut here first, and counted), and a row must fit one request of at most 1 MiB.

Rows are serialized once, with orjson, so the ingestion step only packs bytes. What orjson refuses
(unpaired surrogates, nesting beyond its limit, integers past 64 bits) is made writable and counted.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any

import orjson

from .ingestion import REQUEST_LIMIT

__all__ = ["FIELD_LIMIT", "ROW_LIMIT", "dumps", "serialize_row"]

#: Azure Monitor truncates a value above 64 KB; cap below it, leaving room for JSON escaping.
FIELD_LIMIT = 64 * 1024 - 256
#: A row must fit in one request with room for the array around it.
ROW_LIMIT = REQUEST_LIMIT - 8192


def dumps(value: Any, *, sort: bool = False) -> bytes:
    """Compact JSON of ``value``; what orjson refuses is written by the standard library instead."""
    option = orjson.OPT_SORT_KEYS if sort else 0
    try:
        return orjson.dumps(value, option=option)
    except (TypeError, orjson.JSONEncodeError):
        # Unpaired surrogates (orjson refuses them) or nesting beyond orjson's limit.
        return json.dumps(_clean(value), sort_keys=sort, ensure_ascii=False).encode("utf-8", "replace")


def _clean(value: Any, depth: int = 0) -> Any:
    """What orjson refused, made writable: unpaired surrogates replaced; NaN, infinities and integers
    beyond 64 bits (which the standard library's reader lets through) written as strings."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)
    if depth > 200:
        return _dumps_flat(value)
    if isinstance(value, dict):
        return {_clean(k, depth + 1): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v, depth + 1) for v in value]
    return value


def _dumps_flat(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except RecursionError:
        text = repr(type(value))
    return text.encode("utf-8", "replace").decode("utf-8")


def _cut(text: str, limit: int) -> str:
    # "replace": a long text of a blob that orjson refused may still hold an unpaired surrogate.
    return text.encode("utf-8", "replace")[:limit].decode("utf-8", "ignore")


def serialize_row(row: dict[str, Any], problems: Counter[str]) -> bytes:
    """The row as compact JSON, each value under 64 KB and the whole under one request; cuts are counted."""
    try:
        body = orjson.dumps(row)
    except (TypeError, orjson.JSONEncodeError):
        problems["text that is not valid Unicode, or nesting too deep, rewritten"] += 1
        body = dumps(row)
    if len(body) <= FIELD_LIMIT:
        # No field of a row this small can pass the per-value limit: the common, fast path. The copy is
        # exactly the row's size: orjson's own bytes object keeps the block it grew into (~8 KB for a 1 KB
        # row), so kept as is, a 50 MB blob's 120,000 audit rows held about 1 GB instead of 120 MB.
        return memoryview(body).tobytes()
    changed = False
    sizes: dict[str, int] = {}
    for name, value in row.items():
        size = len(dumps(value))
        if size > FIELD_LIMIT:
            cut = _cut(value if isinstance(value, str) else dumps(value).decode("utf-8"), FIELD_LIMIT)
            if cut != value:  # a text long only in JSON's escapes is under the limit as it is
                row[name], size, changed = cut, len(dumps(cut)), True
                problems["value over 64 KB cut to fit (column " + name + ")"] += 1
        sizes[name] = size
    body = dumps(row) if changed else body
    cut_columns: set[str] = set()
    while len(body) > ROW_LIMIT:
        name = max(sizes, key=lambda n: sizes[n])
        value = row[name]
        text = value if isinstance(value, str) else dumps(value).decode("utf-8")
        # The sizes are JSON's, escapes included (``\u0001`` is six bytes of one character): the text keeps the
        # share of itself that its JSON may keep, so that it loses what the row must and not several times that.
        share = max(0, sizes[name] - (len(body) - ROW_LIMIT) - 64) / max(sizes[name], 1)
        row[name] = _cut(text, int(len(text.encode("utf-8", "replace")) * share))
        sizes[name] = len(dumps(row[name]))
        cut_columns.add(name)
        body = dumps(row)
    for name in cut_columns:
        problems["row over 1 MB cut to fit (column " + name + ")"] += 1
    return body
