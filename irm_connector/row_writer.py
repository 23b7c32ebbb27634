"""Serializing output rows within Azure Monitor's limits: a value above 64 KB is truncated by the service
(so it is cut here first, and counted: an object or array keeps its shape, a text ends in :data:`CUT_MARK`),
and a row must fit one request of at most 1 MiB.

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

__all__ = ["CUT_MARK", "FIELD_LIMIT", "ROW_LIMIT", "dumps", "serialize_row"]

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
    """What orjson refused, made writable: unpaired surrogates replaced; integers beyond 64 bits written as
    strings, and so NaN and infinities, should one come (the parser keeps them as text, ``blob_parse.std_loads``):
    the standard library would write them as no JSON reader takes them."""
    if isinstance(value, str):
        # U+FFFD, as a byte that is not UTF-8 becomes (blob_parse): "?" would read as a real question mark.
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, float) and not math.isfinite(value):
        return json.dumps(value)  # NaN, Infinity, -Infinity
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
        text = _dumps_deep(value)
    return text.encode("utf-8", "replace").decode("utf-8")


class _Text(str):
    """JSON text already written, waiting on :func:`_dumps_deep`'s stack for its turn."""


def _dumps_deep(value: Any) -> str:
    """JSON text of ``value`` however deep (orjson reads 1,024 levels but writes 255, and the standard library
    writes only as deep as the recursion left to it goes): with a stack of its own, not the interpreter's."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Text):
            out.append(item)
        elif isinstance(item, dict):
            parts: list[Any] = [_Text("{")]
            for number, (key, member) in enumerate(item.items()):
                parts += [_Text(("," if number else "") + json.dumps(str(key)) + ":"), member]
            stack.extend(reversed([*parts, _Text("}")]))
        elif isinstance(item, list):
            parts = [_Text("[")]
            for number, member in enumerate(item):
                parts += [_Text("," if number else ""), member]
            stack.extend(reversed([*parts, _Text("]")]))
        else:
            out.append(json.dumps(item))
    return "".join(out)


#: Ends a text that was cut to fit; as a key, it says how many fields an object lost.
CUT_MARK = "…(cut to fit 64 KB)"
#: How deep :func:`_fit` goes into nested objects before it cuts what lies below as text.
_FIT_DEPTH = 32
#: A member this large is shrunk; smaller ones are dropped whole when space is still wanted.
_SHRINK_AT = 1024
#: Kept free for the marker of what was dropped.
_MARKER_ROOM = 128


def _fit(value: Any, limit: int, depth: int = 0) -> Any:
    """``value`` in at most ``limit`` bytes of JSON, keeping its shape: an object or array stays one (a record
    cut as text would be a string no query can read a field of). The large members are cut down to one cap,
    so several large ones each keep a part; when that is not enough, an array loses its last items and an
    object its largest fields, and a marker says how many."""
    size = len(dumps(value))
    if size <= limit:
        return value
    if not isinstance(value, dict | list) or depth >= _FIT_DEPTH or limit < 256:
        return _cut_text(value if isinstance(value, str) else dumps(value).decode("utf-8"), limit)
    is_dict = isinstance(value, dict)
    members: dict[Any, Any] = dict(value) if is_dict else dict(enumerate(value))
    sizes = {key: len(dumps(member)) for key, member in members.items()}
    room = limit - _MARKER_ROOM - (size - sum(sizes.values()))  # what the members may take: brackets, keys aside
    large = [key for key in sizes if sizes[key] >= _SHRINK_AT]
    small = sum(sizes[key] for key in sizes if sizes[key] < _SHRINK_AT)
    cap = _cap(sorted(sizes[key] for key in large), room - small)
    for key in large:
        if sizes[key] > cap:  # each cut once: a marker inside counts all its container lost
            members[key] = _fit(members[key], cap, depth + 1)
            shrunk = len(dumps(members[key]))
            size, sizes[key] = size - sizes[key] + shrunk, shrunk
    dropped = 0
    order = sorted(sizes, key=lambda k: -sizes[k]) if is_dict else sorted(sizes, reverse=True)
    for gone in order:  # still too large: the largest fields, or an array's last items
        if size + _MARKER_ROOM <= limit:
            break
        size -= sizes.pop(gone) + (len(dumps(gone)) + 2 if is_dict else 1)  # key, colon and comma
        del members[gone]
        dropped += 1
    fitted = _assembled(members, is_dict, dropped)
    return fitted if len(dumps(fitted)) <= limit else _cut_text(dumps(value).decode("utf-8"), limit)


def _cap(large: list[int], room: int) -> int:
    """The largest size each of ``large`` (ascending) may keep so that together they take ``room``; never
    below half of :data:`_SHRINK_AT` (then fields are dropped instead)."""
    taken = 0
    for place, size in enumerate(large):
        if taken + size * (len(large) - place) > room:
            return max((room - taken) // (len(large) - place), _SHRINK_AT // 2)
        taken += size
    return large[-1] if large else 0


def _assembled(members: dict[Any, Any], is_dict: bool, dropped: int) -> Any:
    if is_dict:
        return {**members, CUT_MARK: f"{dropped} fields"} if dropped else members
    items = [members[index] for index in sorted(members)]
    return [*items, f"{dropped} more items {CUT_MARK}"] if dropped else items


def _cut_text(text: str, limit: int) -> str:
    """``text`` cut so that its JSON, marker included, takes at most ``limit`` bytes (escapes counted)."""
    room = max(0, limit - len(dumps(CUT_MARK)))
    cut = _cut(text, room)
    while len(dumps(cut)) > room and cut:  # escapes (``\u0001`` is six bytes of one character)
        cut = _cut(cut, max(0, len(_utf8(cut)) * room // len(dumps(cut)) - 1))
    return cut + CUT_MARK


def _marked_cut(text: str, limit: int) -> str:
    """``text`` as it is when its UTF-8 fits ``limit`` bytes, else cut to fit with :data:`CUT_MARK`, so that
    whoever reads the column sees that it was cut."""
    if len(_utf8(text)) <= limit:
        return text
    return _cut(text, max(0, limit - len(CUT_MARK.encode("utf-8")))) + CUT_MARK


def _cut(text: str, limit: int) -> str:
    return _utf8(text)[:limit].decode("utf-8", "ignore")


def _utf8(text: str) -> bytes:
    """``text`` as it is written: a long text of a blob that orjson refused may still hold an unpaired surrogate,
    written as U+FFFD (three bytes, :func:`_clean`). Measured and cut as ``?``, one byte, such a text escaped the
    64 KB cut, and a cut one read ``?`` where the uncut one reads U+FFFD."""
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return str(_clean(text)).encode("utf-8")


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
            # The service's limit is the text's, not its JSON's: a text long only in escapes stays as it is.
            cut = _marked_cut(value, FIELD_LIMIT) if isinstance(value, str) else _fit(value, FIELD_LIMIT)
            if cut != value:
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
        row[name] = _marked_cut(text, int(len(_utf8(text)) * share))
        sizes[name] = len(dumps(row[name]))
        cut_columns.add(name)
        body = dumps(row)
    for name in cut_columns:
        problems["row over 1 MB cut to fit (column " + name + ")"] += 1
    return body
