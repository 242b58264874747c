# cython: language_level=3
"""The chain packet buffer and the burst loops of a chain's NF processes.

A :class:`ChainBuffer` is one file-backed region per chain instance (layout
in ``cext/src/qs_chainbuf.h`` and docs/chains.rst).  The creator (the agent,
as root) makes the file, formats it and sets its owner and mode; each NF
process then opens it by path, checks the geometry once and keeps a private
copy of it, so nothing a malicious NF writes into the region can make
another process read or write outside it.

:func:`run_first` and :func:`run_stage` are the ``nogil`` burst loops of the
first NF's process and of NF2..NFn (``cext/src/qs_chainrt.h``).
"""

import os

from cext.nf cimport NativeNF, qd_batch, qd_pkt
from cext.runtime cimport QD_MAX_BURST
from cext.statecore cimport StageState, qs_state_hook, stage_batch
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t, uintptr_t
from libc.string cimport memset
from posix.mman cimport MAP_FAILED, MAP_SHARED, PROT_READ, PROT_WRITE, mmap, munmap


cdef extern from "src/qs_chainrt.h" nogil:
    uint32_t QS_HDR_SIZE
    uint32_t QS_SLOT_SIZE
    uint32_t QS_SLOT_META
    uint32_t QS_SLOT_HEADROOM
    uint32_t QS_SLOT_DATA
    uint32_t QS_MAX_RINGS
    uint32_t QS_MAX_NFS
    uint32_t QS_HIST_BUCKETS
    uint32_t QS_CB_VERSION
    uint32_t QS_MAX_BATCH
    uint32_t QS_NF_MAX_COUNT
    uint32_t QS_CTL_PARK
    uint32_t QS_CTL_RUN
    uint32_t QS_CTL_STOP
    uint32_t QS_NF_PARKED
    uint32_t QS_SLOT_DROPPED
    uint8_t QS_FORWARD
    uint8_t QS_DROP

    struct qs_nfctl:
        uint32_t state
        int32_t tid
        uint64_t batches
        uint64_t pkts
        uint64_t tx
        uint64_t bad
        uint64_t drops
        uint64_t cycles
        uint32_t park_gen
        uint32_t store_wait

    struct qs_cbhdr:
        uint32_t n_slots
        uint32_t n_rings
        uint32_t n_nfs
        uint64_t total_size
        uint64_t slots_off
        char name[64]
        uint32_t ctl
        uint32_t batch
        uint32_t futex
        uint32_t yield_after_batch
        qs_nfctl nf[8]
        uint64_t hist[8][128]

    struct qs_slot_meta:
        uint16_t data_off
        uint16_t len
        uint32_t flags
        uint64_t seq

    struct qs_view:
        uint8_t *base
        uint8_t *slots
        qs_cbhdr *hdr
        uint64_t size
        uint32_t n_slots
        uint32_t n_rings
        uint32_t slot_bytes

    struct qs_pkt:
        uint8_t *data
        uint16_t len
        uint16_t headroom
        uint16_t tailroom
        uint16_t port

    struct qs_batch:
        qs_pkt *pkts
        uint8_t *verdicts
        uint16_t count
        uint64_t tsc

    ctypedef void (*qs_nf_batch_fn)(void *ctx, qs_batch *b)

    struct qs_nf:
        qs_nf_batch_fn fn
        void *ctx

    struct rte_mempool:
        pass

    struct qs_hold_region:
        pass

    struct qs_hold_local:
        pass

    int qs_hold_local_init(qs_hold_local *h, qs_hold_region *r)
    void qs_hold_local_free(qs_hold_local *h)

    struct qs_first_cfg:
        qs_hold_local *hold
        uint16_t port_in
        uint16_t port_out
        rte_mempool *pool
        qs_nf *nfs
        uint32_t n_nfs
        qs_view *ctl
        qs_view *out
        uint32_t out_ring
        qs_view *ret
        uint32_t ret_ring
        uint32_t max_in_flight

    struct qs_stage_cfg:
        qs_view *ctl
        uint32_t index
        qs_view *in_ "in"
        uint32_t in_ring
        qs_view *out
        uint32_t out_ring
        int copy
        qs_nf nf
        qs_state_hook *state

    rte_mempool *rte_mempool_lookup(const char *name)

    uint64_t qs_region_size(uint32_t n_slots, uint32_t n_rings, uint64_t *ro,
                            uint64_t *st, uint64_t *so)
    void qs_region_format(uint8_t *base, uint32_t n_slots, uint32_t n_rings,
                          uint32_t n_nfs, const char *name)
    int qs_view_init(qs_view *v, uint8_t *base, uint64_t size)
    uint32_t qs_ring_enqueue(const qs_view *v, uint32_t r, const uint32_t *objs, uint32_t n)
    int32_t qs_ring_dequeue(const qs_view *v, uint32_t r, uint32_t *objs, uint32_t n)
    uint32_t qs_ring_count(const qs_view *v, uint32_t r)
    uint64_t qs_rdtsc()
    long qs_futex_wake(uint32_t *addr)
    int qs_run_first(qs_first_cfg *c)
    int qs_run_stage(qs_stage_cfg *c)
    void rte_memcpy(void *dst, const void *src, size_t n)


