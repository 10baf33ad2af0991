/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The S3 origin (issue #5): objects under a key prefix of one bucket, over libcurl. curl signs every
 * request itself (CURLOPT_AWS_SIGV4); listings and error bodies are parsed by libxml2.
 *
 * Requests: stat is a HEAD, open sends nothing (the first read's ranged GET answers a missing object
 * with 404 and tells the size in its Content-Range: one request per scanned file), pread a ranged GET, walk ListObjectsV2 pages (one flat listing
 * of the prefix: directories are implicit in the keys, so a delimiter would only cost one request per
 * directory), check a ListObjectsV2 of one key. Each operation takes a curl handle from a small pool,
 * which keeps connections alive between requests, and has one deadline (D10, 30 s by default) that
 * its retries share: 5xx, 429, timeouts and broken connections are retried after 100 ms, 500 ms and
 * 2 s, then fail with EIO. 403 is EACCES, 404 ENOENT, a DNS failure EHOSTUNREACH. A health check has
 * its own, shorter deadline (10 s at most).
 *
 * The tag parser reads a file in many small pieces; a per-file read-ahead window serves them from one
 * GET. Secrets (the key pair, the session token) live only in the S3Origin and in curl's handles:
 * never in Origin.url, never in a log line (curl's verbose output stays off). */
#include <curl/curl.h>
#include <errno.h>
#include <inttypes.h>
#include <libxml/parser.h>
#include <libxml/tree.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "macro.h"
#include "origin-internal.h"
#include "time-util.h"

#define S3_TIMEOUT_DEFAULT_SEC 30
#define S3_CHECK_TIMEOUT_MS 10000       /* a health probe gives up sooner than a read */
#define S3_CONNECT_TIMEOUT_MS 5000
#define S3_LOW_SPEED_LIMIT 1024         /* bytes/s below which a transfer counts as stalled ... */
#define S3_LOW_SPEED_TIME 10            /* ... for this many seconds */
#define S3_POOL_MAX 32                  /* idle handles (and their connections) kept: a scan has 16 reads in flight */
#define S3_READAHEAD (256u * 1024)      /* the read-ahead window of a file */
#define S3_ERROR_BODY_MAX (64u * 1024)
#define S3_SIZE_UNKNOWN UINT64_MAX
#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif
#define S3_LIST_BODY_MAX (64u * 1024 * 1024)

DEFINE_TRIVIAL_CLEANUP_FUNC(struct curl_slist *, curl_slist_free_all);

static const unsigned retry_delays_ms[] = { 100, 500, 2000 };

typedef struct S3Origin {
        Origin base;
        char *url_base;         /* "http://host:port/bucket" (path style) or "http://bucket.host:port" */
        char *bucket;
        char *prefix;           /* "" or "a/b/" */
        char *sigv4;            /* "aws:amz:REGION:s3"; NULL when anonymous */
        char *userpwd;          /* "KEY:SECRET": secret */
        char *token_header;     /* "x-amz-security-token: ...": secret */
        long timeout_ms;
        atomic_uint_fast64_t n_requests;

        pthread_mutex_t pool_lock;
        CURL *pool[S3_POOL_MAX];
        size_t n_pool;
} S3Origin;

typedef struct S3File {
        OriginFile base;
        char *url;
        char *rel_path;
        uint64_t size;          /* S3_SIZE_UNKNOWN until the first GET's answer tells it */
        pthread_mutex_t lock;   /* guards size and the window */
        char *window;           /* S3_READAHEAD bytes, allocated on the first small read */
        uint64_t window_offset;
        size_t window_len;
} S3File;

static S3Origin *s3_origin(Origin *o) {
        return (S3Origin *) o;
}

static void free_secret(char *s) {
        if (s) {
                explicit_bzero(s, strlen(s));
                free(s);
        }
}

/* ---- time ------------------------------------------------------------------------------------ */

static void sleep_ms(int64_t ms) {
        struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000 };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* "2026-12-05T01:52:44.000Z", whole seconds (as a HEAD's Last-Modified has them, so that stat and
 * walk agree). */
static int parse_iso8601(const char *s, int64_t *ret_ns) {
        struct tm tm = {};
        const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
        if (!end)
                return -EINVAL;
        time_t t = timegm(&tm);
        if (t == (time_t) -1)
                return -EINVAL;
        *ret_ns = (int64_t) t * INT64_C(1000000000);
        return 0;
}

/* ---- URLs ------------------------------------------------------------------------------------ */

/* AWS's URI encoding: everything but the unreserved characters, '/' kept when keep_slash. The
 * result is also the canonical form SigV4 signs, so curl can sign the URL as it is. */
static char *s3_encode(const char *s, bool keep_slash) {
        size_t n = strlen(s);
        char *out = malloc(3 * n + 1), *p = out;

        if (!out)
                return NULL;
        for (const unsigned char *c = (const unsigned char *) s; *c; c++) {
                if ((*c >= 'A' && *c <= 'Z') || (*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
                    *c == '-' || *c == '.' || *c == '_' || *c == '~' || (keep_slash && *c == '/'))
                        *p++ = (char) *c;
                else
                        p += sprintf(p, "%%%02X", *c);
        }
        *p = '\0';
        return out;
}

static char *object_url(S3Origin *s, const char *rel_path) {
        _cleanup_free_ char *key = NULL, *enc = NULL;
        char *url;

        if (asprintf(&key, "%s%s", s->prefix, rel_path) < 0)
                return NULL;
        enc = s3_encode(key, true);
        if (!enc || asprintf(&url, "%s/%s", s->url_base, enc) < 0)
                return NULL;
        return url;
}

/* ListObjectsV2 of prefix; the query's parameters are in the sorted order SigV4 wants. */
static char *list_url(S3Origin *s, const char *prefix, const char *token, unsigned max_keys) {
        _cleanup_free_ char *p = s3_encode(prefix, false), *t = token ? s3_encode(token, false) : NULL;
        char *url;

        if (!p || (token && !t))
                return NULL;
        if (asprintf(&url, "%s/?%s%s%slist-type=2&max-keys=%u&prefix=%s", s->url_base,
                     t ? "continuation-token=" : "", strempty(t), t ? "&" : "", max_keys, p) < 0)
                return NULL;
        return url;
}

/* ---- requests -------------------------------------------------------------------------------- */

typedef struct Body {
        char *data;
        size_t len;
        size_t max;
} Body;

typedef struct S3Request {
        /* in */
        const char *url;
        bool head;
        uint64_t range_start, range_len;        /* range_len 0: no Range header */
        char *sink;                             /* ranged GET: where the bytes go (range_len bytes) */
        /* out */
        long status;
        size_t sink_len;                        /* bytes put in sink */
        uint64_t skip;                          /* a 200 to a ranged GET: bytes still to drop */
        bool whole_body;                        /* a 200 to a ranged GET came */
        bool sink_full;                         /* we stopped the transfer on purpose */
        bool empty_object;                      /* a 206 of an empty object: we stopped it at its headers */
        Body body;                              /* listings and error bodies */
        char content_range[128];
        int64_t mtime_ns;
        int64_t length;
} S3Request;

static size_t header_cb(char *data, size_t size, size_t n, void *userdata) {
        S3Request *rq = userdata;
        size_t len = size * n;
        static const char name[] = "content-range:";

        /* Each response of a redirect or a retry starts over. */
        if (len >= 5 && strncmp(data, "HTTP/", 5) == 0)
                rq->content_range[0] = '\0';
        else if (len > sizeof name - 1 && strncasecmp(data, name, sizeof name - 1) == 0) {
                const char *v = data + sizeof name - 1;
                size_t vlen = len - (sizeof name - 1);
                while (vlen > 0 && (*v == ' ' || *v == '\t'))
                        v++, vlen--;
                while (vlen > 0 && (v[vlen - 1] == '\r' || v[vlen - 1] == '\n' || v[vlen - 1] == ' '))
                        vlen--;
                if (vlen >= sizeof rq->content_range)
                        vlen = sizeof rq->content_range - 1;
                memcpy(rq->content_range, v, vlen);
                rq->content_range[vlen] = '\0';
                /* s3rver answers a range of an empty object "206, bytes 0-0/0, Content-Length: 1"
                 * and then sends no byte: that would wait out the deadline. Nothing is to come. */
                if (vlen >= 2 && strcmp(rq->content_range + vlen - 2, "/0") == 0) {
                        rq->empty_object = true;
                        return 0;
                }
        }
        return len;
}

static size_t body_append(Body *b, const char *data, size_t len) {
        if (b->len + len > b->max)
                return 0;       /* aborts the transfer */
        char *p = realloc(b->data, b->len + len + 1);
        if (!p)
                return 0;
        memcpy(p + b->len, data, len);
        b->data = p;
        b->len += len;
        b->data[b->len] = '\0';
        return len;
}

static size_t write_cb(char *data, size_t size, size_t n, void *userdata) {
        S3Request *rq = userdata;
        size_t len = size * n;

        if (!rq->sink || rq->status >= 300)
                return body_append(&rq->body, data, len);

        size_t used = 0;
        if (rq->whole_body && rq->skip > 0) {
                size_t k = rq->skip < len ? (size_t) rq->skip : len;
                rq->skip -= k;
                used = k;
        }
        size_t room = (size_t) (rq->range_len - rq->sink_len);
        size_t k = len - used < room ? len - used : room;
        memcpy(rq->sink + rq->sink_len, data + used, k);
        rq->sink_len += k;
        if (used + k < len) {
                /* More than we asked for: only a 200 with the whole object does that. Enough. */
                rq->sink_full = true;
                return 0;
        }
        return len;
}

/* The status is known before the first body byte; the write callback needs it to tell an error body
 * from data, and a 200 to a ranged GET from a 206. */
typedef struct WriteCtx {
        S3Request *rq;
        CURL *h;
} WriteCtx;

static size_t write_cb_status(char *data, size_t size, size_t n, void *userdata) {
        WriteCtx *w = userdata;
        if (w->rq->status == 0) {
                long code = 0;
                curl_easy_getinfo(w->h, CURLINFO_RESPONSE_CODE, &code);
                w->rq->status = code > 0 ? code : 1;
                if (code == 200 && w->rq->sink && w->rq->range_len > 0) {
                        w->rq->whole_body = true;
                        w->rq->skip = w->rq->range_start;
                }
        }
        return write_cb(data, size, n, w->rq);
}

static CURL *pool_take(S3Origin *s) {
        CURL *h = NULL;

        pthread_mutex_lock(&s->pool_lock);
        if (s->n_pool > 0)
                h = s->pool[--s->n_pool];
        pthread_mutex_unlock(&s->pool_lock);
        return h ? h : curl_easy_init();
}

static void pool_give(S3Origin *s, CURL *h) {
        if (!h)
                return;
        /* A reset keeps the handle's live connections and DNS cache: that is the point of the pool. */
        curl_easy_reset(h);
        pthread_mutex_lock(&s->pool_lock);
        if (s->n_pool < S3_POOL_MAX) {
                s->pool[s->n_pool++] = h;
                h = NULL;
        }
        pthread_mutex_unlock(&s->pool_lock);
        if (h)
                curl_easy_cleanup(h);
}

typedef enum Outcome {
        OUTCOME_DONE,           /* an HTTP answer: rq->status says which */
        OUTCOME_RETRY,          /* a transport failure worth another try */
        OUTCOME_FAIL,           /* errno in *ret_error */
} Outcome;

static Outcome perform_once(S3Origin *s, CURL *h, S3Request *rq, int64_t deadline, int *ret_error) {
        _cleanup_(curl_slist_free_allp) struct curl_slist *headers = NULL;
        char range[64];
        WriteCtx w = { .rq = rq, .h = h };
        int64_t left = deadline - (int64_t) (now_usec(CLOCK_MONOTONIC) / 1000);

        if (left <= 0)
                return OUTCOME_RETRY;

        rq->status = 0;
        rq->sink_len = 0;
        rq->skip = 0;
        rq->whole_body = false;
        rq->sink_full = false;
        rq->empty_object = false;
        rq->content_range[0] = '\0';
        free(rq->body.data);
        rq->body = (Body) { .max = rq->sink ? S3_ERROR_BODY_MAX : S3_LIST_BODY_MAX };

        /* UNSIGNED-PAYLOAD: we send no body, and some servers (s3rver) want the header regardless. */
        headers = curl_slist_append(headers, "x-amz-content-sha256: UNSIGNED-PAYLOAD");
        if (headers && s->token_header)
                headers = curl_slist_append(headers, s->token_header);
        if (headers && rq->range_len > 0) {
                snprintf(range, sizeof range, "Range: bytes=%" PRIu64 "-%" PRIu64, rq->range_start,
                         rq->range_start + rq->range_len - 1);
                headers = curl_slist_append(headers, range);
        }
        if (!headers) {
                *ret_error = -ENOMEM;
                return OUTCOME_FAIL;
        }

        curl_easy_reset(h);
        curl_easy_setopt(h, CURLOPT_URL, rq->url);
        curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long) (left < S3_CONNECT_TIMEOUT_MS ? left : S3_CONNECT_TIMEOUT_MS));
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long) left);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, (long) S3_LOW_SPEED_LIMIT);
        curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, (long) S3_LOW_SPEED_TIME);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, header_cb);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, rq);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, write_cb_status);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &w);
        curl_easy_setopt(h, CURLOPT_FILETIME, 1L);
        if (rq->head)
                curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        if (s->sigv4) {
                curl_easy_setopt(h, CURLOPT_AWS_SIGV4, s->sigv4);
                curl_easy_setopt(h, CURLOPT_USERPWD, s->userpwd);
        }

        atomic_fetch_add_explicit(&s->n_requests, 1, memory_order_relaxed);
        CURLcode c = curl_easy_perform(h);
        long code = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);

        if (c == CURLE_WRITE_ERROR && (rq->sink_full || rq->empty_object))
                c = CURLE_OK;
        switch (c) {
        case CURLE_OK:
                break;
        case CURLE_COULDNT_RESOLVE_HOST:
        case CURLE_COULDNT_RESOLVE_PROXY:
                *ret_error = log_warning_errno(EHOSTUNREACH, "S3 origin %s: DNS lookup failed for %s: %s",
                                               s->base.name, s->url_base, curl_easy_strerror(c));
                return OUTCOME_FAIL;
        case CURLE_OPERATION_TIMEDOUT:
        case CURLE_COULDNT_CONNECT:
        case CURLE_SEND_ERROR:
        case CURLE_RECV_ERROR:
        case CURLE_GOT_NOTHING:
        case CURLE_PARTIAL_FILE:
        case CURLE_HTTP2:
        case CURLE_HTTP2_STREAM:
        case CURLE_SSL_CONNECT_ERROR:
                log_debug("S3 origin %s: %s: %s", s->base.name, rq->head ? "HEAD" : "GET", curl_easy_strerror(c));
                return OUTCOME_RETRY;
        case CURLE_WRITE_ERROR:
                if (rq->body.len >= rq->body.max) {
                        *ret_error = log_warning_errno(EIO, "S3 origin %s: answer larger than %zu bytes",
                                                       s->base.name, rq->body.max);
                        return OUTCOME_FAIL;
                }
                *ret_error = -ENOMEM;
                return OUTCOME_FAIL;
        default:
                *ret_error = log_warning_errno(EIO, "S3 origin %s: request failed: %s", s->base.name,
                                               curl_easy_strerror(c));
                return OUTCOME_FAIL;
        }

        rq->status = code;
        if (code == 429 || code >= 500)
                return OUTCOME_RETRY;

        curl_off_t t = -1, cl = -1;
        if (curl_easy_getinfo(h, CURLINFO_FILETIME_T, &t) == CURLE_OK && t >= 0)
                rq->mtime_ns = (int64_t) t * INT64_C(1000000000);
        if (curl_easy_getinfo(h, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl) == CURLE_OK)
                rq->length = cl;
        return OUTCOME_DONE;
}

