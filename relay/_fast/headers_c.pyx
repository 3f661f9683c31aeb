# cython: language_level=3
"""scan_headers, compiled. Behaviour: see relay/_fast/headers_py.py (the specification).

C-level notes only here. The message is read through a pointer into the caller's
bytes object (kept alive by the argument reference for the call); no per-line objects
are created, and field names are compared in place.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING
from libc.string cimport memchr

from relay._fast.spec import HeaderSummary

__all__ = ["HDR_DATE", "HDR_FROM", "HDR_MESSAGE_ID", "scan_headers"]

# Mirrors spec.HDR_*; tests/fast/test_api_parity.py checks the values agree.
cdef enum:
    H_MESSAGE_ID = 1
    H_DATE = 2
    H_FROM = 4

HDR_MESSAGE_ID = H_MESSAGE_ID
HDR_DATE = H_DATE
HDR_FROM = H_FROM

cdef enum:
    SP = 32
    HTAB = 9
    CR = 13
    LF = 10
    COLON = 58


cdef inline bint name_is(const unsigned char *p, Py_ssize_t n, const char *lower) noexcept:
    """p[0:n] equals the lower-case ASCII `lower`, ignoring ASCII case."""
    cdef Py_ssize_t i
    cdef unsigned char c
    for i in range(n):
        if lower[i] == 0:
            return False
        c = p[i]
        if c >= 65 and c <= 90:
            c += 32
        if c != <unsigned char>lower[i]:
            return False
    return lower[n] == 0


# Pointers stay within [s, end); line/name offsets are checked against the line
# end before each read, so boundscheck/wraparound would only repeat those checks.
@cython.boundscheck(False)
@cython.wraparound(False)
def scan_headers(bytes message not None):
    """scan_headers(message: bytes) -> HeaderSummary; see relay/_fast/headers_py.py."""
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(message)
    cdef Py_ssize_t n = len(message)
    cdef const unsigned char *end = s + n
    cdef const unsigned char *p = s
    cdef const unsigned char *eol
    cdef const unsigned char *q
    cdef const unsigned char *line_end
    cdef Py_ssize_t k, m, ll
    cdef Py_ssize_t received = 0
    cdef int flags = 0
    while p < end:
        # Next CRLF at or after p (NULL if none).
        eol = NULL
        q = p
        while q < end:
            q = <const unsigned char *>memchr(q, CR, end - q)
            if q == NULL or q + 1 >= end:
                break
            if q[1] == LF:
                eol = q
                break
            q += 1
        if eol == p:
            return HeaderSummary(p + 2 - s, received, flags)
        line_end = eol if eol != NULL else end
        ll = line_end - p
        if p[0] == SP or p[0] == HTAB:
            if p == s:
                return HeaderSummary(0, received, flags)
        else:
            k = 0
            while k < ll and p[k] >= 33 and p[k] <= 126 and p[k] != COLON:
                k += 1
            m = k
            while m < ll and (p[m] == SP or p[m] == HTAB):
                m += 1
            if k == 0 or m >= ll or p[m] != COLON:
                return HeaderSummary(p - s, received, flags)
            if name_is(p, k, b"received"):
                received += 1
            elif name_is(p, k, b"message-id"):
                flags |= H_MESSAGE_ID
            elif name_is(p, k, b"date"):
                flags |= H_DATE
            elif name_is(p, k, b"from"):
                flags |= H_FROM
        if eol == NULL:
            break
        p = eol + 2
    return HeaderSummary(n, received, flags)