cdef extern from "src/qs_bridge.h" nogil:
    struct qs_bridgectl:
        uint64_t to_nf
        uint64_t to_nf_fail
        uint64_t from_nf
        uint64_t passed
        uint64_t expired
        uint64_t overflow
        uint64_t reverse
        uint64_t held
        uint64_t late
        uint64_t flushed
        uint64_t chatter

    struct qs_bridge_cfg:
        qs_view *ctl
        uint32_t index
        qs_view *in_ "in"
        uint32_t in_ring
        uint32_t out_ring
        uint16_t port_to
        uint16_t port_from
        rte_mempool *pool
        uint64_t hold_cycles
        uint32_t max_held
        int set_dst
        uint8_t dst_mac[6]

    qs_bridgectl *qs_bridgectl_of(qs_cbhdr *h, uint32_t index)
    int qs_run_bridge(qs_bridge_cfg *c)


SLOT_SIZE = QS_SLOT_SIZE
SLOT_META = QS_SLOT_META
SLOT_HEADROOM = QS_SLOT_HEADROOM
SLOT_DATA = QS_SLOT_DATA
MAX_RINGS = QS_MAX_RINGS
MAX_NFS = QS_MAX_NFS
HIST_BUCKETS = QS_HIST_BUCKETS  # per NF, the bucket rule of worker.nf_stats.bucket_of
VERSION = QS_CB_VERSION
HEADER_SIZE = QS_HDR_SIZE
MAX_BATCH = QS_MAX_BATCH
CTL_PARK = QS_CTL_PARK
CTL_RUN = QS_CTL_RUN
CTL_STOP = QS_CTL_STOP
NF_STATES = {0: "init", 1: "running", 2: "parked", 3: "exited", 4: "draining"}
HUGEPAGE = 2 * 1024 * 1024

_VIEW_ERRORS = {
    -1: "file smaller than a header",
    -2: "bad magic or version (not a chain buffer)",
    -3: "geometry out of range",
    -4: "geometry does not match the file size",
}


class ChainBufferError(RuntimeError):
    """A chain buffer could not be created, opened or used."""


def region_size(n_slots, n_rings):
    """Bytes a region of ``n_slots`` slots and ``n_rings`` rings needs."""
    return qs_region_size(n_slots, n_rings, NULL, NULL, NULL)