/* The S3 error code of an error body ("NoSuchKey"), or NULL. */
static char *s3_error_code(const Body *b) {
        if (!b->data || b->len == 0 || b->len > INT_MAX)
                return NULL;
        xmlDoc *doc = xmlReadMemory(b->data, (int) b->len, "error.xml", NULL,
                                    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING);
        if (!doc)
                return NULL;
        char *code = NULL;
        xmlNode *root = xmlDocGetRootElement(doc);
        if (root && xmlStrcmp(root->name, BAD_CAST "Error") == 0)
                for (xmlNode *n = root->children; n; n = n->next)
                        if (n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, BAD_CAST "Code") == 0) {
                                xmlChar *v = xmlNodeGetContent(n);
                                code = v ? strdup((const char *) v) : NULL;
                                xmlFree(v);
                                break;
                        }
        xmlFreeDoc(doc);
        return code;
}

/* One operation: retries inside the deadline, then the errno. 0 with rq->status 2xx (or 416, which
 * the caller may want) on success. what names the request in log lines. */
static int s3_perform_timeout(S3Origin *s, S3Request *rq, const char *what, long timeout_ms) {
        int64_t deadline = (int64_t) (now_usec(CLOCK_MONOTONIC) / 1000) + timeout_ms;
        CURL *h = pool_take(s);
        int r = 0;

        if (!h)
                return -ENOMEM;

        for (size_t attempt = 0;; attempt++) {
                Outcome o = perform_once(s, h, rq, deadline, &r);
                if (o == OUTCOME_FAIL)
                        break;
                if (o == OUTCOME_DONE) {
                        r = 0;
                        break;
                }
                int64_t left = deadline - (int64_t) (now_usec(CLOCK_MONOTONIC) / 1000);
                if (attempt >= ELEMENTSOF(retry_delays_ms) || left <= (int64_t) retry_delays_ms[attempt]) {
                        if (rq->status >= 500 || rq->status == 429)
                                r = log_warning_errno(EIO, "S3 origin %s: %s: HTTP %ld, giving up after %zu attempts",
                                                      s->base.name, what, rq->status, attempt + 1);
                        else
                                r = log_warning_errno(EIO, "S3 origin %s: %s: no answer from %s, giving up after %zu attempts",
                                                      s->base.name, what, s->url_base, attempt + 1);
                        break;
                }
                sleep_ms(retry_delays_ms[attempt]);
        }
        pool_give(s, h);
        if (r < 0)
                return r;

        if (rq->status >= 200 && rq->status < 300)
                return 0;
        if (rq->status == 404)
                return -ENOENT;
        if (rq->status == 416)
                return 0;

        _cleanup_free_ char *code = s3_error_code(&rq->body);
        if (rq->status == 403)
                return log_warning_errno(EACCES, "S3 origin %s: %s: access denied (%s)", s->base.name, what,
                                         code ? code : "HTTP 403");
        return log_warning_errno(EIO, "S3 origin %s: %s: HTTP %ld (%s)", s->base.name, what, rq->status,
                                 code ? code : "no S3 error code");
}

