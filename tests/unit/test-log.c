/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Logging: level names, the -|err| return value, %m, the maximum level and the journal format.
 * stderr is captured through a pipe. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "log.h"

typedef struct Capture {
        int saved;
        int pipe[2];
} Capture;

static void capture_start(Capture *c) {
        fflush(stderr);
        assert_int_equal(pipe2(c->pipe, O_CLOEXEC), 0);
        /* Large enough for everything a test writes, so the writer never blocks. */
        (void) fcntl(c->pipe[1], F_SETPIPE_SZ, 1 << 16);
        c->saved = dup(STDERR_FILENO);
        assert_true(c->saved >= 0);
        assert_true(dup2(c->pipe[1], STDERR_FILENO) >= 0);
        close(c->pipe[1]);
}

static char *capture_end(Capture *c) {
        static char buf[1 << 16];
        size_t n = 0;
        ssize_t k;

        fflush(stderr);
        assert_true(dup2(c->saved, STDERR_FILENO) >= 0);
        close(c->saved);
        while (n < sizeof buf - 1 && (k = read(c->pipe[0], buf + n, sizeof buf - 1 - n)) > 0)
                n += (size_t) k;
        close(c->pipe[0]);
        buf[n] = '\0';
        return buf;
}

static int setup(void **state) {
        log_set_max_level(LOG_INFO);
        return 0;
}

static void test_level_from_string(void **state) {
        static const struct {
                const char *name;
                int level;
        } names[] = {
                { "emerg", LOG_EMERG },   { "alert", LOG_ALERT },     { "crit", LOG_CRIT },
                { "err", LOG_ERR },       { "error", LOG_ERR },       { "warning", LOG_WARNING },
                { "warn", LOG_WARNING },  { "notice", LOG_NOTICE },   { "info", LOG_INFO },
                { "debug", LOG_DEBUG },   { "DEBUG", LOG_DEBUG },     { "Warning", LOG_WARNING },
        };
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                assert_int_equal(log_level_from_string(names[i].name), names[i].level);

        static const char *const bad[] = { "", "loud", "information", "deb", "7", " info", "info ", "errors" };
        for (size_t i = 0; i < ELEMENTSOF(bad); i++)
                assert_int_equal(log_level_from_string(bad[i]), -EINVAL);
        assert_int_equal(log_level_from_string(NULL), -EINVAL);
}

static void test_max_level_roundtrip(void **state) {
        log_set_max_level(LOG_DEBUG);
        assert_int_equal(log_get_max_level(), LOG_DEBUG);
        log_set_max_level(LOG_ERR);
        assert_int_equal(log_get_max_level(), LOG_ERR);
}

static void test_return_value(void **state) {
        Capture c;

        capture_start(&c);
        int a = log_error_errno(EIO, "positive");
        int b = log_error_errno(-EIO, "negative");
        int d = log_warning_errno(-ENOENT, "warning");
        int e = log_info("no error");
        int g = log_error("no error either");
        int h = log_error_errno(INT_MIN, "no positive counterpart: %m");
        const char *out = capture_end(&c);

        assert_int_equal(a, -EIO);
        assert_int_equal(b, -EIO);
        assert_int_equal(d, -ENOENT);
        assert_int_equal(e, 0);
        assert_int_equal(g, 0);
        assert_int_equal(h, -EIO);
        assert_string_equal(out, "musicfsd: error: positive\n"
                                 "musicfsd: error: negative\n"
                                 "musicfsd: warning: warning\n"
                                 "musicfsd: info: no error\n"
                                 "musicfsd: error: no error either\n"
                                 "musicfsd: error: no positive counterpart: Input/output error\n");
}

static void test_percent_m(void **state) {
        Capture c;

        errno = EBADF;
        capture_start(&c);
        errno = EBADF;
        int r = log_error_errno(-ENOENT, "Failed to open %s: %m", "/x");
        int saved = errno;
        log_error_errno(EACCES, "%m and %d", 42);
        const char *out = capture_end(&c);

        assert_int_equal(r, -ENOENT);
        /* %m is the error passed in, not errno; errno survives the call. */
        assert_int_equal(saved, EBADF);
        assert_string_equal(out, "musicfsd: error: Failed to open /x: No such file or directory\n"
                                 "musicfsd: error: Permission denied and 42\n");
}

