# cython: language_level=3
"""The native NF interface: what an NF written in Cython implements.

An NF is a ``cdef class`` derived from :class:`NativeNF`.  The runtime calls

* ``configure(config)`` once, from Python, with the NF's ``config`` mapping
  (build tables here; raise :class:`cext.nf.NFConfigError` on bad input);
* ``process(batch)`` once per batch, without the GIL, from the data core.

``process`` sees a :c:type:`qd_batch`: ``count`` packet descriptors and a
verdict array of the same length, preset to ``QD_FORWARD``.  A descriptor
points straight at the frame bytes in the runtime's packet memory (an mbuf,
or a slot of the chain packet buffer): the NF reads and rewrites them in
place, and may grow or shrink the frame at the front (push/pop a header,
within ``headroom``) or the back (within ``tailroom``) by moving ``data`` and
changing ``len``.  The NF never frees, sends or keeps a packet; it only
sets verdicts.  ``QD_HOLD`` is for stateful NFs (``cext/state.pxd``): their
runtime keeps the packet until its state is in Redis; the stateless runtime
counts it in ``held`` and frees the packet.

The descriptors carry no DPDK type, so the same NF runs as the first NF of a
chain (over mbufs) and as a later one (over chain-buffer slots).
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t


cdef enum qd_verdict:
    QD_FORWARD = 0
    QD_DROP = 1
    QD_HOLD = 2


ctypedef struct qd_pkt:
    uint8_t *data       # first byte of the Ethernet frame
    uint16_t len        # frame length in bytes
    uint16_t headroom   # bytes free before data (push a header: data -= k, len += k)
    uint16_t tailroom   # bytes free after data + len
    uint16_t port       # input port (informational)


ctypedef struct qd_batch:
    qd_pkt *pkts        # count descriptors
    uint8_t *verdicts   # count verdicts (qd_verdict), preset to QD_FORWARD
    uint16_t count      # 1 .. 256 (QD_MAX_BURST in cext/runtime.pxd)
    uint64_t tsc        # TSC when the batch was received


cdef class NativeNF:
    cdef readonly str name
    # Set non-zero (from process) to make the runtime stop after this batch:
    # a fatal NF error.  The runtime reports it and exits non-zero.
    cdef public int halt
    # Directory of the runtime's config file (a pathlib.Path or None), set
    # before configure(): resolve relative file names in the config against it.
    cdef public object base_dir
    # Set True (in __init__ or configure) if process() never moves a frame's
    # window (data/len): the runtime then skips comparing every descriptor
    # with its buffer after the call.  Only a speed hint: with it set, a moved
    # window is ignored (the frame goes out as received, rewritten in place).
    cdef public bint in_place
    cdef void process(self, qd_batch *batch) noexcept nogil