cdef class ChainBuffer:
    """One chain instance's packet buffer, mapped in this process."""

    cdef qs_view view
    cdef readonly str path
    cdef readonly uint64_t mapped
    cdef bint is_mapped

    def __cinit__(self):
        self.is_mapped = False

    @staticmethod
    def create(path, n_slots, n_rings, n_nfs, name="", mode=0o600, uid=-1, gid=-1):
        """Create, format and map a new region at ``path`` (must not exist).

        ``path`` on hugetlbfs is rounded up to whole 2 MB pages.  The file is
        created ``O_EXCL`` with ``mode`` and handed to ``uid``/``gid`` so that
        only that chain's NF processes can open it.
        """
        if not 1 <= n_slots <= (1 << 20):
            raise ChainBufferError(f"n_slots: {n_slots} is outside 1..{1 << 20}")
        if not 1 <= n_rings <= QS_MAX_RINGS:
            raise ChainBufferError(f"n_rings: {n_rings} is outside 1..{QS_MAX_RINGS}")
        if not 1 <= n_nfs <= QS_MAX_NFS:
            raise ChainBufferError(f"n_nfs: {n_nfs} is outside 1..{QS_MAX_NFS}")
        size = region_size(n_slots, n_rings)
        huge = _on_hugetlbfs(path)
        if huge:
            size = (size + HUGEPAGE - 1) // HUGEPAGE * HUGEPAGE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        except OSError as exc:
            raise ChainBufferError(f"path: cannot create {path}: {exc.strerror}") from exc
        try:
            os.fchmod(fd, mode)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            os.ftruncate(fd, size)
            buf = ChainBuffer()
            buf._map(fd, size, path)
        except BaseException:
            os.close(fd)
            os.unlink(path)
            raise
        os.close(fd)
        memset(buf.view.base, 0, size)
        qs_region_format(buf.view.base, n_slots, n_rings, n_nfs, name.encode()[:63])
        ret = qs_view_init(&buf.view, buf.view.base, size)
        if ret != 0:
            raise ChainBufferError(f"formatted region does not check: {_VIEW_ERRORS[ret]}")
        return buf

    @staticmethod
    def open(path):
        """Map an existing region and check its geometry."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise ChainBufferError(f"path: cannot open {path}: {exc.strerror}") from exc
        try:
            size = os.fstat(fd).st_size
            buf = ChainBuffer()
            buf._map(fd, size, path)
        finally:
            os.close(fd)
        ret = qs_view_init(&buf.view, buf.view.base, size)
        if ret != 0:
            buf.close()
            raise ChainBufferError(f"{path}: not a usable chain buffer: {_VIEW_ERRORS[ret]}")
        return buf

    def _map(self, int fd, uint64_t size, path):
        cdef void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            err = os.strerror(_errno())
            raise ChainBufferError(f"path: cannot map {path} ({size} bytes): {err}")
        self.view.base = <uint8_t *>p
        self.view.hdr = <qs_cbhdr *>p
        self.mapped = size
        self.path = path
        self.is_mapped = True

    def close(self):
        """Unmap (the file stays; the creator unlinks it)."""
        if self.is_mapped:
            munmap(self.view.base, self.mapped)
            self.is_mapped = False

    def __dealloc__(self):
        self.close()

    cdef qs_cbhdr *_hdr(self) except NULL:
        if not self.is_mapped:
            raise ChainBufferError("buffer is closed")
        return self.view.hdr

    @property
    def n_slots(self):
        return self.view.n_slots

    @property
    def n_rings(self):
        return self.view.n_rings

    @property
    def n_nfs(self):
        return self._hdr().n_nfs

    @property
    def name(self):
        return self._hdr().name.decode(errors="replace")

    @property
    def slots_offset(self):
        """Byte offset of slot 0 from the start of the region."""
        return <uint64_t>(self.view.slots - self.view.base)

    @property
    def ctl(self):
        return self._hdr().ctl

    @ctl.setter
    def ctl(self, uint32_t value):
        """Set the control word and wake the NFs parked on it."""
        if value not in (QS_CTL_PARK, QS_CTL_RUN, QS_CTL_STOP):
            raise ChainBufferError(f"ctl: {value} is not PARK, RUN or STOP")
        cdef qs_cbhdr *h = self._hdr()
        h.ctl = value
        h.futex += 1
        qs_futex_wake(&h.futex)

    @property
    def batch(self):
        return self._hdr().batch

    @batch.setter
    def batch(self, uint32_t value):
        if not 1 <= value <= QS_MAX_BATCH:
            raise ChainBufferError(f"batch: {value} is outside 1..{QS_MAX_BATCH}")
        self._hdr().batch = value

    @property
    def yield_after_batch(self):
        return bool(self._hdr().yield_after_batch)

    @yield_after_batch.setter
    def yield_after_batch(self, value):
        self._hdr().yield_after_batch = 1 if value else 0

    def nf_stats(self, int i):
        """Counters the runtime of NF ``i`` keeps in the header."""
        if not 0 <= i < QS_MAX_NFS:
            raise ChainBufferError(f"nf index: {i} is outside 0..{QS_MAX_NFS - 1}")
        cdef qs_nfctl *s = &self._hdr().nf[i]
        return {
            "state": NF_STATES.get(s.state, str(s.state)), "tid": s.tid,
            "batches": s.batches, "pkts": s.pkts, "tx": s.tx, "bad": s.bad,
            "drops": s.drops, "cycles": s.cycles, "park_gen": s.park_gen,
            "store_wait": bool(s.store_wait), "store_down": bool(s.store_wait & 1),
        }

    def bridge_stats(self, int i):
        """Counters of the third-party bridge at chain position ``i`` (``cext/src/qs_bridge.h``)."""
        if not 0 <= i < QS_MAX_NFS:
            raise ChainBufferError(f"nf index: {i} is outside 0..{QS_MAX_NFS - 1}")
        cdef qs_bridgectl *s = qs_bridgectl_of(self._hdr(), i)
        return {
            "to_nf": s.to_nf, "to_nf_fail": s.to_nf_fail, "from_nf": s.from_nf,
            "passed": s.passed, "expired": s.expired, "overflow": s.overflow,
            "reverse": s.reverse, "held": s.held, "late": s.late,
            "flushed": s.flushed, "chatter": s.chatter,
        }

    def nf_hist(self, int i):
        """NF ``i``'s cycles-per-batch histogram (HIST_BUCKETS counts, cumulative;
        bucket rule: :func:`worker.nf_stats.bucket_of`).  Read without a lock:
        the writer is NF ``i``'s data core."""
        if not 0 <= i < QS_MAX_NFS:
            raise ChainBufferError(f"nf index: {i} is outside 0..{QS_MAX_NFS - 1}")
        cdef qs_cbhdr *h = self._hdr()
        return tuple([h.hist[i][b] for b in range(QS_HIST_BUCKETS)])

    @property
    def generation(self):
        """Bumped on every control change; an NF parked under the current one is parked."""
        return self._hdr().futex

    def parked(self, int n):
        """True when NFs 0..n-1 have all parked under the current control generation."""
        cdef qs_cbhdr *h = self._hdr()
        cdef int i
        for i in range(n):
            if h.nf[i].state != QS_NF_PARKED or h.nf[i].park_gen != h.futex:
                return False
        return True

    def _ring(self, uint32_t r):
        self._hdr()
        if r >= self.view.n_rings:
            raise ChainBufferError(f"ring: {r} is outside 0..{self.view.n_rings - 1}")
        return r

    def ring_offset(self, r):
        """Byte offset of ring ``r`` (its producer index comes first) in the region."""
        cdef uint64_t ro, st, so
        qs_region_size(self.view.n_slots, self.view.n_rings, &ro, &st, &so)
        return ro + st * self._ring(r)

    def ring_count(self, r):
        return qs_ring_count(&self.view, self._ring(r))

    def fill_free(self, r=0):
        """Put every slot's offset into ring ``r`` (the free ring)."""
        cdef uint32_t i, rr = self._ring(r), off
        for i in range(self.view.n_slots):
            off = i * QS_SLOT_SIZE
            if qs_ring_enqueue(&self.view, rr, &off, 1) != 1:
                raise ChainBufferError(f"ring {r} is full after {i} slots")

    def enqueue(self, r, offsets):
        """Producer side of ring ``r`` (tests and tools; NFs use the C loops)."""
        cdef uint32_t rr = self._ring(r), o, done = 0
        for off in offsets:
            o = off
            done += qs_ring_enqueue(&self.view, rr, &o, 1)
        return done

    def dequeue(self, r, n):
        """Consumer side of ring ``r``: up to ``n`` offsets, or ChainBufferError if corrupt."""
        cdef uint32_t rr = self._ring(r), o
        cdef int32_t got
        out = []
        for _ in range(n):
            got = qs_ring_dequeue(&self.view, rr, &o, 1)
            if got < 0:
                raise ChainBufferError(f"ring {r}: indices corrupt")
            if got == 0:
                break
            out.append(o)
        return out

    def write_slot(self, uint32_t off, bytes data):
        """Put ``data`` into the slot at ``off`` (fresh data_off, no flags)."""
        self._check_off(off)
        if len(data) > QS_SLOT_DATA:
            raise ChainBufferError(f"data: {len(data)} bytes exceed a slot's {QS_SLOT_DATA}")
        cdef qs_slot_meta *m = <qs_slot_meta *>(self.view.slots + off)
        m.data_off = QS_SLOT_META + QS_SLOT_HEADROOM
        m.len = len(data)
        m.flags = 0
        cdef const uint8_t[:] src = data
        if len(data):
            rte_memcpy(self.view.slots + off + m.data_off, &src[0], len(data))

    def read_slot(self, uint32_t off):
        """``(data, dropped)`` of the slot at ``off``."""
        self._check_off(off)
        cdef qs_slot_meta *m = <qs_slot_meta *>(self.view.slots + off)
        if m.data_off < QS_SLOT_META or m.data_off + m.len > QS_SLOT_SIZE:
            raise ChainBufferError(f"slot {off}: data_off/len outside the slot")
        data = (<char *>self.view.slots + off + m.data_off)[:m.len]
        return data, bool(m.flags & QS_SLOT_DROPPED)

    def _check_off(self, uint32_t off):
        self._hdr()
        if off % QS_SLOT_SIZE or off >= self.view.slot_bytes:
            raise ChainBufferError(f"offset: {off} is not a slot of this buffer")

    def memory(self):
        """A writable memoryview of the whole mapping (what native NF code can reach)."""
        self._hdr()
        return <uint8_t[:self.mapped]>self.view.base

    cdef qs_view *_view(self) except NULL:
        self._hdr()
        return &self.view


