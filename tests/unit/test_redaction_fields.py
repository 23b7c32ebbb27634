"""A token field's value is masked whole, whatever it holds, as JSON writes it at any depth of JSON inside JSON, and
as Python's repr writes a dict: the mask stopped at a comma, a space or an escaped quote, and the rest showed."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from irm_connector.redaction import RedactingFilter

#: Any text, with the characters that end or escape a value well represented.
values = st.text(alphabet=st.one_of(st.sampled_from("\"'\\,;& =:\n\t{}[]"), st.characters()), max_size=60)


def _nest(document: object, depth: int) -> str:
    text = json.dumps(document)
    for _ in range(depth):
        text = json.dumps({"body": text})
    return text


@given(value=values, depth=st.integers(min_value=0, max_value=3))
def test_a_json_field_is_masked_whole_at_any_depth(value: str, depth: int) -> None:
    text = _nest({"password": value, "n": 1}, depth)
    assert RedactingFilter().redact(text) == _nest({"password": "***", "n": 1}, depth)


@given(value=values)
def test_a_field_of_a_dict_s_repr_is_masked_whole(value: str) -> None:
    text = repr({"client_secret": value, "user": "u"})
    quote = repr(value)[0]
    assert RedactingFilter().redact(text) == "{'client_secret': " + quote + "***" + quote + ", 'user': 'u'}"
