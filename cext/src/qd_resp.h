/* The write side of a stateful NF's Redis connection, on the data core, no GIL.
 *
 * qd_resp_group   encodes one write group (MSET of the set keys, DEL of the
 *                 removed ones) as RESP into the connection's buffer;
 * qd_resp_flush   sends the buffer on the (blocking, already authenticated)
 *                 socket;
 * qd_resp_poll    reads the replies that have arrived, without blocking
 *                 (MSG_DONTWAIT), and returns how many write groups are now
 *                 acknowledged.  Every reply to MSET/DEL is one line (+OK,
 *                 :<n>); a line starting with '-' is an error reply: the
 *                 connection is marked failed (QD_RESP_ERR) and nothing after
 *                 it counts as acknowledged.
 *
 * A key in Redis is "<prefix>:<32 hex digits of the 16-byte key>"; the
 * prefix and the AUTH happen in Python (worker/state_store.py).
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
    int fd;
    uint8_t prefix[80];
    uint32_t prefix_len;
    uint8_t *buf;
    uint32_t cap, len;
    uint8_t replies[QD_RESP_GROUPS]; /* replies each group in flight waits for */
    uint64_t head, tail;             /* groups: [head, tail) in flight */
    uint32_t partial;                /* replies received towards group head */
    int line_start, in_error, failed;
    char error[QD_RESP_ERRLEN + 1];
    uint32_t error_len;
    uint64_t bytes_sent, keys_written;
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

/* Close a write group of `replies` commands; 0, or -1 if too many are in flight. */
static inline int qd_resp_end_group(struct qd_resp *r, uint8_t replies)
{
    if (r->tail - r->head >= QD_RESP_GROUPS)
        return -1;
    r->replies[r->tail & (QD_RESP_GROUPS - 1)] = replies;
    r->tail++;
    return 0;
}

static inline int qd_resp_flush(struct qd_resp *r)
{
    uint32_t off = 0;
    while (off < r->len) {
        ssize_t n = send(r->fd, r->buf + off, r->len - off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            r->failed = 1;
            r->error_len = (uint32_t)snprintf(r->error, sizeof(r->error), "send: %s",
                                              strerror(errno));
            return -1;
        }
        off += (uint32_t)n;
    }
    r->bytes_sent += r->len;
    r->len = 0;
    return 0;
}

static inline int64_t qd_resp_poll(struct qd_resp *r)
{
    uint8_t in[16384];
    int64_t done = 0;
    ssize_t n, i;
    if (r->failed)
        return QD_RESP_ERR;
    for (;;) {
        n = recv(r->fd, in, sizeof(in), MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return done;
            if (errno == EINTR)
                continue;
            r->failed = 1;
            r->error_len = (uint32_t)snprintf(r->error, sizeof(r->error), "recv: %s",
                                              strerror(errno));
            return QD_RESP_ERR;
        }
        if (n == 0) {
            r->failed = 1;
            r->error_len = (uint32_t)snprintf(r->error, sizeof(r->error),
                                              "connection closed by Redis");
            return QD_RESP_ERR;
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
                r->failed = 1;
                r->error[r->error_len] = 0;
                return QD_RESP_ERR;
            }
            if (r->head == r->tail)
                continue; /* a reply nobody waits for: ignore */
            if (++r->partial == r->replies[r->head & (QD_RESP_GROUPS - 1)]) {
                r->partial = 0;
                r->head++;
                done++;
            }
        }
        if (n < (ssize_t)sizeof(in))
            return done;
    }
}

#endif
