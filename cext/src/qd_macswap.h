/* Swap the destination and source MAC of an Ethernet frame in place. */
#ifndef QD_MACSWAP_H
#define QD_MACSWAP_H

#include <stdint.h>
#include <string.h>
#ifdef __SSSE3__
#include <tmmintrin.h>
#endif

/* d: the frame, len >= 14.  Frames of 16 bytes and more take one 16-byte
 * load, a byte shuffle and one store (bytes 12-15 are written back
 * unchanged); shorter ones two scalar loads and stores. */
static inline void qd_macswap(uint8_t *d, uint16_t len)
{
#ifdef __SSSE3__
	if (len >= 16) {
		const __m128i swap = _mm_setr_epi8(6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5, 12, 13, 14, 15);
		__m128i h = _mm_loadu_si128((const __m128i *)d);
		_mm_storeu_si128((__m128i *)d, _mm_shuffle_epi8(h, swap));
		return;
	}
#endif
	uint64_t x, x2;
	uint32_t y, y2;
	(void)len;
	memcpy(&x, d, 8);
	memcpy(&y, d + 8, 4);
	/* little endian: dst = bytes 0-5, src = bytes 6-11 */
	x2 = (x >> 48) | ((uint64_t)y << 16) | ((x & 0xffff) << 48);
	y2 = (uint32_t)(x >> 16);
	memcpy(d, &x2, 8);
	memcpy(d + 8, &y2, 4);
}

#endif
