# cython: language_level=3
"""Base class of stateful native NFs (see ``cext/state.pxd`` and docs/state.rst)."""

import traceback

from cpython.buffer cimport PyBUF_READ, PyBUF_WRITE
from cpython.memoryview cimport PyMemoryView_FromMemory

from cext.nf cimport QD_DROP
from cext.pkt cimport QD_PARSE_OK, qd_flow, qd_parse

from worker.nf_errors import NFConfigError


cdef class StatefulNF(NativeNF):
    """A native NF with per-flow state in Redis, cached by the runtime.

    The default key is the packet's 5-tuple (``bidirectional = 1``: the same
    key for both directions, lower address/port first).  Override ``key``
    for another key (the NAT keys inbound packets by their external port).
    """

    def __init__(self, name=None):
        super().__init__(name)
        self.state = NULL
        self.bidirectional = 0

    def restore(self, fetch):
        """Called once by the runtime before the first batch, from Python.

        ``fetch(keys)`` takes a list of :c:type:`qd_key` as 16-byte ``bytes``
        and returns their values from Redis (``bytes`` or ``None``), chunked
        into pipelined MGETs: rebuild local structures from Redis here (the
        NAT marks the ports its mappings hold).  The default does nothing.
        """

    cdef int key(self, const qd_pkt *pkt, qd_key *k) noexcept nogil:
        cdef qd_flow f
        if qd_parse(pkt, &f) != QD_PARSE_OK:
            return 0
        qd_key_init(k)
        k.proto = f.proto
        if self.bidirectional and (f.src > f.dst or (f.src == f.dst and f.sport > f.dport)):
            k.a = f.dst
            k.b = f.src
            k.pa = f.dport
            k.pb = f.sport
        else:
            k.a = f.src
            k.b = f.dst
            k.pa = f.sport
            k.pb = f.dport
        return 1


def key_bytes(uint32_t a, uint32_t b, uint16_t pa, uint16_t pb, uint8_t proto, uint8_t kind=0):
    """The 16 bytes of a :c:type:`qd_key` as Python sees them (tests, restore)."""
    cdef qd_key k
    qd_key_init(&k)
    k.a = a
    k.b = b
    k.pa = pa
    k.pb = pb
    k.proto = proto
    k.kind = kind
    return (<char *>&k)[:sizeof(qd_key)]


cdef class PyState:
    """The state API as a Python NF sees it, valid only during its ``process`` call.

    Keys are 16-byte ``bytes`` (:func:`key_bytes`); values ``bytes`` of at
    most 48.  ``pkt`` is the index of the packet the change belongs to: that
    packet is held until Redis acknowledged the write (``-1``: none).
    """

    cdef qd_state *s

    cdef qd_state *_s(self) except NULL:
        if self.s == NULL:
            raise RuntimeError("state: used outside the NF's process() call")
        return self.s

    def key(self, int i):
        """Packet ``i``'s key (``None``: it has none)."""
        cdef qd_state *s = self._s()
        if not 0 <= i < s.count or s.pos[i] < 0:
            return None
        return (<char *>&s.entries[s.pos[i]].key)[:sizeof(qd_key)]

    def get(self, int i):
        """Packet ``i``'s state: ``bytes`` or ``None``."""
        cdef const qd_val *v = qd_state_get(self._s(), i) if i >= 0 else NULL
        return None if v == NULL else (<char *>v.data)[:v.len]

    def read(self, bytes key):
        """Any key the cache holds (a batch's own keys always are)."""
        cdef const qd_val *v = qd_state_read(self._s(), _key(key))
        return None if v == NULL else (<char *>v.data)[:v.len]

    def update(self, bytes key, bytes value, int pkt=-1):
        if len(value) > QD_STATE_VAL_MAX:
            raise ValueError(f"state value: at most {QD_STATE_VAL_MAX} bytes, got {len(value)}")
        if qd_state_update(self._s(), _pkt(pkt), _key(key), <char *>value, len(value)):
            raise RuntimeError("state: cache or batch write log full")

    def delete(self, bytes key, int pkt=-1):
        if qd_state_delete(self._s(), _pkt(pkt), _key(key)):
            raise RuntimeError("state: cache or batch write log full")


cdef inline const qd_key *_key(bytes key) except NULL:
    if len(key) != sizeof(qd_key):
        raise ValueError(f"state key: must be {sizeof(qd_key)} bytes, got {len(key)}")
    return <const qd_key *><char *>key


cdef inline uint16_t _pkt(int pkt):
    return QD_NO_PKT if pkt < 0 else <uint16_t>pkt


cdef class PythonStatefulNF(StatefulNF):
    """A Python NF with ``stateful = True``: ``process(packets, verdicts, state)``.

    The key is the packet's 5-tuple (``bidirectional = True`` on the class: the
    same key both ways) unless the class defines ``key(packet) -> bytes | None``,
    which then runs per packet, with the GIL: the slow path.
    """

    cdef object impl
    cdef object _process
    cdef object _key
    cdef PyState view
    cdef public object error

    def __init__(self, impl, name=None):
        super().__init__(name or type(impl).__name__)
        self.impl = impl
        self._process = impl.process
        self._key = getattr(impl, "key", None)
        self.view = PyState()
        self.error = None
        self.bidirectional = 1 if getattr(impl, "bidirectional", False) else 0

    def configure(self, config):
        configure = getattr(self.impl, "configure", None)
        if configure is not None:
            configure(config)
        elif config:
            raise NFConfigError("config", f"{type(self.impl).__name__} takes no options")

    def stats(self):
        stats = getattr(self.impl, "stats", None)
        return dict(stats()) if stats is not None else {}

    def restore(self, fetch):
        restore = getattr(self.impl, "restore", None)
        if restore is not None:
            restore(fetch)

    cdef int key(self, const qd_pkt *pkt, qd_key *k) noexcept nogil:
        if self._key is None:
            return StatefulNF.key(self, pkt, k)
        with gil:
            return self._call_key(pkt, k)

    cdef int _call_key(self, const qd_pkt *pkt, qd_key *k) noexcept:
        cdef bytes kb
        if self.error is not None:
            return 0
        view = PyMemoryView_FromMemory(<char *>pkt.data, pkt.len, PyBUF_READ)
        try:
            kb = self._key(view)
            if kb is None:
                return 0
            memcpy(k, _key(kb), sizeof(qd_key))
            return 1
        except BaseException as exc:
            self._failed(exc)
            return 0
        finally:
            view.release()

    cdef void process(self, qd_batch *batch) noexcept nogil:
        with gil:
            self._call(batch)

    cdef int _call(self, qd_batch *batch) noexcept:
        cdef int i
        if self.error is not None:
            for i in range(batch.count):
                batch.verdicts[i] = QD_DROP
            return 0
        views = [
            PyMemoryView_FromMemory(<char *>batch.pkts[i].data, batch.pkts[i].len, PyBUF_WRITE)
            for i in range(batch.count)
        ]
        verdicts = PyMemoryView_FromMemory(<char *>batch.verdicts, batch.count, PyBUF_WRITE)
        self.view.s = self.state
        try:
            self._process(views, verdicts, self.view)
        except BaseException as exc:
            self._failed(exc)
            for i in range(batch.count):
                batch.verdicts[i] = QD_DROP
        finally:
            self.view.s = NULL
            for v in views:
                v.release()
            verdicts.release()
        return 0

    cdef void _failed(self, exc) noexcept:
        self.error = (exc, traceback.format_exc())
        self.halt = 1
