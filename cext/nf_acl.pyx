# cython: language_level=3
"""``acl``: allow/deny on the IPv4 5-tuple with DPDK's ``rte_acl``.

Rules (first match wins) come from ``rules`` and/or ``rule_file`` (see
``worker.nf_tables.parse_acl``; ``tools/gen_acl_rules.py`` writes large
sets).  A packet no rule matches, or that is not IPv4, gets ``default``
(deny unless configured); a malformed IPv4 packet is dropped.  The whole
batch is classified with one ``rte_acl_classify`` call.
"""

from libc.stdint cimport int32_t, uint8_t, uint16_t, uint32_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from cext.dpdk cimport rte_acl_classify, rte_acl_ctx, rte_acl_free
from cext.nf cimport QD_DROP, NativeNF, qd_batch
from cext.pkt cimport QD_PARSE_BAD, QD_PARSE_OK, qd_flow, qd_parse
from cext.runtime cimport QD_MAX_BURST

from cext.eal import EalError
from worker.nf_tables import parse_acl


cdef extern from "src/qd_acl.h":
    cdef struct qd_acl_key:
        uint8_t proto
        uint8_t src[4]
        uint8_t dst[4]
        uint8_t sport[2]
        uint8_t dport[2]
    cdef struct qd_acl_rule_in:
        uint32_t userdata
        int32_t priority
        uint8_t proto, proto_mask
        uint32_t src, dst
        uint8_t src_len, dst_len
        uint16_t sport_lo, sport_hi, dport_lo, dport_hi
    rte_acl_ctx *qd_acl_build(const char *name, const qd_acl_rule_in *rules, uint32_t n,
                              int *err)

_serial = 0


cdef class AclNF(NativeNF):
    cdef rte_acl_ctx *ctx
    cdef uint8_t *allow          # per userdata (rule index + 1): 1 allow, 0 deny
    cdef uint8_t default_allow
    cdef uint32_t nrules
    cdef qd_acl_key keys[QD_MAX_BURST]
    cdef const uint8_t *key_ptrs[QD_MAX_BURST]
    cdef uint32_t results[QD_MAX_BURST]
    cdef uint16_t idx[QD_MAX_BURST]
    cdef readonly unsigned long long allowed, denied, malformed

    def configure(self, config):
        global _serial
        cdef qd_acl_rule_in *rin
        cdef int err = 0
        cdef uint32_t i, n
        self.in_place = True  # verdicts only: never moves a frame's window
        cfg = parse_acl(config or {}, self.base_dir)
        n = len(cfg.rules)
        rin = <qd_acl_rule_in *>malloc(sizeof(qd_acl_rule_in) * (n + 1))
        self.allow = <uint8_t *>malloc(n + 1)
        if rin == NULL or self.allow == NULL:
            free(rin)
            raise MemoryError()
        try:
            for i, r in enumerate(cfg.rules):
                rin[i].userdata = i + 1
                rin[i].priority = n - i  # first rule wins
                rin[i].proto = r.proto
                rin[i].proto_mask = r.proto_mask
                rin[i].src = r.src
                rin[i].src_len = r.src_len
                rin[i].dst = r.dst
                rin[i].dst_len = r.dst_len
                rin[i].sport_lo = r.sport_lo
                rin[i].sport_hi = r.sport_hi
                rin[i].dport_lo = r.dport_lo
                rin[i].dport_hi = r.dport_hi
                self.allow[i + 1] = r.allow
            _serial += 1
            name = f"qd_acl_{_serial}".encode()
            self.ctx = qd_acl_build(name, rin, n, &err)
        finally:
            free(rin)
        if self.ctx == NULL:
            raise EalError(f"building the ACL ({n} rules)", -err)
        self.nrules = n
        self.default_allow = cfg.default_allow

    def stats(self):
        return {"allowed": self.allowed, "denied": self.denied, "malformed": self.malformed,
                "rules": self.nrules}

    def __dealloc__(self):
        if self.ctx != NULL:
            rte_acl_free(self.ctx)
        free(self.allow)

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef uint16_t i, j, k = 0
        cdef qd_flow f
        cdef int r
        cdef uint8_t *d
        cdef qd_acl_key *key
        cdef uint8_t ok
        for i in range(batch.count):
            r = qd_parse(&batch.pkts[i], &f)
            if r == QD_PARSE_BAD:
                self.malformed += 1
                batch.verdicts[i] = QD_DROP
            elif r != QD_PARSE_OK or self.nrules == 0:
                if not self.default_allow:
                    batch.verdicts[i] = QD_DROP
            else:
                d = batch.pkts[i].data
                key = &self.keys[k]
                key.proto = f.proto
                memcpy(key.src, d + f.l3_off + 12, 8)  # src and dst addresses
                if f.has_ports:
                    memcpy(key.sport, d + f.l4_off, 4)
                else:
                    memcpy(key.sport, b"\0\0\0\0", 4)
                self.key_ptrs[k] = <const uint8_t *>key
                self.idx[k] = i
                k += 1
        if k:
            rte_acl_classify(self.ctx, self.key_ptrs, self.results, k, 1)
            for j in range(k):
                if self.results[j] == 0:
                    ok = self.default_allow
                else:
                    ok = self.allow[self.results[j]]
                if ok:
                    self.allowed += 1
                else:
                    self.denied += 1
                    batch.verdicts[self.idx[j]] = QD_DROP
