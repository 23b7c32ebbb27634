"""Content blob bodies to records: a blob is a JSON array of audit records, parsed whole when small and a
segment at a time when large, so a large blob's records never all exist as Python objects at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import orjson

from .errors import BadContentError

__all__ = ["SEGMENT_BYTES", "iter_blob", "parse_blob"]


def parse_blob(body: bytes | bytearray) -> list[Any]:
    """Parse a blob body; raises :class:`BadContentError` when it is not a JSON array."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson refuses unpaired surrogates that the service can emit inside \\u escapes;
        # the standard library reads them and the writer below replaces them.
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as exc:
            raise BadContentError(f"content is not JSON ({type(exc).__name__} at byte {_pos(exc)})") from None
    if not isinstance(data, list):
        raise BadContentError(f"content is JSON but not an array (a {type(data).__name__})")
    return data


#: A blob larger than twice this is parsed a segment of about this size at a time (see :func:`iter_blob`).
SEGMENT_BYTES = 4 * 1024 * 1024
#: Where one record may end and the next begin: ``}`` ``,`` ``{`` at the array's top level (or not: see below).
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_MAX_TRIES = 16


def iter_blob(body: bytes | bytearray) -> Iterator[Any]:
    """The records of a blob, parsed a segment at a time so a large blob's records never all exist at once
    (a 50 MB blob is about 120,000 records: some 300 MB as Python objects). Same result and errors as
    :func:`parse_blob`, which small blobs go straight to; an error may surface after earlier records.

    A segment runs from the start of one record to a ``},{`` about :data:`SEGMENT_BYTES` further on. Such a
    place can also lie inside a string or a nested array; then ``[`` + segment + ``]`` is not valid JSON
    (an open string, or brackets left open), so the parse fails and the next candidate is tried. A segment
    that parses ends exactly where a top-level record does."""
    if len(body) <= 2 * SEGMENT_BYTES:
        yield from parse_blob(body)
        return
    start = len(body) - len(body.lstrip())
    if body[start : start + 1] != b"[":
        yield from parse_blob(body)  # raises with the usual message
        return
    pos = start + 1
    while len(body) - pos > 2 * SEGMENT_BYTES:
        search_from = pos + SEGMENT_BYTES
        parsed: list[Any] | None = None
        for _ in range(_MAX_TRIES):
            match = _BOUNDARY.search(body, search_from)
            if match is None:
                break
            try:
                parsed = orjson.loads(b"[" + body[pos : match.start() + 1] + b"]")
            except orjson.JSONDecodeError:
                search_from = match.start() + 1
                continue
            pos = match.end() - 1  # the next record's "{"
            break
        if parsed is None:
            break  # no boundary that parses (or text orjson refuses): the rest in one piece
        yield from parsed
        del parsed
    yield from parse_blob(b"[" + body[pos:])


def _pos(exc: BaseException) -> int:
    return int(getattr(exc, "pos", -1) or -1)
