/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "log.h"

static atomic_int log_max_level = LOG_INFO;

void log_set_max_level(int level) { atomic_store(&log_max_level, level); }
int log_get_max_level(void) { return atomic_load(&log_max_level); }

int log_level_from_string(const char *s) {
        static const char *const names[] = {
                [LOG_EMERG] = "emerg", [LOG_ALERT] = "alert", [LOG_CRIT] = "crit", [LOG_ERR] = "err",
                [LOG_WARNING] = "warning", [LOG_NOTICE] = "notice", [LOG_INFO] = "info", [LOG_DEBUG] = "debug",
        };
        if (!s)
                return -EINVAL;
        if (strcasecmp(s, "error") == 0)
                return LOG_ERR;
        if (strcasecmp(s, "warn") == 0)
                return LOG_WARNING;
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (strcasecmp(s, names[i]) == 0)
                        return (int) i;
        return -EINVAL;
}

/* stderr goes to the journal when JOURNAL_STREAM names its device and inode (systemd.exec(5)). */
bool log_stderr_is_journal(void) {
        static atomic_int cached = -1;
        int v = atomic_load(&cached);
        if (v >= 0)
                return v;
        const char *e = getenv("JOURNAL_STREAM");
        struct stat st;
        unsigned long long dev, ino;
        v = e && sscanf(e, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
            st.st_dev == dev && st.st_ino == ino;
        atomic_store(&cached, v);
        return v;
}

int log_internal(int level, int error, const char *func, const char *format, ...) {
        static const char *const prefix[] = { "emerg", "alert", "crit", "error", "warning", "notice", "info", "debug" };
        int saved_errno = errno;
        if (error == INT_MIN)   /* has no positive counterpart */
                error = EIO;
        else if (error < 0)
                error = -error;

        if (level <= atomic_load(&log_max_level)) {
                char buf[2048];
                va_list ap;
                errno = error;   /* so that %m prints the error we were given */
                va_start(ap, format);
                vsnprintf(buf, sizeof buf, format, ap);
                va_end(ap);
                if (log_stderr_is_journal())
                        fprintf(stderr, "<%d>%s\n", level, buf);
                else if (level == LOG_DEBUG)
                        fprintf(stderr, "musicfsd: %s: %s: %s\n", prefix[level & 7], func, buf);
                else
                        fprintf(stderr, "musicfsd: %s: %s\n", prefix[level & 7], buf);
        }
        errno = saved_errno;
        return -error;
}
