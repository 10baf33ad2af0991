/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Parsing and checking the keys of kind = sftp origin sections (config-sftp.h). Holds no secret:
 * keys stay in their files, named by path only. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "config-sftp.h"
#include "strutil.h"
#include "macro.h"

#define SFTP_POOL_MAX 64
#define SFTP_KEEPALIVE_MAX 3600

_printf_(2, 3)
static int fail(char **ret_reason, const char *format, ...) {
        va_list ap;
        char *s = NULL;

        va_start(ap, format);
        if (vasprintf(&s, format, ap) < 0)
                s = NULL;
        va_end(ap);
        if (ret_reason) {
                free(*ret_reason);
                *ret_reason = s;
        } else
                free(s);
        return -EINVAL;
}

static int set_string(char **dst, const char *value) {
        char *s = strdup(value);
        if (!s)
                return -ENOMEM;
        free(*dst);
        *dst = s;
        return 0;
}

static int parse_uint(const char *value, unsigned long min, unsigned long max, unsigned *ret) {
        char *end;
        errno = 0;
        unsigned long v = strtoul(value, &end, 10);
        if (errno != 0 || *end != '\0' || value[0] == '-' || value[0] == '\0' || v < min || v > max)
                return -EINVAL;
        *ret = (unsigned) v;
        return 0;
}

void config_sftp_done(OriginSftpConfig *c) {
        free(c->host);
        free(c->user);
        free(c->identity_file);
        free(c->known_hosts);
        free(c->host_key_fingerprint);
        *c = (OriginSftpConfig) { .agent = -1 };
}

int config_sftp_copy(OriginSftpConfig *dst, const OriginSftpConfig *src) {
        OriginSftpConfig c = *src;
        c.host = c.user = c.identity_file = c.known_hosts = c.host_key_fingerprint = NULL;
        if ((src->host && !(c.host = strdup(src->host))) || (src->user && !(c.user = strdup(src->user))) ||
            (src->identity_file && !(c.identity_file = strdup(src->identity_file))) ||
            (src->known_hosts && !(c.known_hosts = strdup(src->known_hosts))) ||
            (src->host_key_fingerprint && !(c.host_key_fingerprint = strdup(src->host_key_fingerprint)))) {
                config_sftp_done(&c);
                return -ENOMEM;
        }
        *dst = c;
        return 0;
}

bool config_sftp_equal(const OriginSftpConfig *a, const OriginSftpConfig *b) {
        return streq_ptr(a->host, b->host) && a->port == b->port && streq_ptr(a->user, b->user) &&
               streq_ptr(a->identity_file, b->identity_file) && a->agent == b->agent &&
               streq_ptr(a->known_hosts, b->known_hosts) &&
               streq_ptr(a->host_key_fingerprint, b->host_key_fingerprint) && a->pool_size == b->pool_size &&
               a->keepalive_sec == b->keepalive_sec;
}