cdef extern from "errno.h":
    int errno


cdef int _errno():
    return errno


def _on_hugetlbfs(path):
    d = os.path.dirname(os.path.abspath(path))
    best = ""
    kind = ""
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and (d == parts[1] or d.startswith(parts[1].rstrip("/") + "/")):
                if len(parts[1]) > len(best):
                    best, kind = parts[1], parts[2]
    return kind == "hugetlbfs"


# --- NFs -------------------------------------------------------------------

cdef void _native_nf(void *ctx, qs_batch *b) noexcept nogil:
    # qs_batch and issue 4's qd_batch are the same layout (checked at import)
    (<NativeNF>ctx).process(<qd_batch *>b)


if (sizeof(qs_batch) != sizeof(qd_batch) or sizeof(qs_pkt) != sizeof(qd_pkt)
        or sizeof(qs_nf) != 2 * sizeof(void *)):
    raise ImportError("chainbuf: qs_batch/qs_pkt and cext.nf's qd_batch/qd_pkt differ")
if QS_NF_MAX_COUNT != QD_MAX_BURST:
    raise ImportError("chainbuf: QS_NF_MAX_COUNT must equal cext.runtime's QD_MAX_BURST")


cdef class NF:
    """An NF as the burst loops call it: a configured :class:`cext.nf.NativeNF`.

    Native NFs run as they are; Python NFs through issue 4's
    :class:`cext.nf.PythonNF` (which takes the GIL once per batch).
    """

    cdef qs_nf c
    cdef readonly object nf

    def __init__(self, NativeNF nf):
        self.c.fn = _native_nf
        self.c.ctx = <void *>nf
        self.nf = nf


