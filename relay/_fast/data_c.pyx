# cython: language_level=3
"""DataReader, compiled. Behaviour: see relay/_fast/data_py.py, which is the specification.

C-level notes only here. The caller's buffer is borrowed (Py_buffer) for the length of
one feed() call and never kept. Content is copied in whole spans found with memchr; a
span is split only where a stuffed dot is dropped.

The body is built directly inside a bytes object this reader owns alone (refcount 1),
grown by doubling up to max_size with _PyBytes_Resize and dropped as soon as
FLAG_TOO_BIG is set. Once done, body() shrinks it to size once and returns that very
object, saving a copy of every message; from then on it is shared and immutable,
which holds because nothing appends after done (and __init__ drops it before reuse).
Before done, body() returns a copy, since later feeds keep writing.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.ref cimport PyObject, Py_XDECREF
from libc.string cimport memchr, memcpy

cdef extern from "Python.h":
    # Raw-pointer forms, so the body object's single reference is managed by hand.
    PyObject *new_bytes "PyBytes_FromStringAndSize"(const char *v, Py_ssize_t n) except NULL
    char *bytes_data "PyBytes_AS_STRING"(PyObject *o) noexcept
    # On failure sets *obj to NULL (releasing it) and returns -1 with MemoryError set.
    int _PyBytes_Resize(PyObject **obj, Py_ssize_t n) noexcept

from relay._fast.spec import MAX_TEXT_LINE

__all__ = [
    "FLAG_BARE_CR",
    "FLAG_BARE_LF",
    "FLAG_LONG_LINE",
    "FLAG_NUL",
    "FLAG_TOO_BIG",
    "DataReader",
]

# Mirrors spec.FLAG_*; tests/fast/test_api_parity.py checks the values agree.
cdef enum:
    F_BARE_LF = 1
    F_BARE_CR = 2
    F_LONG_LINE = 4
    F_TOO_BIG = 8
    F_NUL = 16

FLAG_BARE_LF = F_BARE_LF
FLAG_BARE_CR = F_BARE_CR
FLAG_LONG_LINE = F_LONG_LINE
FLAG_TOO_BIG = F_TOO_BIG
FLAG_NUL = F_NUL

# Reader states, as in data_py.py.
cdef enum:
    S_LINE_START = 0
    S_HELD_DOT = 1
    S_HELD_DOT_CR = 2
    S_TEXT = 3
    S_TEXT_CR = 4
    S_DONE = 5

cdef enum:
    INITIAL_CAPACITY = 4096
    NUL = 0
    LF = 10
    CR = 13
    DOT = 46


@cython.auto_pickle(False)
@cython.final
cdef class DataReader:
    """Incremental reader for one DATA transaction (see relay/_fast/data_py.py)."""

    cdef PyObject *_body  # owned bytes, refcount 1 until done; NULL until first octet
    cdef Py_ssize_t _len  # body octets written into _body
    cdef Py_ssize_t _cap  # allocated size of _body
    cdef Py_ssize_t _max_size
    cdef Py_ssize_t _max_line
    cdef Py_ssize_t _size
    cdef Py_ssize_t _line_len
    cdef int _state
    cdef int _flags

    def __cinit__(self):
        self._body = NULL
        self._len = 0
        self._cap = 0

    def __init__(self, max_size, max_line=MAX_TEXT_LINE):
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        if max_line < 1:
            raise ValueError("max_line must be >= 1")
        self._max_size = max_size
        self._max_line = max_line
        self._size = 0
        self._line_len = 0
        self._state = S_LINE_START
        self._flags = 0
        self._drop_body()  # a body handed out by body() must never be written again

    def __dealloc__(self):
        Py_XDECREF(self._body)

    cdef void _drop_body(self) noexcept:
        Py_XDECREF(self._body)
        self._body = NULL
        self._len = self._cap = 0

    @property
    def done(self) -> bool:
        return self._state == S_DONE

    @property
    def size(self) -> int:
        return self._size

    @property
    def flags(self) -> int:
        return self._flags

    def body(self) -> bytes:
        if self._len == 0:
            return b""
        if self._state != S_DONE:
            return PyBytes_FromStringAndSize(bytes_data(self._body), self._len)
        if self._cap != self._len:
            # Shrink once, while we still hold the only reference.
            if _PyBytes_Resize(&self._body, self._len) < 0:
                self._body = NULL
                self._len = self._cap = 0
                raise MemoryError()
            self._cap = self._len
        return <object>self._body

    def feed(self, data) -> int:
        cdef Py_buffer view
        cdef Py_ssize_t used
        if self._state == S_DONE:
            return 0
        # PyBUF_SIMPLE: raw octets of any C-contiguous buffer (BufferError otherwise).
        PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
        try:
            used = self._scan(<const unsigned char *>view.buf, view.len)
        finally:
            PyBuffer_Release(&view)
        return used

    cdef inline void _count(self, Py_ssize_t n) noexcept:
        self._line_len += n
        if self._line_len > self._max_line:
            self._flags |= F_LONG_LINE

    cdef int _emit(self, const unsigned char *p, Py_ssize_t n) except -1:
        cdef Py_ssize_t need, cap
        self._size += n
        if self._flags & F_TOO_BIG:
            return 0
        if self._size > self._max_size:
            self._flags |= F_TOO_BIG
            self._drop_body()
            return 0
        need = self._len + n  # <= max_size, so the buffer never exceeds it
        if need > self._cap:
            cap = self._cap if self._cap else INITIAL_CAPACITY
            while cap < need:
                cap *= 2
            if cap > self._max_size:
                cap = self._max_size
            if self._body == NULL:
                self._body = new_bytes(NULL, cap)
            elif _PyBytes_Resize(&self._body, cap) < 0:
                self._body = NULL
                self._len = self._cap = 0
                raise MemoryError()
            self._cap = cap
        memcpy(bytes_data(self._body) + self._len, p, n)
        self._len = need
        return 0

    # Only pointer arithmetic below, every pointer kept within [data, end): no indexing
    # of Python objects or memoryviews, so boundscheck/wraparound have nothing to check.
    @cython.boundscheck(False)
    @cython.wraparound(False)
    cdef Py_ssize_t _scan(self, const unsigned char *data, Py_ssize_t n) except -1:
        cdef const unsigned char *p = data
        cdef const unsigned char *end = data + n
        cdef const unsigned char *lf
        cdef const unsigned char *stop
        cdef unsigned char c
        cdef unsigned char cr = CR
        cdef int state = self._state
        while p < end:
            if state == S_TEXT:
                # Fast path: one span up to and including the next LF (or the end).
                lf = <const unsigned char *>memchr(p, LF, end - p)
                stop = lf if lf != NULL else end
                if not (self._flags & F_NUL) and stop > p and memchr(p, NUL, stop - p) != NULL:
                    self._flags |= F_NUL
                # A CR before stop - 1 is followed by a non-LF octet: bare.
                if (not (self._flags & F_BARE_CR) and stop - p > 1
                        and memchr(p, CR, stop - 1 - p) != NULL):
                    self._flags |= F_BARE_CR
                if lf == NULL:
                    self._count(end - p)
                    self._emit(p, end - p)
                    # A CR as the last octet is pending: judged by the next octet.
                    state = S_TEXT_CR if (end - 1)[0] == CR else S_TEXT
                    p = end
                    break
                self._count(lf + 1 - p)
                self._emit(p, lf + 1 - p)
                if lf > p and (lf - 1)[0] == CR:
                    self._line_len = 0
                    state = S_LINE_START
                else:
                    # state S_TEXT means the octet before p was not CR.
                    self._flags |= F_BARE_LF
                p = lf + 1
                continue
            c = p[0]
            if state == S_LINE_START:
                if c == DOT:
                    self._count(1)
                    state = S_HELD_DOT
                    p += 1
                else:
                    state = S_TEXT
            elif state == S_HELD_DOT:
                if c == CR:
                    self._count(1)
                    state = S_HELD_DOT_CR
                    p += 1
                else:
                    state = S_TEXT  # stuffed dot dropped; c is plain content
            elif state == S_HELD_DOT_CR:
                self._count(1)
                p += 1
                if c == LF:
                    self._state = S_DONE
                    return p - data
                # Stuffed dot dropped; the held CR is body and bare.
                self._emit(&cr, 1)
                self._flags |= F_BARE_CR
                state = self._after_cr(c)
            else:  # S_TEXT_CR: the previous octet (already in the body) was CR
                self._count(1)
                p += 1
                if c == LF:
                    self._emit(p - 1, 1)
                    self._line_len = 0
                    state = S_LINE_START
                else:
                    self._flags |= F_BARE_CR
                    state = self._after_cr(c)
        self._state = state
        return n

    cdef int _after_cr(self, unsigned char c) except -1:
        """Emit non-LF octet c that followed a CR; return the next state."""
        if c == NUL:
            self._flags |= F_NUL
        self._emit(&c, 1)
        return S_TEXT_CR if c == CR else S_TEXT
