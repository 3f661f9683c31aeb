"""The compiled hot path, or its pure-Python twin: the only place that chooses.

Without RELAY_PURE_PYTHON=1 the compiled modules (*_c.pyx) are imported and a missing
build is a start-up error, never a quiet fallback (a silent backend switch hides a
slower, differently-tested parser). With RELAY_PURE_PYTHON=1 the readable twins
(*_py.py) are used. IMPLEMENTATION says which ("cython" or "python"); callers log it
and export it on the build-info metric. Type checkers always see the twins.
Imports: stdlib and relay._fast.* only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from relay._fast.spec import (
    FLAG_BARE_CR,
    FLAG_BARE_LF,
    FLAG_LONG_LINE,
    FLAG_NUL,
    FLAG_TOO_BIG,
    HDR_DATE,
    HDR_FROM,
    HDR_MESSAGE_ID,
    MAX_COMMAND_LINE,
    MAX_TEXT_LINE,
    Command,
    CommandSyntaxError,
    FailureKind,
    HeaderSummary,
)

__all__ = [
    "FLAG_BARE_CR",
    "FLAG_BARE_LF",
    "FLAG_LONG_LINE",
    "FLAG_NUL",
    "FLAG_TOO_BIG",
    "HDR_DATE",
    "HDR_FROM",
    "HDR_MESSAGE_ID",
    "IMPLEMENTATION",
    "MAX_COMMAND_LINE",
    "MAX_TEXT_LINE",
    "Command",
    "CommandSyntaxError",
    "DataReader",
    "FailureKind",
    "HeaderSummary",
    "crlf_lines",
    "dot_stuff",
    "parse_command",
    "scan_headers",
]

IMPLEMENTATION: str

if TYPE_CHECKING:
    # yarl's trick: mypy checks every caller against the readable twin.
    from relay._fast.cmdline_py import parse_command
    from relay._fast.data_py import DataReader
    from relay._fast.headers_py import scan_headers
    from relay._fast.outbound_py import crlf_lines, dot_stuff
elif os.environ.get("RELAY_PURE_PYTHON") == "1":
    from relay._fast.cmdline_py import parse_command
    from relay._fast.data_py import DataReader
    from relay._fast.headers_py import scan_headers
    from relay._fast.outbound_py import crlf_lines, dot_stuff

    IMPLEMENTATION = "python"
else:
    try:
        from relay._fast.cmdline_c import parse_command
        from relay._fast.data_c import DataReader
        from relay._fast.headers_c import scan_headers
        from relay._fast.outbound_c import crlf_lines, dot_stuff
    except ImportError as exc:
        raise ImportError(
            "relay._fast: compiled hot path not built; run `make compile` "
            "(or set RELAY_PURE_PYTHON=1)"
        ) from exc

    IMPLEMENTATION = "cython"
