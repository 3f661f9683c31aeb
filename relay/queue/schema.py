"""LMDB layout of the queue, in one place, with a version number.

Sub-databases (keys are ASCII queue ids, which sort by arrival):
  info   b"version" -> SCHEMA_VERSION as ASCII
  env    id -> JSON envelope record (model.Envelope.to_record)
  body   id -> message octets, our Received header first
  sched  next_attempt (8 octets, big-endian microseconds) + id -> b"": the schedule,
         so "what is due" is one ordered range scan; held messages have no entry

Imports: stdlib, relay.queue.model.
"""

from __future__ import annotations

import json
import struct

from relay.queue.model import Envelope

SCHEMA_VERSION = 1
DATABASES = (b"info", b"env", b"body", b"sched")


def encode_envelope(env: Envelope) -> bytes:
    return json.dumps(env.to_record(), separators=(",", ":"), ensure_ascii=False).encode()


def decode_envelope(raw: bytes) -> Envelope:
    return Envelope.from_record(json.loads(raw))


def sched_key(next_attempt: float, queue_id: str) -> bytes:
    return struct.pack(">Q", max(0, int(next_attempt * 1_000_000))) + queue_id.encode("latin-1")


def sched_id(key: bytes) -> str:
    return key[8:].decode()