# --- the burst loops -------------------------------------------------------

def run_first(ChainBuffer ctl, list nfs, int port_in, int port_out, str pool,
              ChainBuffer out=None, int out_ring=1, ChainBuffer ret=None, int ret_ring=0,
              int max_in_flight=0, hold=None):
    """The first NF's loop until the control word says STOP.

    ``pool`` is the name of the mempool TX mbufs come from (the port's).
    ``nfs`` run in this thread in order (one NF normally; every NF of the
    chain for the single_thread baseline; none for the port stage before a
    third-party NF that is first in its chain).  ``out`` None: transmit directly
    (a single-NF chain).  Otherwise copy each processed batch into ``out``'s
    free slots (ring 0), hand them to NF2 on ``out_ring``, and transmit what
    comes back on ``ret``/``ret_ring``.  ``hold``: the instance's
    :class:`cext.flowhold.FlowHold` region (flows held for a migration).
    """
    cdef qs_first_cfg c
    cdef qs_hold_local local
    cdef qs_nf arr[8]
    cdef NF nf
    if not (0 if out is not None else 1) <= len(nfs) <= QS_MAX_NFS:
        raise ChainBufferError(f"nfs: {len(nfs)} NFs, expected 1..{QS_MAX_NFS} (0 with out)")
    cdef rte_mempool *mp = rte_mempool_lookup(pool.encode())
    if mp == NULL:
        raise ChainBufferError(f"pool: no mempool named {pool!r}")
    for i, nf in enumerate(nfs):
        arr[i] = nf.c
    memset(&c, 0, sizeof(c))
    c.port_in = port_in
    c.port_out = port_out
    c.pool = mp
    c.nfs = arr
    c.n_nfs = len(nfs)
    c.ctl = ctl._view()
    if out is not None:
        if ret is None:
            ret = out
        c.out = out._view()
        c.out_ring = out._ring(out_ring)
        c.ret = ret._view()
        c.ret_ring = ret._ring(ret_ring)
        limit = min(out.n_slots, ret.n_slots)
        c.max_in_flight = min(max_in_flight or limit, limit)
    if hold is not None:
        if qs_hold_local_init(&local, <qs_hold_region *><uintptr_t>hold.address) != 0:
            qs_hold_local_free(&local)
            raise MemoryError("hold queues")
        c.hold = &local
    try:
        with nogil:
            qs_run_first(&c)
    finally:
        if hold is not None:
            qs_hold_local_free(&local)


