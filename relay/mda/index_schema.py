"""The index's record layouts (mda/index.py): LMDB keys and values, one schema version.

Sub-databases of the environment: "folders" (folder key -> FOLDER: UIDVALIDITY, UIDNEXT,
HIGHESTMODSEQ, recorded mtimes, last scan, tombstone floor, \\Recent watermark; RFC 3501
§2.3.1.1, §2.3.2, RFC 7162 §3.1.2), "messages" (MSG_KEY -> ENTRY + file name + flags),
"modseq" and "expunged" (MOD_KEY -> empty: live messages and tombstones by MODSEQ),
"headers" (MSG_KEY -> header section), "meta" (schema version, last UIDVALIDITY). Records
of older schemas decode with defaults (decode_folder). Flag sets are interned: views hold
thousands of them, and a mailbox has few distinct ones.

Imports: stdlib, relay.mda.maildir.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from relay.mda import maildir

SCHEMA_VERSION = b"3"
INBOX_KEY = b"INBOX"  # folder keys are Maildir++ directory names (".Work"); INBOX has none

# uidvalidity, uidnext, highestmodseq, new/ and cur/ mtime, last scan, tombstone floor,
# first recent UID
FOLDER = struct.Struct(">IIQqqqQI")
FOLDER_V2 = struct.Struct(">IIQqqqQ")
FOLDER_V1 = struct.Struct(">IIQqq")
ENTRY = struct.Struct(">QQdH")  # modseq, size, internaldate, len(file name)
MSG_KEY = struct.Struct(">II")  # uidvalidity, uid: a folder's messages are one key range
MOD_KEY = struct.Struct(">IQI")  # uidvalidity, modseq, uid: changes since a MODSEQ
UV = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class FolderState:
    uidvalidity: int
    uidnext: int = 1
    highestmodseq: int = 1
    new_mtime: int = -1  # st_mtime_ns of new/ and cur/ as the index reflects them (-1: never)
    cur_mtime: int = -1
    scan_ns: int = 0  # wall clock (ns) of the stat()s of the last full scan
    expunge_floor: int = 0  # tombstones at or below this MODSEQ may have been pruned
    first_recent: int = 1  # UIDs from here on are \Recent for the next session to claim


@dataclass(frozen=True, slots=True)
class Entry:
    """One message as the index knows it; `filename` is its current name in cur/."""

    uid: int
    filename: str
    flags: frozenset[str]
    size: int
    internaldate: float
    modseq: int

    @property
    def base(self) -> str:
        return maildir.split_info(self.filename)[0]


_flag_sets: dict[bytes, frozenset[str]] = {}  # interned: a mailbox has few distinct sets


def flag_set(flags: Iterable[str]) -> frozenset[str]:
    """One shared frozenset per distinct set of flags (memory: views hold thousands)."""
    fs = frozenset(flags)
    raw = "\0".join(sorted(fs)).encode()
    return _intern_flags(raw, fs)


def _intern_flags(raw: bytes, fs: frozenset[str] | None = None) -> frozenset[str]:
    hit = _flag_sets.get(raw)
    if hit is None:
        if fs is None:
            text = raw.decode()
            fs = frozenset(text.split("\0")) if text else frozenset()
        if len(_flag_sets) < 65536:
            _flag_sets[raw] = fs
        hit = fs
    return hit


def encode_entry(e: Entry) -> bytes:
    name = os.fsencode(e.filename)
    return (ENTRY.pack(e.modseq, e.size, e.internaldate, len(name)) + name
            + "\0".join(sorted(e.flags)).encode())


def decode_entry(uid: int, raw: bytes) -> Entry:
    modseq, size, date, n = ENTRY.unpack_from(raw)
    start = ENTRY.size
    return Entry(uid, os.fsdecode(bytes(raw[start:start + n])),
                 _intern_flags(bytes(raw[start + n:])), size, date, modseq)


def decode_folder(raw: bytes) -> FolderState:
    # Older records lack fields: every message they number is taken as no longer recent
    # (their scans had already moved it out of new/).
    if len(raw) == FOLDER_V1.size:  # schema 1: no scan time, no tombstones before now
        uv, uidnext, hms, new_m, cur_m = FOLDER_V1.unpack(raw)
        return FolderState(uv, uidnext, hms, new_m, cur_m, 0, hms, uidnext)
    if len(raw) == FOLDER_V2.size:  # schema 2: no recent watermark
        fields = FOLDER_V2.unpack(raw)
        return FolderState(*fields, fields[1])
    return FolderState(*FOLDER.unpack(raw))

