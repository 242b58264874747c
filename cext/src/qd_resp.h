/* The write side of a stateful NF's Redis connection, on the data core, no GIL.
 *
 * qd_resp_room    makes room in the buffer for one more write group;
 * qd_resp_cmd/key/bulk, qd_resp_end_group
 *                 encode one write group (MSET of the set keys, DEL of the
 *                 removed ones) as RESP at the end of the buffer;
 * qd_resp_flush   sends what is not sent yet on the (blocking, already
 *                 authenticated) socket;
 * qd_resp_poll    reads the replies that have arrived, without blocking
 *                 (MSG_DONTWAIT), and returns how many write groups are now
 *                 acknowledged;
 * qd_resp_reset   after a new connection: everything not acknowledged is
 *                 sent again, in order.
 *
 * The buffer is the write stream from the oldest unacknowledged group on:
 * a group's bytes stay until Redis acknowledged it, so that when the
 * connection is lost (a send or recv error, Redis closing it, or Redis
 * answering -LOADING while it reads its append-only file back) the caller
 * can reconnect and send them again (MSET and DEL are idempotent, and the
 * groups go again in their order, so Redis ends with the same values).
 * A lost connection sets `lost`; nothing is sent until qd_resp_reset.  Any
 * other error reply (no permission, out of memory, a read-only replica)
 * sets `failed`, for good: nothing after it counts as acknowledged.
 *
 * A key in Redis is "<prefix>:<32 hex digits of the 16-byte key>"; the
 * prefix, the AUTH and the reconnecting happen in Python
 * (worker/state_store.py, cext/statecore.pyx).
 */
#ifndef QD_RESP_H
#define QD_RESP_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>

#define QD_RESP_ERR (-1)
#define QD_RESP_GROUPS 65536u /* write groups in flight (a power of two) */
#define QD_RESP_ERRLEN 200

struct qd_resp {
    int fd; /* -1 while the connection is lost */
    uint8_t prefix[80];
    uint32_t prefix_len;
    /* the write stream's bytes [base, base + len): every group not yet
     * acknowledged, then the one being encoded */
    uint8_t *buf;
    uint32_t cap, len;
    uint64_t base;      /* stream offset of buf[0] */
    uint64_t sent;      /* stream offset up to which this connection was sent */
    uint64_t acked_end; /* stream offset where the last acknowledged group ends */
    uint8_t replies[QD_RESP_GROUPS]; /* replies each group in flight waits for */
    uint64_t gend[QD_RESP_GROUPS];   /* stream offset where each group in flight ends */
    uint64_t head, tail;             /* groups: [head, tail) in flight */
    uint32_t partial;                /* replies received towards group head */
    int line_start, in_error, failed, lost;
    char error[QD_RESP_ERRLEN + 1];
    uint32_t error_len;
    uint64_t bytes_sent, keys_written, bytes_resent;
};

static inline void qd_resp_put(struct qd_resp *r, const void *p, uint32_t n)
{
    memcpy(r->buf + r->len, p, n);
    r->len += n;
}