int config_sftp_key(OriginSftpConfig *c, const char *key, const char *value, char **ret_reason) {
        int r;

        if (strcmp(key, "host") == 0) {
                if (strpbrk(value, "/@ \t"))
                        return fail(ret_reason, "host = '%s' is not a host name or address", value);
                r = set_string(&c->host, value);
        } else if (strcmp(key, "port") == 0) {
                if (parse_uint(value, 1, 65535, &c->port) < 0)
                        return fail(ret_reason, "port = '%s' is not a port number from 1 to 65535", value);
                r = 0;
        } else if (strcmp(key, "user") == 0) {
                if (strpbrk(value, "@:/ \t"))
                        return fail(ret_reason, "user = '%s' is not a user name", value);
                r = set_string(&c->user, value);
        } else if (strcmp(key, "identity_file") == 0 || strcmp(key, "known_hosts") == 0) {
                if (value[0] != '/')
                        return fail(ret_reason, "%s = '%s' is not an absolute path", key, value);
                r = set_string(strcmp(key, "known_hosts") == 0 ? &c->known_hosts : &c->identity_file, value);
        } else if (strcmp(key, "agent") == 0) {
                if (strcasecmp(value, "yes") == 0 || strcasecmp(value, "true") == 0 || strcmp(value, "1") == 0)
                        c->agent = 1;
                else if (strcasecmp(value, "no") == 0 || strcasecmp(value, "false") == 0 || strcmp(value, "0") == 0)
                        c->agent = 0;
                else
                        return fail(ret_reason, "agent = '%s' is not a boolean; expected yes or no", value);
                r = 0;
        } else if (strcmp(key, "host_key_fingerprint") == 0) {
                size_t n = strlen(value);
                if (strncmp(value, "SHA256:", 7) != 0 || n < 7 + 43 || n > 7 + 44 ||
                    strspn(value + 7, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != n - 7)
                        return fail(ret_reason, "host_key_fingerprint = '%s' is not a SHA256 fingerprint; expected "
                                    "'SHA256:' and 43 base64 characters, as 'ssh-keygen -l -f KEY' prints", value);
                r = set_string(&c->host_key_fingerprint, value);
        } else if (strcmp(key, "pool_size") == 0) {
                if (parse_uint(value, 1, SFTP_POOL_MAX, &c->pool_size) < 0)
                        return fail(ret_reason, "pool_size = '%s' is not a number of sessions from 1 to %d", value,
                                    SFTP_POOL_MAX);
                r = 0;
        } else if (strcmp(key, "keepalive") == 0) {
                if (parse_uint(value, 1, SFTP_KEEPALIVE_MAX, &c->keepalive_sec) < 0)
                        return fail(ret_reason, "keepalive = '%s' is not a number of seconds from 1 to %d", value,
                                    SFTP_KEEPALIVE_MAX);
                r = 0;
        } else
                return -ENOENT;

        if (r < 0)
                return r;
        c->any_key = true;
        return 0;
}

int config_sftp_from_url(const char *url, OriginSftpConfig *c, char **ret_path, char **ret_reason) {
        _cleanup_free_ char *user = NULL, *host = NULL, *path = NULL;
        int r;

        if (strncasecmp(url, "sftp://", 7) != 0)
                return fail(ret_reason, "not an sftp:// URL");
        const char *a = url + 7;
        if (strpbrk(a, "?#"))
                return fail(ret_reason, "a query or fragment is not supported; give the keys in a configuration file");
        const char *slash = strchr(a, '/');
        if (!slash)
                return fail(ret_reason, "no path; expected sftp://[user@]host[:port]/absolute/directory");
        const char *at = memchr(a, '@', (size_t) (slash - a));
        if (at) {
                if (memchr(a, ':', (size_t) (at - a)))
                        return fail(ret_reason, "a password in the URL is not supported; log in with a key");
                r = percent_decode(a, (size_t) (at - a), false, &user);
                if (r == -ENOMEM)
                        return r;
                if (r < 0 || !user[0] || strpbrk(user, "@:/ \t"))
                        return fail(ret_reason, "bad user name");
                a = at + 1;
        }
        const char *host_end = slash, *port = NULL;
        if (a[0] == '[') {
                const char *close = memchr(a, ']', (size_t) (slash - a));
                if (!close)
                        return fail(ret_reason, "unterminated [IPv6 address]");
                host = strndup(a + 1, (size_t) (close - a - 1));
                if (close[1] == ':')
                        port = close + 2;
                else if (close + 1 != slash)
                        return fail(ret_reason, "bad host");
        } else {
                const char *colon = memchr(a, ':', (size_t) (slash - a));
                if (colon) {
                        host_end = colon;
                        port = colon + 1;
                }
                host = strndup(a, (size_t) (host_end - a));
        }
        if (!host)
                return -ENOMEM;
        if (!host[0] || strpbrk(host, "/@ \t%"))
                return fail(ret_reason, "bad host");
        unsigned p = 0;
        if (port) {
                _cleanup_free_ char *ps = strndup(port, (size_t) (slash - port));
                if (!ps)
                        return -ENOMEM;
                if (parse_uint(ps, 1, 65535, &p) < 0)
                        return fail(ret_reason, "bad port; expected 1 to 65535");
        }
        r = percent_decode(slash, strlen(slash), true, &path);
        if (r == -ENOMEM)
                return r;
        if (r < 0)
                return fail(ret_reason, "bad percent escape in the path");

        config_sftp_done(c);
        c->host = TAKE_PTR(host);
        c->user = TAKE_PTR(user);
        c->port = p;
        c->any_key = true;
        *ret_path = TAKE_PTR(path);
        return 0;
}

int config_sftp_validate(const char *origin_name, const char *path, const OriginSftpConfig *c, char **ret_reason) {
        if (!c->host)
                return fail(ret_reason, "origin '%s' (kind sftp) has no host; expected 'host = NAME' in its section",
                            origin_name);
        if (!path || path[0] != '/')
                return fail(ret_reason, "origin '%s' (kind sftp) needs 'path = /absolute/directory' on the server",
                            origin_name);
        if (c->identity_file && access(c->identity_file, R_OK) < 0)
                return fail(ret_reason, "origin '%s': identity_file '%s' cannot be read: %s", origin_name,
                            c->identity_file, strerror(errno));
        return 0;
}
