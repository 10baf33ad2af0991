/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The handler may only use async-signal-safe calls: the report is formatted by hand into a stack
 * buffer and written with write(2). backtrace() is not listed as safe, but its one unsafe step (the
 * first call loads libgcc_s) is done at install time, after which it only walks the stack. */
#include <errno.h>
#include <execinfo.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "crash.h"
#include "log.h"

#define CRASH_BACKTRACE_MAX 64

static const int crash_signals[] = { SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT };

/* The subsystem's state. A signal handler has no argument to carry a context in, so this one is
 * static: set once by crash_handler_install() before any thread exists, only read afterwards. */
static struct {
        bool installed;
        bool to_journal;        /* stderr is the journal: "<2>" prefixes */
        char alt_stack[64 * 1024];      /* the main thread's: a stack overflow still gets its report */
} crash;

static const char *signal_name(int sig) {
        switch (sig) {
        case SIGSEGV: return "SIGSEGV";
        case SIGBUS:  return "SIGBUS";
        case SIGILL:  return "SIGILL";
        case SIGFPE:  return "SIGFPE";
        case SIGABRT: return "SIGABRT";
        default:      return "a fatal signal";
        }
}

/* A line being assembled in a fixed buffer; what does not fit is cut. */
typedef struct CrashLine {
        char buf[256];
        size_t n;
} CrashLine;

static void line_add(CrashLine *l, const char *s) {
        while (*s && l->n < sizeof l->buf - 1)
                l->buf[l->n++] = *s++;
}

static void line_add_uint(CrashLine *l, uint64_t v, unsigned base) {
        char digits[24];
        size_t n = 0;
        do {
                digits[n++] = "0123456789abcdef"[v % base];
                v /= base;
        } while (v > 0 && n < sizeof digits);
        if (base == 16)
                line_add(l, "0x");
        while (n > 0 && l->n < sizeof l->buf - 1)
                l->buf[l->n++] = digits[--n];
}

static void line_start(CrashLine *l) {
        l->n = 0;
        line_add(l, crash.to_journal ? "<2>" : "musicfsd: crit: ");
}

static void line_write(CrashLine *l) {
        l->buf[l->n++] = '\n';
        const char *p = l->buf;
        size_t left = l->n;
        while (left > 0) {
                ssize_t k = write(STDERR_FILENO, p, left);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        return;
                p += k;
                left -= (size_t) k;
        }
}

static void crash_handler(int sig, siginfo_t *si, void *context) {
        int saved_errno = errno;
        CrashLine l;
        char name[16] = "?";
        (void) context;

        (void) prctl(PR_GET_NAME, name, 0, 0, 0);
        name[sizeof name - 1] = 0;

        line_start(&l);
        line_add(&l, "Crashed: ");
        line_add(&l, signal_name(sig));
        if (si && si->si_code <= 0 && si->si_pid > 0 && si->si_pid != getpid()) {
                /* kill(), not a fault: si_addr means nothing then. */
                line_add(&l, " sent by pid ");
                line_add_uint(&l, (uint64_t) si->si_pid, 10);
        } else if (sig != SIGABRT && si) {
                line_add(&l, " at address ");
                line_add_uint(&l, (uint64_t) (uintptr_t) si->si_addr, 16);
                line_add(&l, " (code ");
                line_add_uint(&l, (uint64_t) (unsigned) si->si_code, 10);
                line_add(&l, ")");
        }
        line_add(&l, " in thread ");
        line_add(&l, name);
        line_add(&l, " (tid ");
        line_add_uint(&l, (uint64_t) syscall(SYS_gettid), 10);
        line_add(&l, "); backtrace:");
        line_write(&l);

        void *frames[CRASH_BACKTRACE_MAX];
        int n = backtrace(frames, CRASH_BACKTRACE_MAX);
        /* Symbols straight to stderr, one frame a line (backtrace_symbols_fd() does not allocate). */
        backtrace_symbols_fd(frames, n, STDERR_FILENO);

        line_start(&l);
        line_add(&l, "Raising ");
        line_add(&l, signal_name(sig));
        line_add(&l, " again for a core dump; systemd restarts the daemon and the next start clears the mount");
        line_write(&l);

        /* SA_RESETHAND put the default action back: this ends the process the way the signal would
         * have, core dump and exit status included. */
        errno = saved_errno;
        (void) raise(sig);
}

int crash_handler_install(void) {
        void *warm[1];

        if (crash.installed)
                return 0;
        crash.to_journal = log_stderr_is_journal();
        /* Loads libgcc_s now rather than inside the handler. */
        (void) backtrace(warm, 1);

        stack_t ss = { .ss_sp = crash.alt_stack, .ss_size = sizeof crash.alt_stack };
        if (sigaltstack(&ss, NULL) < 0)
                return log_warning_errno(-errno, "Cannot set up the alternate signal stack for crash reports: %m");

        struct sigaction sa = {
                .sa_sigaction = crash_handler,
                .sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESETHAND | SA_NODEFER,
        };
        sigemptyset(&sa.sa_mask);
        for (size_t i = 0; i < ELEMENTSOF(crash_signals); i++)
                if (sigaction(crash_signals[i], &sa, NULL) < 0)
                        return log_warning_errno(-errno, "Cannot install the crash handler for %s: %m",
                                                 signal_name(crash_signals[i]));
        crash.installed = true;
        return 0;
}

void sigfillset_except_crash(sigset_t *set) {
        sigfillset(set);
        for (size_t i = 0; i < ELEMENTSOF(crash_signals); i++)
                sigdelset(set, crash_signals[i]);
}

void thread_set_name(const char *name) {
        /* The kernel keeps 15 characters and cuts the rest itself. */
        (void) prctl(PR_SET_NAME, name, 0, 0, 0);
}