static int s3_perform(S3Origin *s, S3Request *rq, const char *what) {
        return s3_perform_timeout(s, rq, what, s->timeout_ms);
}

static void request_done(S3Request *rq) {
        free(rq->body.data);
        rq->body = (Body) {};
}

/* ---- operations ------------------------------------------------------------------------------ */

static int s3_head(S3Origin *s, const char *url, const char *rel_path, OriginStat *ret) {
        _cleanup_(request_done) S3Request rq = { .url = url, .head = true, .length = -1 };

        int r = s3_perform(s, &rq, rel_path);
        if (r < 0)
                return r;
        if (rq.status == 416 || rq.length < 0)
                return log_warning_errno(EIO, "S3 origin %s: HEAD %s: no Content-Length", s->base.name, rel_path);
        *ret = (OriginStat) { .size = (uint64_t) rq.length, .mtime_ns = rq.mtime_ns };
        return 0;
}

static int s3_stat(Origin *o, const char *rel_path, OriginStat *ret) {
        S3Origin *s = s3_origin(o);
        int r = origin_rel_path_check(rel_path);
        if (r < 0)
                return r;

        _cleanup_free_ char *url = object_url(s, rel_path);
        if (!url)
                return -ENOMEM;
        return s3_head(s, url, rel_path, ret);
}