static void test_max_level_filtering(void **state) {
        Capture c;

        log_set_max_level(LOG_WARNING);
        capture_start(&c);
        int r1 = log_info_errno(ENOSPC, "hidden info");
        int r2 = log_debug("hidden debug");
        int r3 = log_notice("hidden notice");
        int r4 = log_warning("shown warning");
        int r5 = log_error_errno(ENOSPC, "shown error: %m");
        const char *out = capture_end(&c);

        /* Filtered messages still return the error. */
        assert_int_equal(r1, -ENOSPC);
        assert_int_equal(r2, 0);
        assert_int_equal(r3, 0);
        assert_int_equal(r4, 0);
        assert_int_equal(r5, -ENOSPC);
        assert_string_equal(out, "musicfsd: warning: shown warning\n"
                                 "musicfsd: error: shown error: No space left on device\n");
}

static void test_debug_names_function(void **state) {
        Capture c;

        log_set_max_level(LOG_DEBUG);
        capture_start(&c);
        log_debug("value %d", 7);
        log_notice("plain");
        const char *out = capture_end(&c);
        assert_string_equal(out, "musicfsd: debug: test_debug_names_function: value 7\n"
                                 "musicfsd: notice: plain\n");
}

static void test_long_message(void **state) {
        Capture c;
        char *big = malloc(10000);

        assert_non_null(big);
        memset(big, 'x', 9999);
        big[9999] = '\0';
        capture_start(&c);
        int r = log_error_errno(E2BIG, "%s", big);
        const char *out = capture_end(&c);
        free(big);

        /* Truncated to the buffer, still one terminated line. */
        assert_int_equal(r, -E2BIG);
        assert_int_equal(strncmp(out, "musicfsd: error: xxx", 20), 0);
        size_t len = strlen(out);
        assert_in_range(len, 1000, 4096);
        assert_int_equal(out[len - 1], '\n');
        assert_ptr_equal(strchr(out, '\n'), out + len - 1);
}

/* The journal check is made once per process, so the journal format runs in a fresh exec of this
 * binary whose stderr is the pipe that JOURNAL_STREAM names (or, for the control, does not). */
static int journal_child(void) {
        log_set_max_level(LOG_DEBUG);
        log_error_errno(ENOENT, "gone: %m");
        log_info("hello");
        log_debug("details");
        return 0;
}

static char *run_journal_child(bool matching) {
        static char buf[1024];
        int p[2];
        struct stat st;
        char env[64];

        assert_int_equal(pipe2(p, O_CLOEXEC), 0);
        assert_int_equal(fstat(p[1], &st), 0);
        snprintf(env, sizeof env, "%llu:%llu", (unsigned long long) st.st_dev,
                 (unsigned long long) st.st_ino + (matching ? 0 : 1));

        fflush(NULL);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
                dup2(p[1], STDERR_FILENO);
                setenv("JOURNAL_STREAM", env, 1);
                execl("/proc/self/exe", "test-log", "--journal-child", (char *) NULL);
                _exit(127);
        }
        close(p[1]);
        size_t n = 0;
        ssize_t k;
        while (n < sizeof buf - 1 && (k = read(p[0], buf + n, sizeof buf - 1 - n)) > 0)
                n += (size_t) k;
        buf[n] = '\0';
        close(p[0]);
        int status;
        assert_int_equal(waitpid(pid, &status, 0), pid);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
        return buf;
}

static void test_journal_format(void **state) {
        assert_string_equal(run_journal_child(true), "<3>gone: No such file or directory\n<6>hello\n<7>details\n");
        assert_string_equal(run_journal_child(false), "musicfsd: error: gone: No such file or directory\n"
                                                      "musicfsd: info: hello\n"
                                                      "musicfsd: debug: journal_child: details\n");
}

int main(int argc, char *argv[]) {
        if (argc > 1 && strcmp(argv[1], "--journal-child") == 0)
                return journal_child();
        /* Output here always goes to capture pipes: never the journal format. */
        unsetenv("JOURNAL_STREAM");

        const struct CMUnitTest tests[] = {
                cmocka_unit_test_setup(test_level_from_string, setup),
                cmocka_unit_test_setup(test_max_level_roundtrip, setup),
                cmocka_unit_test_setup(test_return_value, setup),
                cmocka_unit_test_setup(test_percent_m, setup),
                cmocka_unit_test_setup(test_max_level_filtering, setup),
                cmocka_unit_test_setup(test_debug_names_function, setup),
                cmocka_unit_test_setup(test_long_message, setup),
                cmocka_unit_test_setup(test_journal_format, setup),
        };
        return cmocka_run_group_tests(tests, NULL, NULL);
}
