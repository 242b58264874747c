# distutils: libraries = hs
# cython: language_level=3
"""``urlfilter``: blocks TCP connections whose HTTP requests match Snort-like rules.

Per connection it reassembles the client->server byte stream (out-of-order
segments buffered within bounds, first copy wins), parses HTTP/1.x requests
(method, target, headers, Host) and matches the rules with Hyperscan: rules
without an HTTP scope on the whole stream (one Hyperscan stream per flow),
``http_uri``/``http_header``/``http_method``/``http_host`` rules on the parsed
field (block mode).  A connection that matches a ``block`` rule is blocked:
the matching packet is rewritten into a RST to the server, the next packet of
the connection into a RST to the client (``reset``), the rest is dropped.
The C data path is in ``cext/src/qd_uf_*.h``; config keys, rule subset and
policies are in ``docs/urlfilter.rst``; rules are parsed by
``worker.nf_urlrules``.
"""

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport calloc, free

from cext.dpdk cimport rte_get_tsc_hz
from cext.nf cimport QD_DROP, NativeNF, qd_batch, qd_pkt
from cext.pkt cimport QD_PARSE_BAD, QD_PARSE_OK, qd_flow, qd_parse

from cext.nf import NFConfigError
from worker.nf_urlrules import SCOPES, parse_urlfilter


cdef extern from "hs/hs.h":
    ctypedef struct hs_database_t:
        pass
    ctypedef struct hs_compile_error_t:
        char *message
        int expression
    ctypedef struct hs_platform_info_t:
        pass
    int HS_SUCCESS
    unsigned int HS_FLAG_CASELESS, HS_FLAG_DOTALL, HS_FLAG_MULTILINE, HS_FLAG_SINGLEMATCH
    unsigned int HS_MODE_BLOCK, HS_MODE_STREAM
    int hs_compile_multi(const char *const *expressions, const unsigned int *flags,
                         const unsigned int *ids, unsigned int elements, unsigned int mode,
                         const hs_platform_info_t *platform, hs_database_t **db,
                         hs_compile_error_t **error)
    int hs_free_compile_error(hs_compile_error_t *error)
    int hs_free_database(hs_database_t *db)


cdef extern from "src/qd_urlfilter.h":
    enum:
        UF_RAW
        UF_NSCOPES
        UF_SEG_SIZE
    struct uf_params:
        uint32_t flows
        uint64_t idle_cycles, handshake_cycles
        uint32_t ooo_flow_segs, ooo_segs, max_head
        uint8_t reset_server, reset_client, midstream, overload_pass
    struct uf_rule:
        uint32_t src, src_mask, dst, dst_mask
        uint16_t sport_lo, sport_hi, dport_lo, dport_hi
        uint32_t first_pat, npat, block, sid
        uint64_t hits
    struct uf_counters:
        uint64_t flows_total, flows_active, closed, expired, table_full
        uint64_t midstream, midstream_refused
        uint64_t blocked, blocked_packets, resets_server, resets_client, alerts
        uint64_t ooo_buffered, ooo_drop_flow, ooo_drop_memory, ooo_segs_used, ooo_segs_peak
        uint64_t retransmitted, overlap_bytes, bytes_scanned
        uint64_t http_requests, http_unparsed, head_truncated
        uint64_t malformed, fragments, non_tcp, bad_checksum, discarded
    struct uf_ctx:
        uf_params p
        hs_database_t *db[5]
        uf_rule *rules
        uint32_t nrules
        uint32_t *pat_rule
        uint8_t *pat_scope
        uint32_t npat
        uf_counters n
    int uf_setup(uf_ctx *c, const char *name, char *err, size_t errlen)
    void uf_teardown(uf_ctx *c)
    size_t uf_stream_bytes(const uf_ctx *c)
    void uf_sweep(uf_ctx *c, uint64_t now, uint32_t n) noexcept nogil
    int uf_tcp(uf_ctx *c, uint8_t *d, uint16_t *len, uint32_t l3, uint32_t l4,
               uint64_t now) noexcept nogil


COUNTERS = (
    "flows_total", "flows_active", "closed", "expired", "table_full", "midstream",
    "midstream_refused", "blocked", "blocked_packets", "resets_server", "resets_client",
    "alerts", "ooo_buffered", "ooo_drop_flow", "ooo_drop_memory", "ooo_segs_used",
    "ooo_segs_peak", "retransmitted", "overlap_bytes", "bytes_scanned", "http_requests",
    "http_unparsed", "head_truncated", "malformed", "fragments", "non_tcp", "bad_checksum",
    "discarded",
)
cdef enum:
    SWEEP_PER_BATCH = 8  # flow slots checked for expiry per batch
_serial = 0


cdef hs_database_t *compile_scope(list pats, unsigned int mode) except? NULL:
    """Compile [(pattern id, Pattern, rule)] into one database; NFConfigError names the rule."""
    cdef unsigned int n = len(pats)
    cdef const char **exprs = <const char **>calloc(n, sizeof(char *))
    cdef unsigned int *flags = <unsigned int *>calloc(n, sizeof(unsigned int))
    cdef unsigned int *ids = <unsigned int *>calloc(n, sizeof(unsigned int))
    cdef hs_database_t *db = NULL
    cdef hs_compile_error_t *err = NULL
    cdef int rc
    keep = [p.expr for _, p, _ in pats]  # owns the bytes exprs points into
    try:
        if exprs == NULL or flags == NULL or ids == NULL:
            raise MemoryError()
        for i, (pid, p, _) in enumerate(pats):
            exprs[i] = <const char *>keep[i]
            flags[i] = HS_FLAG_SINGLEMATCH
            if p.caseless:
                flags[i] |= HS_FLAG_CASELESS
            if p.dotall:
                flags[i] |= HS_FLAG_DOTALL
            if p.multiline:
                flags[i] |= HS_FLAG_MULTILINE
            ids[i] = pid
        rc = hs_compile_multi(exprs, flags, ids, n, mode, NULL, &db, &err)
        if rc != HS_SUCCESS:
            msg = err.message.decode(errors="replace") if err != NULL else f"error {rc}"
            where = "config.rules"
            if err != NULL and 0 <= err.expression < <int>n:
                where = pats[err.expression][2].where
            if err != NULL:
                hs_free_compile_error(err)
            raise NFConfigError(where, f"pattern rejected by Hyperscan: {msg}")
        return db
    finally:
        free(exprs)
        free(flags)
        free(ids)