static int s3_open(Origin *o, const char *rel_path, OriginFile **ret) {
        S3Origin *s = s3_origin(o);
        int r = origin_rel_path_check(rel_path);
        if (r < 0)
                return r;

        _cleanup_free_ char *url = object_url(s, rel_path), *path = strdup(rel_path);
        if (!url || !path)
                return -ENOMEM;
        /* No HEAD: a scan opens every file once and reads its head, and a second request per file
         * halves what the server can serve. The first read's GET answers 404 (ENOENT) for a missing
         * object and its Content-Range tells the size. */
        S3File *f = calloc(1, sizeof *f);
        if (!f)
                return -ENOMEM;
        f->url = TAKE_PTR(url);
        f->rel_path = TAKE_PTR(path);
        f->size = S3_SIZE_UNKNOWN;
        pthread_mutex_init(&f->lock, NULL);
        *ret = &f->base;
        return 0;
}

/* The object's size as an answer tells it, or S3_SIZE_UNKNOWN. */
static void learn_size(S3File *f, uint64_t total) {
        if (f->size == S3_SIZE_UNKNOWN && total != S3_SIZE_UNKNOWN)
                f->size = total;
}

/* "bytes A-B/TOTAL" must be what we asked for, of an object of the size the first answer told. */
static int check_content_range(S3Origin *s, S3File *f, const S3Request *rq) {
        uint64_t a, b, total;
        if (sscanf(rq->content_range, "bytes %" SCNu64 "-%" SCNu64 "/%" SCNu64, &a, &b, &total) != 3 ||
            a != rq->range_start || b < a || b - a >= rq->range_len || b >= total)
                return log_warning_errno(EIO, "S3 origin %s: GET %s: unexpected Content-Range '%s'", s->base.name,
                                         f->rel_path, rq->content_range);
        learn_size(f, total);
        if (total != f->size)
                return log_warning_errno(EIO, "S3 origin %s: %s changed size (%" PRIu64 " -> %" PRIu64 ") while open",
                                         s->base.name, f->rel_path, f->size, total);
        return 0;
}

