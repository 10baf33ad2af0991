/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The failpoint grammar (every form and every refusal), the registry and evaluation semantics. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "failpoint.h"
#include "macro.h"

static int setup(void **state) {
        failpoint_disarm_all();
        return 0;
}

/* ---- helpers ------------------------------------------------------------------------------- */

typedef struct StderrCapture {
        int saved;
        int pipe[2];
} StderrCapture;

static void capture_start(StderrCapture *c) {
        fflush(stderr);
        assert_int_equal(pipe2(c->pipe, O_CLOEXEC), 0);
        c->saved = dup(STDERR_FILENO);
        assert_true(c->saved >= 0);
        assert_true(dup2(c->pipe[1], STDERR_FILENO) >= 0);
        close(c->pipe[1]);
}

/* Restores stderr and returns what was written meanwhile (small: fits the pipe buffer). */
static char *capture_end(StderrCapture *c) {
        static char buf[4096];
        size_t n = 0;
        ssize_t k;

        fflush(stderr);
        assert_true(dup2(c->saved, STDERR_FILENO) >= 0);
        close(c->saved);
        while ((k = read(c->pipe[0], buf + n, sizeof buf - 1 - n)) > 0)
                n += (size_t) k;
        close(c->pipe[0]);
        buf[n] = '\0';
        return buf;
}

static uint32_t fired_of(const char *name) {
        uint32_t fired = 0;
        assert_int_equal(failpoint_fired(name, &fired), 0);
        return fired;
}

static void arm_ok(const char *name, const char *actions) {
        char *reason = NULL;
        int r = failpoint_arm(name, actions, &reason);
        if (r < 0)
                fail_msg("arming %s=%s: %d %s", name, actions, r, strna(reason));
        assert_null(reason);
}

static double elapsed_ms(const struct timespec *a, const struct timespec *b) {
        return (double) (b->tv_sec - a->tv_sec) * 1000.0 + (double) (b->tv_nsec - a->tv_nsec) / 1e6;
}

/* ---- grammar ------------------------------------------------------------------------------- */

typedef struct Expected {
        unsigned percent;
        long count;
        FailpointTask task;
        int error;
        unsigned ms;
        const char *message;
} Expected;

static void check_parse(const char *spec, size_t n, const Expected *want) {
        FailpointAction *a = NULL;
        size_t got = 0;
        char *reason = NULL;

        int r = failpoint_parse(spec, &a, &got, &reason);
        if (r < 0)
                fail_msg("'%s' refused: %s", spec, strna(reason));
        assert_null(reason);
        assert_int_equal(got, n);
        for (size_t i = 0; i < n; i++) {
                assert_int_equal(a[i].percent, want[i].percent);
                assert_int_equal(a[i].count, want[i].count);
                assert_int_equal(a[i].task, want[i].task);
                assert_int_equal(a[i].error, want[i].error);
                assert_int_equal(a[i].ms, want[i].ms);
                if (want[i].message)
                        assert_string_equal(a[i].message, want[i].message);
                else
                        assert_null(a[i].message);
        }
        failpoint_actions_free(a, got);
}

#define ONE(spec, ...) check_parse(spec, 1, (const Expected[]) { __VA_ARGS__ })

