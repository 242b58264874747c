# cython: language_level=3
"""The agent's side of a chain instance's per-flow hold region (``src/qs_flowhold.h``).

The agent creates one region per instance (:meth:`FlowHold.create`), the
instance's first NF maps it (``chainbuf.run_first(hold=...)``) and sets aside
the packets of the flows the agent holds until it releases them.  Keys are
tuples ``(eth_type, proto, src, dst, sport, dport)`` with ``src``/``dst`` as
packed addresses (4 or 16 bytes, network order); :mod:`worker.flowhold`
turns the controller's JSON flow keys into them.
"""

import os

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.string cimport memcmp, memcpy, memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap


cdef extern from "src/qs_flowhold.h" nogil:
    uint64_t QS_HOLD_MAGIC
    uint32_t QS_HOLD_MAX
    uint32_t QS_HOLD_QUEUE
    uint32_t QS_HOLD_FREE
    uint32_t QS_HOLD_ON
    uint32_t QS_HOLD_RELEASE
    size_t QS_HOLD_SIZE

    struct qs_hold_key:
        uint16_t eth_type
        uint8_t proto
        uint16_t sport
        uint16_t dport
        uint8_t src[16]
        uint8_t dst[16]

    struct qs_hold_entry:
        uint32_t state
        qs_hold_key key
        uint64_t held
        uint64_t released
        uint64_t dropped
        uint64_t expired

    struct qs_hold_region:
        uint64_t magic
        uint32_t max_hold_ms
        uint32_t mark
        uint64_t active
        uint64_t marked
        uint64_t short_polls
        uint64_t rx_at_short
        qs_hold_entry e[64]

    void qs_hold_format(qs_hold_region *r, uint32_t max_hold_ms)
    int qs_hold_claim(qs_hold_region *r, const qs_hold_key *k)
    int qs_hold_release(qs_hold_region *r, uint32_t i, const qs_hold_key *k)


cdef extern from "errno.h":
    int errno


MAX_FLOWS = QS_HOLD_MAX
QUEUE = QS_HOLD_QUEUE
SIZE = QS_HOLD_SIZE
_STATES = {0: "free", 1: "held", 2: "releasing"}


class FlowHoldError(RuntimeError):
    """A hold region could not be created or used, or has no room."""


cdef int _key(tuple key, qs_hold_key *k) except -1:
    eth_type, proto, src, dst, sport, dport = key
    memset(k, 0, sizeof(qs_hold_key))
    if len(src) != len(dst) or len(src) not in (4, 16):
        raise FlowHoldError(f"key {key!r}: addresses must both be 4 or 16 bytes")
    k.eth_type = eth_type
    k.proto = proto
    k.sport = sport
    k.dport = dport
    memcpy(k.src, <const char *>src, len(src))
    memcpy(k.dst, <const char *>dst, len(dst))
    return 0


cdef bint _same(const qs_hold_key *a, const qs_hold_key *b):
    return memcmp(a, b, sizeof(qs_hold_key)) == 0  # both zeroed before they were filled