/* Exactly len bytes at offset (the caller keeps them within the object) into buf; while the size is
 * unknown (the file's first GET), up to len, fewer only at EOF. Returns the count. */
static ssize_t s3_get_range(S3Origin *s, S3File *f, char *buf, uint64_t offset, size_t len) {
        _cleanup_(request_done) S3Request rq = {
                .url = f->url,
                .range_start = offset,
                .range_len = len,
                .sink = buf,
                .length = -1,
        };

        log_debug("S3 origin %s: GET %s bytes %" PRIu64 "-%" PRIu64, s->base.name, f->rel_path, offset,
                  offset + len - 1);
        bool sized = f->size != S3_SIZE_UNKNOWN;
        int r = s3_perform(s, &rq, f->rel_path);
        if (r < 0)
                return r;
        if (rq.status == 416) {
                if (!sized) {
                        /* Past the end, or an empty object: "bytes *\/TOTAL" tells the size. */
                        uint64_t total;
                        if (sscanf(rq.content_range, "bytes */%" SCNu64, &total) == 1 && total <= offset)
                                learn_size(f, total);
                        return 0;
                }
                return log_warning_errno(EIO, "S3 origin %s: %s is shorter than it was at open", s->base.name,
                                         f->rel_path);
        }
        if (rq.status == 206 && rq.empty_object) {
                learn_size(f, 0);
                if (f->size != 0)
                        return log_warning_errno(EIO, "S3 origin %s: %s changed size (%" PRIu64 " -> 0) while open",
                                                 s->base.name, f->rel_path, f->size);
                return 0;
        }
        if (rq.status == 206) {
                r = check_content_range(s, f, &rq);
                if (r < 0)
                        return r;
        } else if (!sized) {
                /* A 200: the whole object (a server that ignores Range, or an empty object, which
                 * has no range to send): its length is the size; with none, a body that ended
                 * before filling the sink ended at EOF. */
                if (rq.length >= 0)
                        learn_size(f, (uint64_t) rq.length);
                else if (!rq.sink_full)
                        learn_size(f, offset + rq.sink_len);
        }
        if (!sized) {
                if (f->size == S3_SIZE_UNKNOWN ? rq.sink_full || rq.sink_len == len :
                    rq.sink_len == (offset >= f->size ? 0 : MIN((uint64_t) len, f->size - offset)))
                        return (ssize_t) rq.sink_len;
                return log_warning_errno(EIO, "S3 origin %s: GET %s: got %zu bytes at %" PRIu64 " of %" PRIu64,
                                         s->base.name, f->rel_path, rq.sink_len, offset, f->size);
        }
        if (rq.sink_len != len)
                return log_warning_errno(EIO, "S3 origin %s: GET %s: got %zu of %zu bytes at %" PRIu64,
                                         s->base.name, f->rel_path, rq.sink_len, len, offset);
        return (ssize_t) len;
}

static ssize_t s3_pread(OriginFile *file, void *buf, size_t size, uint64_t offset) {
        S3File *f = (S3File *) file;
        S3Origin *s = s3_origin(file->origin);
        size_t done = 0;
        ssize_t r = 0;

        if (size == 0)
                return 0;

        pthread_mutex_lock(&f->lock);
        while (done < size) {
                uint64_t off = offset + done;
                size_t want = size - done;

                if (f->size != S3_SIZE_UNKNOWN) {
                        if (off >= f->size)
                                break;
                        want = (size_t) MIN((uint64_t) want, f->size - off);
                }
                if (f->window && off >= f->window_offset && off < f->window_offset + f->window_len) {
                        size_t k = (size_t) (f->window_offset + f->window_len - off);
                        if (k > want)
                                k = want;
                        memcpy((char *) buf + done, f->window + (off - f->window_offset), k);
                        done += k;
                        continue;
                }
                if (want >= S3_READAHEAD) {
                        /* Big reads (the chunk cache's) go straight to the caller. */
                        r = s3_get_range(s, f, (char *) buf + done, off, want);
                        if (r < 0)
                                break;
                        done += (size_t) r;
                        if ((size_t) r < want)
                                break;  /* EOF, found by a file's first GET */
                        continue;
                }
                if (!f->window) {
                        f->window = malloc(S3_READAHEAD);
                        if (!f->window) {
                                r = -ENOMEM;
                                break;
                        }
                }
                /* Near the end the window ends at EOF: tag readers walk backwards from there (an
                 * ID3v1 or APE footer, then the tag before it). Before the size is known, the
                 * window starts at the read. */
                uint64_t start = off;
                size_t len = S3_READAHEAD;
                if (f->size != S3_SIZE_UNKNOWN) {
                        if (f->size - off < S3_READAHEAD)
                                start = f->size > S3_READAHEAD ? f->size - S3_READAHEAD : 0;
                        len = f->size - start < S3_READAHEAD ? (size_t) (f->size - start) : S3_READAHEAD;
                }
                f->window_len = 0;
                r = s3_get_range(s, f, f->window, start, len);
                if (r < 0)
                        break;
                f->window_offset = start;
                f->window_len = (size_t) r;
                if (r == 0)
                        break;  /* at or past EOF */
        }
        pthread_mutex_unlock(&f->lock);

        /* A short count means EOF to callers: an error loses what was read. */
        return r < 0 ? r : (ssize_t) done;
}

