# cython: language_level=3
"""``bpf_lpm``: the paper's benchmark NF, parse then N longest-prefix matches.

Per packet: parse the 5-tuple (malformed and non-IPv4 frames are dropped),
then ``lookups`` (default 200) ``rte_lpm_lookup`` calls keyed on the 5-tuple,
four independent ones per round (scalar lookups overlap in the CPU; this is
twice as fast here as ``rte_lpm_lookupx4``).  Round ``j`` looks up the words

    src ^ s,  dst ^ s,  (sport << 16 | dport) ^ src ^ s,  (proto << 24) ^ dst ^ s
    with s = j & 0xff

(``keys: tuple``, the default): the salt changes only the host byte, so the
lookups of one packet stay on its flow's ``tbl24`` entries (and walk the
slots of a ``tbl8`` group where a prefix is longer than /24): a per-flow
working set that stays in cache, as the paper's NF over one packet's tuple.
``keys: spread`` hashes each key over the whole address space instead, which
makes every lookup a likely cache miss in the 64 MB ``tbl24`` (memory-bound).
The packet is forwarded unchanged; hits and misses are NF counters.
"""

from libc.stdint cimport uint16_t, uint32_t

from cext.dpdk cimport rte_lpm_lookup
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
        self.in_place = True  # reads and sets verdicts: never moves a frame's window
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
        cdef unsigned j, k, m, done
        cdef qd_flow f
        cdef uint32_t hop[4]
        cdef uint32_t key[4]
        cdef uint32_t salt
        cdef unsigned long long hits = 0, n = 0
        for i in range(batch.count):
            if qd_parse(&batch.pkts[i], &f) != QD_PARSE_OK:
                self.malformed += 1
                batch.verdicts[i] = QD_DROP
                continue
            done = 0
            j = 0
            while done < self.lookups:
                salt = j & 0xff  # the host byte: same /24 entry, another tbl8 slot
                key[0] = f.src ^ salt
                key[1] = f.dst ^ salt
                key[2] = ((<uint32_t>f.sport << 16) | f.dport) ^ f.src ^ salt
                key[3] = (<uint32_t>f.proto << 24) ^ f.dst ^ salt
                if self.spread:
                    for k in range(4):
                        key[k] = mix32(key[k] + j)
                m = self.lookups - done
                if m >= 4:  # four independent lookups the CPU can overlap
                    hits += (rte_lpm_lookup(self.table.lpm, key[0], &hop[0]) == 0) \
                        + (rte_lpm_lookup(self.table.lpm, key[1], &hop[1]) == 0) \
                        + (rte_lpm_lookup(self.table.lpm, key[2], &hop[2]) == 0) \
                        + (rte_lpm_lookup(self.table.lpm, key[3], &hop[3]) == 0)
                    done += 4
                else:
                    for k in range(m):
                        hits += rte_lpm_lookup(self.table.lpm, key[k], &hop[k]) == 0
                    done += m
                j += 1
            n += self.lookups
        self.hits += hits
        self.misses += n - hits
