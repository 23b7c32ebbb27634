"""The packed set of sent record keys that each process caches per partition: it must answer exactly as a set of
the same keys would, since a key it wrongly holds is a record never sent, and one it wrongly misses is sent twice."""

from __future__ import annotations

import hashlib
import os
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from irm_connector.state import partitions
from irm_connector.state.partitions import SentKeys
from irm_connector.state.shards import DIGEST, digest

keys16 = st.binary(min_size=DIGEST, max_size=DIGEST)


@given(st.lists(keys16, max_size=200), st.lists(keys16, max_size=50), st.lists(keys16, max_size=50))
def test_answers_as_a_set_does(first: list[bytes], second: list[bytes], probes: list[bytes]) -> None:
    packed = SentKeys()
    packed.update(first)
    packed.update(second)
    truth = set(first) | set(second)
    for key in [*first, *second, *probes]:
        assert (key in packed) == (key in truth)
    assert packed.intersection([*second, *probes]) == truth & {*second, *probes}


def test_a_match_across_two_keys_is_not_a_key() -> None:
    # Two keys of one group, side by side: the tail of one and the head of the next spell a third key's tail.
    head = b"\x00\x01"
    a, b = head + bytes(range(2, 16)), head + bytes(range(16, 30))
    packed = SentKeys()
    packed.update([a, b])
    straddling = head + a[9:] + b[2:9]
    assert len(straddling) == DIGEST
    assert a in packed and b in packed and straddling not in packed


def test_many_keys_of_record_ids() -> None:
    rng = random.Random(7)
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(50_000)]
    packed = SentKeys()
    packed.update(digest(i) for i in ids[:25_000])
    packed.update(digest(i) for i in ids[25_000:40_000])
    assert len(packed) == 40_000
    assert all(digest(i) in packed for i in ids[:40_000])
    assert not any(digest(i) in packed for i in ids[40_000:])
    assert os.urandom(DIGEST) not in packed and b"short" not in packed


@given(st.lists(st.lists(keys16, max_size=30), max_size=12), st.data())
def test_added_since_gives_every_key_added_after_a_count(batches: list[list[bytes]], data: st.DataObject) -> None:
    # A claim's read-back asks only these: a key added after its first read and missing here is sent twice.
    packed = SentKeys()
    counts = []
    for batch in batches:
        counts.append(len(packed))
        packed.update(batch)
    counts.append(len(packed))
    at = data.draw(st.integers(0, len(counts) - 1))
    since = packed.added_since(counts[at])
    assert since is not None
    assert sorted(k for batch in since for k in batch) == sorted(k for batch in batches[at:] for k in batch)


def test_added_since_says_when_it_no_longer_knows(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partitions, "_JOURNAL_KEYS", 10)
    packed = SentKeys()
    packed.update([os.urandom(DIGEST) for _ in range(8)])
    packed.update(newer := [os.urandom(DIGEST) for _ in range(8)])
    assert packed.added_since(0) is None  # the first batch is forgotten: the caller asks intersection instead
    assert packed.added_since(8) == [newer]
    assert packed.added_since(16) == []


@given(st.one_of(st.text(), st.builds("\udc80".join, st.lists(st.text(), min_size=2, max_size=3))))
def test_a_record_key_is_what_earlier_versions_stored(record_id: str) -> None:
    # Stored keys outlive upgrades: a key computed differently would send every record of the day again. Lone
    # surrogates included: JSON allows them in an Id.
    assert digest(record_id) == hashlib.blake2b(record_id.encode("utf-8", "replace"), digest_size=16).digest()
