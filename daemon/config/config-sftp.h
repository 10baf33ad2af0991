/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* The keys of an [origin "NAME"] section with kind = sftp (issue #5). path (shared with local
 * origins) is the directory on the server, absolute.
 *
 *   host = nas.example.org   port = 22   user = music (default: the daemon's user)
 *   identity_file = /etc/musicfs/id_ed25519   (an unencrypted private key; KEY.pub is used if there)
 *   agent = yes|no   (try ssh-agent via $SSH_AUTH_SOCK first; default no, or yes without identity_file)
 *   known_hosts = /etc/musicfs/known_hosts   (default: ~/.ssh/known_hosts of the daemon's user; the
 *                 system service has no useful home: give it /etc/musicfs/known_hosts)
 *   host_key_fingerprint = SHA256:...   (accepts a host known_hosts lacks; as ssh-keygen -lf prints)
 *   pool_size = 16  (SSH connections, 1..64; each carries up to 4 SFTP sessions)   keepalive = 30   (seconds, 1..3600)
 *   timeout = 30    (seconds per operation, retries included; parsed with the s3 keys, see
 *                    config-s3.h, and shared: OriginS3Config.timeout_sec) */
#include <stdbool.h>

typedef struct OriginSftpConfig {
        char *host;
        unsigned port;                  /* 0: 22 */
        char *user;
        char *identity_file;
        int agent;                      /* -1: unset */
        char *known_hosts;
        char *host_key_fingerprint;
        unsigned pool_size;             /* 0: the origin's default */
        unsigned keepalive_sec;         /* 0: the origin's default */
        bool any_key;                   /* an SFTP key was given (refused on other kinds) */
} OriginSftpConfig;

#define CONFIG_SFTP_KEYS "host, port, user, identity_file, agent, known_hosts, host_key_fingerprint, pool_size, " \
        "keepalive, timeout"

void config_sftp_done(OriginSftpConfig *c);
int config_sftp_copy(OriginSftpConfig *dst, const OriginSftpConfig *src);
bool config_sftp_equal(const OriginSftpConfig *a, const OriginSftpConfig *b);

/* One key of the section. 0 when applied, -ENOENT when key is not an SFTP key, -EINVAL with
 * *ret_reason when the value is bad. */
int config_sftp_key(OriginSftpConfig *c, const char *key, const char *value, char **ret_reason);

/* An AddOrigin URL, sftp://[user@]host[:port]/absolute/path (percent escapes decoded), into c and
 * *ret_path; the other keys keep their defaults (the daemon user's ~/.ssh keys, agent and
 * known_hosts). A password in the URL is refused. -EINVAL with *ret_reason on a bad URL. */
int config_sftp_from_url(const char *url, OriginSftpConfig *c, char **ret_path, char **ret_reason);

/* Whole-section checks (a host, an absolute path, a key or the agent to log in with). -EINVAL with a
 * sentence in *ret_reason. */
int config_sftp_validate(const char *origin_name, const char *path, const OriginSftpConfig *c, char **ret_reason);
