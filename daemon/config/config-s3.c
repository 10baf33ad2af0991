/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The S3 keys of an origin section and the S3 credentials chain (config-s3.h). Kept apart from
 * config.c, which only hands it the keys it does not know. Secrets are copied, wiped when freed and
 * never put in an error message. */
#include <errno.h>
#include <ini.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include "config-s3.h"
#include "strutil.h"
#include "log.h"
#include "macro.h"

#define S3_TIMEOUT_MAX 3600

_printf_(2, 3)
static int fail(char **ret_reason, const char *format, ...) {
        va_list ap;
        char *s = NULL;

        if (ret_reason) {
                va_start(ap, format);
                if (vasprintf(&s, format, ap) < 0)
                        s = NULL;
                va_end(ap);
                free(*ret_reason);
                *ret_reason = s;
        }
        return -EINVAL;
}

static void free_secret(char *s) {
        if (s) {
                explicit_bzero(s, strlen(s));
                free(s);
        }
}

static int set_string(char **dst, const char *value, bool secret) {
        char *s = value ? strdup(value) : NULL;
        if (value && !s)
                return -ENOMEM;
        if (secret)
                free_secret(*dst);
        else
                free(*dst);
        *dst = s;
        return 0;
}

void config_s3_done(OriginS3Config *s3) {
        free(s3->endpoint);
        free(s3->region);
        free(s3->bucket);
        free(s3->prefix);
        free(s3->access_key_id);
        free_secret(s3->secret_access_key);
        free_secret(s3->session_token);
        free(s3->credentials_file);
        free(s3->profile);
        *s3 = (OriginS3Config) { .path_style = -1 };
}

int config_s3_copy(OriginS3Config *dst, const OriginS3Config *src) {
        OriginS3Config c = {
                .path_style = src->path_style,
                .timeout_sec = src->timeout_sec,
                .any_key = src->any_key,
        };
        if (set_string(&c.endpoint, src->endpoint, false) < 0 || set_string(&c.region, src->region, false) < 0 ||
            set_string(&c.bucket, src->bucket, false) < 0 || set_string(&c.prefix, src->prefix, false) < 0 ||
            set_string(&c.access_key_id, src->access_key_id, false) < 0 ||
            set_string(&c.secret_access_key, src->secret_access_key, true) < 0 ||
            set_string(&c.session_token, src->session_token, true) < 0 ||
            set_string(&c.credentials_file, src->credentials_file, false) < 0 ||
            set_string(&c.profile, src->profile, false) < 0) {
                config_s3_done(&c);
                return -ENOMEM;
        }
        *dst = c;
        return 0;
}

static void warn_if_world_readable(const char *file, const char *what) {
        struct stat st;
        if (file && stat(file, &st) == 0 && (st.st_mode & S_IROTH))
                log_warning("%s holds %s and is readable by every user; chmod o-r it", file, what);
}

