# cython: language_level=3
"""NAT (NAPT) for TCP and UDP: a port pool per external address, mappings in Redis.

Config (docs/state.rst has the whole picture)::

    nf:
      type: nat
      config:
        internal: ["10.1.0.0/16"]          # inside addresses: their packets are outbound
        external:                          # the addresses and ports this instance owns
          - {address: 203.0.113.1, ports: "1024-65535"}
        tcp_idle_s: 7440                   # RFC 5382: at least 2 h 4 min
        udp_idle_s: 300                    # RFC 4787: at least 2 min, 5 recommended
        closing_s: 240                     # after FIN both ways (2 MSL)
        instance: 7                        # this instance's id (the agent fills it in)
        adopt: ["203.0.113.2"]             # the chain's other instances' addresses
        lent_check_s: 30                   # how often a lent port is checked again
        adopted_max: 4096                  # moved-in connections it can track at once

*Outbound* (source inside, destination not one of the external addresses):
the first packet of a connection (for TCP a SYN without ACK) takes a free
``(external address, port)`` from the pool, and the mapping is written to the
state store under two keys: ``out`` (kind 1: inside address/port, remote
address/port, protocol) -> external address/port, and ``in`` (kind 2:
external address/port, protocol) -> inside address/port and remote
address/port.  The runtime holds that packet until Redis acknowledged both.
Later packets rewrite the source address/port.  *Inbound* (destination an
external address): the ``in`` key gives the inside endpoint; a packet from
another remote endpoint than the mapping's is dropped (address-and-port
dependent filtering); the destination is rewritten.  Checksums (IPv4 header,
TCP/UDP with the pseudo-header) are updated incrementally (RFC 1624).

A mapping lives until RST, FIN seen in both directions plus ``closing_s``, or
idle timeout; then both keys are deleted and the port goes to the *back* of
the free queue, so a port is reused only after its connection ended and as
late as possible.  On start the NF reads its pool's ``in`` keys from Redis
(``restore``): a restarted or replacing instance with the same key prefix
keeps every mapping and port.

*Moved connections* (docs/state.rst, *Moving NAT flows*).  The ``out`` value
is 12 bytes: external address, port, 2 zero bytes, and the *owner*, the id of
the instance that ends the connection; 0 (as written when the mapping is made,
and in the 8-byte values of before) is the address's own instance, whoever
holds it now: a replacement that takes over the address ends its
connections.  The controller moves a connection from
instance A (address a) to B by writing B as the owner (the agent does it,
while B holds the flow's packets) and steering both directions to B.  B
translates the connection with the mapping it fetches; a mapping to an
address of ``adopt`` is tracked in B's *adopted* table, for FIN/RST/idle like
its own, and B deletes both keys when the connection ends.  No timer deletes
a mapping without asking Redis first: when a mapping's idle or closing timer
fires, the NF re-reads its ``out`` key (one MGET for every timer fired in a
sweep; while Redis fails them, one try a second: nothing ends meanwhile).
Keys gone: the port is free again (an adopted entry is dropped).  Owned by
this instance: both keys are deleted as before.  Owned by another
one: an own port stays reserved (*lent*: never given to a new connection)
and is checked again every ``lent_check_s``; an adopted entry is dropped
without touching the keys.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset

from cext.dpdk cimport rte_get_tsc_hz, rte_rdtsc
from cext.nf cimport QD_DROP, qd_batch, qd_pkt
from cext.pkt cimport QD_PARSE_BAD, QD_PARSE_OK, qd_flow, qd_parse, qd_rd16, qd_rd32
from cext.state cimport (
    QD_NO_PKT,
    StatefulNF,
    qd_key,
    qd_key_eq,
    qd_key_init,
    qd_state,
    qd_state_delete,
    qd_state_get,
    qd_state_update,
    qd_val,
)

import ipaddress

from cext.nf import NFConfigError

cdef enum:
    NAT_MAX_PREFIXES = 16
    NAT_MAX_EXTERNAL = 16
    NAT_MAX_SLOTS = 1 << 20
    NAT_SWEEP = 32              # pool slots checked for timeouts per batch
    NAT_AD_SWEEP = 256          # adopted-table entries looked at per batch (most are empty)
    NAT_ADOPTED_MAX = 1 << 20   # adopted table entries at most (config.adopted_max)
    KIND_OUT = 1
    KIND_IN = 2
    FIN_OUT = 1
    FIN_IN = 2


ctypedef struct nat_slot:
    qd_key okey                 # the connection's outbound key (valid if used)
    uint64_t last               # TSC of its last packet
    uint64_t closing            # TSC when FIN had been seen both ways (0: not yet)
    uint64_t ekey               # adopted entries: external address, port, protocol
    uint8_t used
    uint8_t fins
    uint8_t lent                # own slot whose mapping another instance owns now


ctypedef struct nat_ext:
    uint32_t addr
    uint32_t lo, hi             # port range
    uint32_t base               # first slot


cdef inline void put16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 8)
    p[1] = <uint8_t>v


cdef inline void put32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v >> 24)
    p[1] = <uint8_t>(v >> 16)
    p[2] = <uint8_t>(v >> 8)
    p[3] = <uint8_t>v


cdef inline void csum16(uint8_t *ck, uint16_t old, uint16_t new) noexcept nogil:
    """RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')."""
    cdef uint32_t s = (<uint32_t>(~qd_rd16(ck)) & 0xffff) + (<uint32_t>(~old) & 0xffff) + new
    s = (s & 0xffff) + (s >> 16)
    s = (s & 0xffff) + (s >> 16)
    put16(ck, <uint16_t>(~s))


