/* urlfilter: matching (Hyperscan callbacks and scans) and the HTTP/1.x
 * request parser over the reassembled client->server byte stream.
 *
 * uf_deliver() takes the stream in order, in pieces of any size: the raw
 * bytes go to the flow's Hyperscan stream (scope raw); the parser keeps the
 * current request head (request line + header lines, up to max_request_head
 * bytes) in the flow's head buffer and, when the request line is complete,
 * scans the method and the percent-decoded request target (block mode); when
 * the empty line ends the head, the header block and the lowercased Host
 * value.  A request body (Content-Length) is skipped so that pipelined
 * requests are parsed too; chunked bodies and non-HTTP bytes end parsing
 * for the connection (raw rules still apply).
 */
#ifndef QD_UF_HTTP_H
#define QD_UF_HTTP_H

#include <string.h>
#include "qd_uf_types.h"

static inline int uf_rule_applies(const struct uf_rule *r, const struct uf_flow *f)
{
	return (f->cli_ip & r->src_mask) == r->src && (f->srv_ip & r->dst_mask) == r->dst &&
	       f->cli_port >= r->sport_lo && f->cli_port <= r->sport_hi &&
	       f->srv_port >= r->dport_lo && f->srv_port <= r->dport_hi;
}

/* Hyperscan match callback: record pattern `id`; when every pattern of its rule
 * has been seen on this connection, the rule fires (once). */
static int uf_on_match(unsigned int id, unsigned long long from, unsigned long long to,
		       unsigned int flags, void *ctx)
{
	struct uf_scan *s = (struct uf_scan *)ctx;
	struct uf_ctx *c = s->c;
	struct uf_rule *r;
	uint64_t bit = 1ULL << (id & 63);
	uint32_t i;

	(void)from;
	(void)to;
	(void)flags;
	if (s->bits[id >> 6] & bit)
		return 0;
	s->bits[id >> 6] |= bit;
	r = &c->rules[c->pat_rule[id]];
	for (i = r->first_pat; i < r->first_pat + r->npat; i++)
		if (!(s->bits[i >> 6] & (1ULL << (i & 63))))
			return 0;
	if (!uf_rule_applies(r, s->f))
		return 0;
	r->hits++;
	if (!r->block) {
		c->n.alerts++;
		return 0;
	}
	s->blocked = 1;
	return 1; /* stop scanning: the connection is blocked */
}

static inline uint32_t uf_pos(const struct uf_ctx *c, const struct uf_flow *f)
{
	return (uint32_t)(f - c->flows);
}

static inline int uf_scan_block(struct uf_ctx *c, struct uf_flow *f, int scope,
				const uint8_t *d, uint32_t n)
{
	struct uf_scan s = { c, f, c->patbits + (size_t)uf_pos(c, f) * c->words, 0 };

	if (c->db[scope] == NULL || n == 0)
		return 0;
	hs_scan(c->db[scope], (const char *)d, n, 0, c->scratch, uf_on_match, &s);
	return s.blocked;
}

static inline int uf_hexval(uint8_t ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch |= 0x20;
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	return -1;
}

/* The request line head[0..n) is complete: scan method and decoded target.
 * Returns 1 if blocked; sets f->http to UF_H_OPAQUE if it is not HTTP. */
static inline int uf_request_line(struct uf_ctx *c, struct uf_flow *f, const uint8_t *h,
				  uint32_t n)
{
	uint32_t m = 0, t, e, k = 0;
	int hi, lo;

	while (n > 0 && (h[n - 1] == '\n' || h[n - 1] == '\r'))
		n--;
	while (m < n && m < 20 && h[m] >= 'A' && h[m] <= 'Z')
		m++;
	if (m == 0 || m >= n || h[m] != ' ') {
		f->http = UF_H_OPAQUE;
		c->n.http_unparsed++;
		return 0;
	}
	c->n.http_requests++;
	if (uf_scan_block(c, f, UF_METHOD, h, m))
		return 1;
	t = m + 1;
	for (e = t; e < n && h[e] != ' '; e++)
		;
	/* percent-decode the target into the field buffer */
	while (t < e) {
		if (h[t] == '%' && t + 2 < e && (hi = uf_hexval(h[t + 1])) >= 0 &&
		    (lo = uf_hexval(h[t + 2])) >= 0) {
			c->field[k++] = (uint8_t)(hi << 4 | lo);
			t += 3;
		} else {
			c->field[k++] = h[t++];
		}
	}
	if (uf_scan_block(c, f, UF_URI, c->field, k))
		return 1;
	/* the version: HTTP/1.x, else the rest of the stream is not parsed */
	if (e + 8 > n || memcmp(h + e, " HTTP/1.", 8) != 0) {
		f->http = UF_H_OPAQUE;
		c->n.http_unparsed++;
	}
	return 0;
}

static inline int uf_name_is(const uint8_t *h, uint32_t n, const char *name, uint32_t len)
{
	uint32_t i;

	if (n != len)
		return 0;
	for (i = 0; i < len; i++)
		if ((h[i] | 0x20) != (uint8_t)name[i])
			return 0;
	return 1;
}

