/* urlfilter: per-connection TCP tracking, client->server stream reassembly,
 * verdicts and in-place RST rewriting.  Policies: docs/urlfilter.rst.
 *
 * uf_tcp() handles one IPv4/TCP frame (the caller parsed Ethernet/IPv4 with
 * qd_parse) and returns its verdict (0 forward, 1 drop); it may rewrite the
 * frame into a RST and shorten it (*len).  No allocation: flows come from an
 * rte_hash sized at configure time (its position indexes the flow array),
 * out-of-order data from a pool of 2 KiB buffers.
 */
#ifndef QD_UF_TCP_H
#define QD_UF_TCP_H

#include <string.h>
#include <rte_hash.h>
#include <rte_ip.h>
#include "qd_uf_types.h"
#include "qd_uf_http.h"

#define UF_TH_FIN 0x01
#define UF_TH_SYN 0x02
#define UF_TH_RST 0x04
#define UF_TH_ACK 0x10
#define UF_MAX_PIECES 16

static inline uint16_t uf_rd16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t uf_rd32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline void uf_wr16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }
static inline void uf_wr32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24; p[1] = (v >> 16) & 0xff; p[2] = (v >> 8) & 0xff; p[3] = v & 0xff;
}
static inline int32_t uf_sdiff(uint32_t a, uint32_t b) { return (int32_t)(a - b); }

static inline void uf_key_of(struct uf_key *k, uint32_t ip1, uint16_t p1, uint32_t ip2, uint16_t p2)
{
	memset(k, 0, sizeof(*k));
	if (ip1 < ip2 || (ip1 == ip2 && p1 <= p2)) {
		k->a_ip = ip1; k->a_port = p1; k->b_ip = ip2; k->b_port = p2;
	} else {
		k->a_ip = ip2; k->a_port = p2; k->b_ip = ip1; k->b_port = p1;
	}
}

/* --- segment pool ----------------------------------------------------------- */

static inline void uf_seg_put(struct uf_ctx *c, int32_t i)
{
	c->segs[i].next = c->seg_free;
	c->seg_free = i;
	c->seg_nfree++;
	c->n.ooo_segs_used--;
}

static inline int32_t uf_seg_get(struct uf_ctx *c)
{
	int32_t i = c->seg_free;

	c->seg_free = c->segs[i].next;
	c->seg_nfree--;
	if (++c->n.ooo_segs_used > c->n.ooo_segs_peak)
		c->n.ooo_segs_peak = c->n.ooo_segs_used;
	return i;
}

static inline void uf_pop_head(struct uf_ctx *c, struct uf_flow *f)
{
	int32_t i = f->ooo_head;

	f->ooo_head = c->segs[i].next;
	f->ooo_segs--;
	uf_seg_put(c, i);
}

/* --- flow table -------------------------------------------------------------- */

static inline void uf_flow_free(struct uf_ctx *c, struct uf_flow *f)
{
	struct uf_key k;

	while (f->ooo_head >= 0)
		uf_pop_head(c, f);
	uf_key_of(&k, f->cli_ip, f->cli_port, f->srv_ip, f->srv_port);
	rte_hash_del_key(c->hash, &k);
	f->state = UF_FREE;
	c->n.flows_active--;
}

static inline int uf_expired(const struct uf_ctx *c, const struct uf_flow *f, uint64_t now)
{
	uint64_t idle = now - f->last_tsc;

	if (now < f->last_tsc)
		return 0;
	return f->state == UF_HANDSHAKE ? idle > c->p.handshake_cycles : idle > c->p.idle_cycles;
}

/* Look at n flow slots round-robin and free the expired ones: bounded work per batch. */
static inline void uf_sweep(struct uf_ctx *c, uint64_t now, uint32_t n)
{
	while (n--) {
		struct uf_flow *f = &c->flows[c->sweep_pos];
		if (++c->sweep_pos >= c->p.flows)
			c->sweep_pos = 0;
		if (f->state != UF_FREE && uf_expired(c, f, now)) {
			uf_flow_free(c, f);
			c->n.expired++;
		}
	}
}