cdef inline void csum32(uint8_t *ck, uint32_t old, uint32_t new) noexcept nogil:
    csum16(ck, <uint16_t>(old >> 16), <uint16_t>(new >> 16))
    csum16(ck, <uint16_t>old, <uint16_t>new)


cdef class NatNF(StatefulNF):
    cdef uint32_t inet[NAT_MAX_PREFIXES]
    cdef uint32_t imask[NAT_MAX_PREFIXES]
    cdef int ninternal
    cdef nat_ext ext[NAT_MAX_EXTERNAL]
    cdef int next_
    cdef uint32_t adopt[NAT_MAX_EXTERNAL]   # other instances' addresses it may take over
    cdef int nadopt
    cdef uint32_t instance                 # its id: the owner it writes and looks for
    cdef nat_slot *ad                      # adopted connections: open addressing by ekey
    cdef uint32_t nad, ad_sweep, ad_size   # ad_size: a power of 2
    cdef uint64_t cand[2 * NAT_SWEEP]      # timers fired this sweep: ekey ...
    cdef uint8_t cand_ad[2 * NAT_SWEEP]    # ... of an adopted entry (1) or own slot (0)
    cdef uint8_t cand_closing[2 * NAT_SWEEP]
    cdef int ncand
    cdef object _fetch                     # the runtime's fetch (restore): timer re-reads
    cdef uint64_t reread_at                # no re-read before (TSC): the store failed one
    cdef nat_slot *slots
    cdef uint32_t nslots
    cdef uint32_t *freeq        # ring of free slot numbers (2 * nslots: see alloc)
    cdef uint32_t fq_head, fq_count, fq_size, sweep_at
    cdef uint64_t tcp_idle, udp_idle, closing_t, lent_t, hz
    cdef readonly uint64_t out_pkts, in_pkts, new_mappings, ended, expired, no_mapping
    cdef readonly uint64_t filtered, pool_exhausted, unsupported, malformed, passthrough
    cdef readonly uint64_t state_errors, live, restored
    cdef readonly uint64_t lent, adopted_total, handed_back, returned, adopt_full, timer_reads

    def __dealloc__(self):
        PyMem_Free(self.slots)
        PyMem_Free(self.freeq)
        PyMem_Free(self.ad)

    def configure(self, config):
        config = dict(config or {})
        internal = config.pop("internal", None)
        if isinstance(internal, str):
            internal = [internal]
        if not isinstance(internal, list) or not 1 <= len(internal) <= NAT_MAX_PREFIXES:
            raise NFConfigError("config.internal",
                                f"must be a list of 1..{NAT_MAX_PREFIXES} IPv4 prefixes")
        for i, p in enumerate(internal):
            try:
                net = ipaddress.IPv4Network(p)
            except (ValueError, TypeError) as exc:
                raise NFConfigError(f"config.internal[{i}]", f"not an IPv4 prefix: {exc}") from None
            self.inet[i] = int(net.network_address)
            self.imask[i] = int(net.netmask)
        self.ninternal = len(internal)
        external = config.pop("external", None)
        if not isinstance(external, list) or not 1 <= len(external) <= NAT_MAX_EXTERNAL:
            raise NFConfigError("config.external",
                                f"must be a list of 1..{NAT_MAX_EXTERNAL} {{address, ports}}")
        total = 0
        seen = set()
        for i, e in enumerate(external):
            where = f"config.external[{i}]"
            if not isinstance(e, dict) or set(e) - {"address", "ports"} or "address" not in e:
                raise NFConfigError(where, "must be {address: A.B.C.D, ports: 'LO-HI'}")
            try:
                addr = ipaddress.IPv4Address(e["address"])
            except (ValueError, TypeError) as exc:
                raise NFConfigError(f"{where}.address", f"not an IPv4 address: {exc}") from None
            if addr in seen:
                raise NFConfigError(f"{where}.address", f"{addr} given twice")
            seen.add(addr)
            if any(int(addr) & self.imask[j] == self.inet[j] for j in range(self.ninternal)):
                raise NFConfigError(f"{where}.address", f"{addr} is inside config.internal")
            lo, hi = _port_range(e.get("ports", "1024-65535"), f"{where}.ports")
            self.ext[i].addr = int(addr)
            self.ext[i].lo = lo
            self.ext[i].hi = hi
            self.ext[i].base = total
            total += hi - lo + 1
        self.next_ = len(external)
        if total > NAT_MAX_SLOTS:
            raise NFConfigError("config.external", f"{total} ports: at most {NAT_MAX_SLOTS}")
        self.hz = rte_get_tsc_hz()
        hz = self.hz
        self.tcp_idle = int(_seconds(config.pop("tcp_idle_s", 7440), "config.tcp_idle_s") * hz)
        self.udp_idle = int(_seconds(config.pop("udp_idle_s", 300), "config.udp_idle_s") * hz)
        self.closing_t = int(_seconds(config.pop("closing_s", 240), "config.closing_s") * hz)
        self.lent_t = int(_seconds(config.pop("lent_check_s", 30), "config.lent_check_s") * hz)
        inst = config.pop("instance", 0)
        if isinstance(inst, bool) or not isinstance(inst, int) or not 0 <= inst < 2**32:
            raise NFConfigError("config.instance", f"must be an instance id >= 0, got {inst!r}")
        self.instance = inst
        adopt = config.pop("adopt", [])
        if isinstance(adopt, str):
            adopt = [adopt]
        if not isinstance(adopt, list) or len(adopt) > NAT_MAX_EXTERNAL:
            raise NFConfigError("config.adopt", f"must be a list of 0..{NAT_MAX_EXTERNAL} "
                                "IPv4 addresses (the chain's other external addresses)")
        for i, a in enumerate(adopt):
            try:
                addr = ipaddress.IPv4Address(a)
            except (ValueError, TypeError) as exc:
                raise NFConfigError(f"config.adopt[{i}]", f"not an IPv4 address: {exc}") from None
            if addr in seen:
                raise NFConfigError(f"config.adopt[{i}]", f"{addr} is in config.external")
            if any(int(addr) & self.imask[j] == self.inet[j] for j in range(self.ninternal)):
                raise NFConfigError(f"config.adopt[{i}]", f"{addr} is inside config.internal")
            self.adopt[i] = int(addr)
        self.nadopt = len(adopt)
        amax = config.pop("adopted_max", 4096)
        amax_ok = isinstance(amax, int) and not isinstance(amax, bool)
        if not amax_ok or not 1 <= amax <= NAT_ADOPTED_MAX * 3 // 4:
            raise NFConfigError("config.adopted_max",
                                f"must be 1..{NAT_ADOPTED_MAX * 3 // 4}, got {amax!r}")
        size = 4
        while size // 4 * 3 < amax:
            size *= 2
        if config:
            raise NFConfigError(f"config.{sorted(config)[0]}", "unknown option")
        PyMem_Free(self.slots)
        PyMem_Free(self.freeq)
        PyMem_Free(self.ad)
        self.ad_size = size
        self.ad = <nat_slot *>PyMem_Malloc(size * sizeof(nat_slot))
        if self.ad == NULL:
            raise MemoryError()
        memset(self.ad, 0, size * sizeof(nat_slot))
        self.nad = 0
        self.ad_sweep = 0
        self.ncand = 0
        self.nslots = total
        self.slots = <nat_slot *>PyMem_Malloc(total * sizeof(nat_slot))
        self.fq_size = 2 * total
        self.freeq = <uint32_t *>PyMem_Malloc(self.fq_size * sizeof(uint32_t))
        if self.slots == NULL or self.freeq == NULL:
            raise MemoryError()
        memset(self.slots, 0, total * sizeof(nat_slot))
        self._fill_free()
        self.bidirectional = 0

    def _fill_free(self):
        cdef uint32_t j
        self.fq_head = 0
        self.fq_count = 0
        for j in range(self.nslots):
            if not self.slots[j].used:
                self.freeq[self.fq_count] = j
                self.fq_count += 1

    def restore(self, fetch):
        """Mark the ports of the mappings Redis has for this pool as taken."""
        cdef qd_key k
        cdef uint32_t j, port
        cdef int x
        cdef bytes v
        cdef const uint8_t *d
        cdef nat_slot *sl
        cdef uint64_t now = rte_rdtsc()
        self._fetch = fetch
        for proto in (6, 17):
            keys = []
            for x in range(self.next_):
                for port in range(self.ext[x].lo, self.ext[x].hi + 1):
                    self._in_key(&k, self.ext[x].addr, port, proto)
                    keys.append((<char *>&k)[:sizeof(qd_key)])
            values = fetch(keys)
            j = 0
            for x in range(self.next_):
                for port in range(self.ext[x].lo, self.ext[x].hi + 1):
                    v = values[j]
                    j += 1
                    if v is None or len(v) != 12:
                        continue
                    d = <const uint8_t *>v
                    sl = &self.slots[self.ext[x].base + port - self.ext[x].lo]
                    qd_key_init(&sl.okey)
                    sl.okey.kind = KIND_OUT
                    sl.okey.proto = proto
                    memcpy(&sl.okey.a, d, 4)
                    memcpy(&sl.okey.pa, d + 4, 2)
                    memcpy(&sl.okey.pb, d + 6, 2)
                    memcpy(&sl.okey.b, d + 8, 4)
                    sl.used = 1
                    sl.last = now
                    self.live += 1
                    self.restored += 1
        self._fill_free()

    def stats(self):
        return {
            "out": self.out_pkts, "in": self.in_pkts, "new_mappings": self.new_mappings,
            "ended": self.ended, "expired": self.expired, "no_mapping": self.no_mapping,
            "filtered": self.filtered, "pool_exhausted": self.pool_exhausted,
            "unsupported": self.unsupported, "malformed": self.malformed,
            "passthrough": self.passthrough, "state_errors": self.state_errors,
            "live": self.live, "restored": self.restored, "free_ports": self.fq_count,
            "adopted": self.nad, "adopted_total": self.adopted_total, "lent": self.lent,
            "handed_back": self.handed_back, "returned": self.returned,
            "adopt_full": self.adopt_full, "timer_reads": self.timer_reads,
        }

    # -- keys ------------------------------------------------------------------------------

    cdef inline void _in_key(self, qd_key *k, uint32_t addr, uint32_t port,
                             uint8_t proto) noexcept nogil:
        qd_key_init(k)
        k.kind = KIND_IN
        k.a = addr
        k.pa = <uint16_t>port
        k.proto = proto

    cdef inline int _ext_index(self, uint32_t addr) noexcept nogil:
        cdef int x
        for x in range(self.next_):
            if self.ext[x].addr == addr:
                return x
        return -1

    cdef inline int _adopt_index(self, uint32_t addr) noexcept nogil:
        cdef int x
        for x in range(self.nadopt):
            if self.adopt[x] == addr:
                return x
        return -1

    cdef inline int _inside(self, uint32_t addr) noexcept nogil:
        cdef int j
        for j in range(self.ninternal):
            if addr & self.imask[j] == self.inet[j]:
                return 1
        return 0

    cdef int key(self, const qd_pkt *pkt, qd_key *k) noexcept nogil:
        cdef qd_flow f
        if qd_parse(pkt, &f) != QD_PARSE_OK or not f.has_ports:
            return 0
        if f.proto != 6 and f.proto != 17:
            return 0
        if self._ext_index(f.dst) >= 0 or self._adopt_index(f.dst) >= 0:
            self._in_key(k, f.dst, f.dport, f.proto)
            return 1
        if self._inside(f.src):
            qd_key_init(k)
            k.kind = KIND_OUT
            k.a = f.src
            k.b = f.dst
            k.pa = f.sport
            k.pb = f.dport
            k.proto = f.proto
            return 1
        return 0

    # -- pool ------------------------------------------------------------------------------

    cdef inline int32_t _slot(self, uint32_t addr, uint32_t port) noexcept nogil:
        cdef int x = self._ext_index(addr)
        if x < 0 or port < self.ext[x].lo or port > self.ext[x].hi:
            return -1
        return <int32_t>(self.ext[x].base + port - self.ext[x].lo)

    cdef inline void _slot_endpoint(self, uint32_t j, uint32_t *addr,
                                    uint16_t *port) noexcept nogil:
        cdef int x
        for x in range(self.next_):
            if self.ext[x].base <= j < self.ext[x].base + self.ext[x].hi - self.ext[x].lo + 1:
                addr[0] = self.ext[x].addr
                port[0] = <uint16_t>(self.ext[x].lo + j - self.ext[x].base)
                return

    cdef inline void _push_free(self, uint32_t j) noexcept nogil:
        if self.fq_count < self.fq_size:
            self.freeq[(self.fq_head + self.fq_count) % self.fq_size] = j
            self.fq_count += 1

    cdef int32_t _alloc(self) noexcept nogil:
        """The free slot that has been free longest, or -1."""
        cdef uint32_t j
        while self.fq_count:
            j = self.freeq[self.fq_head]
            self.fq_head = (self.fq_head + 1) % self.fq_size
            self.fq_count -= 1
            if not self.slots[j].used:  # skip a slot adopted from Redis while queued
                return <int32_t>j
        return -1

    # -- adopted connections (another instance's address) ---------------------------------

    cdef inline int32_t _ad_find(self, uint64_t ek) noexcept nogil:
        cdef uint32_t h = _ehash(ek) & (self.ad_size - 1)
        cdef uint32_t _n
        for _n in range(self.ad_size):
            if not self.ad[h].used:
                return -1
            if self.ad[h].ekey == ek:
                return <int32_t>h
            h = (h + 1) & (self.ad_size - 1)
        return -1

    cdef int32_t _ad_add(self, uint64_t ek, const qd_key *okey) noexcept nogil:
        """The adopted entry of ``ek`` (added if new), or -1 when the table is 3/4 full."""
        cdef int32_t p = self._ad_find(ek)
        cdef uint32_t h
        if p >= 0:
            return p
        if self.nad >= self.ad_size // 4 * 3:
            self.adopt_full += 1
            return -1
        h = _ehash(ek) & (self.ad_size - 1)
        while self.ad[h].used:
            h = (h + 1) & (self.ad_size - 1)
        memset(&self.ad[h], 0, sizeof(nat_slot))
        self.ad[h].used = 1
        self.ad[h].ekey = ek
        memcpy(&self.ad[h].okey, okey, sizeof(qd_key))
        self.nad += 1
        self.adopted_total += 1
        return <int32_t>h

    cdef void _ad_del(self, uint32_t h) noexcept nogil:
        """Remove entry ``h``, shifting back the entries its probe sequence let past."""
        cdef uint32_t j = h, k
        self.ad[h].used = 0
        self.nad -= 1
        while True:
            j = (j + 1) & (self.ad_size - 1)
            if not self.ad[j].used:
                return
            k = _ehash(self.ad[j].ekey) & (self.ad_size - 1)
            # entry j stays if its home k lies cyclically in (h, j]
            if (h < j and h < k <= j) or (h > j and (k > h or k <= j)):
                continue
            memcpy(&self.ad[h], &self.ad[j], sizeof(nat_slot))
            self.ad[j].used = 0
            h = j

    # -- ending a connection -------------------------------------------------------------

    cdef int _delete_keys(self, const qd_key *okey, uint32_t addr, uint16_t port,
                          uint16_t i) noexcept nogil:
        cdef qd_key ik
        self._in_key(&ik, addr, port, okey.proto)
        if qd_state_delete(self.state, i, okey) or qd_state_delete(self.state, i, &ik):
            self.state_errors += 1
            return -1  # retried by the sweep
        return 0

    cdef void _free_slot(self, uint32_t j) noexcept nogil:
        cdef nat_slot *sl = &self.slots[j]
        if sl.lent:
            self.lent -= 1
            self.returned += 1
        sl.used = 0
        sl.fins = 0
        sl.closing = 0
        sl.lent = 0
        self.live -= 1
        self._push_free(j)

    cdef void _end(self, int32_t r, uint16_t i) noexcept nogil:
        """End connection ``r`` (>= 0: own slot, < 0: adopted entry -r-1): delete both
        keys (packet ``i`` waits for it), then free the port or drop the entry."""
        cdef uint32_t addr = 0
        cdef uint16_t port = 0
        cdef nat_slot *sl
        if r >= 0:
            sl = &self.slots[r]
            self._slot_endpoint(<uint32_t>r, &addr, &port)
            if self._delete_keys(&sl.okey, addr, port, i) == 0:
                self._free_slot(<uint32_t>r)
        else:
            sl = &self.ad[-r - 1]
            if self._delete_keys(&sl.okey, <uint32_t>(sl.ekey >> 32),
                                 <uint16_t>(sl.ekey >> 16), i) == 0:
                self._ad_del(<uint32_t>(-r - 1))

    # -- timers --------------------------------------------------------------------------

    cdef inline int _fired(self, nat_slot *sl, uint64_t now) noexcept nogil:
        """0: not yet; 1: idle (or a lent port's re-check); 2: closing over."""
        cdef uint64_t limit
        if sl.closing:
            return 2 if now - sl.closing > self.closing_t else 0
        if sl.lent:
            limit = self.lent_t
        else:
            limit = self.tcp_idle if sl.okey.proto == 6 else self.udp_idle
        return 1 if now > sl.last and now - sl.last > limit else 0

    cdef void _candidate(self, uint64_t ek, uint8_t adopted, int why,
                         uint64_t now) noexcept nogil:
        if self.ncand >= 2 * NAT_SWEEP:
            self._resolve(now)
        self.cand[self.ncand] = ek
        self.cand_ad[self.ncand] = adopted
        self.cand_closing[self.ncand] = why == 2
        self.ncand += 1

    cdef void _sweep(self, uint64_t now, uint32_t n) noexcept nogil:
        cdef uint32_t _c, j
        cdef nat_slot *sl
        cdef uint32_t addr = 0
        cdef uint16_t port = 0
        cdef int why
        for _c in range(n if self.nslots else 0):
            j = self.sweep_at
            self.sweep_at = (j + 1) % self.nslots
            sl = &self.slots[j]
            if not sl.used:
                continue
            why = self._fired(sl, now)
            if why:
                self._slot_endpoint(j, &addr, &port)
                self._candidate(_ekey(addr, port, sl.okey.proto), 0, why, now)
        for _c in range(min(NAT_AD_SWEEP, self.ad_size) if self.nad else 0):
            j = self.ad_sweep
            self.ad_sweep = (j + 1) & (self.ad_size - 1)
            sl = &self.ad[j]
            if sl.used:
                why = self._fired(sl, now)
                if why:
                    self._candidate(sl.ekey, 1, why, now)
        if self.ncand:
            self._resolve(now)

    cdef void _resolve(self, uint64_t now) noexcept with gil:
        """The fired timers: re-read their ``out`` keys (one MGET) and end, lend or let go."""
        cdef int c, n = self.ncand
        cdef int32_t r
        cdef nat_slot *sl
        cdef uint64_t ek
        cdef bytes v
        cdef uint32_t owner
        self.ncand = 0
        if now < self.reread_at or (self.state != NULL and self.state.store_down):
            return  # Redis failed the last one, or is away: the timers fire again later
        recs = []
        keys = []
        seen = set()
        for c in range(n):
            ek = self.cand[c]
            if self.cand_ad[c]:
                r = self._ad_find(ek)
                r = -r - 1 if r >= 0 else 0x7fffffff
            else:
                r = self._slot(<uint32_t>(ek >> 32), <uint16_t>(ek >> 16))
            if r == 0x7fffffff or (r < 0 and not self.cand_ad[c]):
                continue
            sl = &self.slots[r] if r >= 0 else &self.ad[-r - 1]
            if not sl.used or self._fired(sl, now) == 0:
                continue  # ended or woken since
            if (r, ek) in seen:
                continue
            seen.add((r, ek))
            recs.append((r, ek, self.cand_closing[c]))
            keys.append((<char *>&sl.okey)[:sizeof(qd_key)])
        if not keys:
            return
        if self._fetch is None:  # never restored (no store to ask): ours to end, as before
            values = [b""] * len(keys)
        else:
            try:
                values = self._fetch(keys)
                self.timer_reads += 1
            except Exception:  # noqa: BLE001 - the store is down: ask again in a second
                self.state_errors += 1
                self.reread_at = now + self.hz
                return
        for (r, ek, closing), v in zip(recs, values):
            if r < 0:  # an earlier deletion may have shifted it: find it again
                r = self._ad_find(ek)
                if r < 0:
                    continue
                r = -r - 1
            sl = &self.slots[r] if r >= 0 else &self.ad[-r - 1]
            if not sl.used:
                continue
            if v is not None and len(v) == 0:  # (no store) as before owners: end it
                owner = self.instance
            elif (v is None or len(v) not in (8, 12)
                    or _u32(v, 0) != <uint32_t>(ek >> 32)
                    or _u16(v, 4) != <uint16_t>(ek >> 16)):
                # its keys are gone (the instance that had it ended it): let it go
                if r >= 0:
                    self._free_slot(<uint32_t>r)
                else:
                    self._ad_del(<uint32_t>(-r - 1))
                continue
            else:
                owner = _u32(v, 8) if len(v) == 12 else 0
            if owner == self.instance or (owner == 0 and r >= 0):
                self._end(r, QD_NO_PKT)
                if closing:
                    self.ended += 1
                else:
                    self.expired += 1
            elif r >= 0:  # ours, lent to another instance: keep the port, look again later
                if not sl.lent:
                    sl.lent = 1
                    self.lent += 1
                sl.closing = 0
                sl.last = now
            else:  # adopted, now someone else's: forget it, the keys stay
                self._ad_del(<uint32_t>(-r - 1))
                self.handed_back += 1

    # -- packets ---------------------------------------------------------------------------

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef qd_state *s = self.state
        cdef uint16_t i
        cdef qd_flow f
        cdef int r
        cdef int32_t pos
        self._sweep(batch.tsc, NAT_SWEEP)
        for i in range(batch.count):
            pos = s.pos[i]
            r = qd_parse(&batch.pkts[i], &f)
            if r == QD_PARSE_BAD:
                batch.verdicts[i] = QD_DROP
                self.malformed += 1
                continue
            if pos < 0:
                if r == QD_PARSE_OK and (self._inside(f.src) or self._ext_index(f.dst) >= 0
                                         or self._adopt_index(f.dst) >= 0):
                    batch.verdicts[i] = QD_DROP  # ICMP, fragments, ...: not translated
                    self.unsupported += 1
                else:
                    self.passthrough += 1
                continue
            if not self._l4_ok(&batch.pkts[i], &f):
                batch.verdicts[i] = QD_DROP
                self.malformed += 1
                continue
            if s.entries[pos].key.kind == KIND_OUT:
                self._outbound(batch, i, &f, &s.entries[pos].key)
            else:
                self._inbound(batch, i, &f)

    cdef inline int _l4_ok(self, const qd_pkt *p, const qd_flow *f) noexcept nogil:
        cdef uint32_t need = f.l4_off + (18 if f.proto == 6 else 8)
        return need <= p.len and qd_rd16(p.data + f.l3_off + 2) >= need - f.l3_off

    cdef void _outbound(self, qd_batch *batch, uint16_t i, qd_flow *f,
                        const qd_key *okey) noexcept nogil:
        cdef const qd_val *v = qd_state_get(self.state, i)
        cdef uint8_t *d = batch.pkts[i].data
        cdef uint8_t flags = d[f.l4_off + 13] if f.proto == 6 else 0
        cdef uint8_t val[12]
        cdef uint8_t ival[12]
        cdef uint32_t eaddr
        cdef uint16_t eport
        cdef int32_t j
        cdef qd_key ik
        cdef nat_slot *sl
        if v != NULL and (v.len == 8 or v.len == 12):
            memcpy(&eaddr, v.data, 4)
            memcpy(&eport, v.data + 4, 2)
            j = self._slot(eaddr, eport)
            if j < 0:  # a mapping to an address this instance does not own
                if self._adopt_index(eaddr) < 0:
                    batch.verdicts[i] = QD_DROP
                    self.no_mapping += 1
                    return
                j = self._ad_add(_ekey(eaddr, eport, f.proto), okey)
                if j < 0:
                    batch.verdicts[i] = QD_DROP
                    return
                j = -j - 1
                sl = &self.ad[-j - 1]
            else:
                sl = &self.slots[j]
                if not sl.used or not qd_key_eq(&sl.okey, okey):  # restored, or an old one's
                    if not sl.used:
                        self.live += 1
                    sl.used = 1
                    sl.fins = 0
                    sl.closing = 0
                    memcpy(&sl.okey, okey, sizeof(qd_key))
                if sl.lent:  # moved back here
                    sl.lent = 0
                    self.lent -= 1
        else:
            if f.proto == 6 and (flags & 0x17) != 0x02:  # TCP: only a SYN opens a mapping
                batch.verdicts[i] = QD_DROP
                self.no_mapping += 1
                return
            j = self._alloc()
            if j < 0:
                self._sweep(batch.tsc, self.nslots)  # reclaim whatever has timed out
                j = self._alloc()
            if j < 0:
                batch.verdicts[i] = QD_DROP
                self.pool_exhausted += 1
                return
            sl = &self.slots[j]
            eaddr = 0
            eport = 0
            self._slot_endpoint(<uint32_t>j, &eaddr, &eport)
            memcpy(val, &eaddr, 4)
            memcpy(val + 4, &eport, 2)
            memset(val + 6, 0, 6)  # owner 0: this address's instance, whoever it is
            memcpy(ival, &f.src, 4)
            memcpy(ival + 4, &f.sport, 2)
            memcpy(ival + 6, &f.dport, 2)
            memcpy(ival + 8, &f.dst, 4)
            self._in_key(&ik, eaddr, eport, f.proto)
            if (qd_state_update(self.state, i, okey, val, 12)
                    or qd_state_update(self.state, i, &ik, ival, 12)):
                self._push_free(<uint32_t>j)
                batch.verdicts[i] = QD_DROP
                self.state_errors += 1
                return
            sl.used = 1
            sl.fins = 0
            sl.closing = 0
            sl.lent = 0
            memcpy(&sl.okey, okey, sizeof(qd_key))
            self.live += 1
            self.new_mappings += 1
        sl.last = batch.tsc
        # rewrite the source: address (IP and L4 checksums), port (L4 checksum)
        self._rewrite(d, f, f.l3_off + 12, eaddr, f.l4_off, eport)
        self.out_pkts += 1
        self._tcp_end(j, sl, i, flags, FIN_OUT, batch.tsc)

    cdef void _inbound(self, qd_batch *batch, uint16_t i, qd_flow *f) noexcept nogil:
        cdef const qd_val *v = qd_state_get(self.state, i)
        cdef uint8_t *d = batch.pkts[i].data
        cdef uint8_t flags = d[f.l4_off + 13] if f.proto == 6 else 0
        cdef uint32_t iaddr, raddr
        cdef uint16_t iport, rport
        cdef int32_t j
        cdef nat_slot *sl
        cdef qd_key okey
        if v == NULL or v.len != 12:
            batch.verdicts[i] = QD_DROP
            self.no_mapping += 1
            return
        memcpy(&iaddr, v.data, 4)
        memcpy(&iport, v.data + 4, 2)
        memcpy(&rport, v.data + 6, 2)
        memcpy(&raddr, v.data + 8, 4)
        if raddr != f.src or rport != f.sport:
            batch.verdicts[i] = QD_DROP
            self.filtered += 1
            return
        qd_key_init(&okey)
        okey.kind = KIND_OUT
        okey.proto = f.proto
        okey.a = iaddr
        okey.b = raddr
        okey.pa = iport
        okey.pb = rport
        j = self._slot(f.dst, f.dport)
        if j < 0:  # another instance's address (key() only keys those of config.adopt)
            j = self._ad_add(_ekey(f.dst, f.dport, f.proto), &okey)
            if j < 0:
                batch.verdicts[i] = QD_DROP
                return
            j = -j - 1
            sl = &self.ad[-j - 1]
        else:
            sl = &self.slots[j]
            if not sl.used:  # adopted from Redis
                memcpy(&sl.okey, &okey, sizeof(qd_key))
                sl.used = 1
                self.live += 1
            if sl.lent:  # moved back here
                sl.lent = 0
                self.lent -= 1
        sl.last = batch.tsc
        self._rewrite(d, f, f.l3_off + 16, iaddr, f.l4_off + 2, iport)
        self.in_pkts += 1
        self._tcp_end(j, sl, i, flags, FIN_IN, batch.tsc)

    cdef inline void _rewrite(self, uint8_t *d, const qd_flow *f, uint32_t aoff, uint32_t addr,
                              uint32_t poff, uint16_t port) noexcept nogil:
        cdef uint32_t old_addr = qd_rd32(d + aoff)
        cdef uint16_t old_port = qd_rd16(d + poff)
        cdef uint8_t *l4ck
        csum32(d + f.l3_off + 10, old_addr, addr)
        put32(d + aoff, addr)
        put16(d + poff, port)
        if f.proto == 6:
            l4ck = d + f.l4_off + 16
        else:
            l4ck = d + f.l4_off + 6
            if qd_rd16(l4ck) == 0:  # UDP without checksum stays without
                return
        csum32(l4ck, old_addr, addr)
        csum16(l4ck, old_port, port)
        if f.proto == 17 and qd_rd16(l4ck) == 0:
            put16(l4ck, 0xffff)

    cdef inline void _tcp_end(self, int32_t j, nat_slot *sl, uint16_t i, uint8_t flags,
                              uint8_t fin, uint64_t now) noexcept nogil:
        if flags & 0x04:  # RST: the connection is over
            self._end(j, i)
            self.ended += 1
        elif flags & 0x01:
            sl.fins |= fin
            if sl.fins == (FIN_OUT | FIN_IN) and not sl.closing:
                sl.closing = now if now else 1