def run_stage(ChainBuffer ctl, int index, NF nf, ChainBuffer inp, int in_ring,
              ChainBuffer out=None, int out_ring=0, bint copy=False, StageState state=None):
    """NF ``index`` (1..n-1) in place on ``inp`` until STOP.

    ``copy`` (the copy baseline): ``out`` is the next NF's own region; each
    processed batch is copied into it and our slots go back to ``inp``'s
    free ring.  Otherwise the offsets go on to ``out_ring`` of ``inp``.
    ``state``: ``nf`` is stateful and this is its :class:`cext.statecore.StageState`
    (the cache, Redis, the held slots); the loop stops with
    :class:`ChainBufferError` if the state store fails.
    """
    cdef qs_stage_cfg c
    cdef int rc
    if not 1 <= index < QS_MAX_NFS:
        raise ChainBufferError(f"index: {index} is outside 1..{QS_MAX_NFS - 1}")
    if out is None:
        out = inp
    if copy and out is inp:
        raise ChainBufferError("out: the copy baseline needs the next NF's own region")
    if state is not None and copy:
        raise ChainBufferError("state: a stateful NF cannot run in the copy baseline")
    if state is not None and state.core.snf is not nf.nf:
        raise ChainBufferError("state: made for another NF than this stage's")
    if state is not None and state.hook.max_held > inp.n_slots:
        raise ChainBufferError(
            f"state.max_held: {state.hook.max_held} exceeds the region's {inp.n_slots} slots")
    memset(&c, 0, sizeof(c))
    c.ctl = ctl._view()
    c.index = index
    c.in_ = inp._view()
    c.in_ring = inp._ring(in_ring)
    c.out = out._view()
    c.out_ring = out._ring(out_ring)
    c.copy = 1 if copy else 0
    c.nf = nf.c
    if state is not None:
        c.nf.fn = <qs_nf_batch_fn>stage_batch
        c.nf.ctx = <void *>state
        c.state = &state.hook
    with nogil:
        rc = qs_run_stage(&c)
    if rc == -2:
        err = state.error
        raise ChainBufferError(f"state store failed: {err[0] if err else 'unknown'}")
    if rc != 0:
        raise ChainBufferError(f"run_stage: failed to start ({rc})")