static inline void qd_resp_num(struct qd_resp *r, char lead, uint32_t v)
{
    char tmp[12];
    int i = 0;
    r->buf[r->len++] = (uint8_t)lead;
    do {
        tmp[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        r->buf[r->len++] = (uint8_t)tmp[--i];
    r->buf[r->len++] = '\r';
    r->buf[r->len++] = '\n';
}

static inline void qd_resp_bulk(struct qd_resp *r, const void *p, uint32_t n)
{
    qd_resp_num(r, '$', n);
    qd_resp_put(r, p, n);
    r->buf[r->len++] = '\r';
    r->buf[r->len++] = '\n';
}

static inline void qd_resp_key(struct qd_resp *r, const uint8_t *key16)
{
    static const char hex[] = "0123456789abcdef";
    uint32_t i;
    qd_resp_num(r, '$', r->prefix_len + 32);
    qd_resp_put(r, r->prefix, r->prefix_len);
    for (i = 0; i < 16; i++) {
        r->buf[r->len++] = (uint8_t)hex[key16[i] >> 4];
        r->buf[r->len++] = (uint8_t)hex[key16[i] & 15];
    }
    r->buf[r->len++] = '\r';
    r->buf[r->len++] = '\n';
}

/* Bytes one key/value may take in the buffer, at most (for the caller's bound). */
static inline uint32_t qd_resp_item_max(const struct qd_resp *r, uint32_t vmax)
{
    return 2 * 14 + r->prefix_len + 32 + vmax + 8;
}

/* Start a command of n arguments (its name included). */
static inline void qd_resp_cmd(struct qd_resp *r, uint32_t nargs, const char *name)
{
    qd_resp_num(r, '*', nargs);
    qd_resp_bulk(r, name, (uint32_t)strlen(name));
}

/* Room for `need` more bytes: acknowledged groups leave the front of the
 * buffer.  0, or -1 if the groups not yet acknowledged fill it. */
static inline int qd_resp_room(struct qd_resp *r, uint32_t need)
{
    uint64_t drop = r->acked_end - r->base;
    if (drop == r->len) { /* everything acknowledged: the usual case, nothing to move */
        r->base += r->len;
        r->len = 0;
    }
    if (r->len + need <= r->cap)
        return 0;
    if (drop) {
        memmove(r->buf, r->buf + drop, r->len - drop);
        r->base += drop;
        r->len -= (uint32_t)drop;
    }
    return r->len + need <= r->cap ? 0 : -1;
}

/* Close a write group of `replies` commands; 0, or -1 if too many are in flight. */
static inline int qd_resp_end_group(struct qd_resp *r, uint8_t replies)
{
    if (r->tail - r->head >= QD_RESP_GROUPS)
        return -1;
    r->replies[r->tail & (QD_RESP_GROUPS - 1)] = replies;
    r->gend[r->tail & (QD_RESP_GROUPS - 1)] = r->base + r->len;
    r->tail++;
    return 0;
}

static inline void qd_resp_lose(struct qd_resp *r, const char *what, int err)
{
    r->lost = 1;
    r->error_len = (uint32_t)(err ? snprintf(r->error, sizeof(r->error), "%s: %s", what,
                                             strerror(err))
                                  : snprintf(r->error, sizeof(r->error), "%s", what));
    if (r->error_len > QD_RESP_ERRLEN)
        r->error_len = QD_RESP_ERRLEN;
}

/* Send what is not sent yet.  While the connection is lost nothing is sent:
 * it stays in the buffer for the next connection (qd_resp_reset). */
static inline void qd_resp_flush(struct qd_resp *r)
{
    while (!r->lost && r->sent < r->base + r->len) {
        uint32_t off = (uint32_t)(r->sent - r->base);
        ssize_t n = send(r->fd, r->buf + off, r->len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            qd_resp_lose(r, "send", errno);
            return;
        }
        r->sent += (uint64_t)n;
        r->bytes_sent += (uint64_t)n;
    }
}

/* A new, authenticated connection `fd`: the replies of the old one are
 * forgotten, and every group not acknowledged is sent again (qd_resp_flush). */
static inline void qd_resp_reset(struct qd_resp *r, int fd)
{
    r->fd = fd;
    r->lost = 0;
    r->partial = 0;
    r->line_start = 1;
    r->in_error = 0;
    r->error_len = 0;
    r->error[0] = 0;
    r->bytes_resent += r->sent - r->acked_end;
    r->sent = r->acked_end;
}

static inline int64_t qd_resp_poll(struct qd_resp *r)
{
    uint8_t in[16384];
    int64_t done = 0;
    ssize_t n, i;
    if (r->failed)
        return QD_RESP_ERR;
    for (;;) {
        if (r->lost)
            return done;
        n = recv(r->fd, in, sizeof(in), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return done;
            if (errno == EINTR)
                continue;
            qd_resp_lose(r, "recv", errno);
            return done;
        }
        if (n == 0) {
            qd_resp_lose(r, "connection closed by Redis", 0);
            return done;
        }
        for (i = 0; i < n; i++) {
            uint8_t c = in[i];
            if (r->line_start && c == '-')
                r->in_error = 1;
            r->line_start = 0;
            if (r->in_error && c != '\r' && c != '\n' && r->error_len < QD_RESP_ERRLEN)
                r->error[r->error_len++] = (char)c;
            if (c != '\n')
                continue;
            r->line_start = 1;
            if (r->in_error) {
                r->error[r->error_len] = 0;
                if (strncmp(r->error, "-LOADING", 8) == 0) { /* Redis is starting: again later */
                    r->lost = 1;
                    return done;
                }
                r->failed = 1;
                return QD_RESP_ERR;
            }
            if (r->head == r->tail)
                continue; /* a reply nobody waits for: ignore */
            if (++r->partial == r->replies[r->head & (QD_RESP_GROUPS - 1)]) {
                r->partial = 0;
                r->acked_end = r->gend[r->head & (QD_RESP_GROUPS - 1)];
                r->head++;
                done++;
            }
        }
        if (n < (ssize_t)sizeof(in))
            return done;
    }
}

#endif