static inline struct uf_flow *uf_flow_new(struct uf_ctx *c, uint32_t cli_ip, uint16_t cli_port,
					  uint32_t srv_ip, uint16_t srv_port, uint64_t now)
{
	struct uf_key k;
	struct uf_flow *f;
	int32_t pos;

	uf_key_of(&k, cli_ip, cli_port, srv_ip, srv_port);
	pos = rte_hash_add_key(c->hash, &k);
	if (pos < 0) {
		uf_sweep(c, now, 256); /* full: reclaim what has expired, once */
		pos = rte_hash_add_key(c->hash, &k);
		if (pos < 0) {
			c->n.table_full++;
			return NULL;
		}
	}
	if ((uint32_t)pos >= c->p.flows) { /* cannot happen (rte_hash's positions) */
		rte_hash_del_key(c->hash, &k);
		c->n.table_full++;
		return NULL;
	}
	f = &c->flows[pos];
	memset(f, 0, sizeof(*f));
	f->cli_ip = cli_ip; f->cli_port = cli_port;
	f->srv_ip = srv_ip; f->srv_port = srv_port;
	f->ooo_head = -1;
	f->last_tsc = now;
	memset(c->patbits + (size_t)pos * c->words, 0, c->words * sizeof(uint64_t));
	if (c->streams != NULL)
		hs_reset_stream(c->streams[pos], 0, NULL, NULL, NULL);
	c->n.flows_total++;
	c->n.flows_active++;
	return f;
}

/* --- reassembly --------------------------------------------------------------- */

/* Buffer the out-of-order segment [seq, seq+n): the parts not yet buffered
 * (earlier copies win).  0: buffered (or nothing new), 2: refused at a bound. */
static inline int uf_buffer(struct uf_ctx *c, struct uf_flow *f, uint32_t seq,
			    const uint8_t *d, uint32_t n)
{
	uint32_t pst[UF_MAX_PIECES], plen[UF_MAX_PIECES];
	int32_t pafter[UF_MAX_PIECES];
	uint32_t np = 0, need = 0, cur = seq, end = seq + n, i;
	int32_t prev = -1, x;

	for (x = f->ooo_head; x >= 0 && uf_sdiff(cur, end) < 0; x = c->segs[x].next) {
		uint32_t s = c->segs[x].seq, e = s + c->segs[x].len;
		if (uf_sdiff(e, cur) <= 0) {
			prev = x;
			continue;
		}
		if (uf_sdiff(s, cur) > 0) {
			if (np == UF_MAX_PIECES)
				goto flow_bound;
			pst[np] = cur;
			pafter[np] = prev;
			if (uf_sdiff(s, end) >= 0) { /* the rest fits before this buffer */
				plen[np++] = end - cur;
				cur = end;
				break;
			}
			plen[np++] = s - cur;
			cur = s;
		}
		/* [cur, min(e, end)) is buffered already: the first copy wins */
		c->n.overlap_bytes += (uf_sdiff(e, end) < 0 ? e : end) - cur;
		cur = e;
		prev = x;
	}
	if (uf_sdiff(end, cur) > 0) {
		if (np == UF_MAX_PIECES)
			goto flow_bound;
		pst[np] = cur;
		plen[np] = end - cur;
		pafter[np++] = prev;
	}
	for (i = 0; i < np; i++)
		need += (plen[i] + UF_SEG_DATA - 1) / UF_SEG_DATA;
	if (need == 0)
		return 0;
	if (f->ooo_segs + need > c->p.ooo_flow_segs)
		goto flow_bound;
	if (need > c->seg_nfree) {
		c->n.ooo_drop_memory++;
		return 2;
	}
	for (i = 0; i < np; i++) {
		uint32_t off = pst[i] - seq, left = plen[i], s = pst[i];
		int32_t after = pafter[i];
		while (left > 0) {
			int32_t y = uf_seg_get(c);
			uint32_t k = left < UF_SEG_DATA ? left : UF_SEG_DATA;
			struct uf_seg *g = &c->segs[y];
			g->seq = s;
			g->len = (uint16_t)k;
			memcpy(g->data, d + off, k);
			if (after < 0) {
				g->next = f->ooo_head;
				f->ooo_head = y;
			} else {
				g->next = c->segs[after].next;
				c->segs[after].next = y;
			}
			after = y;
			f->ooo_segs++;
			s += k; off += k; left -= k;
		}
	}
	c->n.ooo_buffered++;
	return 0;
flow_bound:
	c->n.ooo_drop_flow++;
	return 2;
}

