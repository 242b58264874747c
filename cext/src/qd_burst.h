/* Helpers of the NF runtime's burst loop (cext/runtime.pyx). */
#ifndef QD_BURST_H
#define QD_BURST_H

#include <stdint.h>
#include <string.h>

/* Non-zero if the first n verdicts are all QD_FORWARD (0).  Reads whole
 * 8-byte words, i.e. up to n rounded up to 8: the caller's array is
 * QD_MAX_BURST (256) bytes and holds QD_FORWARD past the batch. */
static inline int qd_all_forward(const uint8_t *v, unsigned n)
{
	uint64_t acc = 0, w;
	unsigned i;
	for (i = 0; i < n; i += 8) {
		memcpy(&w, v + i, 8);
		acc |= w;
	}
	return acc == 0;
}

#endif