static void test_parse_single_tasks(void **state) {
        ONE("off", { 100, -1, FP_TASK_OFF, 0, 0, NULL });
        ONE("return", { 100, -1, FP_TASK_RETURN, EIO, 0, NULL });
        ONE("return(ENOENT)", { 100, -1, FP_TASK_RETURN, ENOENT, 0, NULL });
        ONE("return( EACCES )", { 100, -1, FP_TASK_RETURN, EACCES, 0, NULL });
        ONE("return(ENOSPC)", { 100, -1, FP_TASK_RETURN, ENOSPC, 0, NULL });
        ONE("return(EWOULDBLOCK)", { 100, -1, FP_TASK_RETURN, EAGAIN, 0, NULL });
        ONE("return(ENOTSUP)", { 100, -1, FP_TASK_RETURN, EOPNOTSUPP, 0, NULL });
        ONE("sleep(50)", { 100, -1, FP_TASK_SLEEP, 0, 50, NULL });
        ONE("sleep(0)", { 100, -1, FP_TASK_SLEEP, 0, 0, NULL });
        ONE("sleep(4294967295)", { 100, -1, FP_TASK_SLEEP, 0, UINT_MAX, NULL });
        ONE("delay( 7 )", { 100, -1, FP_TASK_DELAY, 0, 7, NULL });
        ONE("pause", { 100, -1, FP_TASK_PAUSE, 0, 0, NULL });
        ONE("yield", { 100, -1, FP_TASK_YIELD, 0, 0, NULL });
        ONE("print(hello world)", { 100, -1, FP_TASK_PRINT, 0, 0, "hello world" });
        /* Balanced parentheses and "->" inside a message belong to the message. */
        ONE("print(a (b) -> c)", { 100, -1, FP_TASK_PRINT, 0, 0, "a (b) -> c" });
        ONE("panic", { 100, -1, FP_TASK_PANIC, 0, 0, NULL });
        ONE("kill", { 100, -1, FP_TASK_KILL, 0, 0, NULL });
}

static void test_parse_modifiers(void **state) {
        ONE("50%return", { 50, -1, FP_TASK_RETURN, EIO, 0, NULL });
        ONE("1%off", { 1, -1, FP_TASK_OFF, 0, 0, NULL });
        ONE("100%off", { 100, -1, FP_TASK_OFF, 0, 0, NULL });
        ONE("3*return(EIO)", { 100, 3, FP_TASK_RETURN, EIO, 0, NULL });
        ONE("25%2*sleep(1)", { 25, 2, FP_TASK_SLEEP, 0, 1, NULL });
        ONE("  10 % 4 * return ( EROFS )  ", { 10, 4, FP_TASK_RETURN, EROFS, 0, NULL });
        ONE("\t7*yield\t", { 100, 7, FP_TASK_YIELD, 0, 0, NULL });
        ONE("9223372036854775807*off", { 100, LONG_MAX, FP_TASK_OFF, 0, 0, NULL });
}

static void test_parse_chains(void **state) {
        check_parse("2*return(EIO)->off->sleep(5)", 3, (const Expected[]) {
                { 100, 2, FP_TASK_RETURN, EIO, 0, NULL },
                { 100, -1, FP_TASK_OFF, 0, 0, NULL },
                { 100, -1, FP_TASK_SLEEP, 0, 5, NULL },
        });
        check_parse(" 50%print(x) ->  1*pause->return ", 3, (const Expected[]) {
                { 50, -1, FP_TASK_PRINT, 0, 0, "x" },
                { 100, 1, FP_TASK_PAUSE, 0, 0, NULL },
                { 100, -1, FP_TASK_RETURN, EIO, 0, NULL },
        });
        check_parse("yield->delay(1)->kill->panic", 4, (const Expected[]) {
                { 100, -1, FP_TASK_YIELD, 0, 0, NULL },
                { 100, -1, FP_TASK_DELAY, 0, 1, NULL },
                { 100, -1, FP_TASK_KILL, 0, 0, NULL },
                { 100, -1, FP_TASK_PANIC, 0, 0, NULL },
        });
}