/* A client->server segment with payload.  0 forward, 1 blocked, 2 drop (bound). */
static inline int uf_segment(struct uf_ctx *c, struct uf_flow *f, uint32_t seq,
			     const uint8_t *d, uint32_t n)
{
	uint32_t skip;

	if (uf_sdiff(seq + n, f->next_seq) <= 0) { /* all of it delivered before */
		c->n.retransmitted++;
		c->n.overlap_bytes += n;
		return 0;
	}
	if (uf_sdiff(seq, f->next_seq) > 0)
		return uf_buffer(c, f, seq, d, n);
	skip = f->next_seq - seq;
	if (skip) {
		c->n.retransmitted++;
		c->n.overlap_bytes += skip;
	}
	d += skip; n -= skip; seq += skip;
	while (n > 0) {
		int32_t h = f->ooo_head;
		uint32_t take = n;
		if (h >= 0 && uf_sdiff(c->segs[h].seq, seq) < (int32_t)take)
			take = uf_sdiff(c->segs[h].seq, seq) > 0 ? c->segs[h].seq - seq : 0;
		if (take) {
			f->next_seq += take;
			if (uf_deliver(c, f, d, take))
				return 1;
			d += take; n -= take; seq += take;
		}
		while ((h = f->ooo_head) >= 0 && uf_sdiff(c->segs[h].seq, f->next_seq) <= 0) {
			struct uf_seg *g = &c->segs[h];
			uint32_t e = g->seq + g->len;
			if (uf_sdiff(e, f->next_seq) > 0) {
				uint32_t off = f->next_seq - g->seq;
				f->next_seq = e;
				if (uf_deliver(c, f, g->data + off, g->len - off)) {
					uf_pop_head(c, f);
					return 1;
				}
			}
			uf_pop_head(c, f);
		}
		if (n > 0 && uf_sdiff(f->next_seq, seq) > 0) { /* buffered data came first */
			skip = f->next_seq - seq < n ? f->next_seq - seq : n;
			c->n.overlap_bytes += skip;
			d += skip; n -= skip; seq += skip;
		}
	}
	return 0;
}

/* --- RST rewriting -------------------------------------------------------------- */

static inline uint16_t uf_csum_fold(uint64_t s)
{
	while (s >> 16)
		s = (s & 0xffff) + (s >> 16);
	return (uint16_t)~s;
}

static inline uint64_t uf_csum_add(uint64_t s, const uint8_t *p, uint32_t n)
{
	uint32_t i;

	for (i = 0; i + 1 < n; i += 2)
		s += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (n & 1)
		s += (uint32_t)p[n - 1] << 8;
	return s;
}

/* Turn the frame into a bare RST|ACK (no options, no payload) with the given
 * sequence numbers; reflect: swap MACs, addresses and ports (towards the sender). */
static inline void uf_make_rst(uint8_t *d, uint16_t *len, uint32_t l3, uint32_t l4,
			       int reflect, uint32_t seq, uint32_t ack)
{
	uint8_t tmp[6];
	uint8_t *ip = d + l3, *th = d + l4;
	uint32_t ihl = l4 - l3;
	uint64_t s;

	if (reflect) {
		memcpy(tmp, d, 6); memcpy(d, d + 6, 6); memcpy(d + 6, tmp, 6);
		memcpy(tmp, ip + 12, 4); memcpy(ip + 12, ip + 16, 4); memcpy(ip + 16, tmp, 4);
		memcpy(tmp, th, 2); memcpy(th, th + 2, 2); memcpy(th + 2, tmp, 2);
		ip[8] = 64;
	}
	uf_wr16(ip + 2, (uint16_t)(ihl + 20));
	ip[10] = ip[11] = 0;
	uf_wr16(ip + 10, uf_csum_fold(uf_csum_add(0, ip, ihl)));
	uf_wr32(th + 4, seq);
	uf_wr32(th + 8, ack);
	th[12] = 5 << 4;
	th[13] = UF_TH_RST | UF_TH_ACK;
	th[14] = th[15] = 0;  /* window */
	th[16] = th[17] = 0;  /* checksum */
	th[18] = th[19] = 0;  /* urgent pointer */
	s = uf_csum_add(0, ip + 12, 8);
	s += 6 + 20;          /* protocol, TCP length */
	s = uf_csum_add(s, th, 20);
	uf_wr16(th + 16, uf_csum_fold(s));
	*len = (uint16_t)(l4 + 20);
}