cdef class UrlFilterNF(NativeNF):
    cdef uf_ctx c
    cdef bint ready
    cdef dict sids          # rule index -> sid
    cdef readonly size_t stream_bytes

    def configure(self, config):
        global _serial
        cdef uf_ctx *c = &self.c
        cdef char err[256]
        cdef uint64_t hz = rte_get_tsc_hz()
        cdef uint32_t npat = 0
        cdef int s
        cfg = parse_urlfilter(config or {}, self.base_dir)
        c.p.flows = cfg.flows
        c.p.idle_cycles = <uint64_t>(cfg.idle_timeout_s * hz)
        c.p.handshake_cycles = <uint64_t>(cfg.handshake_timeout_s * hz)
        c.p.ooo_segs = cfg.ooo_memory_kb * 1024 // UF_SEG_SIZE
        c.p.ooo_flow_segs = cfg.ooo_flow_kb * 1024 // UF_SEG_SIZE
        c.p.max_head = cfg.max_request_head
        c.p.reset_server = cfg.reset in ("both", "server")
        c.p.reset_client = cfg.reset in ("both", "client")
        c.p.midstream = ("pickup", "pass", "drop").index(cfg.midstream)
        c.p.overload_pass = cfg.overload == "pass"
        nrules = len(cfg.rules)
        npat = sum(len(r.patterns) for r in cfg.rules)
        c.rules = <uf_rule *>calloc(nrules, sizeof(uf_rule))
        c.pat_rule = <uint32_t *>calloc(npat, sizeof(uint32_t))
        c.pat_scope = <uint8_t *>calloc(npat, sizeof(uint8_t))
        if c.rules == NULL or c.pat_rule == NULL or c.pat_scope == NULL:
            uf_teardown(c)
            raise MemoryError()
        c.nrules = nrules
        c.npat = npat
        by_scope = {name: [] for name in SCOPES}
        pid = 0
        self.sids = {}
        for i, r in enumerate(cfg.rules):
            c.rules[i].src = r.src[0]
            c.rules[i].src_mask = (0xFFFFFFFF << (32 - r.src[1])) & 0xFFFFFFFF if r.src[1] else 0
            c.rules[i].dst = r.dst[0]
            c.rules[i].dst_mask = (0xFFFFFFFF << (32 - r.dst[1])) & 0xFFFFFFFF if r.dst[1] else 0
            c.rules[i].sport_lo, c.rules[i].sport_hi = r.sport
            c.rules[i].dport_lo, c.rules[i].dport_hi = r.dport
            c.rules[i].first_pat = pid
            c.rules[i].npat = len(r.patterns)
            c.rules[i].block = r.action == "block"
            c.rules[i].sid = r.sid
            self.sids[i] = r.sid
            for p in r.patterns:
                c.pat_rule[pid] = i
                c.pat_scope[pid] = SCOPES.index(p.scope)
                by_scope[p.scope].append((pid, p, r))
                pid += 1
        try:
            for s, scope in enumerate(SCOPES):
                if by_scope[scope]:
                    c.db[s] = compile_scope(
                        by_scope[scope], HS_MODE_STREAM if s == UF_RAW else HS_MODE_BLOCK
                    )
        except BaseException:
            uf_teardown(c)
            raise
        _serial += 1
        name = f"qd_uf_{_serial}".encode()
        if uf_setup(c, name, err, sizeof(err)) != 0:
            msg = err.decode(errors="replace")
            uf_teardown(c)
            raise NFConfigError("config.flows", msg)
        self.stream_bytes = uf_stream_bytes(c)
        self.ready = True

    def stats(self):
        cdef uf_ctx *c = &self.c
        cdef dict n = c.n
        out = {k: n[k] for k in COUNTERS}
        out["flows"] = out.pop("flows_active")
        out["rules"] = c.nrules
        out["stream_bytes"] = self.stream_bytes
        out["rule_hits"] = {
            str(self.sids[i]): c.rules[i].hits for i in range(c.nrules) if c.rules[i].hits
        }
        return out

    def __dealloc__(self):
        uf_teardown(&self.c)

    cdef void process(self, qd_batch *batch) noexcept nogil:
        cdef uint16_t i, old
        cdef qd_flow f
        cdef qd_pkt *p
        cdef int r
        if not self.ready:
            return
        uf_sweep(&self.c, batch.tsc, SWEEP_PER_BATCH)
        for i in range(batch.count):
            p = &batch.pkts[i]
            r = qd_parse(p, &f)
            if r == QD_PARSE_BAD:
                self.c.n.malformed += 1
                batch.verdicts[i] = QD_DROP
            elif r != QD_PARSE_OK or f.proto != 6:
                self.c.n.non_tcp += 1
            else:
                old = p.len
                if uf_tcp(&self.c, p.data, &p.len, f.l3_off, f.l4_off, batch.tsc):
                    batch.verdicts[i] = QD_DROP
                elif p.len != old:
                    p.tailroom += old - p.len