static void test_parse_malformed(void **state) {
        static const struct {
                const char *spec;
                const char *reason_contains;
        } cases[] = {
                { "", "empty" },
                { "   ", "empty" },
                { "return->", "nothing after '->'" },
                { "return ->  ", "nothing after '->'" },
                { "->return", "missing action before '->'" },
                { "return->->off", "missing action before '->'" },
                { "retrun(EIO)", "unknown task 'retrun' at 'retrun(EIO)'" },
                { "off->retrun(EIO)->off", "unknown task 'retrun' at 'retrun(EIO)'" },
                { "RETURN", "unknown task 'RETURN'" },
                { "0%return", "percentage must be 1..100" },
                { "101%return", "percentage must be 1..100" },
                { "99999999999999999999999%return", "'99999999999999999999999' is too large" },
                { "99999999999999999999*return", "'99999999999999999999' is too large" },
                { "0*return", "count must be 1 or more" },
                { "50%0*return", "count must be 1 or more" },
                { "50return", "expected '%' or '*'" },
                { "50%3return", "expected '*'" },
                { "3*50%return", "the percentage comes before the count" },
                { "3*return->2*50 %off", "the percentage comes before the count" },
                { "%return", "expected a task" },
                { "*return", "expected a task" },
                { "return(EFOO)", "unknown errno name 'EFOO'" },
                { "return(eio)", "unknown errno name 'eio'" },
                { "return(5)", "unknown errno name '5'" },
                { "return()", "needs an errno name" },
                { "return(EIO", "missing ')'" },
                { "print((x)", "missing ')'" },
                { "return(EIO))", "unexpected ')'" },
                { "pause)", "unexpected ')'" },
                { "sleep", "sleep needs a time in milliseconds" },
                { "sleep()", "sleep needs a time in milliseconds" },
                { "sleep( )", "sleep needs a time in milliseconds" },
                { "delay", "delay needs a time in milliseconds" },
                { "sleep(abc)", "expected a number for milliseconds at 'abc'" },
                { "sleep(-1)", "expected a number for milliseconds" },
                { "sleep(5ms)", "whole milliseconds, not '5ms'" },
                { "sleep(4294967296)", "'4294967296' is too large" },
                { "print", "print needs a message" },
                { "print()", "print needs a message" },
                { "print(  )", "print needs a message" },
                { "off(1)", "task 'off' takes no argument" },
                { "pause(1)", "task 'pause' takes no argument" },
                { "yield(x)", "task 'yield' takes no argument" },
                { "panic(boom)", "task 'panic' takes no argument" },
                { "kill(9)", "task 'kill' takes no argument" },
                { "return(EIO) x", "unexpected 'x' after task 'return'" },
                { "return(EIO) off", "unexpected 'off' after task 'return'" },
                { "return;off", "unexpected ';off'" },
                { "print(h\xc3\xa9llo)", "non-ASCII character at position 8" },
                { "print(a\nb)", "control character at position 8" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                FailpointAction *a = (FailpointAction *) 0x1;
                size_t n = 12345;
                char *reason = NULL;

                int r = failpoint_parse(cases[i].spec, &a, &n, &reason);
                if (r != -EINVAL)
                        fail_msg("'%s' gave %d, expected -EINVAL", cases[i].spec, r);
                if (!reason || !strstr(reason, cases[i].reason_contains))
                        fail_msg("'%s': reason '%s' does not mention \"%s\"", cases[i].spec, strna(reason),
                                 cases[i].reason_contains);
                /* Outputs are left alone on failure. */
                assert_ptr_equal(a, (FailpointAction *) 0x1);
                assert_int_equal(n, 12345);
                free(reason);

                /* The reason is optional. */
                assert_int_equal(failpoint_parse(cases[i].spec, &a, &n, NULL), -EINVAL);
        }
}

static void test_errno_names(void **state) {
        assert_int_equal(failpoint_errno_from_name("EIO"), EIO);
        assert_int_equal(failpoint_errno_from_name("ENOENT"), ENOENT);
        assert_int_equal(failpoint_errno_from_name("EAGAIN"), EAGAIN);
        assert_int_equal(failpoint_errno_from_name("EWOULDBLOCK"), EAGAIN);
        assert_int_equal(failpoint_errno_from_name("EDEADLOCK"), EDEADLK);
        assert_int_equal(failpoint_errno_from_name("EHWPOISON"), EHWPOISON);
        assert_int_equal(failpoint_errno_from_name("ETIMEDOUT"), ETIMEDOUT);
        assert_int_equal(failpoint_errno_from_name("EFOO"), -EINVAL);
        assert_int_equal(failpoint_errno_from_name("eio"), -EINVAL);
        assert_int_equal(failpoint_errno_from_name(""), -EINVAL);
        assert_int_equal(failpoint_errno_from_name(NULL), -EINVAL);
}

static void test_point_names(void **state) {
        static const char *const names[] = {
#define FP_NAME(id, name) [FP_##id] = name,
                FAILPOINT_LIST(FP_NAME)
#undef FP_NAME
        };

        for (int i = 0; i < _FP_MAX; i++) {
                assert_string_equal(failpoint_name((FailpointId) i), names[i]);
                assert_int_equal(failpoint_id_from_name(names[i]), i);
        }
        assert_int_equal(failpoint_id_from_name("origin-read"), FP_ORIGIN_READ);
        assert_null(failpoint_name(_FP_MAX));
        assert_null(failpoint_name((FailpointId) -1));
        assert_int_equal(failpoint_id_from_name("origin_read"), -ENOENT);
        assert_int_equal(failpoint_id_from_name(""), -ENOENT);
        assert_int_equal(failpoint_id_from_name(NULL), -EINVAL);
}

/* ---- evaluation ---------------------------------------------------------------------------- */

static void test_eval_unarmed(void **state) {
        for (int i = 0; i < _FP_MAX; i++)
                assert_int_equal(failpoint_eval((FailpointId) i), 0);
        assert_int_equal(failpoint_eval(_FP_MAX), 0);
        assert_int_equal(FAILPOINT(SCAN_FILE), 0);
}

static void test_eval_return(void **state) {
        arm_ok("origin-read", "return(ENOSPC)");
        for (int i = 0; i < 5; i++)
                assert_int_equal(failpoint_eval(FP_ORIGIN_READ), -ENOSPC);
        /* Only the armed point is affected. */
        assert_int_equal(failpoint_eval(FP_ORIGIN_OPEN), 0);
        assert_int_equal(fired_of("origin-read"), 5);

        arm_ok("origin-read", "return");
        assert_int_equal(failpoint_eval(FP_ORIGIN_READ), -EIO);
        /* Re-arming restarts the fired count. */
        assert_int_equal(fired_of("origin-read"), 1);
#if MUSICFS_FAILPOINTS
        assert_int_equal(FAILPOINT(ORIGIN_READ), -EIO);
#endif
}

static void test_count_fallthrough(void **state) {
        arm_ok("scan-file", "3*return(EIO)->return(ENOENT)");
        for (int i = 0; i < 3; i++)
                assert_int_equal(failpoint_eval(FP_SCAN_FILE), -EIO);
        for (int i = 0; i < 4; i++)
                assert_int_equal(failpoint_eval(FP_SCAN_FILE), -ENOENT);
        assert_int_equal(fired_of("scan-file"), 7);

        /* When every action is used up the point does nothing. */
        arm_ok("scan-file", "2*return(EACCES)");
        assert_int_equal(failpoint_eval(FP_SCAN_FILE), -EACCES);
        assert_int_equal(failpoint_eval(FP_SCAN_FILE), -EACCES);
        for (int i = 0; i < 3; i++)
                assert_int_equal(failpoint_eval(FP_SCAN_FILE), 0);
        assert_int_equal(fired_of("scan-file"), 2);

        /* Re-arming gives fresh counts. */
        arm_ok("scan-file", "2*return(EACCES)");
        assert_int_equal(failpoint_eval(FP_SCAN_FILE), -EACCES);
}

static void test_off_chain(void **state) {
        /* off is chosen like any task and stops the chain, without counting as fired. */
        arm_ok("catalog-commit", "2*off->return(EROFS)");
        assert_int_equal(failpoint_eval(FP_CATALOG_COMMIT), 0);
        assert_int_equal(failpoint_eval(FP_CATALOG_COMMIT), 0);
        assert_int_equal(fired_of("catalog-commit"), 0);
        assert_int_equal(failpoint_eval(FP_CATALOG_COMMIT), -EROFS);
        assert_int_equal(failpoint_eval(FP_CATALOG_COMMIT), -EROFS);
        assert_int_equal(fired_of("catalog-commit"), 2);

        arm_ok("catalog-commit", "off->return(EIO)");
        for (int i = 0; i < 10; i++)
                assert_int_equal(failpoint_eval(FP_CATALOG_COMMIT), 0);
        assert_int_equal(fired_of("catalog-commit"), 0);
}

static void test_percent_always(void **state) {
        arm_ok("fuse-read", "100%return(EIO)");
        for (int i = 0; i < 1000; i++)
                assert_int_equal(failpoint_eval(FP_FUSE_READ), -EIO);
        assert_int_equal(fired_of("fuse-read"), 1000);
}

static void test_percent_half(void **state) {
        int hits = 0;

        arm_ok("fuse-read", "50%return(EIO)");
        for (int i = 0; i < 2000; i++) {
                int r = failpoint_eval(FP_FUSE_READ);
                assert_true(r == 0 || r == -EIO);
                hits += r == -EIO;
        }
        assert_in_range(hits, 800, 1200);
        assert_int_equal(fired_of("fuse-read"), hits);

        /* A miss falls through to the next action. */
        int first = 0, second = 0;
        arm_ok("fuse-read", "50%return(EIO)->return(ENOENT)");
        for (int i = 0; i < 2000; i++) {
                int r = failpoint_eval(FP_FUSE_READ);
                if (r == -EIO)
                        first++;
                else if (r == -ENOENT)
                        second++;
                else
                        fail_msg("unexpected %d", r);
        }
        assert_in_range(first, 800, 1200);
        assert_int_equal(first + second, 2000);

        /* A miss does not use up the count (fail-rs): exactly 5 hits however the dice fall. */
        int counted = 0;
        arm_ok("fuse-read", "50%5*return(EIO)->return(ENOENT)");
        for (int i = 0; i < 500; i++) {
                int r = failpoint_eval(FP_FUSE_READ);
                assert_true(r == -EIO || r == -ENOENT);
                counted += r == -EIO;
        }
        assert_int_equal(counted, 5);
}

static void test_sleep_delay_yield(void **state) {
        struct timespec a, b;

        arm_ok("catalog-open", "sleep(50)");
        clock_gettime(CLOCK_MONOTONIC, &a);
        assert_int_equal(failpoint_eval(FP_CATALOG_OPEN), 0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        assert_true(elapsed_ms(&a, &b) >= 50.0);

        arm_ok("catalog-open", "delay(20)");
        clock_gettime(CLOCK_MONOTONIC, &a);
        assert_int_equal(failpoint_eval(FP_CATALOG_OPEN), 0);
        clock_gettime(CLOCK_MONOTONIC, &b);
        assert_true(elapsed_ms(&a, &b) >= 20.0);

        arm_ok("catalog-open", "2*yield->return(EIO)");
        assert_int_equal(failpoint_eval(FP_CATALOG_OPEN), 0);
        assert_int_equal(failpoint_eval(FP_CATALOG_OPEN), 0);
        assert_int_equal(failpoint_eval(FP_CATALOG_OPEN), -EIO);
        assert_int_equal(fired_of("catalog-open"), 3);
}

typedef struct PauseThread {
        FailpointId id;
        atomic_int returned;
        int result;
} PauseThread;

static void *pause_thread(void *p) {
        PauseThread *t = p;
        t->result = failpoint_eval(t->id);
        atomic_store(&t->returned, 1);
        return NULL;
}

/* Waits (bounded) until the point has fired n times: the paused thread then sits in its wait. */
static void wait_for_fired(const char *name, uint32_t n) {
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        while (fired_of(name) < n) {
                clock_gettime(CLOCK_MONOTONIC, &now);
                if (elapsed_ms(&start, &now) > 30000)
                        fail_msg("%s never fired %u times", name, n);
                sched_yield();
        }
}

static void test_pause_until_disarm(void **state) {
        PauseThread t = { .id = FP_SHUTDOWN_DRAIN };
        pthread_t thread;

        arm_ok("shutdown-drain", "pause");
        assert_int_equal(pthread_create(&thread, NULL, pause_thread, &t), 0);
        wait_for_fired("shutdown-drain", 1);
        /* fired is counted under the lock that the wait releases, so the thread is paused now. */
        for (int i = 0; i < 100; i++) {
                assert_int_equal(atomic_load(&t.returned), 0);
                sched_yield();
        }
        assert_int_equal(pthread_tryjoin_np(thread, NULL), EBUSY);

        assert_int_equal(failpoint_disarm("shutdown-drain"), 0);
        assert_int_equal(pthread_join(thread, NULL), 0);
        assert_int_equal(atomic_load(&t.returned), 1);
        assert_int_equal(t.result, 0);
}

static void test_pause_until_rearm(void **state) {
        PauseThread t = { .id = FP_TREE_PUBLISH };
        pthread_t thread;

        arm_ok("tree-publish", "1*pause->return(EIO)");
        assert_int_equal(pthread_create(&thread, NULL, pause_thread, &t), 0);
        wait_for_fired("tree-publish", 1);
        assert_int_equal(atomic_load(&t.returned), 0);
        assert_int_equal(pthread_tryjoin_np(thread, NULL), EBUSY);

        /* Arming another point does not wake it. */
        arm_ok("scan-file", "off");
        assert_int_equal(pthread_tryjoin_np(thread, NULL), EBUSY);

        arm_ok("tree-publish", "return(ENOENT)");
        assert_int_equal(pthread_join(thread, NULL), 0);
        assert_int_equal(t.result, 0);
        assert_int_equal(failpoint_eval(FP_TREE_PUBLISH), -ENOENT);
}

typedef struct CountingThread {
        int hits;
} CountingThread;

static void *counting_thread(void *p) {
        CountingThread *t = p;
        for (int i = 0; i < 1000; i++)
                if (failpoint_eval(FP_ORIGIN_STAT) == -EIO)
                        t->hits++;
        return NULL;
}

static void test_concurrent_counts(void **state) {
        CountingThread t[4] = {};
        pthread_t threads[4];
        int total = 0;

        arm_ok("origin-stat", "250*return(EIO)");
        for (size_t i = 0; i < ELEMENTSOF(threads); i++)
                assert_int_equal(pthread_create(&threads[i], NULL, counting_thread, &t[i]), 0);
        for (size_t i = 0; i < ELEMENTSOF(threads); i++) {
                assert_int_equal(pthread_join(threads[i], NULL), 0);
                total += t[i].hits;
        }
        assert_int_equal(total, 250);
        assert_int_equal(fired_of("origin-stat"), 250);
}

static void test_print(void **state) {
        StderrCapture c;

        arm_ok("scan-batch", "2*print(hello (world) -> x)->off");
        capture_start(&c);
        int r1 = failpoint_eval(FP_SCAN_BATCH);
        int r2 = failpoint_eval(FP_SCAN_BATCH);
        int r3 = failpoint_eval(FP_SCAN_BATCH);
        const char *out = capture_end(&c);
        assert_int_equal(r1, 0);
        assert_int_equal(r2, 0);
        assert_int_equal(r3, 0);
        assert_string_equal(out, "musicfsd: failpoint scan-batch: hello (world) -> x\n"
                                 "musicfsd: failpoint scan-batch: hello (world) -> x\n");
        assert_int_equal(fired_of("scan-batch"), 2);
}

/* Runs FAILPOINT in a child armed with actions; returns its wait status and stderr. */
static int run_child(const char *actions, char *out, size_t out_size) {
        int p[2];
        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                signal(SIGABRT, SIG_DFL);
                dup2(p[1], STDERR_FILENO);
                if (failpoint_arm("fuse-lookup", actions, NULL) < 0)
                        _exit(2);
                failpoint_eval(FP_FUSE_LOOKUP);
                _exit(0);
        }
        close(p[1]);
        size_t n = 0;
        ssize_t k;
        while ((k = read(p[0], out + n, out_size - 1 - n)) > 0)
                n += (size_t) k;
        out[n] = '\0';
        close(p[0]);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        return status;
}

static void test_panic(void **state) {
        char out[512];
        int status = run_child("panic", out, sizeof out);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGABRT);
        assert_non_null(strstr(out, "musicfsd: failpoint fuse-lookup: panic"));
}