/* --- one packet ---------------------------------------------------------------- */

/* IPv4 header and TCP checksums: a segment the server's stack would discard
 * must not be matched either (an "insertion" of bytes only the filter sees). */
static inline int uf_csum_ok(const uint8_t *d, uint32_t l3, uint32_t l4, uint32_t ip_end)
{
	const struct rte_ipv4_hdr *ip = (const struct rte_ipv4_hdr *)(d + l3);
	uint32_t s;

	if (rte_raw_cksum(ip, l4 - l3) != 0xffff)
		return 0;
	s = (uint32_t)rte_raw_cksum(d + l4, ip_end - l4) + rte_ipv4_phdr_cksum(ip, 0);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return s == 0xffff;
}

/* A packet of a blocked connection: the first after the match may become the
 * RST towards the client; everything else is dropped. */
static inline int uf_blocked(struct uf_ctx *c, struct uf_flow *f, uint8_t *d, uint16_t *len,
			     uint32_t l3, uint32_t l4, int from_cli, uint8_t fl, uint32_t seq,
			     uint32_t ack, uint32_t plen)
{
	if ((f->flags & UF_F_RST_CLI) && !(fl & UF_TH_RST)) {
		f->flags &= ~UF_F_RST_CLI;
		c->n.resets_client++;
		if (from_cli) /* a retransmission: reflect it; the client expects seq = its ack */
			uf_make_rst(d, len, l3, l4, 1, ack,
				    seq + plen + !!(fl & UF_TH_SYN) + !!(fl & UF_TH_FIN));
		else          /* server data the client has not got: it is at the client's rcv_nxt */
			uf_make_rst(d, len, l3, l4, 0, seq, ack);
		return 0;
	}
	c->n.blocked_packets++;
	return 1;
}

