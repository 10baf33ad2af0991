/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Drives one SFTP origin for the origin-level tests (test_sftp.py): the origin is made once from the
 * command line, then commands are read from stdin, one per line, and answered on stdout, so the
 * session pool lives across commands (a restarted server must be reconnected to transparently).
 *
 *   stat REL                 -> ok SIZE MTIME_NS | err ERRNO
 *   open REL                 -> ok ID | err ERRNO
 *   pread ID OFF LEN OUT     -> ok N USEC (the bytes written to file OUT) | err ERRNO USEC
 *   close ID                 -> ok
 *   walk [REL_DIR]           -> file REL SIZE ... / skip REL ERRNO ... / ok RETURN | err ERRNO
 *   check                    -> ok | err ERRNO */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "origin.h"

#define MAX_FILES 64

static long long now_us(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (long long) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int on_file(const char *rel, const OriginStat *st, void *userdata) {
        (void) userdata;
        printf("file %s %llu\n", rel, (unsigned long long) st->size);
        return 0;
}

static int on_skipped(const char *rel, int error, void *userdata) {
        (void) userdata;
        printf("skip %s %d\n", rel, -error);
        return 0;
}

int main(int argc, char **argv) {
        SftpOriginOptions o = {};
        static const struct option options[] = {
                { "host", required_argument, NULL, 'H' },
                { "port", required_argument, NULL, 'p' },
                { "user", required_argument, NULL, 'u' },
                { "path", required_argument, NULL, 'P' },
                { "identity", required_argument, NULL, 'i' },
                { "agent", no_argument, NULL, 'a' },
                { "known-hosts", required_argument, NULL, 'k' },
                { "fingerprint", required_argument, NULL, 'f' },
                { "pool", required_argument, NULL, 'n' },
                { "timeout", required_argument, NULL, 't' },
                { "keepalive", required_argument, NULL, 'K' },
                {}
        };
        int c;
        while ((c = getopt_long(argc, argv, "", options, NULL)) >= 0)
                switch (c) {
                case 'H': o.host = optarg; break;
                case 'p': o.port = (unsigned) atoi(optarg); break;
                case 'u': o.user = optarg; break;
                case 'P': o.path = optarg; break;
                case 'i': o.identity_file = optarg; break;
                case 'a': o.use_agent = true; break;
                case 'k': o.known_hosts = optarg; break;
                case 'f': o.host_key_fingerprint = optarg; break;
                case 'n': o.pool_size = (unsigned) atoi(optarg); break;
                case 't': o.timeout_sec = (unsigned) atoi(optarg); break;
                case 'K': o.keepalive_sec = (unsigned) atoi(optarg); break;
                default: return 2;
                }
        log_set_max_level(LOG_DEBUG);

        Origin *origin = NULL;
        int r = origin_sftp_new("test", &o, 10, &origin);
        if (r < 0) {
                printf("err %d\n", -r);
                return 1;
        }
        fprintf(stderr, "url %s\n", origin->url);
        setvbuf(stdout, NULL, _IOLBF, 0);

        OriginFile *files[MAX_FILES] = {};
        char line[8192];
        while (fgets(line, sizeof line, stdin)) {
                line[strcspn(line, "\n")] = '\0';
                char *cmd = strtok(line, " ");
                char *a1 = strtok(NULL, " "), *a2 = strtok(NULL, " "), *a3 = strtok(NULL, " "), *a4 = strtok(NULL, " ");
                if (!cmd)
                        continue;
                if (strcmp(cmd, "stat") == 0 && a1) {
                        OriginStat st;
                        r = origin_stat(origin, a1, &st);
                        if (r < 0)
                                printf("err %d\n", -r);
                        else
                                printf("ok %llu %lld\n", (unsigned long long) st.size, (long long) st.mtime_ns);
                } else if (strcmp(cmd, "open") == 0 && a1) {
                        int id = 0;
                        while (id < MAX_FILES && files[id])
                                id++;
                        if (id == MAX_FILES) {
                                printf("err %d\n", EMFILE);
                                continue;
                        }
                        r = origin_open(origin, a1, &files[id]);
                        if (r < 0)
                                printf("err %d\n", -r);
                        else
                                printf("ok %d\n", id);
                } else if (strcmp(cmd, "pread") == 0 && a4) {
                        int id = atoi(a1);
                        size_t len = strtoull(a3, NULL, 10);
                        if (id < 0 || id >= MAX_FILES || !files[id]) {
                                printf("err %d 0\n", EBADF);
                                continue;
                        }
                        char *buf = malloc(len ? len : 1);
                        long long t0 = now_us();
                        ssize_t n = origin_pread(files[id], buf, len, strtoull(a2, NULL, 10));
                        long long dt = now_us() - t0;
                        if (n < 0)
                                printf("err %d %lld\n", (int) -n, dt);
                        else {
                                FILE *out = fopen(a4, "we");
                                if (!out || fwrite(buf, 1, (size_t) n, out) != (size_t) n || fclose(out) != 0) {
                                        printf("err %d %lld\n", EIO, dt);
                                } else
                                        printf("ok %zd %lld\n", n, dt);
                        }
                        free(buf);
                } else if (strcmp(cmd, "close") == 0 && a1) {
                        int id = atoi(a1);
                        if (id >= 0 && id < MAX_FILES && files[id]) {
                                origin_close(files[id]);
                                files[id] = NULL;
                        }
                        printf("ok\n");
                } else if (strcmp(cmd, "walk") == 0) {
                        r = origin_walk_under(origin, a1 ? a1 : "", on_file, on_skipped, NULL);
                        if (r < 0)
                                printf("err %d\n", -r);
                        else
                                printf("ok %d\n", r);
                } else if (strcmp(cmd, "check") == 0) {
                        r = origin_check(origin);
                        if (r < 0)
                                printf("err %d\n", -r);
                        else
                                printf("ok\n");
                } else
                        printf("err %d\n", EINVAL);
        }

        for (int i = 0; i < MAX_FILES; i++)
                origin_close(files[i]);
        origin_free(origin);
        return 0;
}