static void test_kill(void **state) {
        char out[512];
        int status = run_child("kill", out, sizeof out);
        assert_true(WIFSIGNALED(status));
        assert_int_equal(WTERMSIG(status), SIGKILL);

        /* A kill that is not chosen leaves the process alone. */
        status = run_child("off->kill", out, sizeof out);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
}

/* ---- registry ------------------------------------------------------------------------------ */

static void test_list(void **state) {
        FailpointInfo *infos = NULL;
        size_t n = 0;

        arm_ok("origin-read", "  2*return(EIO)->off ");
        arm_ok("catalog-open", "return(ENOENT)");
        assert_int_equal(failpoint_eval(FP_ORIGIN_READ), -EIO);
        assert_int_equal(failpoint_eval(FP_CATALOG_OPEN), -ENOENT);
        assert_int_equal(failpoint_eval(FP_CATALOG_OPEN), -ENOENT);

        assert_int_equal(failpoint_list(&infos, &n), 0);
        assert_int_equal(n, _FP_MAX);
        for (size_t i = 0; i < n; i++) {
                assert_string_equal(infos[i].name, failpoint_name((FailpointId) i));
                if (i == FP_ORIGIN_READ) {
                        assert_string_equal(infos[i].actions, "2*return(EIO)->off");
                        assert_int_equal(infos[i].fired, 1);
                } else if (i == FP_CATALOG_OPEN) {
                        assert_string_equal(infos[i].actions, "return(ENOENT)");
                        assert_int_equal(infos[i].fired, 2);
                } else {
                        assert_string_equal(infos[i].actions, "");
                        assert_int_equal(infos[i].fired, 0);
                }
        }
        assert_string_equal(infos[0].name, "catalog-open");
        assert_string_equal(infos[n - 1].name, "cache-chunk-read");
        failpoint_info_free(infos, n);
        failpoint_info_free(NULL, 0);
}