/* The head is complete: scan the header block and Host; find the body. */
static inline int uf_headers(struct uf_ctx *c, struct uf_flow *f, const uint8_t *h, uint32_t n)
{
	uint32_t i = 0, host_done = 0, chunked = 0, k;
	uint64_t clen = 0;
	int has_clen = 0, bad_clen = 0;

	if (uf_scan_block(c, f, UF_HEADER, h, n))
		return 1;
	while (i < n) {
		uint32_t ls = i, colon, vs, ve;
		while (i < n && h[i] != '\n')
			i++;
		ve = i;  /* line is h[ls..ve) */
		i++;
		while (ve > ls && h[ve - 1] == '\r')
			ve--;
		for (colon = ls; colon < ve && h[colon] != ':'; colon++)
			;
		if (colon == ve)
			continue;
		vs = colon + 1;
		while (vs < ve && (h[vs] == ' ' || h[vs] == '\t'))
			vs++;
		while (ve > vs && (h[ve - 1] == ' ' || h[ve - 1] == '\t'))
			ve--;
		if (!host_done && uf_name_is(h + ls, colon - ls, "host", 4)) {
			host_done = 1;
			for (k = 0; vs + k < ve; k++) {
				uint8_t ch = h[vs + k];
				c->field[k] = (ch >= 'A' && ch <= 'Z') ? ch | 0x20 : ch;
			}
			if (uf_scan_block(c, f, UF_HOST, c->field, k))
				return 1;
		} else if (uf_name_is(h + ls, colon - ls, "content-length", 14)) {
			has_clen = 1;
			if (vs == ve)
				bad_clen = 1;
			for (k = vs; k < ve; k++) {
				if (h[k] < '0' || h[k] > '9' || clen > 0xffffffffULL / 10) {
					bad_clen = 1;
					break;
				}
				clen = clen * 10 + (h[k] - '0');
			}
		} else if (uf_name_is(h + ls, colon - ls, "transfer-encoding", 17)) {
			chunked = 1; /* any transfer coding: the body is not delimited by us */
		}
	}
	if (chunked || bad_clen || clen > 0xffffffffULL || (f->flags & UF_F_TRUNC)) {
		/* a body we cannot delimit (or a head we did not keep whole) */
		f->http = UF_H_OPAQUE;
		c->n.http_unparsed++;
	} else if (has_clen && clen > 0) {
		f->http = UF_H_BODY;
		f->body_left = (uint32_t)clen;
	} else {
		f->http = UF_H_START;
	}
	return 0;
}

static inline int uf_http(struct uf_ctx *c, struct uf_flow *f, const uint8_t *d, uint32_t n)
{
	uint8_t *head = c->heads + (size_t)uf_pos(c, f) * c->p.max_head;
	uint32_t i = 0, k, keep, j;
	const uint8_t *lf;
	uint64_t *bits;

	while (i < n) {
		switch (f->http) {
		case UF_H_OPAQUE:
			return 0;
		case UF_H_BODY:
			k = n - i < f->body_left ? n - i : f->body_left;
			i += k;
			f->body_left -= k;
			if (f->body_left == 0)
				f->http = UF_H_START;
			break;
		case UF_H_START:
			while (i < n && (d[i] == '\r' || d[i] == '\n'))
				i++;
			if (i == n)
				return 0;
			if (d[i] < 'A' || d[i] > 'Z') {
				f->http = UF_H_OPAQUE;
				c->n.http_unparsed++;
				return 0;
			}
			/* a new request: what its fields matched so far starts again */
			bits = c->patbits + (size_t)uf_pos(c, f) * c->words;
			for (j = 0; j < c->words; j++)
				bits[j] &= ~c->httpmask[j];
			f->http = UF_H_LINE;
			f->head_len = 0;
			f->reqline_len = 0;
			f->flags &= ~(UF_F_TRUNC | UF_F_LINE);
			break;
		default: /* UF_H_LINE, UF_H_HEADERS: up to and including the next LF */
			lf = memchr(d + i, '\n', n - i);
			k = lf ? (uint32_t)(lf - (d + i)) + 1 : n - i;
			keep = c->p.max_head - f->head_len;
			if (keep > k)
				keep = k;
			if (keep < k && !(f->flags & UF_F_TRUNC)) {
				f->flags |= UF_F_TRUNC;
				c->n.head_truncated++;
			}
			memcpy(head + f->head_len, d + i, keep);
			f->head_len += keep;
			for (j = i; j < i + k - (lf ? 1 : 0); j++)
				if (d[j] != '\r') {
					f->flags |= UF_F_LINE;
					break;
				}
			i += k;
			if (!lf)
				return 0;
			if (f->http == UF_H_LINE) {
				f->reqline_len = f->head_len;
				f->http = UF_H_HEADERS;
				if (uf_request_line(c, f, head, f->head_len))
					return 1;
			} else if (!(f->flags & UF_F_LINE)) {
				if (uf_headers(c, f, head + f->reqline_len,
					       f->head_len - f->reqline_len))
					return 1;
			}
			f->flags &= ~UF_F_LINE;
			break;
		}
	}
	return 0;
}

/* The next n bytes of the client->server stream, in order.  1: blocked. */
static inline int uf_deliver(struct uf_ctx *c, struct uf_flow *f, const uint8_t *d, uint32_t n)
{
	c->n.bytes_scanned += n;
	if (c->db[UF_RAW] != NULL) {
		struct uf_scan s = { c, f, c->patbits + (size_t)uf_pos(c, f) * c->words, 0 };
		hs_scan_stream(c->streams[uf_pos(c, f)], (const char *)d, n, 0, c->scratch,
			       uf_on_match, &s);
		if (s.blocked)
			return 1;
	}
	return uf_http(c, f, d, n);
}

#endif
