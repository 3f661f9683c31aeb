"""LMDB layout of the queue, in one place, with a version number.

Sub-databases (keys are ASCII queue ids, which sort by arrival):
  info   b"version" -> SCHEMA_VERSION as ASCII
  env    id -> JSON envelope record (model.Envelope.to_record)
  body   id -> message octets, our Received header first

Imports: stdlib, relay.queue.model.
"""

from __future__ import annotations

import json

from relay.queue.model import Envelope

SCHEMA_VERSION = 1
DATABASES = (b"info", b"env", b"body")


def encode_envelope(env: Envelope) -> bytes:
    return json.dumps(env.to_record(), separators=(",", ":"), ensure_ascii=False).encode()


def decode_envelope(raw: bytes) -> Envelope:
    return Envelope.from_record(json.loads(raw))
