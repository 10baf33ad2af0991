/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Crash reports (COVERAGE 2.2): a fatal signal in any thread (SIGSEGV, SIGBUS, SIGILL, SIGFPE, SIGABRT:
 * a failed assertion or the "panic" failpoint) is logged at crit level with the signal, the faulting
 * address, the thread's name and a backtrace, then raised again with its default action, so the
 * kernel still writes a core dump and systemd still restarts the unit (Restart=on-failure). C has no
 * unwinding: a crash in a worker ends the daemon, and this makes sure it does not end silently.
 *
 * Owns the alternate signal stack of the thread that installs it (a stack overflow there still gets
 * its report) and nothing else. */
#include <signal.h>

/* Installs the handlers; once, from main() before other threads exist. 0 or a negative errno. */
int crash_handler_install(void);

/* Every signal but the crash signals: what a thread that leaves signals to the event loop blocks.
 * A blocked SIGSEGV/SIGBUS/SIGILL/SIGFPE raised by a fault is not delivered to a handler: the kernel
 * kills the process at once, and the report would be lost. */
void sigfillset_except_crash(sigset_t *set);

/* Names the calling thread ("mfs-fuse", ...; at most 15 characters), for crash reports and top -H. */
void thread_set_name(const char *name);
