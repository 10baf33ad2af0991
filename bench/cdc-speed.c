/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Chunking throughput of the cache (D7) on one core: cdc_next_cut() alone, SHA-256 alone
 * (chunk_id_compute() over the same cuts) and the two together, over a buffer of seeded pseudo-random
 * bytes (incompressible, no repeats: every chunk is new, as in audio). Best of N rounds, timed by the
 * wall clock and by this thread's CPU clock (the machine is shared; the CPU time is what one core
 * did). bench_cache.py runs it; not a test.
 *   cdc-speed [MIB [ROUNDS [SEED]]]       defaults 256 MiB, 5 rounds, seed 1
 * Prints one line per mode: "<mode>\t<bytes>\t<best wall s>\t<best cpu s>\t<chunks>\t<mean chunk>". */
#include <errno.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "cdc.h"
#include "chunk-id.h"

static double clock_s(clockid_t id) {
        struct timespec ts;
        clock_gettime(id, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* splitmix64: fast, seeded, and the same bytes on every run. */
static void fill_random(uint8_t *buf, size_t len, uint64_t seed) {
        uint64_t s = seed;
        size_t i = 0;

        for (; i + 8 <= len; i += 8) {
                uint64_t z = (s += UINT64_C(0x9e3779b97f4a7c15));
                z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
                z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
                z ^= z >> 31;
                memcpy(buf + i, &z, 8);
        }
        for (; i < len; i++)
                buf[i] = (uint8_t) (s >> (8 * (i & 7)));
}

typedef enum Mode { MODE_CDC, MODE_SHA, MODE_CDC_SHA, _MODE_MAX } Mode;
static const char *const mode_names[_MODE_MAX] = { "cdc", "sha256", "cdc+sha256" };

/* One pass; returns the chunk count. MODE_SHA hashes at the cuts found beforehand (cuts[]), so it
 * measures the hash alone over the same chunk sizes. */
static size_t pass(Mode mode, const uint8_t *buf, size_t len, size_t *cuts, size_t ncuts, uint8_t *sink) {
        size_t off = 0, n = 0;
        ChunkId id;

        if (mode == MODE_SHA) {
                for (size_t i = 0; i < ncuts; i++) {
                        chunk_id_compute(buf + off, cuts[i], &id);
                        sink[0] ^= id.bytes[0];
                        off += cuts[i];
                }
                return ncuts;
        }
        while (off < len) {
                size_t c = cdc_next_cut(buf + off, len - off, true);
                if (mode == MODE_CDC_SHA) {
                        chunk_id_compute(buf + off, c, &id);
                        sink[0] ^= id.bytes[0];
                }
                if (cuts)
                        cuts[n] = c;
                off += c;
                n++;
        }
        return n;
}

int main(int argc, char **argv) {
        unsigned long mib = argc > 1 ? strtoul(argv[1], NULL, 10) : 256;
        unsigned long rounds = argc > 2 ? strtoul(argv[2], NULL, 10) : 5;
        uint64_t seed = argc > 3 ? strtoull(argv[3], NULL, 10) : 1;
        uint8_t sink[1] = { 0 };

        if (mib == 0 || mib > 4096 || rounds == 0 || rounds > 100) {
                fprintf(stderr, "usage: cdc-speed [MIB (1-4096) [ROUNDS (1-100) [SEED]]]\n");
                return 2;
        }

        size_t len = (size_t) mib << 20;
        uint8_t *buf = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
        size_t maxcuts = len / CDC_MIN_SIZE + 2;
        size_t *cuts = calloc(maxcuts, sizeof *cuts);
        if (buf == MAP_FAILED || !cuts) {
                fprintf(stderr, "cdc-speed: cannot allocate %lu MiB: %s\n", mib, strerror(errno));
                return 1;
        }
        fill_random(buf, len, seed);
        size_t ncuts = pass(MODE_CDC, buf, len, cuts, maxcuts, sink);       /* the cuts; also a warm-up */

        for (Mode m = 0; m < _MODE_MAX; m++) {
                double best_wall = 1e30, best_cpu = 1e30;
                size_t n = 0;

                for (unsigned long r = 0; r < rounds; r++) {
                        double w0 = clock_s(CLOCK_MONOTONIC), c0 = clock_s(CLOCK_THREAD_CPUTIME_ID);
                        n = m == MODE_SHA ? pass(m, buf, len, cuts, ncuts, sink) : pass(m, buf, len, NULL, 0, sink);
                        double w = clock_s(CLOCK_MONOTONIC) - w0, c = clock_s(CLOCK_THREAD_CPUTIME_ID) - c0;
                        if (w < best_wall)
                                best_wall = w;
                        if (c < best_cpu)
                                best_cpu = c;
                }
                printf("%s\t%zu\t%.6f\t%.6f\t%zu\t%zu\n", mode_names[m], len, best_wall, best_cpu, n, n ? len / n : 0);
        }
        /* Keeps the hashes from being optimised away. */
        fprintf(stderr, "cdc-speed: %lu MiB, %lu rounds, seed %" PRIu64 ", %zu chunks (sink %u)\n",
                mib, rounds, seed, ncuts, sink[0]);
        free(cuts);
        munmap(buf, len);
        return 0;
}
