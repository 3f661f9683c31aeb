# cython: language_level=3
"""parse_command, compiled. Behaviour: see relay/_fast/cmdline_py.py (the specification).

C-level notes only here. The line is read through a pointer into the caller's bytes
object, which the argument reference keeps alive for the call. Result fields are new
bytes objects copied from spans of it; upper-cased spans are written into a bytes
object allocated uninitialised (never a copy of p[0:n], which for n <= 1 is CPython's
shared single-octet singleton) before anyone else can see it.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from libc.string cimport memchr, strlen

from relay._fast.spec import Command, CommandSyntaxError, FailureKind

__all__ = ["parse_command"]

cdef enum:
    SP = 32
    HTAB = 9
    NUL = 0
    LT = 60
    GT = 62
    EQ = 61
    DQUOTE = 34
    BACKSLASH = 92
    COLON = 58
    MAX_VERB = 16

cdef enum Kind:
    K_OK = 0
    K_EMPTY
    K_BAD_VERB
    K_BAD_PATH
    K_BAD_PARAMETER
    K_NUL


cdef inline bint is_letter(unsigned char c) noexcept:
    return (c | 0x20) >= 97 and (c | 0x20) <= 122


cdef inline bint is_alnum(unsigned char c) noexcept:
    return is_letter(c) or (c >= 48 and c <= 57)


cdef inline unsigned char upper(unsigned char c) noexcept:
    return c - 32 if c >= 97 and c <= 122 else c


cdef bytes upper_span(const unsigned char *p, Py_ssize_t n):
    # Never PyBytes_FromStringAndSize(p, n) and then write: for n <= 1 CPython returns
    # its process-wide shared singleton (b"v" is one object), and upper-casing that in
    # place turns every b"v" in the process into b"V". With v == NULL it allocates a
    # new object for any n >= 1; n == 0 (the shared b"") is never written.
    cdef bytes out = PyBytes_FromStringAndSize(NULL, n)
    cdef unsigned char *q = <unsigned char *>PyBytes_AS_STRING(out)
    cdef Py_ssize_t i
    for i in range(n):
        q[i] = upper(p[i])
    return out


cdef object fail(Kind kind):
    if kind == K_EMPTY:
        return CommandSyntaxError(FailureKind.EMPTY)
    if kind == K_BAD_VERB:
        return CommandSyntaxError(FailureKind.BAD_VERB)
    if kind == K_BAD_PATH:
        return CommandSyntaxError(FailureKind.BAD_PATH)
    if kind == K_BAD_PARAMETER:
        return CommandSyntaxError(FailureKind.BAD_PARAMETER)
    return CommandSyntaxError(FailureKind.NUL)


cdef bint prefix_ci(const unsigned char *p, Py_ssize_t n, const char *word) noexcept:
    """p[0:n] starts with the upper-case ASCII `word`, ignoring case."""
    cdef Py_ssize_t i = 0
    while word[i]:
        if i >= n or upper(p[i]) != <unsigned char>word[i]:
            return False
        i += 1
    return True


# Every index below is checked against n (the stripped length, <= len(line)) before
# use, so boundscheck/wraparound would only repeat those checks.
@cython.boundscheck(False)
@cython.wraparound(False)
def parse_command(bytes line not None):
    """parse_command(line: bytes) -> Command; see relay/_fast/cmdline_py.py."""
    cdef const unsigned char *s = <const unsigned char *>PyBytes_AS_STRING(line)
    cdef Py_ssize_t n = len(line)
    cdef Py_ssize_t i, verb_end, rest
    cdef bytes verb
    if memchr(s, NUL, n) != NULL:
        raise fail(K_NUL)
    while n > 0 and (s[n - 1] == SP or s[n - 1] == HTAB):
        n -= 1
    if n == 0:
        raise fail(K_EMPTY)
    verb_end = 0
    while verb_end < n and s[verb_end] != SP:
        verb_end += 1
    if verb_end > MAX_VERB or not is_letter(s[0]):
        raise fail(K_BAD_VERB)
    for i in range(1, verb_end):
        if not is_alnum(s[i]):
            raise fail(K_BAD_VERB)
    verb = upper_span(s, verb_end)
    rest = verb_end
    while rest < n and s[rest] == SP:
        rest += 1
    if verb == b"MAIL":
        return path_command(verb, s, n, verb_end, rest, b"FROM:")
    if verb == b"RCPT":
        return path_command(verb, s, n, verb_end, rest, b"TO:")
    return Command(verb, None, (), PyBytes_FromStringAndSize(<const char *>(s + rest), n - rest))


@cython.boundscheck(False)
@cython.wraparound(False)
cdef object path_command(bytes verb, const unsigned char *s, Py_ssize_t n,
                         Py_ssize_t verb_end, Py_ssize_t i, const char *prefix):
    cdef Py_ssize_t plen = <Py_ssize_t>strlen(prefix)
    cdef Py_ssize_t start, j, k, eq
    cdef bint quoted = False
    cdef list params
    if verb_end == n or not prefix_ci(s + i, n - i, prefix):
        raise fail(K_BAD_PATH)
    i += plen
    while i < n and s[i] == SP:
        i += 1
    if i >= n or s[i] != LT:
        raise fail(K_BAD_PATH)
    start = i + 1
    j = start
    while j < n:
        if quoted:
            if s[j] == BACKSLASH:
                j += 2
                continue
            if s[j] == DQUOTE:
                quoted = False
        elif s[j] == DQUOTE:
            quoted = True
        elif s[j] == GT:
            break
        j += 1
    if j >= n:
        raise fail(K_BAD_PATH)
    path = PyBytes_FromStringAndSize(<const char *>(s + start), j - start)
    j += 1
    if j == n:
        return Command(verb, path, (), b"")
    if s[j] != SP:
        raise fail(K_BAD_PATH)
    params = []
    while True:
        while j < n and s[j] == SP:
            j += 1
        if j >= n:
            break
        # One parameter: [j, k), first "=" at eq (or k).
        k = j
        eq = -1
        while k < n and s[k] != SP:
            if eq < 0 and s[k] == EQ:
                eq = k
            k += 1
        params.append(parameter(s, j, k, eq))
        j = k
    return Command(verb, path, tuple(params), b"")


@cython.boundscheck(False)
@cython.wraparound(False)
cdef tuple parameter(const unsigned char *s, Py_ssize_t j, Py_ssize_t k, Py_ssize_t eq):
    cdef Py_ssize_t kw_end = eq if eq >= 0 else k
    cdef Py_ssize_t m
    cdef unsigned char c
    if kw_end == j or not is_alnum(s[j]):
        raise fail(K_BAD_PARAMETER)
    for m in range(j + 1, kw_end):
        if not (is_alnum(s[m]) or s[m] == 45):
            raise fail(K_BAD_PARAMETER)
    keyword = upper_span(s + j, kw_end - j)
    if eq < 0:
        return (keyword, None)
    if eq + 1 == k:
        raise fail(K_BAD_PARAMETER)
    for m in range(eq + 1, k):
        c = s[m]
        if c < 33 or c == 127 or c == EQ:
            raise fail(K_BAD_PARAMETER)
    return (keyword, PyBytes_FromStringAndSize(<const char *>(s + eq + 1), k - eq - 1))