cdef class FlowHold:
    cdef qs_hold_region *r
    cdef readonly str path

    def __cinit__(self):
        self.r = NULL

    @staticmethod
    def create(path, uint32_t max_hold_ms=1000, mode=0o660, uid=-1, gid=-1):
        """Create (``O_EXCL``), format and map the region of one instance."""
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        except OSError as exc:
            raise FlowHoldError(f"path: cannot create {path}: {exc.strerror}") from exc
        try:
            os.fchmod(fd, mode)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.ftruncate(fd, QS_HOLD_SIZE)
            h = FlowHold()
            h._map(fd, path)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        qs_hold_format(h.r, max_hold_ms)
        return h

    @staticmethod
    def open(path):
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise FlowHoldError(f"path: cannot open {path}: {exc.strerror}") from exc
        try:
            if os.fstat(fd).st_size < <long>QS_HOLD_SIZE:
                raise FlowHoldError(f"{path}: smaller than a hold region")
            h = FlowHold()
            h._map(fd, path)
        finally:
            os.close(fd)
        if h.r.magic != QS_HOLD_MAGIC:
            h.close()
            raise FlowHoldError(f"{path}: not a hold region (bad magic)")
        return h

    def _map(self, int fd, path):
        cdef void *p = mmap(NULL, QS_HOLD_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            raise FlowHoldError(f"path: cannot map {path}: {os.strerror(errno)}")
        self.r = <qs_hold_region *>p
        self.path = path

    def close(self):
        if self.r != NULL:
            munmap(self.r, QS_HOLD_SIZE)
            self.r = NULL

    def __dealloc__(self):
        self.close()

    cdef qs_hold_region *_r(self) except NULL:
        if self.r == NULL:
            raise FlowHoldError("the hold region is closed")
        return self.r

    @property
    def address(self):
        """Where the region is mapped in this process (for ``chainbuf.run_first``)."""
        return <uintptr_t>self._r()

    def hold(self, keys, marked=False):
        """Hold every key (those already held stay held): the entry indices.

        All or nothing: if the region has no room for them all, the ones this
        call claimed are released again and :class:`FlowHoldError` is raised.
        ``marked``: the controller sends packets of these flows with the marker
        tag, which the first NF strips and lets through (from now on, for good).
        """
        cdef qs_hold_region *r = self._r()
        cdef qs_hold_key k
        cdef int i
        out, claimed = [], []
        if marked:
            r.mark = 1  # before any entry: no marked packet may be set aside
        for key in keys:
            _key(tuple(key), &k)
            i = self._find(&k, QS_HOLD_ON)
            if i < 0:
                i = qs_hold_claim(r, &k)
                if i < 0:
                    for j, kk in claimed:
                        _key(kk, &k)
                        qs_hold_release(r, j, &k)
                    raise FlowHoldError(f"no room: {QS_HOLD_MAX} flows are held already")
                claimed.append((i, tuple(key)))
            out.append(i)
        return out

    def release(self, keys):
        """Release every held key; returns how many were held."""
        cdef qs_hold_region *r = self._r()
        cdef qs_hold_key k
        cdef int i, n = 0
        for key in keys:
            _key(tuple(key), &k)
            i = self._find(&k, QS_HOLD_ON)
            if i >= 0:
                n += qs_hold_release(r, i, &k)
        return n

    cdef int _find(self, const qs_hold_key *k, uint32_t state):
        cdef uint32_t i
        for i in range(QS_HOLD_MAX):
            if self.r.e[i].state == state and _same(&self.r.e[i].key, k):
                return i
        return -1

    def entries(self):
        """Entries not free, and their counters."""
        cdef qs_hold_region *r = self._r()
        cdef uint32_t i
        out = []
        for i in range(QS_HOLD_MAX):
            e = &r.e[i]
            if e.state == QS_HOLD_FREE and not (r.active >> i) & 1:
                continue
            out.append({"index": i, "state": _STATES.get(e.state, str(e.state)),
                        "held": e.held, "released": e.released, "dropped": e.dropped,
                        "expired": e.expired})
        return out

    def totals(self):
        """Counters summed over every entry, free ones included (they keep theirs)."""
        cdef qs_hold_region *r = self._r()
        cdef uint32_t i
        t = {"held": 0, "released": 0, "dropped": 0, "expired": 0, "marked": r.marked}
        for i in range(QS_HOLD_MAX):
            t["held"] += r.e[i].held
            t["released"] += r.e[i].released
            t["dropped"] += r.e[i].dropped
            t["expired"] += r.e[i].expired
        return t

    def progress(self):
        """``(short_polls, rx_at_short)``: the first NF's polls that emptied its port's
        queue, and its received count at the last of them."""
        cdef qs_hold_region *r = self._r()
        return r.short_polls, r.rx_at_short

    @property
    def active(self):
        return self._r().active
