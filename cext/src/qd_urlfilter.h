/* urlfilter: set-up and tear-down of the NF's fixed memory (configure time).
 *
 * The caller (cext/nf_urlfilter.pyx) fills c->p, c->db[], c->rules,
 * c->pat_rule, c->nrules and c->npat, then calls uf_setup(); uf_teardown()
 * frees everything, the databases and rules included.
 */
#ifndef QD_URLFILTER_H
#define QD_URLFILTER_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <rte_hash.h>
#include <rte_lcore.h>
#include "qd_uf_types.h"
#include "qd_uf_http.h"
#include "qd_uf_tcp.h"

static inline void uf_teardown(struct uf_ctx *c)
{
	uint32_t i;
	int s;

	if (c->streams != NULL) {
		for (i = 0; i < c->p.flows; i++)
			if (c->streams[i] != NULL)
				hs_close_stream(c->streams[i], NULL, NULL, NULL);
		free(c->streams);
	}
	if (c->hash != NULL)
		rte_hash_free(c->hash);
	if (c->scratch != NULL)
		hs_free_scratch(c->scratch);
	for (s = 0; s < UF_NSCOPES; s++)
		if (c->db[s] != NULL)
			hs_free_database(c->db[s]);
	free(c->flows);
	free(c->patbits);
	free(c->heads);
	free(c->field);
	free(c->segs);
	free(c->rules);
	free(c->pat_rule);
	free(c->pat_scope);
	free(c->httpmask);
	memset(c, 0, sizeof(*c));
}

/* 0, or -1 with a message in err. */
static inline int uf_setup(struct uf_ctx *c, const char *name, char *err, size_t errlen)
{
	struct rte_hash_parameters hp;
	uint32_t i;
	int s;

	memset(&hp, 0, sizeof(hp));
	hp.name = name;
	hp.entries = c->p.flows;
	hp.key_len = sizeof(struct uf_key);
	hp.socket_id = (int)rte_socket_id();
	/* an overflow table: every one of `entries` keys fits, whatever the hashes */
	hp.extra_flag = RTE_HASH_EXTRA_FLAGS_EXT_TABLE;
	c->hash = rte_hash_create(&hp);
	if (c->hash == NULL) {
		snprintf(err, errlen, "rte_hash_create(%u entries) failed: %s", c->p.flows,
			 rte_strerror(rte_errno));
		return -1;
	}
	c->words = (c->npat + 63) / 64;
	c->flows = calloc(c->p.flows, sizeof(*c->flows));
	c->patbits = calloc((size_t)c->p.flows * c->words, sizeof(uint64_t));
	c->heads = malloc((size_t)c->p.flows * c->p.max_head);
	c->field = malloc(c->p.max_head);
	c->segs = c->p.ooo_segs ? malloc((size_t)c->p.ooo_segs * sizeof(struct uf_seg)) : NULL;
	if (c->flows == NULL || c->patbits == NULL || c->heads == NULL || c->field == NULL ||
	    (c->p.ooo_segs && c->segs == NULL)) {
		snprintf(err, errlen, "out of memory for %u flows", c->p.flows);
		return -1;
	}
	c->httpmask = calloc(c->words ? c->words : 1, sizeof(uint64_t));
	if (c->httpmask == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	for (i = 0; i < c->npat; i++)
		if (c->pat_scope[i] != UF_RAW)
			c->httpmask[i >> 6] |= 1ULL << (i & 63);
	c->seg_free = -1;
	for (i = c->p.ooo_segs; i-- > 0;) {
		c->segs[i].next = c->seg_free;
		c->seg_free = (int32_t)i;
	}
	c->seg_nfree = c->p.ooo_segs;
	for (s = 0; s < UF_NSCOPES; s++) {
		if (c->db[s] != NULL && hs_alloc_scratch(c->db[s], &c->scratch) != HS_SUCCESS) {
			snprintf(err, errlen, "hs_alloc_scratch failed");
			return -1;
		}
	}
	if (c->db[UF_RAW] != NULL) {
		c->streams = calloc(c->p.flows, sizeof(*c->streams));
		if (c->streams == NULL) {
			snprintf(err, errlen, "out of memory for %u streams", c->p.flows);
			return -1;
		}
		for (i = 0; i < c->p.flows; i++) {
			if (hs_open_stream(c->db[UF_RAW], 0, &c->streams[i]) != HS_SUCCESS) {
				snprintf(err, errlen, "hs_open_stream failed at flow %u", i);
				return -1;
			}
		}
	}
	return 0;
}

/* Bytes of Hyperscan stream state per flow (0 without raw rules). */
static inline size_t uf_stream_bytes(const struct uf_ctx *c)
{
	size_t n = 0;

	if (c->db[UF_RAW] != NULL)
		hs_stream_size(c->db[UF_RAW], &n);
	return n;
}

#endif
