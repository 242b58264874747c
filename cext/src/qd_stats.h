/* Quadrant NF runtime counter block: the fixed layout a monitor reads.
 *
 * One block per NF runtime, in a file under /dev/shm mapped by the runtime
 * (writer, the data core) and by any number of readers on other cores.
 * All fields are little-endian, naturally aligned; the layout is versioned
 * by QD_STATS_VERSION and documented in docs/dataplane.rst.  The data core
 * updates the counters once per non-empty batch inside a sequence lock:
 * `seq` is odd while an update is in progress, so a reader that sees the
 * same even `seq` before and after copying the block has a consistent
 * snapshot.  The header (first cache line) is written once at start-up and
 * at stop; the counters live in their own cache lines.
 */
#ifndef QD_STATS_H
#define QD_STATS_H

#include <stddef.h>
#include <stdint.h>

#define QD_STATS_MAGIC 0x31544154534e4451ULL /* "QDNSTAT1" little-endian */
#define QD_STATS_VERSION 1
#define QD_STATS_HIST_BUCKETS 128
#define QD_STATS_SAMPLES 1024 /* power of two */

enum qd_run_state { QD_STATE_INIT = 0, QD_STATE_RUNNING = 1, QD_STATE_STOPPED = 2 };

struct qd_sample {
	uint64_t tsc;    /* TSC at the end of the batch */
	uint32_t cycles; /* cycles of the batch: rx + NF + tx (saturates) */
	uint16_t pkts;   /* packets received in the batch */
	uint16_t pad;
};

struct qd_stats {
	/* header, offset 0 */
	uint64_t magic;
	uint32_t version;
	uint32_t size; /* sizeof(struct qd_stats) */
	uint64_t tsc_hz;
	uint64_t start_tsc;
	uint32_t pid;
	uint32_t core;
	uint32_t hist_buckets;
	uint32_t sample_slots;
	uint64_t state; /* enum qd_run_state */
	uint64_t header_pad;
	/* counters, offset 64 */
	uint64_t seq;
	uint64_t rx_packets;
	uint64_t rx_bytes;
	uint64_t tx_packets;
	uint64_t tx_bytes;
	uint64_t drops_nf;  /* verdict DROP */
	uint64_t drops_tx;  /* TX queue full */
	uint64_t held;      /* verdict HOLD (reserved: freed in this version) */
	/* offset 128 */
	uint64_t batches;     /* non-empty RX bursts */
	uint64_t empty_polls; /* RX bursts that returned nothing */
	uint64_t busy_cycles; /* sum of cycles over non-empty batches */
	uint64_t last_tsc;    /* TSC of the last update */
	uint64_t max_batch_cycles;
	uint64_t sample_head; /* samples written so far; next slot = head % SAMPLES */
	uint64_t counters_pad[2];
	/* offset 192 */
	uint64_t hist[QD_STATS_HIST_BUCKETS]; /* batches by cycles, see qd_hist_bucket */
	/* offset 1216 */
	struct qd_sample samples[QD_STATS_SAMPLES];
};

_Static_assert(offsetof(struct qd_stats, seq) == 64, "qd_stats layout");
_Static_assert(offsetof(struct qd_stats, batches) == 128, "qd_stats layout");
_Static_assert(offsetof(struct qd_stats, hist) == 192, "qd_stats layout");
_Static_assert(offsetof(struct qd_stats, samples) == 1216, "qd_stats layout");
_Static_assert(sizeof(struct qd_sample) == 16, "qd_sample layout");
_Static_assert(sizeof(struct qd_stats) == 1216 + 16 * QD_STATS_SAMPLES, "qd_stats layout");

/* Log-linear histogram: 4 buckets per power of two.  Values 0..3 have their
 * own bucket; a value c >= 4 with e = floor(log2 c) goes to
 * 4 * (e - 1) + ((c >> (e - 2)) & 3), whose lower bound is
 * (4 + sub) << (e - 2).  Bucket 127 also takes everything larger. */
static inline unsigned qd_hist_bucket(uint64_t c)
{
	if (c < 4)
		return (unsigned)c;
	unsigned e = 63 - (unsigned)__builtin_clzll(c);
	unsigned b = 4 * (e - 1) + (unsigned)((c >> (e - 2)) & 3);
	return b < QD_STATS_HIST_BUCKETS ? b : QD_STATS_HIST_BUCKETS - 1;
}

static inline void qd_stats_begin(struct qd_stats *s)
{
	__atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELAXED);
	__atomic_thread_fence(__ATOMIC_RELEASE);
}

static inline void qd_stats_end(struct qd_stats *s)
{
	__atomic_store_n(&s->seq, s->seq + 1, __ATOMIC_RELEASE);
}

/* One batch of the single-NF loops (cext/runtime.pyx, cext/stateful.pyx), under
 * the seqlock: its counters, its time (t0..t1) into busy_cycles, the maximum,
 * the histogram and the sample ring, and the empty polls before it. */
static inline void qd_stats_batch(struct qd_stats *st, uint16_t n, uint64_t rx_bytes,
				  uint64_t sent, uint64_t tx_bytes, uint64_t drops_nf,
				  uint64_t drops_tx, uint64_t held, uint64_t empty, uint64_t t0,
				  uint64_t t1)
{
	uint64_t cyc = t1 - t0;
	struct qd_sample *smp = &st->samples[st->sample_head & (QD_STATS_SAMPLES - 1)];
	qd_stats_begin(st);
	st->rx_packets += n;
	st->rx_bytes += rx_bytes;
	st->tx_packets += sent;
	st->tx_bytes += tx_bytes;
	st->drops_nf += drops_nf;
	st->drops_tx += drops_tx;
	st->held += held;
	st->batches += 1;
	st->empty_polls += empty;
	st->busy_cycles += cyc;
	st->last_tsc = t1;
	if (cyc > st->max_batch_cycles)
		st->max_batch_cycles = cyc;
	st->hist[qd_hist_bucket(cyc)] += 1;
	smp->tsc = t1;
	smp->cycles = (uint32_t)(cyc < 0xffffffffULL ? cyc : 0xffffffffULL);
	smp->pkts = n;
	st->sample_head += 1;
	qd_stats_end(st);
}

/* Empty polls since the last batch, when a loop's slice ends without one. */
static inline void qd_stats_idle(struct qd_stats *st, uint64_t empty, uint64_t tsc)
{
	qd_stats_begin(st);
	st->empty_polls += empty;
	st->last_tsc = tsc;
	qd_stats_end(st);
}

#endif
