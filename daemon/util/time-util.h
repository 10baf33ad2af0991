/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Reading clocks: CLOCK_MONOTONIC for intervals and deadlines, CLOCK_REALTIME for times stored or
 * shown, CLOCK_PROCESS_CPUTIME_ID for CPU spent. */
#include <stdint.h>
#include <time.h>

static inline uint64_t timespec_load_usec(const struct timespec *ts) {
        return (uint64_t) ts->tv_sec * 1000000u + (uint64_t) ts->tv_nsec / 1000u;
}

static inline uint64_t now_usec(clockid_t clock) {
        struct timespec ts;
        (void) clock_gettime(clock, &ts);
        return timespec_load_usec(&ts);
}

static inline uint64_t now_nsec(clockid_t clock) {
        struct timespec ts;
        (void) clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}
