# cython: language_level=3
"""``bpf_lpm``: the paper's benchmark NF, parse then N longest-prefix matches.

Per packet: parse the 5-tuple (malformed and non-IPv4 frames are dropped),
then ``lookups`` (default 200) ``rte_lpm`` lookups whose keys are derived
from the 5-tuple: lookup ``j`` uses ``mix(src ^ rotl(dst, j) ^ ports ^ proto
^ j)``, so every lookup walks a different part of the table.  The packet is
forwarded unchanged; the number of lookups that hit is an NF counter.
"""

from libc.stdint cimport uint16_t, uint32_t

from cext.dpdk cimport rte_lpm_lookup
from cext.lpm cimport LpmTable
from cext.nf cimport QD_DROP, NativeNF, qd_batch
from cext.pkt cimport QD_PARSE_OK, qd_flow, qd_parse

from worker.nf_tables import parse_bpf_lpm


cdef inline uint32_t mix32(uint32_t h) noexcept nogil:
    # murmur3's finaliser: spreads the tuple over the whole address space
    h ^= h >> 16
    h *= 0x85ebca6bU
    h ^= h >> 13
    h *= 0xc2b2ae35U
    h ^= h >> 16
    return h


cdef class BpfLpmNF(NativeNF):
    cdef LpmTable table
    cdef readonly unsigned lookups
    cdef readonly unsigned long long hits, misses, malformed

    def configure(self, config):
        cfg = parse_bpf_lpm(config or {}, self.base_dir)
        self.lookups = cfg.lookups
        self.table = LpmTable("qd_bpflpm", [(n, d, i) for i, (n, d, _) in enumerate(cfg.routes)])

    def stats(self):
        return {"lookups": self.lookups, "hits": self.hits, "misses": self.misses,
                "malformed": self.malformed, "routes": self.table.rules}

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef uint16_t i
        cdef unsigned j
        cdef qd_flow f
        cdef uint32_t hop, base, hits = 0, n = 0
        for i in range(batch.count):
            if qd_parse(&batch.pkts[i], &f) != QD_PARSE_OK:
                self.malformed += 1
                batch.verdicts[i] = QD_DROP
                continue
            base = f.src ^ ((<uint32_t>f.sport << 16) | f.dport) ^ f.proto
            for j in range(self.lookups):
                if rte_lpm_lookup(self.table.lpm,
                                  mix32(base ^ ((f.dst << (j & 31)) | (f.dst >> ((32 - j) & 31)))
                                        ^ j), &hop) == 0:
                    hits += 1
            n += self.lookups
        self.hits += hits
        self.misses += n - hits
