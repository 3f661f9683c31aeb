"""parse_command must never write into a bytes object anyone else can see.

CPython shares one bytes object per single octet (and one empty bytes): for n <= 1,
PyBytes_FromStringAndSize(p, n) hands back that process-wide singleton. Upper-casing a
one-letter verb or parameter keyword in place therefore turned b"v" into b"V" for the
whole process (every later 1-octet b"v", e.g. a message body read back from LMDB, read
as b"V"). Each case runs in a fresh interpreter so a failure cannot poison other tests.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from . import CMDLINE_IMPLS

LINES = [b"v", b"v  ", b"x rest", b"MAIL FROM:<a@b> k", b"MAIL FROM:<a@b> k=1", b"RCPT TO:<a@b> q"]

CHECK = """
import sys
from relay._fast import {module} as m
letters = bytes(range(97, 123))
before = [letters[i:i + 1][0] for i in range(26)]  # slices of length 1 are the singletons
for line in {lines!r}:
    m.parse_command(line)
after = [letters[i:i + 1][0] for i in range(26)]
changed = [chr(b) + "->" + chr(a) for b, a in zip(before, after) if a != b]
sys.exit("shared 1-octet bytes changed: " + " ".join(changed) if changed else 0)
"""


@pytest.mark.parametrize("impl", CMDLINE_IMPLS, ids=[name for name, _ in CMDLINE_IMPLS])
def test_one_letter_verbs_and_keywords_leave_shared_bytes_alone(impl: tuple) -> None:
    name, module = impl
    code = CHECK.format(module=module.__name__.rsplit(".", 1)[1], lines=LINES)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("impl", CMDLINE_IMPLS, ids=[name for name, _ in CMDLINE_IMPLS])
def test_one_letter_results_are_upper_case(impl: tuple) -> None:
    _, module = impl
    assert module.parse_command(b"v").verb == b"V"
    assert module.parse_command(b"MAIL FROM:<a@b> k=1").params == ((b"K", b"1"),)
