/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Content-defined chunking (D7): cut points that depend only on the bytes (deterministic, the same
 * when fed in pieces, stable around an edit), the size limits, the average on random data, the
 * "need more bytes" and end-of-file answers, and known answers that pin the gear table and masks:
 * chunk names persist on disk, so a change there must fail here. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cdc.h"
#include "chunk-id.h"
#include "macro.h"

#define MiB (1024u * 1024u)

/* A seeded splitmix64 stream, so every run and every machine chunks the same bytes. */
static uint64_t splitmix64(uint64_t *state) {
        uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
        z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
        return z ^ (z >> 31);
}

static uint8_t *random_bytes(size_t n, uint64_t seed) {
        uint8_t *p = malloc(n);
        assert_non_null(p);
        for (size_t i = 0; i < n; i += 8) {
                uint64_t v = splitmix64(&seed);
                memcpy(p + i, &v, n - i < 8 ? n - i : 8);
        }
        return p;
}

typedef struct Cuts {
        size_t *len;
        size_t n;
} Cuts;

static void cuts_free(Cuts *c) {
        free(c->len);
        *c = (Cuts) {};
}

/* Chunks a whole buffer the way a caller holding the rest of the file does. */
static Cuts chunk_all(const uint8_t *data, size_t size) {
        Cuts c = {};
        size_t alloc = 0;

        for (size_t off = 0; off < size;) {
                size_t n = cdc_next_cut(data + off, size - off, true);
                assert_true(n > 0);
                assert_true(n <= size - off);
                if (c.n == alloc) {
                        alloc = alloc ? 2 * alloc : 256;
                        c.len = realloc(c.len, alloc * sizeof *c.len);
                        assert_non_null(c.len);
                }
                c.len[c.n++] = n;
                off += n;
        }
        return c;
}

static ChunkId *chunk_ids(const uint8_t *data, const Cuts *c) {
        ChunkId *ids = calloc(c->n ? c->n : 1, sizeof *ids);
        assert_non_null(ids);
        size_t off = 0;
        for (size_t i = 0; i < c->n; i++) {
                chunk_id_compute(data + off, c->len[i], &ids[i]);
                off += c->len[i];
        }
        return ids;
}

static void test_deterministic_and_limits(void **state) {
        const size_t size = 64 * MiB;
        _cleanup_free_ uint8_t *data = random_bytes(size, 1);

        Cuts a = chunk_all(data, size), b = chunk_all(data, size);
        assert_int_equal(a.n, b.n);
        assert_memory_equal(a.len, b.len, a.n * sizeof *a.len);

        size_t total = 0;
        for (size_t i = 0; i < a.n; i++) {
                total += a.len[i];
                if (i + 1 < a.n) {
                        assert_true(a.len[i] >= CDC_MIN_SIZE);
                        assert_true(a.len[i] <= CDC_MAX_SIZE);
                }
        }
        assert_int_equal(total, size);

        /* The design's 64 KiB on high-entropy data (compressed audio is close to it). */
        double avg = (double) size / (double) a.n;
        print_message("64 MiB of random data: %zu chunks, average %.1f KiB\n", a.n, avg / 1024);
        assert_true(avg >= 40.0 * 1024 && avg <= 100.0 * 1024);

        cuts_free(&a);
        cuts_free(&b);
}

static void test_streaming_matches_whole(void **state) {
        /* A fill job reads the origin in pieces of whatever size arrives and keeps CDC_MAX_SIZE
         * bytes buffered: it must find the cuts of the whole file. */
        const size_t size = 12 * MiB + 12345;
        _cleanup_free_ uint8_t *data = random_bytes(size, 2);
        Cuts whole = chunk_all(data, size);

        const size_t window_size = CDC_MAX_SIZE + 64 * 1024;
        _cleanup_free_ uint8_t *window = malloc(window_size);
        assert_non_null(window);
        uint64_t rng = 77;
        size_t fed = 0, have = 0, n_chunks = 0, saw_need_more = 0;

        while (fed < size || have > 0) {
                /* Top up by a random piece (1 byte .. 100 KiB). */
                size_t want = 1 + splitmix64(&rng) % (100 * 1024);
                if (want > window_size - have)
                        want = window_size - have;
                if (want > size - fed)
                        want = size - fed;
                memcpy(window + have, data + fed, want);
                have += want;
                fed += want;

                for (;;) {
                        size_t n = cdc_next_cut(window, have, fed == size);
                        if (n == 0) {
                                saw_need_more++;
                                assert_true(have < CDC_MAX_SIZE);
                                assert_true(fed < size);
                                break;
                        }
                        assert_true(n_chunks < whole.n);
                        assert_int_equal(n, whole.len[n_chunks]);
                        n_chunks++;
                        memmove(window, window + n, have - n);
                        have -= n;
                        if (have == 0)
                                break;
                }
        }
        assert_int_equal(n_chunks, whole.n);
        assert_true(saw_need_more > 0);
        cuts_free(&whole);
}