cdef inline uint64_t _ekey(uint32_t addr, uint16_t port, uint8_t proto) noexcept nogil:
    """An external endpoint as one number (never 0: proto is 6 or 17)."""
    return (<uint64_t>addr << 32) | (<uint64_t>port << 16) | proto


cdef inline uint32_t _ehash(uint64_t k) noexcept nogil:
    k ^= k >> 33
    k *= 0xff51afd7ed558ccdULL
    k ^= k >> 33
    return <uint32_t>k


cdef inline uint32_t _u32(bytes v, int off):
    cdef uint32_t x
    memcpy(&x, <const char *>v + off, 4)
    return x


cdef inline uint16_t _u16(bytes v, int off):
    cdef uint16_t x
    memcpy(&x, <const char *>v + off, 2)
    return x


def _seconds(value, field):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise NFConfigError(field, f"must be a number of seconds >= 0, got {value!r}")
    return value


def _port_range(value, field):
    if isinstance(value, int) and not isinstance(value, bool):
        lo = hi = value
    elif isinstance(value, str) and value.count("-") <= 1:
        parts = value.split("-")
        try:
            lo, hi = int(parts[0]), int(parts[-1])
        except ValueError:
            raise NFConfigError(field, f"must be 'LO-HI' or a port, got {value!r}") from None
    else:
        raise NFConfigError(field, f"must be 'LO-HI' or a port, got {value!r}")
    if not 1 <= lo <= hi <= 65535:
        raise NFConfigError(field, f"must be within 1..65535, LO <= HI, got {value!r}")
    return lo, hi
