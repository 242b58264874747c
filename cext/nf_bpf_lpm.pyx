# cython: language_level=3
"""``bpf_lpm``: the paper's benchmark NF, parse then N longest-prefix matches.

Per packet: parse the 5-tuple (malformed and non-IPv4 frames are dropped),
then ``lookups`` (default 200) ``rte_lpm`` lookups keyed on the 5-tuple, four
at a time with ``rte_lpm_lookupx4``.  Round ``j`` looks up the four words

    src ^ (j << 12),  dst ^ (j << 12),  (sport << 16 | dport) ^ src ^ (j << 12),
    (proto << 24) ^ dst ^ (j << 12)

so every lookup is a different table entry near the flow's own (``keys:
tuple``, the default: cache-resident, as a per-flow NF's working set is).
``keys: spread`` hashes each key over the whole address space instead, which
makes every lookup a cache miss in the 64 MB ``tbl24`` (memory-bound).  The
packet is forwarded unchanged; hits and misses are NF counters.
"""

from libc.stdint cimport uint16_t, uint32_t

from cext.dpdk cimport _mm_set_epi32, rte_lpm_lookupx4
from cext.lpm cimport LpmTable
from cext.nf cimport QD_DROP, NativeNF, qd_batch
from cext.pkt cimport QD_PARSE_OK, qd_flow, qd_parse

from worker.nf_errors import NFConfigError
from worker.nf_tables import parse_bpf_lpm


cdef inline uint32_t mix32(uint32_t h) noexcept nogil:
    # murmur3's finaliser
    h ^= h >> 16
    h *= 0x85ebca6bU
    h ^= h >> 13
    h *= 0xc2b2ae35U
    h ^= h >> 16
    return h


cdef class BpfLpmNF(NativeNF):
    cdef LpmTable table
    cdef readonly unsigned lookups
    cdef bint spread
    cdef readonly unsigned long long hits, misses, malformed

    def configure(self, config):
        config = dict(config or {})
        keys = config.pop("keys", "tuple")
        if keys not in ("tuple", "spread"):
            raise NFConfigError("config.keys", f"must be 'tuple' or 'spread', got {keys!r}")
        self.spread = keys == "spread"
        cfg = parse_bpf_lpm(config, self.base_dir)
        self.lookups = cfg.lookups
        self.table = LpmTable("qd_bpflpm", [(n, d, i) for i, (n, d, _) in enumerate(cfg.routes)])

    def stats(self):
        return {"lookups": self.lookups, "hits": self.hits, "misses": self.misses,
                "malformed": self.malformed, "routes": self.table.rules,
                "keys": "spread" if self.spread else "tuple"}

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef uint16_t i
        cdef unsigned j, k, done
        cdef qd_flow f
        cdef uint32_t hop[4]
        cdef uint32_t key[4]
        cdef uint32_t salt
        cdef unsigned long long hits = 0, n = 0
        cdef uint32_t MISS = 0xffffffffU  # no next hop is this large (24 bits)
        for i in range(batch.count):
            if qd_parse(&batch.pkts[i], &f) != QD_PARSE_OK:
                self.malformed += 1
                batch.verdicts[i] = QD_DROP
                continue
            done = 0
            j = 0
            while done < self.lookups:
                salt = j << 12
                key[0] = f.src ^ salt
                key[1] = f.dst ^ salt
                key[2] = ((<uint32_t>f.sport << 16) | f.dport) ^ f.src ^ salt
                key[3] = (<uint32_t>f.proto << 24) ^ f.dst ^ salt
                if self.spread:
                    for k in range(4):
                        key[k] = mix32(key[k] + j)
                rte_lpm_lookupx4(self.table.lpm,
                                 _mm_set_epi32(key[3], key[2], key[1], key[0]), hop, MISS)
                for k in range(4):
                    if done + k < self.lookups and hop[k] != MISS:
                        hits += 1
                done += 4
                j += 1
            n += self.lookups
        self.hits += hits
        self.misses += n - hits