def run_bridge(ChainBuffer ctl, int index, ChainBuffer inp, int in_ring, int out_ring,
               int port_to, int port_from, str pool, double hold_us=1000.0, int max_held=0,
               bytes dst_mac=None, double tsc_hz=0.0):
    """The third-party bridge at chain position ``index`` until STOP (``qs_bridge.h``).

    Sends each batch from ``in_ring`` out of ``port_to``, fills the batch's slots
    with what comes back on ``port_from`` and passes them on to ``out_ring``;
    a slot waits at most ``hold_us`` (and at most ``max_held`` slots wait) before
    it goes on empty.  ``dst_mac``: write it as the destination of every frame
    sent to the NF.  ``tsc_hz``: TSC ticks per second (measured if 0).
    """
    cdef qs_bridge_cfg c
    cdef int j
    if not 1 <= index < QS_MAX_NFS:
        raise ChainBufferError(f"index: {index} is outside 1..{QS_MAX_NFS - 1}")
    cdef rte_mempool *mp = rte_mempool_lookup(pool.encode())
    if mp == NULL:
        raise ChainBufferError(f"pool: no mempool named {pool!r}")
    if dst_mac is not None and len(dst_mac) != 6:
        raise ChainBufferError(f"dst_mac: {len(dst_mac)} bytes, a MAC has 6")
    if tsc_hz <= 0:
        tsc_hz = _tsc_hz()
    memset(&c, 0, sizeof(c))
    c.ctl = ctl._view()
    c.index = index
    c.in_ = inp._view()
    c.in_ring = inp._ring(in_ring)
    c.out_ring = inp._ring(out_ring)
    c.port_to = port_to
    c.port_from = port_from
    c.pool = mp
    c.hold_cycles = <uint64_t>(hold_us * tsc_hz / 1e6)
    c.max_held = max_held if 0 < max_held <= inp.n_slots else inp.n_slots // 2
    if dst_mac is not None:
        c.set_dst = 1
        for j in range(6):
            c.dst_mac[j] = dst_mac[j]
    with nogil:
        qs_run_bridge(&c)


def _tsc_hz():
    import time
    t0, c0 = time.perf_counter(), qs_rdtsc()
    time.sleep(0.05)
    return (qs_rdtsc() - c0) / (time.perf_counter() - t0)


# --- measurement helpers (tools/bench/chain_isolation.py) ------------------

def copy_cycles(ChainBuffer src, ChainBuffer dst, uint32_t size, uint32_t batch=32,
                uint32_t rounds=2000):
    """TSC cycles per packet to copy ``size``-byte packets slot to slot.

    Walks the slots of both regions batch by batch, as a hop of the copy
    baseline does, so the working set is the regions' (not one hot line).
    """
    if size > QS_SLOT_DATA:
        raise ChainBufferError(f"size: {size} exceeds a slot's {QS_SLOT_DATA} bytes")
    cdef uint32_t n = min(src.view.n_slots, dst.view.n_slots), _i, _r, s = 0
    cdef uint64_t t0, total = 0
    cdef uint8_t *a = src.view.slots + QS_SLOT_META + QS_SLOT_HEADROOM
    cdef uint8_t *b = dst.view.slots + QS_SLOT_META + QS_SLOT_HEADROOM
    with nogil:
        for _r in range(rounds):
            t0 = qs_rdtsc()
            for _i in range(batch):
                rte_memcpy(b + <uint64_t>s * QS_SLOT_SIZE, a + <uint64_t>s * QS_SLOT_SIZE, size)
                s += 1
                if s == n:
                    s = 0
            total += qs_rdtsc() - t0
    return total / (<double>rounds * batch)


def rdtsc():
    return qs_rdtsc()


cdef extern from "sched.h" nogil:
    int sched_yield()


def yield_cycles(uint32_t n):
    """TSC cycles ``n`` back-to-back ``sched_yield`` calls take (context-switch probe)."""
    cdef uint64_t t0, t1
    cdef uint32_t _i
    with nogil:
        t0 = qs_rdtsc()
        for _i in range(n):
            sched_yield()
        t1 = qs_rdtsc()
    return t1 - t0