static void test_disarm(void **state) {
        arm_ok("fuse-readdir", "return(EIO)");
        assert_int_equal(failpoint_eval(FP_FUSE_READDIR), -EIO);
        assert_int_equal(failpoint_disarm("fuse-readdir"), 0);
        assert_int_equal(failpoint_eval(FP_FUSE_READDIR), 0);
        assert_int_equal(fired_of("fuse-readdir"), 0);
        /* Disarming a disarmed point is fine; an unknown one is not. */
        assert_int_equal(failpoint_disarm("fuse-readdir"), 0);
        assert_int_equal(failpoint_disarm("fuse-readdirr"), -ENOENT);
        assert_int_equal(failpoint_disarm(NULL), -EINVAL);

        arm_ok("fuse-readdir", "return(EIO)");
        arm_ok("origin-open", "return(EIO)");
        failpoint_disarm_all();
        assert_int_equal(failpoint_eval(FP_FUSE_READDIR), 0);
        assert_int_equal(failpoint_eval(FP_ORIGIN_OPEN), 0);
}

static void test_arm_errors(void **state) {
        char *reason = NULL;

        assert_int_equal(failpoint_arm("no-such-point", "return", &reason), -ENOENT);
        assert_non_null(reason);
        assert_non_null(strstr(reason, "no-such-point"));
        free(reason);
        assert_int_equal(failpoint_arm("no-such-point", "return", NULL), -ENOENT);

        /* A bad spec leaves the previous arming in place. */
        arm_ok("scan-file", "return(EIO)");
        assert_int_equal(failpoint_arm("scan-file", "retrun(EIO)", &reason), -EINVAL);
        assert_non_null(strstr(reason, "unknown task 'retrun' at 'retrun(EIO)'"));
        free(reason);
        assert_int_equal(failpoint_eval(FP_SCAN_FILE), -EIO);
        assert_int_equal(failpoint_arm("scan-file", NULL, &reason), -EINVAL);
        free(reason);
        assert_int_equal(failpoint_eval(FP_SCAN_FILE), -EIO);
}