static void s3_close(OriginFile *file) {
        S3File *f = (S3File *) file;
        pthread_mutex_destroy(&f->lock);
        free(f->window);
        free(f->url);
        free(f->rel_path);
        free(f);
}

/* ---- listing --------------------------------------------------------------------------------- */

static xmlNode *xml_child(xmlNode *parent, const char *name) {
        for (xmlNode *n = parent ? parent->children : NULL; n; n = n->next)
                if (n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, BAD_CAST name) == 0)
                        return n;
        return NULL;
}

/* The text of parent's child name, or NULL; xmlFree() it. */
static char *xml_child_text(xmlNode *parent, const char *name) {
        xmlNode *n = xml_child(parent, name);
        return n ? (char *) xmlNodeGetContent(n) : NULL;
}

typedef struct ListPage {
        unsigned n_keys;        /* Contents seen */
        char *next_token;       /* malloc'd; NULL when the listing is complete */
} ListPage;

typedef struct ListCtx {
        S3Origin *s;
        origin_walk_fn fn;
        void *userdata;
        unsigned n_objects;
} ListCtx;

static int list_contents(ListCtx *c, xmlNode *contents) {
        S3Origin *s = c->s;
        char *key = xml_child_text(contents, "Key");
        char *size = xml_child_text(contents, "Size");
        char *mtime = xml_child_text(contents, "LastModified");
        int r = 0;

        if (!key || !size) {
                log_warning("S3 origin %s: listing entry without Key or Size, skipping it", s->base.name);
                goto done;
        }
        size_t plen = strlen(s->prefix);
        if (strncmp(key, s->prefix, plen) != 0)
                goto done;      /* not ours: the server ignored the prefix */
        const char *rel = key + plen;
        size_t rlen = strlen(rel);
        /* "dir/" markers that consoles create for empty folders: the tree has no empty directories. */
        if (rlen == 0 || rel[rlen - 1] == '/')
                goto done;
        if (origin_rel_path_check(rel) < 0) {
                log_warning("S3 origin %s: skipping key '%s': not usable as a relative path", s->base.name, key);
                goto done;
        }
        char *end;
        errno = 0;
        unsigned long long sz = strtoull(size, &end, 10);
        if (errno != 0 || *end != '\0' || size[0] == '-') {
                log_warning("S3 origin %s: skipping key '%s': bad Size '%s'", s->base.name, key, size);
                goto done;
        }
        OriginStat st = { .size = sz };
        if (mtime)
                (void) parse_iso8601(mtime, &st.mtime_ns);
        c->n_objects++;
        r = c->fn(rel, &st, c->userdata);
done:
        xmlFree(key);
        xmlFree(size);
        xmlFree(mtime);
        return r;
}

static int list_page_parse(ListCtx *c, const Body *b, ListPage *page) {
        S3Origin *s = c->s;
        int r = 0;

        if (!b->data || b->len > INT_MAX)
                return log_warning_errno(EIO, "S3 origin %s: empty listing", s->base.name);
        xmlDoc *doc = xmlReadMemory(b->data, (int) b->len, "list.xml", NULL,
                                    XML_PARSE_NONET | XML_PARSE_NOERROR | XML_PARSE_NOWARNING | XML_PARSE_HUGE);
        if (!doc)
                return log_warning_errno(EIO, "S3 origin %s: the listing is not XML", s->base.name);
        xmlNode *root = xmlDocGetRootElement(doc);
        if (!root || xmlStrcmp(root->name, BAD_CAST "ListBucketResult") != 0) {
                r = log_warning_errno(EIO, "S3 origin %s: the listing is not a ListBucketResult", s->base.name);
                goto out;
        }
        for (xmlNode *n = root->children; n && r >= 0; n = n->next)
                if (n->type == XML_ELEMENT_NODE && xmlStrcmp(n->name, BAD_CAST "Contents") == 0) {
                        page->n_keys++;
                        if (c->fn)
                                r = list_contents(c, n);
                }
        if (r < 0)
                goto out;

        char *truncated = xml_child_text(root, "IsTruncated");
        bool more = truncated && strcmp(truncated, "true") == 0;
        xmlFree(truncated);
        if (more) {
                char *token = xml_child_text(root, "NextContinuationToken");
                if (!token || !*token) {
                        xmlFree(token);
                        r = log_warning_errno(EIO, "S3 origin %s: truncated listing without a continuation token",
                                              s->base.name);
                        goto out;
                }
                page->next_token = strdup(token);
                xmlFree(token);
                if (!page->next_token)
                        r = -ENOMEM;
        }
out:
        xmlFreeDoc(doc);
        return r;
}

