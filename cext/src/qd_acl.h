/* rte_acl over the IPv4 5-tuple: the key the ACL NF builds per packet, the
 * field definitions and a builder from plain rules.
 *
 * The key holds the packet's own bytes (network order), as rte_acl wants;
 * rule values are host order.  Field 0 must be one byte (rte_acl's rule);
 * the two ports share one 4-byte input group.
 */
#ifndef QD_ACL_H
#define QD_ACL_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include <rte_acl.h>

struct qd_acl_key {
	uint8_t proto;
	uint8_t pad[3];
	uint8_t src[4];
	uint8_t dst[4];
	uint8_t sport[2];
	uint8_t dport[2];
};

enum { QD_ACL_PROTO, QD_ACL_SRC, QD_ACL_DST, QD_ACL_SPORT, QD_ACL_DPORT, QD_ACL_NUM_FIELDS };

RTE_ACL_RULE_DEF(qd_acl_rule, QD_ACL_NUM_FIELDS);

/* A rule as Python hands it over (host order). */
struct qd_acl_rule_in {
	uint32_t userdata; /* non-zero */
	int32_t priority;  /* higher wins */
	uint8_t proto, proto_mask;
	uint32_t src, dst;
	uint8_t src_len, dst_len;
	uint16_t sport_lo, sport_hi, dport_lo, dport_hi;
};

static inline void qd_acl_defs(struct rte_acl_config *cfg)
{
	struct rte_acl_field_def defs[QD_ACL_NUM_FIELDS] = {
		{ .type = RTE_ACL_FIELD_TYPE_BITMASK, .size = 1, .field_index = QD_ACL_PROTO,
		  .input_index = 0, .offset = offsetof(struct qd_acl_key, proto) },
		{ .type = RTE_ACL_FIELD_TYPE_MASK, .size = 4, .field_index = QD_ACL_SRC,
		  .input_index = 1, .offset = offsetof(struct qd_acl_key, src) },
		{ .type = RTE_ACL_FIELD_TYPE_MASK, .size = 4, .field_index = QD_ACL_DST,
		  .input_index = 2, .offset = offsetof(struct qd_acl_key, dst) },
		{ .type = RTE_ACL_FIELD_TYPE_RANGE, .size = 2, .field_index = QD_ACL_SPORT,
		  .input_index = 3, .offset = offsetof(struct qd_acl_key, sport) },
		{ .type = RTE_ACL_FIELD_TYPE_RANGE, .size = 2, .field_index = QD_ACL_DPORT,
		  .input_index = 3, .offset = offsetof(struct qd_acl_key, dport) },
	};
	memset(cfg, 0, sizeof(*cfg));
	cfg->num_categories = 1;
	cfg->num_fields = QD_ACL_NUM_FIELDS;
	memcpy(cfg->defs, defs, sizeof(defs));
}

/* Create and build a context; NULL with *err = negative errno on failure. */
static inline struct rte_acl_ctx *qd_acl_build(const char *name, const struct qd_acl_rule_in *in,
					       uint32_t n, int *err)
{
	struct rte_acl_param prm = {
		.name = name, .socket_id = SOCKET_ID_ANY,
		.rule_size = RTE_ACL_RULE_SZ(QD_ACL_NUM_FIELDS), .max_rule_num = n ? n : 1,
	};
	struct rte_acl_config cfg;
	struct rte_acl_ctx *ctx = rte_acl_create(&prm);
	uint32_t i;
	int ret;

	if (ctx == NULL) {
		*err = -rte_errno;
		return NULL;
	}
	for (i = 0; i < n; i++) {
		struct qd_acl_rule r;
		memset(&r, 0, sizeof(r));
		r.data.category_mask = 1;
		r.data.priority = in[i].priority;
		r.data.userdata = in[i].userdata;
		r.field[QD_ACL_PROTO].value.u8 = in[i].proto;
		r.field[QD_ACL_PROTO].mask_range.u8 = in[i].proto_mask;
		r.field[QD_ACL_SRC].value.u32 = in[i].src;
		r.field[QD_ACL_SRC].mask_range.u32 = in[i].src_len;
		r.field[QD_ACL_DST].value.u32 = in[i].dst;
		r.field[QD_ACL_DST].mask_range.u32 = in[i].dst_len;
		r.field[QD_ACL_SPORT].value.u16 = in[i].sport_lo;
		r.field[QD_ACL_SPORT].mask_range.u16 = in[i].sport_hi;
		r.field[QD_ACL_DPORT].value.u16 = in[i].dport_lo;
		r.field[QD_ACL_DPORT].mask_range.u16 = in[i].dport_hi;
		ret = rte_acl_add_rules(ctx, (const struct rte_acl_rule *)&r, 1);
		if (ret < 0) {
			*err = ret;
			rte_acl_free(ctx);
			return NULL;
		}
	}
	if (n > 0) {
		qd_acl_defs(&cfg);
		ret = rte_acl_build(ctx, &cfg);
		if (ret < 0) {
			*err = ret;
			rte_acl_free(ctx);
			return NULL;
		}
	}
	*err = 0;
	return ctx;
}

#endif
