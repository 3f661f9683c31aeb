"""DataReader, pure Python: the readable twin and the specification of data_c.pyx.

Reads the mail data that follows the 354 reply to DATA (RFC 5321 §4.1.1.4), finds its
end, removes dot-stuffing (§4.5.2) and reports what it saw as spec.FLAG_* bits.
Imports: stdlib and relay._fast.spec only. Does no I/O.

Theory of operation
-------------------
The stream is a sequence of lines, each terminated by CRLF. The first line starts at
the first octet fed; after that a line starts only just after a CRLF. A bare LF (not
preceded by CR) or a bare CR (not followed by LF) is ordinary content: it neither ends
a line nor starts one.

* End of data is ONLY a line that consists of exactly "." CRLF, i.e. the sequence
  CRLF "." CRLF, or "." CRLF as the very first line (an empty message). "\\n.\\n",
  "\\r.\\r", "\\r\\n.\\n" and "\\n.\\r\\n" are all content: treating any of them as the
  end lets a client smuggle a second message past a server that disagrees
  (SMTP smuggling, CVE-2023-51764).
* feed() consumes octets up to and including that terminating "." CRLF and returns how
  many octets of its argument it consumed. Octets after the terminator are not
  consumed: they are pipelined commands (RFC 2920) and belong to the caller. Once done,
  feed() returns 0.
* Dot-stuffing (§4.5.2): a line that starts with "." and is not the terminator has
  that first "." removed; the rest of the line, CRLF included, is body.
* The body is the unstuffed octets, including the CRLF that ends the last content
  line; the terminating "." CRLF is not part of it.
* Octets enter the body as soon as their fate is known. Only a line-initial "." and a
  line-initial "." CR are held back (they may yet be the terminator); they are counted
  as consumed but enter the body (minus the dot) only when the next octet shows they
  are not the terminator. Every other octet, a trailing CR included, is body at once.
* size counts the unstuffed body octets so far, and keeps counting past max_size.
* When size would exceed max_size, FLAG_TOO_BIG is set and the body is discarded:
  body() returns b"" from then on, so the reader never holds more than max_size octets.
  Reading continues to the terminator, so the session stays in step: the 552 reply
  (§4.5.3.1.9, RFC 1870) can only be sent after the whole data has been read.
* FLAG_BARE_LF: an LF not immediately preceded by CR. FLAG_BARE_CR: a CR not
  immediately followed by LF; a CR that is the last octet fed so far is pending and is
  judged by the next octet. Bare CR and LF octets are kept in the body as they are.
  FLAG_NUL: a NUL octet in content (§4.5.2 forbids it in text).
* FLAG_LONG_LINE: a line, counted as received (before unstuffing, CRLF included, the
  terminator line too), longer than max_line octets (§4.5.3.1.6). The flag is set as
  soon as a line's count passes max_line, even before its CRLF arrives.
* Everything observable (consumed counts summed, done, size, flags, body) after a given
  prefix of the stream is a function of that prefix alone: it does not depend on how
  the prefix was split into chunks. tests/fast checks this for both twins.
"""

from __future__ import annotations

import operator
import re

from relay._fast.spec import (
    FLAG_BARE_CR,
    FLAG_BARE_LF,
    FLAG_LONG_LINE,
    FLAG_NUL,
    FLAG_TOO_BIG,
    MAX_TEXT_LINE,
)

__all__ = [
    "FLAG_BARE_CR",
    "FLAG_BARE_LF",
    "FLAG_LONG_LINE",
    "FLAG_NUL",
    "FLAG_TOO_BIG",
    "DataReader",
]

_CR = 0x0D
_LF = 0x0A
_DOT = 0x2E
_NUL = 0x00

# Reader states: where in the current line the next octet falls.
_LINE_START = 0  # first octet of a line
_HELD_DOT = 1  # the line so far is "." (held back)
_HELD_DOT_CR = 2  # the line so far is "." CR (held back)
_TEXT = 3  # inside a line; the previous octet was not CR
_TEXT_CR = 4  # inside a line; the previous octet was CR (already in the body)
_DONE = 5  # the terminator has been read

# Octets that need a decision; everything else in a line is copied as is.
_SPECIAL = re.compile(rb"[\r\n\x00]")