/* Lists every object under key_prefix, page by page. Returns the number of objects reported. */
static int s3_list(ListCtx *c, const char *key_prefix, const char *what) {
        _cleanup_free_ char *token = NULL;

        for (;;) {
                _cleanup_free_ char *url = list_url(c->s, key_prefix, token, 1000);
                if (!url)
                        return -ENOMEM;
                _cleanup_(request_done) S3Request rq = { .url = url, .length = -1 };
                int r = s3_perform(c->s, &rq, what);
                if (r < 0)
                        return r;
                ListPage page = {};
                r = list_page_parse(c, &rq.body, &page);
                if (r < 0) {
                        free(page.next_token);
                        return r;
                }
                free(token);
                token = page.next_token;
                if (!token)
                        return 0;
        }
}

static int s3_walk_under(Origin *o, const char *rel_dir, origin_walk_fn fn, origin_walk_skipped_fn skipped,
                         void *userdata) {
        S3Origin *s = s3_origin(o);
        _cleanup_free_ char *key_prefix = NULL;
        ListCtx c = { .s = s, .fn = fn, .userdata = userdata };

        if (rel_dir[0] && origin_rel_path_check(rel_dir) < 0)
                return -EINVAL;
        if (asprintf(&key_prefix, "%s%s%s", s->prefix, rel_dir, rel_dir[0] ? "/" : "") < 0)
                return -ENOMEM;
        int r = s3_list(&c, key_prefix, rel_dir[0] ? rel_dir : "listing");
        if (r < 0) {
                if (r == -ENOENT)
                        return log_error_errno(r, "S3 origin %s: bucket %s does not exist", o->name, s->bucket);
                return log_error_errno(r, "S3 origin %s: listing %s failed: %m", o->name, o->url);
        }
        /* Directories are implicit: one that holds no object is not there. */
        if (rel_dir[0] && c.n_objects == 0)
                return -ENOENT;
        return 0;       /* a listing is all or nothing: nothing is ever skipped unread */
}

static int s3_walk(Origin *o, origin_walk_fn fn, origin_walk_skipped_fn skipped, void *userdata) {
        return s3_walk_under(o, "", fn, skipped, userdata);
}

static int s3_check(Origin *o) {
        S3Origin *s = s3_origin(o);
        _cleanup_free_ char *url = list_url(s, s->prefix, NULL, 1);
        if (!url)
                return -ENOMEM;
        _cleanup_(request_done) S3Request rq = { .url = url, .length = -1 };
        int r = s3_perform_timeout(s, &rq, "health check",
                                   s->timeout_ms < S3_CHECK_TIMEOUT_MS ? s->timeout_ms : S3_CHECK_TIMEOUT_MS);
        if (r == -ENOENT)
                return log_warning_errno(r, "S3 origin %s: bucket %s does not exist", o->name, s->bucket);
        if (r < 0)
                return r;
        ListCtx c = { .s = s };
        ListPage page = {};
        r = list_page_parse(&c, &rq.body, &page);
        free(page.next_token);
        return r;
}

static void s3_free(Origin *o) {
        S3Origin *s = s3_origin(o);
        for (size_t i = 0; i < s->n_pool; i++)
                curl_easy_cleanup(s->pool[i]);
        pthread_mutex_destroy(&s->pool_lock);
        free(s->url_base);
        free(s->bucket);
        free(s->prefix);
        free(s->sigv4);
        free_secret(s->userpwd);
        free_secret(s->token_header);
        free(s);
}

static const OriginOps s3_ops;

uint64_t origin_s3_request_count(Origin *o) {
        if (!o || o->ops != &s3_ops)
                return 0;
        return atomic_load_explicit(&s3_origin(o)->n_requests, memory_order_relaxed);
}

static const OriginOps s3_ops = {
        .kind = "s3",
        .own_timeouts = true,   /* every request runs under curl's deadline (s3_perform_timeout) */
        .stat = s3_stat,
        .open = s3_open,
        .pread = s3_pread,
        .close = s3_close,
        .walk = s3_walk,
        .walk_under = s3_walk_under,
        .check = s3_check,
        .free = s3_free,
};

/* ---- construction ---------------------------------------------------------------------------- */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_result;

static void global_init(void) {
        /* Both are process-wide and not thread-safe to set up: once, before any request. */
        global_result = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -EIO;
        xmlInitParser();
}

