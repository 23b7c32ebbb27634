"""Record-key shards as the claim protocol stores them: encoding, parsing and ranking, no I/O.

A shard is one entity: the 16-byte digests of up to :data:`SHARD_KEYS` record Ids that one delivery
claimed in one partition, packed into binary properties ``I0``..``I10``, with its state (``S``: pending or
sent), its owner (the delivery), its blob, ``First``: the rank time it keeps across rewrites, and ``K``: a
tag of its keys' version, new with every write of the keys (a shard turned sent in place keeps it, so a reader
that has the pending version's keys need not read them again).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from irm_connector.models import parse_utc

from .slots import Partition

__all__ = [
    "DIGEST",
    "PENDING",
    "SENT",
    "SHARD_KEYS",
    "Shard",
    "digest",
    "digests_of",
    "owner_key",
    "shard_entity",
    "split",
]

DIGEST = 16
_PROPERTY_BYTES = 60_000 - 60_000 % DIGEST
#: 11 x 60,000 bytes: under the 1 MiB entity limit even where binary is counted base64-encoded (Azurite).
_SHARD_PROPERTIES = 11
#: Record keys one shard entity holds; a larger claim takes several shards, each with a rank of its own.
SHARD_KEYS = _SHARD_PROPERTIES * _PROPERTY_BYTES // DIGEST
SENT = "s"
PENDING = "p"
_blake2b = hashlib.blake2b


def owner_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:24]


def digest(record_id: str) -> bytes:
    try:
        data = record_id.encode()  # a claim asks this of every record: the default codec is the fast path
    except UnicodeEncodeError:  # a lone surrogate, which JSON allows
        data = record_id.encode("utf-8", "replace")
    return _blake2b(data, digest_size=DIGEST).digest()


def digests_of(entity: Any) -> list[bytes]:
    """The record keys a shard entity holds."""
    out: list[bytes] = []
    for name, block in entity.items():
        if name.startswith("I") and isinstance(block, bytes | bytearray):
            whole = bytes(block)
            out += [whole[i : i + DIGEST] for i in range(0, len(whole), DIGEST)]
    return out


def split(digests: Sequence[bytes]) -> list[list[bytes]]:
    """``digests`` in runs of at most :data:`SHARD_KEYS`, one per shard entity."""
    return [list(digests[i : i + SHARD_KEYS]) for i in range(0, len(digests), SHARD_KEYS)]


def shard_entity(
    pk: str, row_key: str, *, owner: str, blob: str, digests: Sequence[bytes], sent: bool, first: datetime | None
) -> dict[str, Any]:
    if len(digests) > SHARD_KEYS:
        raise ValueError(f"a shard holds at most {SHARD_KEYS} keys, not {len(digests)}")
    packed = b"".join(digests)
    entity: dict[str, Any] = {
        "PartitionKey": pk,
        "RowKey": row_key,
        "Owner": owner,
        "Blob": blob,
        "S": SENT if sent else PENDING,
        "K": secrets.token_hex(6),
    }
    if first is not None:
        entity["First"] = first.isoformat()
    for k in range(0, len(packed), _PROPERTY_BYTES):
        entity[f"I{k // _PROPERTY_BYTES}"] = packed[k : k + _PROPERTY_BYTES]
    return entity


@dataclass(frozen=True)
class Shard:
    """A pending shard as read."""

    part: Partition
    row_key: str
    owner: str
    blob: str
    #: (when its records were first claimed, by the service's clock; its row key): the earliest claim wins.
    rank: tuple[datetime, str]
    ids: frozenset[bytes]
    #: the service's Timestamp of this version: the claim lives until ``stamp + ttl``
    stamp: datetime
    #: the tag of its keys' version (``K``; empty if written without one)
    keys_tag: str = ""

    @classmethod
    def parse(cls, part: Partition, entity: Any, stamp: datetime) -> Shard:
        row_key = str(entity["RowKey"])
        first = parse_utc(entity.get("First")) or stamp
        return cls(
            part=part,
            row_key=row_key,
            owner=str(entity.get("Owner", "")),
            blob=str(entity.get("Blob", "")),
            rank=(first, row_key),
            ids=frozenset(digests_of(entity)),
            stamp=stamp,
            keys_tag=str(entity.get("K") or ""),
        )

    def live(self, server_now: datetime, ttl: timedelta) -> bool:
        """Whether the claim still holds at ``server_now`` (the storage service's time, as is ``stamp``)."""
        return server_now <= self.stamp + ttl
