"""The packed set of sent record keys that each process caches per partition: it must answer exactly as a set of
the same keys would, since a key it wrongly holds is a record never sent, and one it wrongly misses is sent twice."""

from __future__ import annotations

import hashlib
import os
import random

from hypothesis import given
from hypothesis import strategies as st

from irm_connector.state.partitions import SentKeys, _Journal
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


@given(st.lists(st.tuples(st.integers(0, 2), st.lists(keys16, max_size=30)), max_size=20), st.data())
def test_the_journal_gives_every_key_added_after_a_count(adds: list[tuple[int, list[bytes]]], data: st.DataObject) -> None:
    # A claim's read-back asks only these: a key added after its first read and missing here is sent twice.
    journal = _Journal(limit=10**6)
    sets = [SentKeys() for _ in range(3)]
    history: list[tuple[int, int, list[bytes]]] = []  # (set, its count before, keys)
    for which, keys in adds:
        history.append((which, len(sets[which]), keys))
        journal.add(sets[which], keys)
    which = data.draw(st.integers(0, 2))
    counts = sorted({before for w, before, _ in history if w == which} | {len(sets[which])})
    count = data.draw(st.sampled_from(counts))
    since = journal.since(sets[which], count)
    assert since is not None
    expected = [k for w, before, keys in history if w == which and before >= count for k in keys]
    assert sorted(k for batch in since for k in batch) == sorted(expected)


def test_the_journal_says_when_it_no_longer_knows() -> None:
    journal = _Journal(limit=10)
    first, other = SentKeys(), SentKeys()
    journal.add(first, [os.urandom(DIGEST) for _ in range(8)])
    journal.add(other, others := [os.urandom(DIGEST) for _ in range(4)])
    journal.add(first, newer := [os.urandom(DIGEST) for _ in range(6)])  # 18 keys: the oldest 8 go
    assert journal.since(first, 0) is None  # its first batch is forgotten: the caller asks the set instead
    assert journal.since(first, 8) == [newer]
    assert journal.since(first, 14) == []
    assert journal.since(other, 0) == [others]
    journal.add(first, [os.urandom(DIGEST) for _ in range(6)])
    assert journal.since(other, 0) is None
    first.update([os.urandom(DIGEST)])  # not through the journal: it cannot answer for what came since
    assert journal.since(first, 8) is None


@given(st.one_of(st.text(), st.builds("\udc80".join, st.lists(st.text(), min_size=2, max_size=3))))
def test_a_record_key_is_what_earlier_versions_stored(record_id: str) -> None:
    # Stored keys outlive upgrades: a key computed differently would send every record of the day again. Lone
    # surrogates included: JSON allows them in an Id.
    assert digest(record_id) == hashlib.blake2b(record_id.encode("utf-8", "replace"), digest_size=16).digest()
