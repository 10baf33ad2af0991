/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The S3 origin against a real s3rver (tests/lib/s3peer.py serve, started here): byte-exact ranged
 * reads at random offsets, the read-ahead window, listings past one page (continuation tokens),
 * prefixes and keys that are no paths, error mapping (404, 403, a missing bucket, a dead endpoint, a
 * server that never answers) within the deadline, concurrent readers, and no secret in the URL.
 * Exits 77 when node or s3rver is missing. Objects are uploaded with plain libcurl PUTs. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "macro.h"
#include "origin.h"
#include "time-util.h"

DEFINE_TRIVIAL_CLEANUP_FUNC(Origin *, origin_free);
DEFINE_TRIVIAL_CLEANUP_FUNC(OriginFile *, origin_close);

#define BUCKET "music"
#define N_MANY 1100             /* past ListObjectsV2's page of 1000 */

static pid_t peer_pid;
static int peer_stdin = -1;
static char endpoint[64];

typedef struct Object {
        const char *key;
        size_t size;
        uint8_t *data;
} Object;

static Object objects[] = {
        { "lib/empty.flac", 0, NULL },
        { "lib/a/small.mp3", 1000, NULL },
        { "lib/a/b/big track (1) é+&.flac", 700 * 1024 + 13, NULL },
        { "lib/x.ogg", 300 * 1024, NULL },
};

static uint64_t rnd_state = 0x9e3779b97f4a7c15u;
static uint64_t rnd(void) {
        rnd_state ^= rnd_state << 13;
        rnd_state ^= rnd_state >> 7;
        rnd_state ^= rnd_state << 17;
        return rnd_state;
}

/* ---- the peer -------------------------------------------------------------------------------- */

static int peer_start(void) {
        const char *root = getenv("MUSICFS_SOURCE_ROOT");
        char script[4096];
        int in[2], out[2];

        snprintf(script, sizeof script, "%s/tests/lib/s3peer.py", root ? root : ".");
        if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0)
                return -errno;
        peer_pid = fork();
        if (peer_pid < 0)
                return -errno;
        if (peer_pid == 0) {
                dup2(in[0], 0);
                dup2(out[1], 1);
                execl("/usr/bin/python3", "python3", script, "serve", (char *) NULL);
                _exit(127);
        }
        close(in[0]);
        close(out[1]);
        peer_stdin = in[1];

        char line[32] = {};
        size_t n = 0;
        while (n < sizeof line - 1) {
                ssize_t k = read(out[0], line + n, 1);
                if (k <= 0 || line[n] == '\n')
                        break;
                n++;
        }
        close(out[0]);
        line[n] = '\0';
        int port = atoi(line);
        if (port <= 0) {
                int status = 0;
                waitpid(peer_pid, &status, 0);
                peer_pid = 0;
                return WIFEXITED(status) && WEXITSTATUS(status) == 77 ? -EOPNOTSUPP : -EIO;
        }
        snprintf(endpoint, sizeof endpoint, "http://127.0.0.1:%d", port);
        return 0;
}

static void peer_stop(void) {
        if (peer_stdin >= 0)
                close(peer_stdin);      /* the helper stops s3rver and removes its directory */
        if (peer_pid > 0)
                waitpid(peer_pid, NULL, 0);
}

/* An unsigned PUT (s3rver takes those); data NULL makes a bucket. */
static void put(const char *path, const void *data, size_t len) {
        char url[1024];
        snprintf(url, sizeof url, "%s/%s", endpoint, path);
        CURL *h = curl_easy_init();
        assert_non_null(h);
        struct curl_slist *hd = curl_slist_append(NULL, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, "PUT");
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hd);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, data ? data : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) len);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, (curl_write_callback) (void *) fwrite);
        FILE *null = fopen("/dev/null", "we");
        curl_easy_setopt(h, CURLOPT_WRITEDATA, null);
        assert_int_equal(curl_easy_perform(h), CURLE_OK);
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        if (code != 200)
                fail_msg("PUT %s: HTTP %ld", url, code);
        fclose(null);
        curl_slist_free_all(hd);
        curl_easy_cleanup(h);
}