static void test_need_more_and_eof(void **state) {
        const size_t size = 4 * MiB;
        _cleanup_free_ uint8_t *data = random_bytes(size, 3);

        size_t cut = cdc_next_cut(data, size, false);
        assert_true(cut > CDC_MIN_SIZE && cut < CDC_MAX_SIZE);

        /* Everything up to the cut byte is needed to see it; one byte short is "give me more",
         * or the last chunk when that is the end of the file. */
        assert_int_equal(cdc_next_cut(data, cut, false), cut);
        assert_int_equal(cdc_next_cut(data, cut - 1, false), 0);
        assert_int_equal(cdc_next_cut(data, cut - 1, true), cut - 1);
        assert_int_equal(cdc_next_cut(data, cut + 1, true), cut);

        /* Short files: one chunk, never cut below the minimum. */
        assert_int_equal(cdc_next_cut(data, 0, true), 0);
        assert_int_equal(cdc_next_cut(data, 1, true), 1);
        assert_int_equal(cdc_next_cut(data, 1, false), 0);
        assert_int_equal(cdc_next_cut(data, CDC_MIN_SIZE, true), CDC_MIN_SIZE);
        assert_int_equal(cdc_next_cut(data, CDC_MIN_SIZE, false), 0);
}

static void test_low_entropy_cuts_at_max(void **state) {
        /* Silence: a constant hash that never meets the masks, so chunks are CDC_MAX_SIZE long. */
        const size_t size = CDC_MAX_SIZE * 3 + 1000;
        _cleanup_free_ uint8_t *zeros = calloc(1, size);
        assert_non_null(zeros);

        assert_int_equal(cdc_next_cut(zeros, size, false), CDC_MAX_SIZE);
        assert_int_equal(cdc_next_cut(zeros, CDC_MAX_SIZE, false), CDC_MAX_SIZE);
        assert_int_equal(cdc_next_cut(zeros, CDC_MAX_SIZE - 1, false), 0);
        assert_int_equal(cdc_next_cut(zeros, CDC_MAX_SIZE - 1, true), CDC_MAX_SIZE - 1);
        assert_int_equal(cdc_next_cut(zeros, 100000, true), 100000);

        Cuts c = chunk_all(zeros, size);
        assert_int_equal(c.n, 4);
        for (size_t i = 0; i < 3; i++)
                assert_int_equal(c.len[i], CDC_MAX_SIZE);
        assert_int_equal(c.len[3], 1000);
        cuts_free(&c);
}

/* How many chunks of a are not chunks of b (by id). */
static size_t count_missing(const ChunkId *a, size_t na, const ChunkId *b, size_t nb) {
        size_t missing = 0;
        for (size_t i = 0; i < na; i++) {
                bool found = false;
                for (size_t j = 0; j < nb && !found; j++)
                        found = memcmp(a[i].bytes, b[j].bytes, CHUNK_ID_SIZE) == 0;
                missing += !found;
        }
        return missing;
}

static void check_edit(const uint8_t *orig, size_t size, size_t at, size_t removed, const uint8_t *ins, size_t inserted,
                       size_t max_changed) {
        size_t size2 = size - removed + inserted;
        _cleanup_free_ uint8_t *edited = malloc(size2);
        assert_non_null(edited);
        memcpy(edited, orig, at);
        memcpy(edited + at, ins, inserted);
        memcpy(edited + at + inserted, orig + at + removed, size - at - removed);

        Cuts a = chunk_all(orig, size), b = chunk_all(edited, size2);
        _cleanup_free_ ChunkId *ia = chunk_ids(orig, &a);
        _cleanup_free_ ChunkId *ib = chunk_ids(edited, &b);

        /* Chunks that end before the edit are untouched: the same prefix of ids. */
        size_t prefix = 0, off = 0;
        while (prefix < a.n && prefix < b.n && off + a.len[prefix] <= at &&
               memcmp(ia[prefix].bytes, ib[prefix].bytes, CHUNK_ID_SIZE) == 0)
                off += a.len[prefix++];
        size_t before = 0;
        for (size_t i = 0, o = 0; i < a.n && o + a.len[i] <= at; o += a.len[i++])
                before++;
        assert_int_equal(prefix, before);

        /* After the edit the cuts fall into step again: the same suffix of ids. */
        size_t suffix = 0;
        while (suffix < a.n && suffix < b.n &&
               memcmp(ia[a.n - 1 - suffix].bytes, ib[b.n - 1 - suffix].bytes, CHUNK_ID_SIZE) == 0)
                suffix++;
        size_t changed = a.n - prefix - suffix;
        print_message("edit at %zu (-%zu +%zu): %zu of %zu chunks changed\n", at, removed, inserted, changed, a.n);
        assert_true(changed >= 1);
        assert_true(changed <= max_changed);
        assert_true(count_missing(ia, a.n, ib, b.n) <= max_changed);

        cuts_free(&a);
        cuts_free(&b);
}

