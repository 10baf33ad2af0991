/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The keys of an [origin "NAME"] section with kind = s3 (issue #5), and where its credentials come
 * from: the section itself, else a credentials file (AWS INI format, [profile] sections), else the
 * environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN).
 *
 *   endpoint = http://127.0.0.1:9000   (default: AWS, https://s3.REGION.amazonaws.com)
 *   region = us-east-1   bucket = music   prefix = library/   path_style = yes|no (default: yes
 *   when endpoint is set)   timeout = 30 (seconds per operation, 1..3600)
 *   access_key_id = ...   secret_access_key = ...   session_token = ...
 *   credentials_file = /etc/musicfs/aws-credentials   profile = default */
#include <stdbool.h>

typedef struct OriginS3Config {
        char *endpoint;
        char *region;
        char *bucket;
        char *prefix;
        int path_style;                 /* -1: unset */
        char *access_key_id;
        char *secret_access_key;        /* secret */
        char *session_token;            /* secret */
        char *credentials_file;
        char *profile;
        unsigned timeout_sec;           /* 0: the origin's default */
        bool any_key;                   /* an S3 key was given (refused on other kinds) */
} OriginS3Config;

#define CONFIG_S3_KEYS "endpoint, region, bucket, prefix, path_style, access_key_id, secret_access_key, " \
        "session_token, credentials_file, profile, timeout"

void config_s3_done(OriginS3Config *s3);
int config_s3_copy(OriginS3Config *dst, const OriginS3Config *src);

/* One key of the section read from file. 0 when applied, -ENOENT when key is not an S3 key,
 * -EINVAL with *ret_reason when the value is bad. Warns (once per file) when file holds a secret and
 * others may read it. */
int config_s3_key(OriginS3Config *s3, const char *file, const char *key, const char *value, char **ret_reason);

/* Whole-section checks: a bucket, an endpoint URL, both halves of a key pair. -EINVAL with a
 * sentence in *ret_reason. */
int config_s3_validate(const char *origin_name, const OriginS3Config *s3, char **ret_reason);

/* The key pair and session token to sign with, by the order above; all NULL when none is found
 * (anonymous access). The strings are the caller's to free (and wipe). -EINVAL with *ret_reason when
 * the credentials file cannot be used. */
int config_s3_credentials(const OriginS3Config *s3, char **ret_key_id, char **ret_secret, char **ret_token,
                          char **ret_reason);

/* The origin an AddOrigin URL names: s3://BUCKET[/PREFIX][?endpoint=URL&region=R&path_style=yes|no&timeout=S]
 * (values percent-encoded). Credentials are never taken from a URL: the daemon's environment
 * provides them. -EINVAL with *ret_reason on a bad URL; config_s3_done() the result. */
int config_s3_from_url(const char *url, OriginS3Config *ret, char **ret_reason);

/* Whether two sections describe the same S3 origin (for reloads). */
bool config_s3_equal(const OriginS3Config *a, const OriginS3Config *b);

/* path_style as the origin wants it: the explicit choice, else yes when an endpoint is set. */
bool config_s3_path_style(const OriginS3Config *s3);