static void check_nothing_armed(void) {
        FailpointInfo *infos = NULL;
        size_t n = 0;
        assert_int_equal(failpoint_list(&infos, &n), 0);
        for (size_t i = 0; i < n; i++)
                assert_string_equal(infos[i].actions, "");
        failpoint_info_free(infos, n);
        for (int i = 0; i < _FP_MAX; i++)
                assert_int_equal(failpoint_eval((FailpointId) i), 0);
}

static void test_arm_from_string(void **state) {
        char *reason = NULL;

        assert_int_equal(failpoint_arm_from_string(
                        " scan-file = return(EIO) ; origin-read=2*return(ENOENT)->off;"
                        "catalog-commit=print(a;b);;", &reason), 0);
        assert_null(reason);
        assert_int_equal(failpoint_eval(FP_SCAN_FILE), -EIO);
        assert_int_equal(failpoint_eval(FP_ORIGIN_READ), -ENOENT);

        FailpointInfo *infos = NULL;
        size_t n = 0;
        assert_int_equal(failpoint_list(&infos, &n), 0);
        assert_string_equal(infos[FP_SCAN_FILE].actions, "return(EIO)");
        assert_string_equal(infos[FP_ORIGIN_READ].actions, "2*return(ENOENT)->off");
        assert_string_equal(infos[FP_CATALOG_COMMIT].actions, "print(a;b)");
        failpoint_info_free(infos, n);

        /* Empty: nothing to do. */
        failpoint_disarm_all();
        assert_int_equal(failpoint_arm_from_string("", &reason), 0);
        assert_int_equal(failpoint_arm_from_string(" ; ", &reason), 0);
        check_nothing_armed();
}