static inline int uf_tcp(struct uf_ctx *c, uint8_t *d, uint16_t *len, uint32_t l3, uint32_t l4,
			 uint64_t now)
{
	uint32_t ip_end = l3 + uf_rd16(d + l3 + 2), hl, plen, seq, ack, sip, dip, next0;
	uint16_t sport, dport, frag = uf_rd16(d + l3 + 6);
	uint8_t fl;
	struct uf_key k;
	struct uf_flow *f;
	int32_t pos;
	int from_cli, r, syn_ok;

	if (frag & 0x3fff) { /* a fragment: its TCP bytes cannot be checked */
		c->n.fragments++;
		return 1;
	}
	if (l4 + 20 > ip_end || (hl = (uint32_t)(d[l4 + 12] >> 4) * 4) < 20 || l4 + hl > ip_end) {
		c->n.malformed++;
		return 1;
	}
	plen = ip_end - l4 - hl;
	sip = uf_rd32(d + l3 + 12); dip = uf_rd32(d + l3 + 16);
	sport = uf_rd16(d + l4); dport = uf_rd16(d + l4 + 2);
	seq = uf_rd32(d + l4 + 4); ack = uf_rd32(d + l4 + 8);
	fl = d[l4 + 13];

	uf_key_of(&k, sip, sport, dip, dport);
	pos = rte_hash_lookup(c->hash, &k);
	if (pos < 0) {
		if ((fl & (UF_TH_SYN | UF_TH_RST)) == UF_TH_SYN && !(fl & UF_TH_ACK)) {
			f = uf_flow_new(c, sip, sport, dip, dport, now);
			if (f == NULL)
				return !c->p.overload_pass;
			f->state = UF_HANDSHAKE;
			f->next_seq = seq + 1;
			if (plen == 0)
				return 0;
		} else if ((fl & (UF_TH_SYN | UF_TH_ACK | UF_TH_RST)) == (UF_TH_SYN | UF_TH_ACK)) {
			f = uf_flow_new(c, dip, dport, sip, sport, now); /* the sender is the server */
			if (f == NULL)
				return !c->p.overload_pass;
			f->state = UF_HANDSHAKE;
			f->next_seq = ack;
			return 0;
		} else if (plen > 0 && !(fl & (UF_TH_RST | UF_TH_SYN))) {
			if (sport < dport) /* mid-stream, most likely server data: not a client */
				return 0;
			if (!(fl & UF_TH_ACK)) {
				c->n.discarded++;
				return 1;
			}
			if (!uf_csum_ok(d, l3, l4, ip_end)) {
				c->n.bad_checksum++;
				return 1;
			}
			if (c->p.midstream != 0) {
				c->n.midstream_refused++;
				return c->p.midstream == 2;
			}
			f = uf_flow_new(c, sip, sport, dip, dport, now);
			if (f == NULL)
				return !c->p.overload_pass;
			c->n.midstream++;
			f->state = UF_OPEN;
			f->next_seq = seq;
		} else {
			return 0; /* a bare ACK/FIN/RST of no connection we track */
		}
	} else {
		f = &c->flows[pos];
	}
	from_cli = sip == f->cli_ip && sport == f->cli_port;
	f->last_tsc = now;
	if (f->state == UF_BLOCKED)
		return uf_blocked(c, f, d, len, l3, l4, from_cli, fl, seq, ack, plen);
	if (fl & UF_TH_RST) {
		uf_flow_free(c, f);
		c->n.closed++;
		return 0;
	}
	if (!from_cli) {
		if (fl & UF_TH_FIN)
			f->flags |= UF_F_FIN_SRV;
		goto fin;
	}
	/* a client SYN is one of the opening (no ACK flag, before the client's first
	 * ACK) or of a new connection after a FIN; any other SYN the server ignores */
	syn_ok = (f->state == UF_HANDSHAKE && !(f->flags & UF_F_ESTAB) && !(fl & UF_TH_ACK)) ||
		 (f->flags & (UF_F_FIN_CLI | UF_F_FIN_SRV));
	if (plen > 0) {
		/* data the server's stack would throw away is dropped, not matched: a bad
		 * checksum, no ACK flag outside the opening SYN, a SYN it ignores */
		if (!(fl & (UF_TH_ACK | UF_TH_SYN)) || ((fl & UF_TH_SYN) && !syn_ok)) {
			c->n.discarded++;
			return 1;
		}
		if (!uf_csum_ok(d, l3, l4, ip_end)) {
			c->n.bad_checksum++;
			return 1;
		}
	}
	if ((fl & (UF_TH_ACK | UF_TH_SYN)) == UF_TH_ACK)
		f->flags |= UF_F_ESTAB;
	if (fl & UF_TH_SYN) {
		if (!syn_ok)
			return 0; /* ignored, as the server does (it answers with an ACK) */
		if (!(f->flags & (UF_F_FIN_CLI | UF_F_FIN_SRV))) {
			f->next_seq = seq + 1;  /* a repeated SYN (maybe a new ISN) */
		} else {
			/* a new connection on the ports of a closing one */
			uf_flow_free(c, f);
			c->n.closed++;
			f = uf_flow_new(c, sip, sport, dip, dport, now);
			if (f == NULL)
				return !c->p.overload_pass;
			f->state = UF_HANDSHAKE;
			f->next_seq = seq + 1;
		}
		seq++;
	}
	if (plen > 0) {
		f->state = UF_OPEN;
		next0 = f->next_seq;
		r = uf_segment(c, f, seq, d + l4 + hl, plen);
		if (r == 2)
			return 1;
		if (r == 1) {
			f->state = UF_BLOCKED;
			c->n.blocked++;
			if (c->p.reset_client)
				f->flags |= UF_F_RST_CLI;
			if (!c->p.reset_server) {
				c->n.blocked_packets++;
				return 1;
			}
			/* the server has everything before next0 (we forwarded it) and nothing after */
			uf_make_rst(d, len, l3, l4, 0, next0, ack);
			c->n.resets_server++;
			return 0;
		}
	}
	if (fl & UF_TH_FIN)
		f->flags |= UF_F_FIN_CLI;
fin:
	if ((f->flags & (UF_F_FIN_CLI | UF_F_FIN_SRV)) == (UF_F_FIN_CLI | UF_F_FIN_SRV)) {
		uf_flow_free(c, f);
		c->n.closed++;
	}
	return 0;
}

#endif