static char *escape_key(const char *key) {
        char *out = malloc(3 * strlen(key) + 1), *p = out;
        for (const unsigned char *c = (const unsigned char *) key; *c; c++)
                if ((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
                    strchr("-._~/", *c))
                        *p++ = (char) *c;
                else
                        p += sprintf(p, "%%%02X", *c);
        *p = '\0';
        return out;
}

static void put_object(const char *bucket, const char *key, const void *data, size_t len) {
        _cleanup_free_ char *k = escape_key(key), *path = NULL;
        assert_true(asprintf(&path, "%s/%s", bucket, k) > 0);
        put(path, data, len);
}

static int group_setup(void **state) {
        put(BUCKET, NULL, 0);
        for (size_t i = 0; i < ELEMENTSOF(objects); i++) {
                objects[i].data = malloc(objects[i].size + 1);
                for (size_t j = 0; j < objects[i].size; j++)
                        objects[i].data[j] = (uint8_t) rnd();
                put_object(BUCKET, objects[i].key, objects[i].data, objects[i].size);
        }
        /* Neighbours the prefix must not take in, and an empty folder marker. (Keys that are no
         * relative paths, "a//b", "a/./b", cannot be made: s3rver stores objects as files and
         * normalises them away.) */
        put_object(BUCKET, "libx/not-ours.flac", "x", 1);
        put_object(BUCKET, "top.flac", "t", 1);
        put_object(BUCKET, "lib/folder/", "", 0);
        for (unsigned i = 0; i < N_MANY; i++) {
                char key[64], body[32];
                snprintf(key, sizeof key, "many/d%02u/f%05u.mp3", i % 7, i);
                int n = snprintf(body, sizeof body, "object %u", i);
                put_object(BUCKET, key, body, (size_t) n);
        }
        return 0;
}

static int group_teardown(void **state) {
        for (size_t i = 0; i < ELEMENTSOF(objects); i++)
                free(objects[i].data);
        return 0;
}

static Origin *s3_new_full(const char *ep, const char *bucket, const char *prefix, const char *key, unsigned timeout) {
        Origin *o = NULL;
        S3OriginOptions opts = {
                .endpoint = ep,
                .region = "us-east-1",
                .bucket = bucket,
                .prefix = prefix,
                .path_style = true,
                .access_key_id = key,
                .secret_access_key = "S3RVER",
                .timeout_sec = timeout,
        };
        assert_int_equal(origin_s3_new("s3test", &opts, 10, &o), 0);
        return o;
}

static Origin *s3_new(const char *prefix) {
        return s3_new_full(endpoint, BUCKET, prefix, "S3RVER", 10);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_stat_and_exact_reads(void **state) {
        _cleanup_(origin_freep) Origin *o = s3_new("lib/");

        assert_int_equal(origin_check(o), 0);
        for (size_t i = 0; i < ELEMENTSOF(objects); i++) {
                const Object *ob = &objects[i];
                const char *rel = ob->key + strlen("lib/");
                OriginStat st;
                assert_int_equal(origin_stat(o, rel, &st), 0);
                assert_int_equal(st.size, ob->size);
                int64_t age = (int64_t) time(NULL) - st.mtime_ns / 1000000000;
                assert_true(age >= -5 && age < 3600);

                _cleanup_(origin_closep) OriginFile *f = NULL;
                assert_int_equal(origin_open(o, rel, &f), 0);
                size_t max = 1024 * 1024;
                _cleanup_free_ uint8_t *buf = malloc(max);
                for (unsigned k = 0; k < 60; k++) {
                        uint64_t off = ob->size ? rnd() % (ob->size + 10) : rnd() % 4;
                        /* Small reads mostly (a tag parser), some bigger than the window. */
                        size_t len = k % 5 == 4 ? rnd() % max + 1 : rnd() % 9000 + 1;
                        ssize_t n = origin_pread(f, buf, len, off);
                        size_t want = off >= ob->size ? 0 : (ob->size - off < len ? ob->size - off : len);
                        if (n != (ssize_t) want)
                                fail_msg("%s: pread(%zu @ %" PRIu64 ") = %zd, want %zu", ob->key, len, off, n, want);
                        if (want > 0 && memcmp(buf, ob->data + off, want) != 0)
                                fail_msg("%s: bytes differ at %" PRIu64 "+%zu", ob->key, off, len);
                }
                /* The whole object in one read, through origin_pread_full. */
                if (ob->size <= max) {
                        assert_int_equal(origin_pread_full(f, buf, max, 0), ob->size);
                        assert_memory_equal(buf, ob->data ? ob->data : (uint8_t *) "", ob->size);
                }
        }
}

static void test_readahead_serves_small_reads(void **state) {
        _cleanup_(origin_freep) Origin *o = s3_new("lib");
        const Object *ob = &objects[2];
        _cleanup_(origin_closep) OriginFile *f = NULL;
        uint8_t buf[4096];

        assert_int_equal(origin_open(o, "a/b/big track (1) é+&.flac", &f), 0);
        uint64_t before = origin_s3_request_count(o);
        /* A tag parser: many small reads near the start. */
        for (uint64_t off = 0; off < 200 * 1024; off += 1500) {
                assert_int_equal(origin_pread(f, buf, 1000, off), 1000);
                assert_memory_equal(buf, ob->data + off, 1000);
        }
        assert_int_equal(origin_s3_request_count(o) - before, 1);
        /* The end of the file (ID3v1, APE tags): one more window. */
        assert_int_equal(origin_pread(f, buf, 128, ob->size - 128), 128);
        assert_memory_equal(buf, ob->data + ob->size - 128, 128);
        assert_int_equal(origin_pread(f, buf, 64, ob->size - 200), 64);
        assert_memory_equal(buf, ob->data + ob->size - 200, 64);
        assert_int_equal(origin_s3_request_count(o) - before, 2);
}

typedef struct WalkSeen {
        unsigned n;
        unsigned n_bad;
        char **paths;
        uint64_t *sizes;
} WalkSeen;

static int collect(const char *rel_path, const OriginStat *st, void *userdata) {
        WalkSeen *w = userdata;
        w->paths = realloc(w->paths, (w->n + 1) * sizeof *w->paths);
        w->sizes = realloc(w->sizes, (w->n + 1) * sizeof *w->sizes);
        w->paths[w->n] = strdup(rel_path);
        w->sizes[w->n] = st->size;
        w->n++;
        if (st->mtime_ns <= 0)
                w->n_bad++;
        return 0;
}

static void walk_seen_done(WalkSeen *w) {
        for (unsigned i = 0; i < w->n; i++)
                free(w->paths[i]);
        free(w->paths);
        free(w->sizes);
}

static bool seen(const WalkSeen *w, const char *path, uint64_t size) {
        for (unsigned i = 0; i < w->n; i++)
                if (strcmp(w->paths[i], path) == 0)
                        return w->sizes[i] == size;
        return false;
}

static void test_walk_prefix(void **state) {
        _cleanup_(origin_freep) Origin *o = s3_new("/lib/");
        _cleanup_(walk_seen_done) WalkSeen w = {};

        assert_int_equal(origin_walk(o, collect, &w), 0);
        /* The four objects; not libx/, top.flac or the folder marker. */
        assert_int_equal(w.n, ELEMENTSOF(objects));
        assert_int_equal(w.n_bad, 0);
        for (size_t i = 0; i < ELEMENTSOF(objects); i++)
                assert_true(seen(&w, objects[i].key + 4, objects[i].size));

        /* Below a directory; a directory that holds nothing is not there. */
        _cleanup_(walk_seen_done) WalkSeen sub = {};
        assert_int_equal(origin_walk_under(o, "a", collect, NULL, &sub), 0);
        assert_int_equal(sub.n, 2);
        assert_true(seen(&sub, "a/small.mp3", 1000));
        assert_int_equal(origin_walk_under(o, "nothing-here", collect, NULL, &sub), -ENOENT);
        assert_int_equal(origin_walk_under(o, "a/small.mp", collect, NULL, &sub), -ENOENT);
}

static void test_walk_many_pages(void **state) {
        _cleanup_(origin_freep) Origin *o = s3_new("many");
        _cleanup_(walk_seen_done) WalkSeen w = {};

        uint64_t before = origin_s3_request_count(o);
        assert_int_equal(origin_walk(o, collect, &w), 0);
        assert_int_equal(w.n, N_MANY);
        assert_true(origin_s3_request_count(o) - before >= 2);       /* more than one page */
        for (unsigned i = 0; i < N_MANY; i += 37) {
                char path[64], body[32];
                snprintf(path, sizeof path, "d%02u/f%05u.mp3", i % 7, i);
                assert_true(seen(&w, path, (uint64_t) snprintf(body, sizeof body, "object %u", i)));
        }
        /* Each reported once. */
        for (unsigned i = 1; i < w.n; i++)
                assert_string_not_equal(w.paths[i - 1], w.paths[i]);
}

static void test_not_found(void **state) {
        _cleanup_(origin_freep) Origin *o = s3_new("lib");
        OriginStat st;
        _cleanup_(origin_closep) OriginFile *f = NULL;
        char buf[16];

        assert_int_equal(origin_stat(o, "no/such.flac", &st), -ENOENT);
        /* open sends no request (a scan pays one GET per file, not a HEAD too): the first read's
         * 404 is the ENOENT, and it costs that one request. */
        uint64_t before = origin_s3_request_count(o);
        assert_int_equal(origin_open(o, "no/such.flac", &f), 0);
        assert_int_equal(origin_s3_request_count(o) - before, 0);
        assert_int_equal(origin_pread(f, buf, sizeof buf, 0), -ENOENT);
        assert_int_equal(origin_s3_request_count(o) - before, 1);
        assert_int_equal(origin_stat(o, "../top.flac", &st), -EINVAL);
        /* Outside the prefix is not reachable through it. */
        assert_int_equal(origin_stat(o, "top.flac", &st), -ENOENT);
}

static void test_missing_bucket(void **state) {
        _cleanup_(origin_freep) Origin *o = s3_new_full(endpoint, "no-such-bucket", NULL, "S3RVER", 10);
        _cleanup_(walk_seen_done) WalkSeen w = {};
        OriginStat st;

        assert_true(origin_check(o) < 0);
        assert_true(origin_walk(o, collect, &w) < 0);
        assert_int_equal(w.n, 0);
        assert_int_equal(origin_stat(o, "x.flac", &st), -ENOENT);
}

static void test_access_denied(void **state) {
        /* s3rver knows one account; another key id is refused with 403 InvalidAccessKeyId. */
        _cleanup_(origin_freep) Origin *o = s3_new_full(endpoint, BUCKET, "lib", "NOT-AN-ACCOUNT", 10);
        OriginStat st;

        assert_int_equal(origin_stat(o, "a/small.mp3", &st), -EACCES);
        assert_int_equal(origin_check(o), -EACCES);
}

static void test_dead_endpoint(void **state) {
        /* A port nobody listens on: refused at once, retried (100 + 500 + 2000 ms), then EIO. */
        int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t alen = sizeof a;
        assert_int_equal(bind(s, (struct sockaddr *) &a, sizeof a), 0);
        assert_int_equal(getsockname(s, (struct sockaddr *) &a, &alen), 0);
        char ep[64];
        snprintf(ep, sizeof ep, "http://127.0.0.1:%u", ntohs(a.sin_port));

        _cleanup_(origin_freep) Origin *o = s3_new_full(ep, BUCKET, NULL, "S3RVER", 10);
        int64_t t0 = (int64_t) (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(origin_check(o), -EIO);
        int64_t took = (int64_t) (now_usec(CLOCK_MONOTONIC) / 1000) - t0;
        assert_true(took >= 2500 && took < 6000);

        /* Listening but never answering: the deadline of the operation (2 s) bounds it. */
        assert_int_equal(listen(s, 8), 0);
        _cleanup_(origin_freep) Origin *hung = s3_new_full(ep, BUCKET, NULL, "S3RVER", 2);
        OriginStat st;
        t0 = (int64_t) (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(origin_stat(hung, "x.flac", &st), -EIO);
        took = (int64_t) (now_usec(CLOCK_MONOTONIC) / 1000) - t0;
        assert_true(took >= 1900 && took < 3500);
        close(s);
}

static void test_dns_failure(void **state) {
        /* .invalid never resolves (RFC 6761): EHOSTUNREACH, not retried, within the deadline. */
        _cleanup_(origin_freep) Origin *o = s3_new_full("http://musicfs-test.invalid:9000", BUCKET, NULL, "S3RVER", 5);
        int64_t t0 = (int64_t) (now_usec(CLOCK_MONOTONIC) / 1000);
        assert_int_equal(origin_check(o), -EHOSTUNREACH);
        assert_true((int64_t) (now_usec(CLOCK_MONOTONIC) / 1000) - t0 < 5500);
}

/* A scripted HTTP server on loopback for what s3rver never does: 5xx answers, a 200 with the whole
 * object to a ranged GET, error codes. Answers the i-th request with answers[i] (the last one
 * repeats), then closes the connection. */
typedef struct FakeServer {
        int fd;
        unsigned port;
        const char *const *answers;
        size_t n_answers;
        unsigned n_requests;
        char last_request[2048];
        pthread_t thread;
} FakeServer;

static void *fake_server_run(void *userdata) {
        FakeServer *fs = userdata;
        for (;;) {
                int c = accept4(fs->fd, NULL, NULL, SOCK_CLOEXEC);
                if (c < 0)
                        return NULL;
                char req[2048];
                size_t n = 0;
                while (n < sizeof req - 1) {
                        ssize_t k = read(c, req + n, sizeof req - 1 - n);
                        if (k <= 0)
                                break;
                        n += (size_t) k;
                        req[n] = '\0';
                        if (strstr(req, "\r\n\r\n"))
                                break;
                }
                req[n] = '\0';
                if (strncmp(req, "QUIT", 4) == 0) {
                        close(c);
                        return NULL;
                }
                memcpy(fs->last_request, req, n + 1);
                size_t i = fs->n_requests < fs->n_answers ? fs->n_requests : fs->n_answers - 1;
                fs->n_requests++;
                const char *a = fs->answers[i];
                (void) !write(c, a, strlen(a));
                close(c);
        }
}

static void fake_server_start(FakeServer *fs, const char *const *answers, size_t n) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
        socklen_t alen = sizeof a;
        *fs = (FakeServer) { .answers = answers, .n_answers = n };
        fs->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        assert_true(fs->fd >= 0);
        assert_int_equal(bind(fs->fd, (struct sockaddr *) &a, sizeof a), 0);
        assert_int_equal(getsockname(fs->fd, (struct sockaddr *) &a, &alen), 0);
        assert_int_equal(listen(fs->fd, 16), 0);
        fs->port = ntohs(a.sin_port);
        assert_int_equal(pthread_create(&fs->thread, NULL, fake_server_run, fs), 0);
}

static void fake_server_stop(FakeServer *fs) {
        struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                 .sin_port = htons((uint16_t) fs->port) };
        int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (connect(c, (struct sockaddr *) &a, sizeof a) == 0)
                (void) !write(c, "QUIT\r\n\r\n", 8);
        close(c);
        pthread_join(fs->thread, NULL);
        close(fs->fd);
}

static Origin *fake_origin(FakeServer *fs, unsigned timeout) {
        char ep[64];
        snprintf(ep, sizeof ep, "http://127.0.0.1:%u", fs->port);
        return s3_new_full(ep, BUCKET, "lib", "S3RVER", timeout);
}

#define SLOW_DOWN "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml\r\nContent-Length: 64\r\n" \
        "Connection: close\r\n\r\n<Error><Code>SlowDown</Code><Message>slow</Message></Error>\n\n\n\n\n\n\n"
#define HEAD_OK "HTTP/1.1 200 OK\r\nContent-Length: 26\r\nLast-Modified: Sat, 05 Dec 2026 01:00:00 GMT\r\n" \
        "Connection: close\r\n\r\n"

static void test_5xx_is_retried(void **state) {
        static const char *const answers[] = { SLOW_DOWN, SLOW_DOWN, HEAD_OK };
        FakeServer fs;
        OriginStat st;

        fake_server_start(&fs, answers, ELEMENTSOF(answers));
        {
                _cleanup_(origin_freep) Origin *o = fake_origin(&fs, 10);
                int64_t t0 = (int64_t) (now_usec(CLOCK_MONOTONIC) / 1000);
                assert_int_equal(origin_stat(o, "a.flac", &st), 0);
                assert_true((int64_t) (now_usec(CLOCK_MONOTONIC) / 1000) - t0 >= 600);      /* 100 + 500 ms between the tries */
                assert_int_equal(st.size, 26);
                assert_int_equal(st.mtime_ns / 1000000000, 1796432400);      /* date -d "2026-12-05 01:00 UTC" +%s */
                assert_int_equal(fs.n_requests, 3);
                /* Path style, the prefix, signed, with the payload header s3rver and AWS want. */
                assert_non_null(strstr(fs.last_request, "HEAD /music/lib/a.flac HTTP/1.1"));
                assert_non_null(strcasestr(fs.last_request, "x-amz-content-sha256: UNSIGNED-PAYLOAD"));
                assert_non_null(strstr(fs.last_request, "Authorization: AWS4-HMAC-SHA256 Credential=S3RVER/"));
                assert_null(strstr(fs.last_request, "S3RVER:"));
        }
        fake_server_stop(&fs);

        /* Always 503: four tries, then EIO. */
        static const char *const always[] = { SLOW_DOWN };
        fake_server_start(&fs, always, 1);
        {
                _cleanup_(origin_freep) Origin *o = fake_origin(&fs, 10);
                int64_t t0 = (int64_t) (now_usec(CLOCK_MONOTONIC) / 1000);
                assert_int_equal(origin_stat(o, "a.flac", &st), -EIO);
                assert_true((int64_t) (now_usec(CLOCK_MONOTONIC) / 1000) - t0 >= 2600);
                assert_int_equal(fs.n_requests, 4);
        }
        fake_server_stop(&fs);
}

static void test_whole_object_answer_to_a_range(void **state) {
        /* A server that ignores Range: the bytes asked for are cut out of the whole object. open
         * sends nothing (no HEAD): the first read's answer tells the size (its Content-Length). */
        static const char *const answers[] = {
                "HTTP/1.1 200 OK\r\nContent-Length: 26\r\nConnection: close\r\n\r\nabcdefghijklmnopqrstuvwxyz",
        };
        FakeServer fs;
        char buf[32] = {};

        fake_server_start(&fs, answers, ELEMENTSOF(answers));
        {
                _cleanup_(origin_freep) Origin *o = fake_origin(&fs, 10);
                _cleanup_(origin_closep) OriginFile *f = NULL;
                assert_int_equal(origin_open(o, "a.flac", &f), 0);
                assert_int_equal(origin_pread(f, buf, 5, 3), 5);
                assert_memory_equal(buf, "defgh", 5);
                /* The size unknown yet, the window starts at the read. */
                assert_non_null(strstr(fs.last_request, "Range: bytes=3-262146"));
                assert_int_equal(origin_pread(f, buf, 30, 20), 6);
                assert_memory_equal(buf, "uvwxyz", 6);
                assert_int_equal(origin_pread(f, buf, 5, 26), 0);
                assert_int_equal(fs.n_requests, 1);     /* one GET for open and all three reads */
        }
        fake_server_stop(&fs);
}

static void test_other_4xx_is_eio(void **state) {
        static const char *const answers[] = {
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 75\r\nConnection: close\r\n\r\n"
                "<Error><Code>InvalidArgument</Code><Message>no</Message></Error>\n\n\n\n\n\n\n\n\n\n\n",
        };
        FakeServer fs;
        OriginStat st;
        _cleanup_(walk_seen_done) WalkSeen w = {};

        fake_server_start(&fs, answers, 1);
        {
                _cleanup_(origin_freep) Origin *o = fake_origin(&fs, 10);
                assert_int_equal(origin_stat(o, "a.flac", &st), -EIO);
                assert_int_equal(origin_walk(o, collect, &w), -EIO);
                assert_int_equal(fs.n_requests, 2);     /* not retried */
        }
        fake_server_stop(&fs);
}

static void test_keys_that_are_no_paths(void **state) {
        /* s3rver cannot store such keys; S3 can. Each is skipped (with a log line), the rest listed. */
        static const char *const answers[] = {
                "HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nConnection: close\r\n\r\n"
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>music</Name>"
                "<Prefix>lib/</Prefix><KeyCount>6</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>false</IsTruncated>"
                "<Contents><Key>lib/a//double.flac</Key><LastModified>2026-12-05T01:00:00.000Z</LastModified><Size>1</Size></Contents>"
                "<Contents><Key>lib/../escape.flac</Key><LastModified>2026-12-05T01:00:00.000Z</LastModified><Size>1</Size></Contents>"
                "<Contents><Key>lib/b/./dot.flac</Key><LastModified>2026-12-05T01:00:00.000Z</LastModified><Size>1</Size></Contents>"
                "<Contents><Key>lib/folder/</Key><LastModified>2026-12-05T01:00:00.000Z</LastModified><Size>0</Size></Contents>"
                "<Contents><Key>lib/ok &amp; fine.flac</Key><LastModified>2026-12-05T01:00:00.000Z</LastModified><Size>1234</Size></Contents>"
                "<Contents><Key>lib/sub/two.mp3</Key><LastModified>2026-12-05T01:00:00.000Z</LastModified><Size>-5</Size></Contents>"
                "</ListBucketResult>",
        };
        FakeServer fs;
        _cleanup_(walk_seen_done) WalkSeen w = {};

        fake_server_start(&fs, answers, 1);
        {
                _cleanup_(origin_freep) Origin *o = fake_origin(&fs, 10);
                assert_int_equal(origin_walk(o, collect, &w), 0);
                assert_int_equal(w.n, 1);
                assert_string_equal(w.paths[0], "ok & fine.flac");
                assert_int_equal(w.sizes[0], 1234);
                assert_non_null(strstr(fs.last_request, "GET /music/?list-type=2&max-keys=1000&prefix=lib%2F HTTP/1.1"));
        }
        fake_server_stop(&fs);
}

static void test_url_has_no_secret(void **state) {
        _cleanup_(origin_freep) Origin *o = NULL;
        S3OriginOptions opts = {
                .endpoint = endpoint,
                .bucket = BUCKET,
                .prefix = "lib/",
                .path_style = true,
                .access_key_id = "AKIDSHOWN",
                .secret_access_key = "very-secret-key-material",
                .session_token = "session-token-material",
        };
        assert_int_equal(origin_s3_new("s3url", &opts, 1, &o), 0);
        assert_non_null(strstr(o->url, "s3://music/lib"));
        assert_non_null(strstr(o->url, endpoint));
        assert_null(strstr(o->url, "very-secret"));
        assert_null(strstr(o->url, "session-token"));
        assert_null(strstr(o->url, "AKIDSHOWN"));
        assert_string_equal(o->ops->kind, "s3");
}

static void test_bad_options(void **state) {
        Origin *o = NULL;
        S3OriginOptions opts = { .endpoint = endpoint, .bucket = "x" };
        assert_int_equal(origin_s3_new("bad", &opts, 1, &o), -EINVAL);       /* bucket too short */
        opts = (S3OriginOptions) { .endpoint = "not a url", .bucket = BUCKET };
        assert_int_equal(origin_s3_new("bad", &opts, 1, &o), -EINVAL);
        opts = (S3OriginOptions) { .endpoint = endpoint, .bucket = BUCKET, .prefix = "a/../b" };
        assert_int_equal(origin_s3_new("bad", &opts, 1, &o), -EINVAL);
        opts = (S3OriginOptions) { .endpoint = endpoint, .bucket = BUCKET, .access_key_id = "k" };
        assert_int_equal(origin_s3_new("bad", &opts, 1, &o), -EINVAL);
        assert_null(o);
}

typedef struct ReaderArgs {
        Origin *o;
        unsigned seed;
        int failures;
} ReaderArgs;

static void *reader(void *userdata) {
        ReaderArgs *a = userdata;
        const Object *ob = &objects[2 + a->seed % 2];
        OriginFile *f = NULL;
        uint8_t *buf = malloc(300 * 1024);
        uint64_t st = a->seed * 7919u + 1;

        if (origin_open(a->o, ob->key + 4, &f) < 0) {
                a->failures++;
                free(buf);
                return NULL;
        }
        for (unsigned k = 0; k < 25; k++) {
                st = st * 6364136223846793005u + 1442695040888963407u;
                uint64_t off = (st >> 20) % ob->size;
                size_t len = (size_t) ((st >> 40) % (300 * 1024)) + 1;
                size_t want = ob->size - off < len ? ob->size - off : len;
                ssize_t n = origin_pread(f, buf, len, off);
                if (n != (ssize_t) want || memcmp(buf, ob->data + off, want) != 0)
                        a->failures++;
        }
        origin_close(f);
        free(buf);
        return NULL;
}

static void test_concurrent_readers(void **state) {
        _cleanup_(origin_freep) Origin *o = s3_new("lib");
        pthread_t t[6];
        ReaderArgs args[6];

        for (unsigned i = 0; i < ELEMENTSOF(t); i++) {
                args[i] = (ReaderArgs) { .o = o, .seed = i };
                assert_int_equal(pthread_create(&t[i], NULL, reader, &args[i]), 0);
        }
        for (unsigned i = 0; i < ELEMENTSOF(t); i++) {
                pthread_join(t[i], NULL);
                assert_int_equal(args[i].failures, 0);
        }
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_bad_options),
                cmocka_unit_test(test_url_has_no_secret),
                cmocka_unit_test(test_stat_and_exact_reads),
                cmocka_unit_test(test_readahead_serves_small_reads),
                cmocka_unit_test(test_walk_prefix),
                cmocka_unit_test(test_walk_many_pages),
                cmocka_unit_test(test_not_found),
                cmocka_unit_test(test_missing_bucket),
                cmocka_unit_test(test_access_denied),
                cmocka_unit_test(test_concurrent_readers),
                cmocka_unit_test(test_dead_endpoint),
                cmocka_unit_test(test_dns_failure),
                cmocka_unit_test(test_5xx_is_retried),
                cmocka_unit_test(test_whole_object_answer_to_a_range),
                cmocka_unit_test(test_other_4xx_is_eio),
                cmocka_unit_test(test_keys_that_are_no_paths),
        };

        signal(SIGPIPE, SIG_IGN);
        curl_global_init(CURL_GLOBAL_DEFAULT);
        int r = peer_start();
        if (r == -EOPNOTSUPP) {
                fprintf(stderr, "SKIP: the S3 test peer (s3rver) cannot run here\n");
                return 77;
        }
        if (r < 0) {
                fprintf(stderr, "Failed to start the S3 test peer: %s\n", strerror(-r));
                return 1;
        }
        r = cmocka_run_group_tests(tests, group_setup, group_teardown);
        peer_stop();
        return r;
}