static void test_arm_from_string_atomic(void **state) {
        static const struct {
                const char *s;
                const char *reason_contains;
        } cases[] = {
                { "scan-file=return;origin-read=retrun", "failpoint 'origin-read': unknown task 'retrun'" },
                { "scan-file=return;nope=off", "unknown failpoint 'nope'" },
                { "scan-file=return;origin-read", "expected NAME=ACTIONS, not 'origin-read'" },
                { "scan-file=return;scan-file=off", "failpoint 'scan-file' is given twice" },
                { "scan-file=return;origin-read=", "failpoint 'origin-read': empty" },
                { "scan-file=return(EFOO)", "unknown errno name 'EFOO'" },
                { "=return", "unknown failpoint ''" },
                { "scan-file=return;sc\xff" "an=off", "non-ASCII character at position 20" },
        };

        for (size_t i = 0; i < ELEMENTSOF(cases); i++) {
                char *reason = NULL;
                int r = failpoint_arm_from_string(cases[i].s, &reason);
                if (r != -EINVAL || !reason || !strstr(reason, cases[i].reason_contains))
                        fail_msg("'%s': %d '%s', expected \"%s\"", cases[i].s, r, strna(reason),
                                 cases[i].reason_contains);
                free(reason);
                check_nothing_armed();
        }
        assert_int_equal(failpoint_arm_from_string(NULL, NULL), -EINVAL);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup(test_parse_single_tasks, setup),
                cmocka_unit_test_setup(test_parse_modifiers, setup),
                cmocka_unit_test_setup(test_parse_chains, setup),
                cmocka_unit_test_setup(test_parse_malformed, setup),
                cmocka_unit_test_setup(test_errno_names, setup),
                cmocka_unit_test_setup(test_point_names, setup),
                cmocka_unit_test_setup(test_eval_unarmed, setup),
                cmocka_unit_test_setup(test_eval_return, setup),
                cmocka_unit_test_setup(test_count_fallthrough, setup),
                cmocka_unit_test_setup(test_off_chain, setup),
                cmocka_unit_test_setup(test_percent_always, setup),
                cmocka_unit_test_setup(test_percent_half, setup),
                cmocka_unit_test_setup(test_sleep_delay_yield, setup),
                cmocka_unit_test_setup(test_pause_until_disarm, setup),
                cmocka_unit_test_setup(test_pause_until_rearm, setup),
                cmocka_unit_test_setup(test_concurrent_counts, setup),
                cmocka_unit_test_setup(test_print, setup),
                cmocka_unit_test_setup(test_panic, setup),
                cmocka_unit_test_setup(test_kill, setup),
                cmocka_unit_test_setup(test_list, setup),
                cmocka_unit_test_setup(test_disarm, setup),
                cmocka_unit_test_setup(test_arm_errors, setup),
                cmocka_unit_test_setup(test_arm_from_string, setup),
                cmocka_unit_test_setup(test_arm_from_string_atomic, setup),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