static bool bucket_name_valid(const char *b) {
        size_t n = strlen(b);
        return n >= 3 && n <= 63 && strspn(b, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") == n;
}

/* The base URL of the bucket, from the endpoint: path style appends "/bucket", virtual-host style
 * prepends "bucket." to the host. */
static int make_url_base(const char *endpoint, const char *bucket, bool path_style, char **ret) {
        CURLU *u = curl_url();
        char *host = NULL, *out = NULL, *path = NULL;
        int r = -EINVAL;

        if (!u)
                return -ENOMEM;
        if (curl_url_set(u, CURLUPART_URL, endpoint, 0) != CURLUE_OK)
                goto out;
        if (curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
                goto out;
        if (curl_url_get(u, CURLUPART_PATH, &path, 0) == CURLUE_OK && path && strcmp(path, "/") != 0)
                goto out;       /* an endpoint is a scheme, a host and maybe a port */
        if (path_style) {
                _cleanup_free_ char *p = NULL;
                if (asprintf(&p, "/%s", bucket) < 0 || curl_url_set(u, CURLUPART_PATH, p, 0) != CURLUE_OK) {
                        r = -ENOMEM;
                        goto out;
                }
        } else {
                _cleanup_free_ char *h = NULL;
                if (asprintf(&h, "%s.%s", bucket, host) < 0 || curl_url_set(u, CURLUPART_HOST, h, 0) != CURLUE_OK) {
                        r = -ENOMEM;
                        goto out;
                }
                curl_url_set(u, CURLUPART_PATH, "", 0);
        }
        if (curl_url_get(u, CURLUPART_URL, &out, 0) != CURLUE_OK)
                goto out;
        /* No trailing '/': object URLs append "/key". */
        size_t n = strlen(out);
        while (n > 0 && out[n - 1] == '/')
                out[--n] = '\0';
        *ret = strdup(out);
        r = *ret ? 0 : -ENOMEM;
out:
        curl_free(host);
        curl_free(path);
        curl_free(out);
        curl_url_cleanup(u);
        return r;
}

/* "" or "a/b/": no leading '/', one trailing '/', each component valid. */
static int normalize_prefix(const char *prefix, char **ret) {
        _cleanup_free_ char *p = strdup(prefix ? prefix + strspn(prefix, "/") : "");
        if (!p)
                return -ENOMEM;
        size_t n = strlen(p);
        while (n > 0 && p[n - 1] == '/')
                p[--n] = '\0';
        if (n == 0) {
                *ret = TAKE_PTR(p);
                return 0;
        }
        if (origin_rel_path_check(p) < 0)
                return -EINVAL;
        char *q;
        if (asprintf(&q, "%s/", p) < 0)
                return -ENOMEM;
        *ret = q;
        return 0;
}

int origin_s3_new(const char *name, const S3OriginOptions *opts, unsigned priority, Origin **ret) {
        _cleanup_free_ char *copy = NULL, *endpoint = NULL;
        int r;

        if (!name || !name[0] || !opts || !ret)
                return -EINVAL;
        if (!opts->bucket || !bucket_name_valid(opts->bucket))
                return log_error_errno(EINVAL, "S3 origin %s: bucket name '%s' is not valid", name, strna(opts->bucket));
        if (!!opts->access_key_id != !!opts->secret_access_key)
                return log_error_errno(EINVAL, "S3 origin %s: an access key id needs its secret key and vice versa", name);

        pthread_once(&global_once, global_init);
        if (global_result < 0)
                return log_error_errno(global_result, "Failed to initialise libcurl");

        const char *region = opts->region && opts->region[0] ? opts->region : "us-east-1";
        if (strpbrk(region, ":/ \t"))
                return log_error_errno(EINVAL, "S3 origin %s: region '%s' is not valid", name, region);
        if (opts->endpoint && opts->endpoint[0])
                endpoint = strdup(opts->endpoint);
        else if (asprintf(&endpoint, "https://s3.%s.amazonaws.com", region) < 0)
                endpoint = NULL;
        copy = strdup(name);
        if (!endpoint || !copy)
                return -ENOMEM;

        S3Origin *s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        pthread_mutex_init(&s->pool_lock, NULL);
        s->base = (Origin) { .ops = &s3_ops, .priority = priority };
        s->timeout_ms = 1000L * (opts->timeout_sec > 0 ? opts->timeout_sec : S3_TIMEOUT_DEFAULT_SEC);
        s->base.timeout_ms = (unsigned) s->timeout_ms;

        r = make_url_base(endpoint, opts->bucket, opts->path_style, &s->url_base);
        if (r < 0) {
                log_error_errno(r, "S3 origin %s: endpoint '%s' is not a URL of the form http[s]://host[:port]",
                                name, endpoint);
                goto fail;
        }
        r = normalize_prefix(opts->prefix, &s->prefix);
        if (r < 0) {
                log_error_errno(r, "S3 origin %s: prefix '%s' is not a valid key prefix", name, opts->prefix);
                goto fail;
        }
        s->bucket = strdup(opts->bucket);
        if (!s->bucket)
                goto oom;
        if (opts->access_key_id) {
                if (asprintf(&s->sigv4, "aws:amz:%s:s3", region) < 0) {
                        s->sigv4 = NULL;
                        goto oom;
                }
                if (asprintf(&s->userpwd, "%s:%s", opts->access_key_id, opts->secret_access_key) < 0) {
                        s->userpwd = NULL;
                        goto oom;
                }
                if (opts->session_token && opts->session_token[0] &&
                    asprintf(&s->token_header, "x-amz-security-token: %s", opts->session_token) < 0) {
                        s->token_header = NULL;
                        goto oom;
                }
        }
        /* The URL names the bucket and where it is served, in the form AddOrigin takes. */
        if (asprintf(&s->base.url, "s3://%s/%.*s?endpoint=%s&region=%s", s->bucket,
                     (int) (s->prefix[0] ? strlen(s->prefix) - 1 : 0), s->prefix, endpoint, region) < 0) {
                s->base.url = NULL;
                goto oom;
        }
        s->base.name = TAKE_PTR(copy);
        *ret = &s->base;
        return 0;

oom:
        r = -ENOMEM;
fail:
        free(s->base.url);
        s->base.url = NULL;
        s3_free(&s->base);
        return r;
}