int config_s3_key(OriginS3Config *s3, const char *file, const char *key, const char *value, char **ret_reason) {
        int r;

        if (strcmp(key, "endpoint") == 0) {
                if (strncmp(value, "http://", 7) != 0 && strncmp(value, "https://", 8) != 0)
                        return fail(ret_reason, "endpoint = '%s' is not an http:// or https:// URL", value);
                r = set_string(&s3->endpoint, value, false);
        } else if (strcmp(key, "region") == 0) {
                if (strpbrk(value, ":/ \t"))
                        return fail(ret_reason, "region = '%s' is not a region name such as us-east-1", value);
                r = set_string(&s3->region, value, false);
        } else if (strcmp(key, "bucket") == 0) {
                size_t n = strlen(value);
                if (n < 3 || n > 63 ||
                    strspn(value, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_") != n)
                        return fail(ret_reason, "bucket = '%s' is not a bucket name (3 to 63 letters, digits, '.', '-', '_')",
                                    value);
                r = set_string(&s3->bucket, value, false);
        } else if (strcmp(key, "prefix") == 0) {
                if (strstr(value, "//") || strcmp(value, ".") == 0 || strstr(value, "/./") || strstr(value, "/../") ||
                    strncmp(value, "../", 3) == 0 || strncmp(value, "./", 2) == 0)
                        return fail(ret_reason, "prefix = '%s' has an empty, '.' or '..' component", value);
                r = set_string(&s3->prefix, value, false);
        } else if (strcmp(key, "path_style") == 0) {
                if (strcasecmp(value, "yes") == 0 || strcasecmp(value, "true") == 0 || strcmp(value, "1") == 0)
                        s3->path_style = 1;
                else if (strcasecmp(value, "no") == 0 || strcasecmp(value, "false") == 0 || strcmp(value, "0") == 0)
                        s3->path_style = 0;
                else
                        return fail(ret_reason, "path_style = '%s' is not a boolean; expected yes or no", value);
                r = 0;
        } else if (strcmp(key, "access_key_id") == 0)
                r = set_string(&s3->access_key_id, value, false);
        else if (strcmp(key, "secret_access_key") == 0 || strcmp(key, "session_token") == 0) {
                warn_if_world_readable(file, key);
                r = set_string(strcmp(key, "session_token") == 0 ? &s3->session_token : &s3->secret_access_key, value, true);
        } else if (strcmp(key, "credentials_file") == 0) {
                if (value[0] != '/')
                        return fail(ret_reason, "credentials_file = '%s' is not an absolute path", value);
                r = set_string(&s3->credentials_file, value, false);
        } else if (strcmp(key, "profile") == 0)
                r = set_string(&s3->profile, value, false);
        else if (strcmp(key, "timeout") == 0) {
                char *end;
                errno = 0;
                unsigned long v = strtoul(value, &end, 10);
                if (errno != 0 || *end != '\0' || value[0] == '-' || v < 1 || v > S3_TIMEOUT_MAX)
                        return fail(ret_reason, "timeout = '%s' is not a number of seconds from 1 to %d", value,
                                    S3_TIMEOUT_MAX);
                s3->timeout_sec = (unsigned) v;
                r = 0;
        } else
                return -ENOENT;

        if (r < 0)
                return r;
        s3->any_key = true;
        return 0;
}

int config_s3_validate(const char *origin_name, const OriginS3Config *s3, char **ret_reason) {
        if (!s3->bucket)
                return fail(ret_reason, "origin '%s' (kind s3) has no bucket; expected 'bucket = NAME' in its section",
                            origin_name);
        if (!!s3->access_key_id != !!s3->secret_access_key)
                return fail(ret_reason, "origin '%s': access_key_id and secret_access_key go together; one is missing",
                            origin_name);
        if (s3->profile && !s3->credentials_file)
                return fail(ret_reason, "origin '%s': profile needs credentials_file", origin_name);
        return 0;
}

/* The first n bytes of s, percent-decoded; NULL on a bad escape or %00 (errno EINVAL) or OOM. */
static char *url_decode(const char *s, size_t n) {
        char *d = NULL;
        int r = percent_decode(s, n, true, &d);
        if (r < 0)
                errno = -r;
        return d;
}

int config_s3_from_url(const char *url, OriginS3Config *ret, char **ret_reason) {
        static const char *const allowed[] = { "endpoint", "region", "path_style", "timeout" };
        OriginS3Config c = { .path_style = -1 };
        _cleanup_free_ char *bucket = NULL, *prefix = NULL;
        int r;

        if (strncasecmp(url, "s3://", 5) != 0)
                return fail(ret_reason, "not an s3:// URL");
        const char *p = url + 5;
        size_t n = strcspn(p, "/?#");
        /* Not echoing it: what stands before the '@' is likely a secret. */
        if (memchr(p, '@', n))
                return fail(ret_reason, "an s3:// URL carries no user name or password: the daemon takes credentials "
                            "from its environment");
        bucket = url_decode(p, n);
        p += n;
        if (*p == '/')
                p++;
        n = strcspn(p, "?#");
        prefix = url_decode(p, n);
        if (!bucket || !prefix)
                return errno == EINVAL ? fail(ret_reason, "a bad percent escape") : -ENOMEM;
        p += n;
        if (*p == '#')
                return fail(ret_reason, "an s3:// URL has no fragment");

        r = config_s3_key(&c, NULL, "bucket", bucket, ret_reason);
        if (r >= 0 && *prefix)
                r = config_s3_key(&c, NULL, "prefix", prefix, ret_reason);
        while (r >= 0 && *p && *++p) {
                size_t len = strcspn(p, "&#");
                const char *eq = memchr(p, '=', len);
                if (p[len] == '#') {
                        r = fail(ret_reason, "an s3:// URL has no fragment");
                        break;
                }
                _cleanup_free_ char *key = eq ? url_decode(p, (size_t) (eq - p)) : NULL;
                _cleanup_free_ char *value = eq ? url_decode(eq + 1, len - (size_t) (eq - p) - 1) : NULL;
                if (!eq || !*p) {
                        r = fail(ret_reason, "query parameter '%.*s' has no value", (int) len, p);
                        break;
                }
                if (!key || !value) {
                        r = errno == EINVAL ? fail(ret_reason, "a bad percent escape") : -ENOMEM;
                        break;
                }
                bool ok = false;
                for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
                        ok = ok || strcmp(key, allowed[i]) == 0;
                if (!ok) {
                        /* Not echoing the value: it may be a secret put where none belongs. */
                        r = fail(ret_reason, "unknown parameter '%s'; expected endpoint, region, path_style or timeout "
                                 "(credentials never go in a URL: the daemon takes them from its environment)", key);
                        break;
                }
                r = config_s3_key(&c, NULL, key, value, ret_reason);
                p += len;
        }
        if (r >= 0)
                r = config_s3_validate("(new)", &c, ret_reason);
        if (r < 0) {
                config_s3_done(&c);
                return r;
        }
        *ret = c;
        return 0;
}

static bool str_eq(const char *a, const char *b) {
        return a == b || (a && b && strcmp(a, b) == 0);
}

bool config_s3_equal(const OriginS3Config *a, const OriginS3Config *b) {
        return str_eq(a->endpoint, b->endpoint) && str_eq(a->region, b->region) && str_eq(a->bucket, b->bucket) &&
               str_eq(a->prefix, b->prefix) && a->path_style == b->path_style &&
               str_eq(a->access_key_id, b->access_key_id) && str_eq(a->secret_access_key, b->secret_access_key) &&
               str_eq(a->session_token, b->session_token) && str_eq(a->credentials_file, b->credentials_file) &&
               str_eq(a->profile, b->profile) && a->timeout_sec == b->timeout_sec;
}

bool config_s3_path_style(const OriginS3Config *s3) {
        return s3->path_style >= 0 ? s3->path_style > 0 : s3->endpoint != NULL;
}

typedef struct CredentialsCtx {
        const char *profile;
        char *key_id, *secret, *token;
        bool nomem;
} CredentialsCtx;

static int credentials_handler(void *user, const char *section, const char *name, const char *value) {
        CredentialsCtx *c = user;
        char **dst = NULL;
        bool secret = false;

        /* ~/.aws/credentials names sections after the profile; ~/.aws/config says "profile NAME". */
        if (strcmp(section, c->profile) != 0 &&
            !(strncmp(section, "profile ", 8) == 0 && strcmp(section + 8, c->profile) == 0))
                return 1;
        if (strcmp(name, "aws_access_key_id") == 0)
                dst = &c->key_id;
        else if (strcmp(name, "aws_secret_access_key") == 0)
                dst = &c->secret, secret = true;
        else if (strcmp(name, "aws_session_token") == 0)
                dst = &c->token, secret = true;
        if (dst && set_string(dst, value, secret) < 0)
                c->nomem = true;
        return 1;
}

int config_s3_credentials(const OriginS3Config *s3, char **ret_key_id, char **ret_secret, char **ret_token,
                          char **ret_reason) {
        CredentialsCtx c = { .profile = s3->profile ? s3->profile : "default" };
        int r = 0;

        if (s3->access_key_id) {
                if (set_string(&c.key_id, s3->access_key_id, false) < 0 ||
                    set_string(&c.secret, s3->secret_access_key, true) < 0 ||
                    set_string(&c.token, s3->session_token, true) < 0)
                        r = -ENOMEM;
        } else if (s3->credentials_file) {
                FILE *f = fopen(s3->credentials_file, "re");
                if (!f) {
                        r = negative_errno();
                        errno = -r;
                        r = fail(ret_reason, "cannot open credentials_file %s: %m", s3->credentials_file);
                        goto out;
                }
                warn_if_world_readable(s3->credentials_file, "secret keys");
                int line = ini_parse_file(f, credentials_handler, &c);
                fclose(f);
                if (c.nomem)
                        r = -ENOMEM;
                else if (line != 0)
                        r = fail(ret_reason, "%s:%d: cannot parse the credentials file", s3->credentials_file, line);
                else if (!c.key_id || !c.secret)
                        r = fail(ret_reason, "%s: profile [%s] has no aws_access_key_id and aws_secret_access_key",
                                 s3->credentials_file, c.profile);
        } else {
                const char *k = getenv("AWS_ACCESS_KEY_ID"), *s = getenv("AWS_SECRET_ACCESS_KEY"),
                           *t = getenv("AWS_SESSION_TOKEN");
                if (k && *k && s && *s &&
                    (set_string(&c.key_id, k, false) < 0 || set_string(&c.secret, s, true) < 0 ||
                     set_string(&c.token, t && *t ? t : NULL, true) < 0))
                        r = -ENOMEM;
        }
out:
        if (r < 0) {
                free(c.key_id);
                free_secret(c.secret);
                free_secret(c.token);
                return r;
        }
        *ret_key_id = c.key_id;
        *ret_secret = c.secret;
        *ret_token = c.token;
        return 0;
}
