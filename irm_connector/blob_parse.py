"""Content blob bodies to records: a blob is a JSON array of audit records, parsed whole when small and a
segment at a time when large, so a large blob's records never all exist as Python objects at once.

What the fast parser refuses is read more slowly rather than lost: text with unpaired surrogates, or with control
characters left unescaped inside strings, by the standard library's reader, and a record nested deeper than any
parser here goes (orjson stops at 1,024 levels, the standard library at its recursion limit) record by record, its
part below :data:`MAX_DEPTH` levels kept as JSON text and counted. A body that is not a JSON array says whether it
stops early (cut short: another download may bring it whole) or is whole but wrong (:attr:`BadContentError.cut`).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson

from .errors import BadContentError

__all__ = [
    "CONTROL_REPAIR", "DEEP_REPAIR", "MAX_DEPTH", "SEGMENT_BYTES", "UTF8_REPAIR",
    "iter_blob", "parse_blob", "std_loads",
]  # fmt: skip

#: A record nested deeper than a parser goes keeps what lies below this many levels as JSON text (the row
#: writer flattens values nested about this deep too, so the row is written as it is).
MAX_DEPTH = 200
#: The repair count's name, in the blob's "needed repair" line.
DEEP_REPAIR = f"record nested deeper than {MAX_DEPTH} levels (the deeper part kept as JSON text)"
#: The same, for a blob with bytes that are not UTF-8 (each such byte becomes U+FFFD).
UTF8_REPAIR = "bytes that are not UTF-8 replaced with U+FFFD"
#: The same, for a blob with control characters left unescaped inside strings (JSON wants them escaped).
CONTROL_REPAIR = "control characters unescaped in strings (read as they are)"
#: Any control character (whitespace between tokens too): a body without one cannot be JSON but for them.
_CONTROL = re.compile(rb"[\x00-\x1f]")


def parse_blob(body: bytes | bytearray, problems: Counter[str] | None = None) -> list[Any]:
    """Parse a blob body, counting repairs in ``problems``; raises :class:`BadContentError` when it is not
    a JSON array."""
    body = _without_bom(body)
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = _parse_slowly(bytes(body), problems)
    if not isinstance(data, list):
        raise BadContentError(f"content is JSON but not an array (a {type(data).__name__})")
    return data


#: A blob larger than twice this is parsed a segment of about this size at a time (see :func:`iter_blob`).
SEGMENT_BYTES = 4 * 1024 * 1024
#: Where one record may end and the next begin: ``}`` ``,`` ``{`` at the array's top level (or not: see below).
_BOUNDARY = re.compile(rb"\}\s*,\s*\{")
_MAX_TRIES = 16


def iter_blob(
    body: bytes | bytearray, problems: Counter[str] | None = None, *, segment_bytes: int = SEGMENT_BYTES
) -> Iterator[Any]:
    """The records of a blob, parsed a segment at a time so a large blob's records never all exist at once
    (a 50 MB blob is about 120,000 records: some 300 MB as Python objects). Same result and errors as
    :func:`parse_blob`, which small blobs go straight to; an error may surface after earlier records.

    A segment runs from the start of one record to a ``},{`` about ``segment_bytes`` further on. Such a
    place can also lie inside a string or a nested array; then ``[`` + segment + ``]`` is not valid JSON
    (an open string, or brackets left open), so the parse fails and the next candidate is tried. A segment
    that parses ends exactly where a top-level record does."""
    body = _without_bom(body)
    if len(body) <= 2 * segment_bytes:
        yield from parse_blob(body, problems)
        return
    start = len(body) - len(body.lstrip())
    if body[start : start + 1] != b"[":
        yield from parse_blob(body, problems)  # raises with the usual message
        return
    pos = start + 1
    records_before = 0
    while len(body) - pos > 2 * segment_bytes:
        search_from = pos + segment_bytes
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
            # No candidate parsed: text orjson refuses (read by the slow reader, repaired) or one record with more
            # nested "},{" than tries. Parsing the rest in one piece would hold all its records at once, so the
            # boundary is found exactly by matching brackets from this record's start, and only that segment is
            # read slowly. Text wrong in some other way is left to the whole rest, which says what is wrong.
            comma = _top_level_comma(body, pos, search_from)
            if comma is None:
                break
            try:
                parsed = _parse_piece(b"[" + body[pos:comma] + b"]", problems)
            except BadContentError:
                break
            pos = comma + 1
        records_before += len(parsed)
        yield from parsed
        del parsed
    try:
        rest = _parse_piece(b"[" + body[pos:], problems)
    except BadContentError as exc:  # its place told in the blob, not in the piece ("[" + the rest)
        raise exc.moved(bytes_before=pos - 1, records_before=records_before) from None
    yield from rest


def _top_level_comma(body: bytes | bytearray, start: int, after: int) -> int | None:
    """The first comma between two of the array's elements at or after ``after``, walking from ``start`` (where an
    element begins); None when the array ends first or the brackets do not match."""
    closers: list[int] = []
    for match in _TOKEN.finditer(body, start):
        at = match.start()
        char = body[at]
        if char == _QUOTE:
            if match.end() - at == 1:
                return None  # a string that never ends
        elif char in _CLOSER:
            closers.append(_CLOSER[char])
        elif char == _COMMA:
            if not closers and at >= after:
                return at
        elif not closers or closers.pop() != char:
            return None  # the array's own end, or a misplaced bracket
    return None


def _parse_piece(piece: bytes, problems: Counter[str] | None) -> list[Any]:
    """:func:`parse_blob` of a piece of a blob, its repairs counted into the blob's as when the blob is read in one
    piece: each record too deep, and the repairs of the whole text once a blob."""
    found: Counter[str] = Counter()
    records = parse_blob(piece, found)
    if problems is not None:
        for kind, count in found.items():
            problems[kind] = problems[kind] + count if kind == DEEP_REPAIR else max(problems[kind], count)
    return records


def _without_bom(body: bytes | bytearray) -> bytes | bytearray:
    """``body`` without a UTF-8 byte order mark. orjson refuses one and the standard library skips it, so a blob
    that began with one was read only as long as that parser could: not record by record (a record nested too
    deep cost the whole blob), not a segment at a time, and a body cut short read as a wrong one."""
    return body[3:] if body[:3] == b"\xef\xbb\xbf" else body


def std_loads(text: str | bytes, *, strict: bool = True) -> Any:
    """The standard library's reading of what orjson refused. It also reads ``NaN`` and the infinities, which are
    not JSON, and a number beyond a double (``1e400``) as an infinity; no writer here can write those as numbers.
    They are kept as the text they came as, so that a record gives back one spelling in every column (``Record``,
    a promoted column, a row that needed the slow writer), not null in one and "nan" in another."""
    return json.loads(text, strict=strict, parse_constant=str, parse_float=_finite_or_text)


def _finite_or_text(text: str) -> float | str:
    number = float(text)
    return number if math.isfinite(number) else text


def _parse_slowly(body: bytes, problems: Counter[str] | None) -> Any:
    """What orjson refused: unpaired surrogates (the service can emit them inside ``\\u`` escapes; the
    standard library reads them and the row writer replaces them), bytes that are not UTF-8, nesting too
    deep, or no JSON at all."""
    try:
        return std_loads(body)
    except RecursionError:
        return _record_by_record(body, problems)
    except UnicodeDecodeError:
        # One bad byte must not cost the blob's other records: it becomes U+FFFD, as any text reader would
        # show it, and the text (valid UTF-8 now) goes through the rest of this function's repairs.
        data = _parse_slowly(body.decode("utf-8", errors="replace").encode(), problems)
        if problems is not None:
            problems[UTF8_REPAIR] += 1
        return data
    except ValueError as exc:  # JSONDecodeError
        if _CONTROL.search(body) is not None:
            # A body not JSON for another reason fails this too, and is refused below.
            try:
                return _with_raw_controls(body, problems)
            except RecursionError:
                return _record_by_record(body, problems)
            except ValueError:
                pass
        if body.lstrip()[:1] == b"[":
            _elements(body)  # raises if the array stops early or its brackets do not match
        raise BadContentError(f"content is not JSON: {type(exc).__name__}", byte=_pos(exc, body)) from None


def _record_by_record(body: bytes, problems: Counter[str] | None) -> list[Any]:
    """A body too deep to parse whole, one record at a time: only a record too deep itself is repaired."""
    records: list[Any] = []
    for number, element in enumerate(_elements(body), 1):
        try:
            records.append(_parse_one(element, number, problems))
        except RecursionError:
            records.append(_parse_one(_shallow(element), number, problems))
            if problems is not None:
                problems[DEEP_REPAIR] += 1
    return records


def _parse_one(element: bytes, number: int, problems: Counter[str] | None) -> Any:
    try:
        return orjson.loads(element)
    except orjson.JSONDecodeError:
        pass
    try:
        return std_loads(element)  # unpaired surrogates, as above; RecursionError goes to the caller
    except ValueError as exc:
        try:
            return _with_raw_controls(element, problems)
        except ValueError:
            raise BadContentError(f"content is not JSON: {type(exc).__name__}", record=number) from None


def _with_raw_controls(text: bytes, problems: Counter[str] | None) -> Any:
    """``text`` with control characters left unescaped inside its strings: a raw tab or newline costs the strict
    parsers the whole blob; read as it is, the value is written escaped, and the repair counted. Raises
    :class:`ValueError` when it is not JSON for another reason."""
    data = std_loads(text, strict=False)
    if problems is not None:
        problems[CONTROL_REPAIR] += 1
    return data


#: A JSON string (skipped whole), or one structural character. A lone quote is a string that never ends.
_TOKEN = re.compile(rb'"(?:[^"\\]++|\\.)*+"|[\[\]{},"]', re.DOTALL)
_CLOSER = {ord("["): ord("]"), ord("{"): ord("}")}
_QUOTE, _COMMA = ord('"'), ord(",")


def _elements(body: bytes) -> list[bytes]:
    """The top-level array's elements as bytes, found without parsing them: strings are skipped and
    brackets matched, so nesting depth costs nothing. Raises :class:`BadContentError`, with ``cut`` when the
    text ends inside a string or an open bracket (a transfer cut short), without when it is whole but wrong."""
    start = len(body) - len(body.lstrip())
    if body[start : start + 1] != b"[":
        raise BadContentError("content is not a JSON array (it does not start with '[')")
    closers: list[int] = []
    elements: list[bytes] = []
    begin = start + 1
    for match in _TOKEN.finditer(body, start):
        at = match.start()
        char = body[at]
        if char == _QUOTE:
            if match.end() - at == 1:
                break  # a string that never ends
            continue
        if char in _CLOSER:
            closers.append(_CLOSER[char])
            continue
        if char == _COMMA:
            if len(closers) == 1:
                elements.append(body[begin:at])
                begin = at + 1
            continue
        if not closers or closers.pop() != char:
            raise BadContentError(f"content is not JSON: a misplaced {chr(char)!r}", byte=at)
        if not closers:
            if elements or body[begin:at].strip():
                elements.append(body[begin:at])
            if body[at + 1 :].strip():
                raise BadContentError("content is not JSON: more text after the array", byte=at + 1)
            return elements
    raise BadContentError("content stops before its JSON array is complete (cut short)", cut=True)


def _shallow(element: bytes) -> bytes:
    """``element`` (one record, brackets already matched) with each value nested deeper than
    :data:`MAX_DEPTH` levels replaced by its JSON text as a string."""
    parts: list[bytes] = []
    depth = 0
    copied = 0
    deep_from = 0
    for match in _TOKEN.finditer(element):
        at = match.start()
        char = element[at]
        if char in _CLOSER:
            depth += 1
            if depth == MAX_DEPTH + 1:
                deep_from = at
        elif char != _QUOTE and char != _COMMA:
            if depth == MAX_DEPTH + 1:
                deep = element[deep_from : at + 1].decode("utf-8", "replace")
                parts += [element[copied:deep_from], orjson.dumps(deep)]
                copied = at + 1
            depth -= 1
    parts.append(element[copied:])
    return b"".join(parts)


def _pos(exc: BaseException, body: bytes) -> int | None:
    """Where in ``body`` the standard library's parser stopped, in bytes (its own count is in characters)."""
    position = getattr(exc, "pos", None)
    if not isinstance(position, int):
        return None
    return len(body.decode("utf-8", "replace")[:position].encode())