class DataReader:
    """Incremental reader for one DATA transaction (see the module docstring).

    Args:
        max_size: largest body, in unstuffed octets, that is kept (>= 0).
        max_line: longest line, in octets as received with CRLF, before
            FLAG_LONG_LINE is set (>= 1; RFC 5321 §4.5.3.1.6 says 1000).

    Raises:
        TypeError: max_size or max_line is not an integer.
        ValueError: max_size < 0 or max_line < 1.
    """

    def __init__(self, max_size: int, max_line: int = MAX_TEXT_LINE) -> None:
        # operator.index: integers only, as the compiled twin's Py_ssize_t fields demand.
        max_size = operator.index(max_size)
        max_line = operator.index(max_line)
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        if max_line < 1:
            raise ValueError("max_line must be >= 1")
        self._max_size = max_size
        self._max_line = max_line
        self._state = _LINE_START
        self._line_len = 0  # octets of the current line as received
        self._size = 0
        self._flags = 0
        self._body = bytearray()

    @property
    def done(self) -> bool:
        """True once the terminating "." CRLF has been consumed."""
        return self._state == _DONE

    @property
    def size(self) -> int:
        """Unstuffed body octets so far (keeps counting past max_size)."""
        return self._size

    @property
    def flags(self) -> int:
        """Bitmask of spec.FLAG_* seen so far."""
        return self._flags

    def body(self) -> bytes:
        """The unstuffed body so far; b"" once FLAG_TOO_BIG is set."""
        return bytes(self._body)

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Consume octets of the stream, up to and including the terminator.

        Args:
            data: the next octets; any C-contiguous bytes-like object.

        Returns:
            How many octets of `data` were consumed: len(data), or fewer if the
            terminator ended inside it (the rest belongs to the caller). 0 once done.

        Raises:
            TypeError: `data` does not support the buffer protocol.
            BufferError: `data` is not C-contiguous.
        """
        if self._state == _DONE:
            return 0
        # Release the views before returning, so the caller may resize a bytearray
        # it just fed (e.g. `del buf[:used]`).
        with memoryview(data) as view:
            if not view.c_contiguous:
                raise BufferError("DataReader.feed: buffer is not C-contiguous")
            with view.cast("B") as octets:
                return self._scan(octets)

    def _scan(self, octets: memoryview) -> int:
        """feed() on a view of unsigned octets."""
        n = len(octets)
        i = 0
        while i < n:
            if self._state == _TEXT:
                # Copy the run of ordinary octets up to the next CR, LF or NUL.
                m = _SPECIAL.search(octets, i)
                j = n if m is None else m.start()
                if j > i:
                    self._count(j - i)
                    self._emit(octets[i:j])
                    i = j
                    continue
            c = octets[i]
            i += 1
            self._count(1)
            if self._step(c):
                return i
        return n

    # -- one octet at a time ---------------------------------------------------------

    def _step(self, c: int) -> bool:
        """Advance the state machine by octet `c`; True when it ends the data."""
        state = self._state
        if state == _LINE_START:
            if c == _DOT:
                # RFC 5321 §4.5.2: a leading dot is either the terminator or stuffing.
                self._state = _HELD_DOT
            else:
                self._content(c, prev_cr=False)
        elif state == _HELD_DOT:
            if c == _CR:
                self._state = _HELD_DOT_CR
            else:
                # §4.5.2: not the terminator, so the leading dot is stuffing: drop it.
                self._content(c, prev_cr=False)
        elif state == _HELD_DOT_CR:
            if c == _LF:
                # §4.1.1.4: CRLF "." CRLF (or "." CRLF first) ends the mail data.
                self._state = _DONE
                return True
            # Not the terminator: drop the stuffed dot; the held CR is body, and bare.
            self._emit(b"\r")
            self._content(c, prev_cr=True)
        elif state == _TEXT_CR:
            self._content(c, prev_cr=True)
        else:  # _TEXT
            self._content(c, prev_cr=False)
        return False

    def _content(self, c: int, prev_cr: bool) -> None:
        """Octet `c` of a line's content; `prev_cr` says the octet before it was CR."""
        if c == _LF:
            if prev_cr:
                # CRLF ends the line; the next octet starts a new one.
                self._emit_octet(c)
                self._line_len = 0
                self._state = _LINE_START
                return
            # A bare LF is content and does not end the line (CVE-2023-51764).
            self._flags |= FLAG_BARE_LF
            self._emit_octet(c)
            self._state = _TEXT
            return
        if prev_cr:
            # The CR before this octet was not followed by LF.
            self._flags |= FLAG_BARE_CR
        if c == _NUL:
            self._flags |= FLAG_NUL
        self._emit_octet(c)
        self._state = _TEXT_CR if c == _CR else _TEXT

    # -- bookkeeping -------------------------------------------------------------------

    def _count(self, n: int) -> None:
        """Count `n` octets as received on the current line (§4.5.3.1.6)."""
        self._line_len += n
        if self._line_len > self._max_line:
            self._flags |= FLAG_LONG_LINE

    def _emit_octet(self, c: int) -> None:
        self._emit(bytes((c,)))

    def _emit(self, octets: bytes | memoryview) -> None:
        """Append body octets, or only count them once the body is too big."""
        self._size += len(octets)
        if self._flags & FLAG_TOO_BIG:
            return
        if self._size > self._max_size:
            # §4.5.3.1.7/.9: keep reading to the end, but stop holding the body.
            self._flags |= FLAG_TOO_BIG
            self._body = bytearray()
            return
        self._body += octets
