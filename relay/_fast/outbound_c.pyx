# cython: language_level=3
"""crlf_lines and dot_stuff, compiled. Behaviour: see relay/_fast/outbound_py.py (the
specification).

C-level notes only here. Mail is nearly always CRLF text already, so the first pass
walks it a line at a time with memchr, checking that the only CR of each line is the
one before its LF and counting lines that start with "."; a body that needs nothing
comes back as itself (crlf_lines) or with the terminator appended by one copy
(dot_stuff), one that needs only dots is copied a line at a time. Anything else (a bare
CR or LF) takes the octet-at-a-time passes. Every result is written straight into a new
bytes object of the exact size.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.string cimport memchr, memcpy

__all__ = ["crlf_lines", "dot_stuff"]

cdef enum:
    CR = 13
    LF = 10
    DOT = 46


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _extra(const unsigned char *s, Py_ssize_t n, bint stuff) noexcept:
    """Octets the rules add to s[0:n], terminator not counted."""
    cdef Py_ssize_t i = 0, extra = 0
    cdef bint line_start = True
    cdef unsigned char c
    while i < n:
        c = s[i]
        if c == CR:
            if i + 1 < n and s[i + 1] == LF:
                i += 1
            else:
                extra += 1
            line_start = True
        elif c == LF:
            extra += 1
            line_start = True
        else:
            if line_start and stuff and c == DOT:
                extra += 1
            line_start = False
        i += 1
    if not line_start:
        extra += 2
    return extra


@cython.boundscheck(False)
@cython.wraparound(False)
cdef Py_ssize_t _write(const unsigned char *s, Py_ssize_t n, unsigned char *out,
                       bint stuff) noexcept:
    """Write the rules' output for s[0:n] to out (sized by _extra); return its length."""
    cdef Py_ssize_t i = 0, o = 0
    cdef bint line_start = True
    cdef unsigned char c
    while i < n:
        c = s[i]
        if c == CR or c == LF:
            if c == CR and i + 1 < n and s[i + 1] == LF:
                i += 1
            out[o] = CR
            out[o + 1] = LF
            o += 2
            line_start = True
        else:
            if line_start and stuff and c == DOT:
                out[o] = DOT
                o += 1
            out[o] = c
            o += 1
            line_start = False
        i += 1
    if not line_start:
        out[o] = CR
        out[o + 1] = LF
        o += 2
    return o


cdef Py_ssize_t _canonical_dots(const unsigned char *s, Py_ssize_t n) noexcept:
    """Lines after the first that start with "." if s[0:n] is CRLF text (every CR is
    followed by LF, every LF preceded by CR, the end may lack CRLF), else -1."""
    cdef Py_ssize_t pos = 0, dots = 0, seg
    cdef const unsigned char *lf
    cdef const unsigned char *cr
    while pos < n:
        seg = n - pos
        lf = <const unsigned char *>memchr(s + pos, LF, seg)
        if lf == NULL:
            return -1 if memchr(s + pos, CR, seg) != NULL else dots
        cr = <const unsigned char *>memchr(s + pos, CR, lf - (s + pos))
        if cr == NULL or cr != lf - 1:
            return -1
        pos = lf - s + 1
        if pos < n and s[pos] == DOT:
            dots += 1
    return dots


cdef Py_ssize_t _copy_stuffed(const unsigned char *s, Py_ssize_t n, unsigned char *out) noexcept:
    """Copy CRLF text s[0:n] to out with a "." before every line that starts with one."""
    cdef Py_ssize_t pos = 0, o = 0, end
    cdef const unsigned char *lf
    while pos < n:
        if s[pos] == DOT:
            out[o] = DOT
            o += 1
        lf = <const unsigned char *>memchr(s + pos, LF, n - pos)
        end = n if lf == NULL else lf - s + 1
        memcpy(out + o, s + pos, end - pos)
        o += end - pos
        pos = end
    return o


cdef bytes _transform(bytes body, bint stuff):
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(body)
    cdef Py_ssize_t tail = 3 if stuff else 0
    cdef Py_ssize_t dots = _canonical_dots(s, n)
    cdef bint unterminated = n > 0 and s[n - 1] != LF
    cdef Py_ssize_t extra
    if dots >= 0:
        if n > 0 and s[0] == DOT:
            dots += 1
        extra = (dots if stuff else 0) + (2 if unterminated else 0)
    else:
        extra = _extra(s, n, stuff)
    if extra == 0 and not stuff:
        return body
    cdef bytes result = PyBytes_FromStringAndSize(NULL, n + extra + tail)
    cdef unsigned char *out = <unsigned char *>PyBytes_AS_STRING(result)
    cdef Py_ssize_t o
    if dots < 0:
        o = _write(s, n, out, stuff)
    else:
        if stuff and dots:
            o = _copy_stuffed(s, n, out)
        else:
            memcpy(out, s, n)
            o = n
        if unterminated:
            out[o] = CR
            out[o + 1] = LF
            o += 2
    if stuff:
        out[o] = DOT
        out[o + 1] = CR
        out[o + 2] = LF
    return result


def crlf_lines(bytes body):
    """`body` with CRLF line ends only, ending in CRLF unless empty."""
    return _transform(body, False)


def dot_stuff(bytes body):
    """The DATA octets for `body`: crlf_lines, dot-stuffed, ending CRLF "." CRLF."""
    return _transform(body, True)
