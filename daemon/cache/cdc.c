/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* FastCDC (Xia et al., USENIX ATC 2016, and "The Design of Fast and Lightweight Resemblance
 * Detection and Content-Defined Chunking", TOS 2020): a gear hash, the first CDC_MIN_SIZE bytes of
 * every chunk skipped, normalised chunking (a harder mask before CDC_AVG_SIZE, an easier one after)
 * and a forced cut at CDC_MAX_SIZE.
 *
 * Chunk boundaries name chunk files on disk, so everything that decides them is fixed forever: the
 * gear table (splitmix64 from a fixed seed, computed by the preprocessor so no run-time or build-time
 * tool can change it), the masks and the window. tests/unit/test-cdc.c pins the first cut offsets of
 * a seeded input; if that test fails, every cache on every disk would be re-chunked — don't "fix" it
 * by updating the numbers.
 *
 * The hash. h = (h << 1) + gear[byte] forgets a byte after 64 steps, so the hash after byte i depends
 * on data[i-63..i] alone. Hashing starts 64 bytes before CDC_MIN_SIZE, so every candidate cut sees a
 * full window: a cut depends on the 64 bytes before it and on where the chunk started, never on
 * bytes further back. The masks take their bits from just below bit 63 (the bits that mix the most
 * bytes of the window) and leave bit 63 clear for the two-bytes-per-step loop below. */
#include <stddef.h>
#include <stdint.h>

#include "cdc.h"
#include "macro.h"

/* splitmix64 (Steele, Lea, Flood 2014; the seeding generator of xoshiro): output n of a generator
 * seeded with GEAR_SEED. The seed is "musicfs!" in ASCII. */
#define GEAR_SEED UINT64_C(0x6d75736963667321)
#define SM64_STATE(n) (GEAR_SEED + ((uint64_t) (n) + 1) * UINT64_C(0x9e3779b97f4a7c15))
#define SM64_MIX1(z) (((z) ^ ((z) >> 30)) * UINT64_C(0xbf58476d1ce4e5b9))
#define SM64_MIX2(z) (((z) ^ ((z) >> 27)) * UINT64_C(0x94d049bb133111eb))
#define SM64_MIX3(z) ((z) ^ ((z) >> 31))
#define GEAR(n) SM64_MIX3(SM64_MIX2(SM64_MIX1(SM64_STATE(n))))
#define GEAR_LS(n) (GEAR(n) << 1)

#define REP4(F, n) F((n)), F((n) + 1), F((n) + 2), F((n) + 3)
#define REP16(F, n) REP4(F, (n)), REP4(F, (n) + 4), REP4(F, (n) + 8), REP4(F, (n) + 12)
#define REP64(F, n) REP16(F, (n)), REP16(F, (n) + 16), REP16(F, (n) + 32), REP16(F, (n) + 48)
#define REP256(F) REP64(F, 0), REP64(F, 64), REP64(F, 128), REP64(F, 192)

static const uint64_t gear[256] = { REP256(GEAR) };
/* gear[] shifted left once, for the first byte of each pair (FastCDC 2020's "rolling two bytes"). */
static const uint64_t gear_ls[256] = { REP256(GEAR_LS) };

#define GEAR_WINDOW 64u

/* bits ones, ending just below bit 63. A cut is where (h & mask) == 0: one position in 2^bits.
 * Normalised chunking, mildly: one chance in 2^16 per byte before CDC_AVG_SIZE (~52 % of chunks end
 * between 16 and 64 KiB), one in 2^15 after it. On random data that gives a mean of ~65 KiB, and
 * after an edit the cuts fall back into step with the old ones within one chunk in 99 % of cases
 * (at most three in 1000 random edits). Stronger normalisation (18/13, 18/14, 17/14 bits) narrows
 * the spread but took up to 6-9 chunks to fall back into step; 17/15 gave a mean of 78 KiB. */
#define CDC_MASK(bits) (((UINT64_C(1) << (bits)) - 1) << (63 - (bits)))
#define MASK_HARD CDC_MASK(16)          /* before CDC_AVG_SIZE */
#define MASK_EASY CDC_MASK(15)          /* from CDC_AVG_SIZE on */

_Static_assert(CDC_MIN_SIZE >= GEAR_WINDOW && CDC_MIN_SIZE < CDC_AVG_SIZE && CDC_AVG_SIZE < CDC_MAX_SIZE,
               "chunk size limits out of order");
_Static_assert(((MASK_HARD | MASK_EASY) >> 63) == 0, "the two-byte step needs bit 63 clear in the masks");

/* Looks for a cut in data[i..end): the index of the byte after which (h & mask) == 0, or SIZE_MAX
 * with *h advanced to end. Two bytes per step: with h1 = (h << 1) + gear[a], the sum
 * (h << 2) + gear_ls[a] is h1 << 1, and since mask has bit 63 clear, (h1 & mask) == 0 exactly when
 * ((h1 << 1) & (mask << 1)) == 0; adding gear[b] then gives the hash after b. One shift every two
 * bytes instead of one per byte shortens the loop-carried chain. */
static inline size_t scan(const uint8_t *data, size_t i, size_t end, uint64_t *h, uint64_t mask) {
        const uint64_t mask_ls = mask << 1;
        uint64_t x = *h;

        if (i >= end)
                return SIZE_MAX;
        if ((end - i) & 1) {
                x = (x << 1) + gear[data[i]];
                if (!(x & mask))
                        return i;
                i++;
        }
        for (; i < end; i += 2) {
                x = (x << 2) + gear_ls[data[i]];
                if (_unlikely_(!(x & mask_ls)))
                        return i;
                x += gear[data[i + 1]];
                if (_unlikely_(!(x & mask)))
                        return i + 1;
        }

        *h = x;
        return SIZE_MAX;
}

size_t cdc_next_cut(const uint8_t *data, size_t len, bool eof) {
        size_t limit = len < CDC_MAX_SIZE ? len : CDC_MAX_SIZE;

        /* The last position tested is limit - 1; a cut after it would be the whole of data. */
        if (limit > CDC_MIN_SIZE) {
                uint64_t h = 0;
                for (size_t i = CDC_MIN_SIZE - GEAR_WINDOW; i < CDC_MIN_SIZE; i++)
                        h = (h << 1) + gear[data[i]];

                size_t at = scan(data, CDC_MIN_SIZE, limit < CDC_AVG_SIZE ? limit : CDC_AVG_SIZE, &h, MASK_HARD);
                if (at == SIZE_MAX && limit > CDC_AVG_SIZE)
                        at = scan(data, CDC_AVG_SIZE, limit, &h, MASK_EASY);
                if (at != SIZE_MAX)
                        return at + 1;
        }

        if (len >= CDC_MAX_SIZE)
                return CDC_MAX_SIZE;
        return eof ? len : 0;
}