static void test_boundary_stability(void **state) {
        const size_t size = 16 * MiB;
        _cleanup_free_ uint8_t *data = random_bytes(size, 4);
        _cleanup_free_ uint8_t *ins = random_bytes(4096, 5);

        /* A tag block grown near the start of a file: only the first chunk(s) change. */
        check_edit(data, size, 100, 0, ins, 37, 2);
        check_edit(data, size, 0, 0, ins, 4096, 2);
        /* A deletion near the start, and an edit in the middle. */
        check_edit(data, size, 5000, 1234, ins, 0, 2);
        check_edit(data, size, 7 * MiB + 333, 10, ins, 3000, 3);
}

/* Known answers. These numbers are the chunk boundaries of every cache already on disk: they change
 * only with the chunking format, never to make this test pass. */
static void test_known_answers(void **state) {
        static const size_t expected[] = {
                55487, 46984, 143192, 43491, 71496, 33354, 66255, 98325, 63619, 19716, 21206, 67976,
        };
        const size_t size = 4 * MiB;
        _cleanup_free_ uint8_t *data = random_bytes(size, 2016);

        size_t off = 0;
        for (size_t i = 0; i < ELEMENTSOF(expected); i++) {
                size_t n = cdc_next_cut(data + off, size - off, true);
                assert_int_equal(n, expected[i]);
                off += n;
        }
}

/* The format written out the slow way, one byte per step, from its description in cdc.c: gear[i] is
 * output i of splitmix64 seeded with "musicfs!"; the hash runs from 64 bytes before CDC_MIN_SIZE; a
 * cut follows the first byte at or past CDC_MIN_SIZE where (h & mask) == 0, with 16 mask bits before
 * CDC_AVG_SIZE and 15 after, the bits ending just below bit 63. */
static uint64_t ref_gear[256];

static size_t ref_next_cut(const uint8_t *data, size_t len, bool eof) {
        size_t limit = len < CDC_MAX_SIZE ? len : CDC_MAX_SIZE;
        uint64_t h = 0;

        for (size_t i = CDC_MIN_SIZE - 64; i < limit; i++) {
                h = (h << 1) + ref_gear[data[i]];
                if (i < CDC_MIN_SIZE)
                        continue;
                unsigned bits = i < CDC_AVG_SIZE ? 16 : 15;
                uint64_t mask = ((UINT64_C(1) << bits) - 1) << (63 - bits);
                if ((h & mask) == 0)
                        return i + 1;
        }
        if (len >= CDC_MAX_SIZE)
                return CDC_MAX_SIZE;
        return eof ? len : 0;
}

static void test_matches_reference(void **state) {
        uint64_t seed = UINT64_C(0x6d75736963667321);   /* "musicfs!" */
        for (size_t i = 0; i < 256; i++)
                ref_gear[i] = splitmix64(&seed);

        /* Random data with a stretch of silence and one of a short repeating pattern. */
        const size_t size = 24 * MiB;
        _cleanup_free_ uint8_t *data = random_bytes(size, 6);
        memset(data + 5 * MiB, 0, MiB);
        for (size_t i = 0; i < MiB; i++)
                data[11 * MiB + i] = (uint8_t) (i % 3);

        size_t n_chunks = 0;
        for (size_t off = 0; off < size; n_chunks++) {
                size_t n = cdc_next_cut(data + off, size - off, true);
                assert_int_equal(n, ref_next_cut(data + off, size - off, true));
                off += n;
        }
        assert_true(n_chunks > 100);

        /* Odd and even lengths, with and without the end of the file, hit both loop tails. */
        uint64_t rng = 99;
        for (unsigned k = 0; k < 2000; k++) {
                size_t off = splitmix64(&rng) % (size - CDC_MAX_SIZE - 1);
                size_t len = splitmix64(&rng) % (CDC_MAX_SIZE + 2);
                bool eof = splitmix64(&rng) & 1;
                assert_int_equal(cdc_next_cut(data + off, len, eof), ref_next_cut(data + off, len, eof));
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_deterministic_and_limits),
                cmocka_unit_test(test_streaming_matches_whole),
                cmocka_unit_test(test_need_more_and_eof),
                cmocka_unit_test(test_low_entropy_cuts_at_max),
                cmocka_unit_test(test_boundary_stability),
                cmocka_unit_test(test_known_answers),
                cmocka_unit_test(test_matches_reference),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
