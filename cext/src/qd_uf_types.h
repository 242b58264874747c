/* urlfilter: the state the NF keeps (flow table, segment pool, rules, counters).
 *
 * Everything is allocated once, by uf_setup() at configure time; the data
 * path (qd_uf_tcp.h, qd_uf_http.h) only takes and returns entries of the
 * fixed pools.  docs/urlfilter.rst describes the policies.
 */
#ifndef QD_UF_TYPES_H
#define QD_UF_TYPES_H

#include <stdint.h>
#include <hs/hs.h>
#include <rte_hash.h>

/* Scopes: the order of SCOPES in worker/nf_urlrules.py. */
enum { UF_RAW, UF_URI, UF_HEADER, UF_METHOD, UF_HOST, UF_NSCOPES };

/* Flow states. */
enum { UF_FREE = 0, UF_HANDSHAKE, UF_OPEN, UF_BLOCKED };

/* Flow flags. */
#define UF_F_FIN_CLI 0x01
#define UF_F_FIN_SRV 0x02
#define UF_F_RST_CLI 0x04   /* blocked: the next packet becomes a RST to the client */
#define UF_F_TRUNC 0x08     /* this request's head was longer than max_request_head */
#define UF_F_LINE 0x10      /* the current head line has a byte other than CR */
#define UF_F_ESTAB 0x20     /* the client has sent an ACK: its opening SYN is over */

/* HTTP parser states (client->server). */
enum { UF_H_START = 0, UF_H_LINE, UF_H_HEADERS, UF_H_BODY, UF_H_OPAQUE };

/* An out-of-order segment buffer: 2 KiB each, from one pool. */
#define UF_SEG_SIZE 2048
#define UF_SEG_DATA (UF_SEG_SIZE - 12)
struct uf_seg {
	uint32_t seq;
	uint16_t len;
	uint16_t pad;
	int32_t next;   /* index of the next buffer (higher seq) of the flow, or -1 */
	uint8_t data[UF_SEG_DATA];
};

struct uf_key {     /* canonical: (a_ip, a_port) < (b_ip, b_port) */
	uint32_t a_ip, b_ip;
	uint16_t a_port, b_port;
};

struct uf_flow {
	uint32_t cli_ip, srv_ip;     /* host order */
	uint16_t cli_port, srv_port;
	uint32_t next_seq;           /* next client->server byte to deliver to the matcher */
	uint64_t last_tsc;
	int32_t ooo_head;            /* first buffered segment, -1 if none */
	uint32_t ooo_segs;           /* buffers held */
	uint32_t body_left;          /* request body bytes still to skip */
	uint16_t head_len;           /* bytes of the current request head kept */
	uint16_t reqline_len;        /* bytes of the request line kept (incl. its LF) */
	uint8_t state;
	uint8_t flags;
	uint8_t http;
	uint8_t pad;
};

struct uf_rule {
	uint32_t src, src_mask, dst, dst_mask;
	uint16_t sport_lo, sport_hi, dport_lo, dport_hi;
	uint32_t first_pat, npat;    /* its patterns are ids first_pat .. first_pat+npat-1 */
	uint32_t block;              /* 1 block, 0 alert */
	uint32_t sid;
	uint64_t hits;
};

struct uf_params {
	uint32_t flows;
	uint64_t idle_cycles, handshake_cycles;
	uint32_t ooo_flow_segs;      /* per-flow bound, in buffers */
	uint32_t ooo_segs;           /* global bound: the pool's size */
	uint32_t max_head;
	uint8_t reset_server, reset_client;
	uint8_t midstream;           /* 0 pickup, 1 pass, 2 drop */
	uint8_t overload_pass;       /* table full: 1 pass, 0 drop */
};

struct uf_counters {
	uint64_t flows_total, flows_active, closed, expired, table_full;
	uint64_t midstream, midstream_refused;
	uint64_t blocked, blocked_packets, resets_server, resets_client, alerts;
	uint64_t ooo_buffered, ooo_drop_flow, ooo_drop_memory, ooo_segs_used, ooo_segs_peak;
	uint64_t retransmitted, overlap_bytes, bytes_scanned;
	uint64_t http_requests, http_unparsed, head_truncated;
	uint64_t malformed, fragments, non_tcp, bad_checksum, discarded;
};

struct uf_ctx {
	struct uf_params p;
	struct rte_hash *hash;
	struct uf_flow *flows;       /* p.flows, indexed by the hash position */
	uint64_t *patbits;           /* p.flows * words: patterns seen per flow */
	uint32_t words;
	uint8_t *heads;              /* p.flows * p.max_head */
	uint8_t *field;              /* p.max_head: decoded URI / lowercased Host */
	struct uf_seg *segs;         /* p.ooo_segs */
	int32_t seg_free;
	uint32_t seg_nfree;
	hs_database_t *db[UF_NSCOPES];
	hs_scratch_t *scratch;
	hs_stream_t **streams;       /* p.flows, when db[UF_RAW] */
	struct uf_rule *rules;
	uint32_t nrules;
	uint32_t *pat_rule;          /* pattern id -> rule index */
	uint8_t *pat_scope;          /* pattern id -> UF_RAW .. UF_HOST */
	uint64_t *httpmask;          /* words: the patterns of an HTTP scope */
	uint32_t npat;
	uint32_t sweep_pos;
	struct uf_counters n;
};

/* What a match callback needs. */
struct uf_scan {
	struct uf_ctx *c;
	struct uf_flow *f;
	uint64_t *bits;
	int blocked;
};

#endif
