/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Failpoints (DESIGN.md D14): the fail-rs grammar and the process-wide registry of armed points.
 *
 * Grammar: actions := action ("->" action)* ; action := [P "%"][N "*"] task ["(" arg ")"]
 *   tasks: off | return[(ERRNO-NAME)] | sleep(ms) | delay(ms) | pause | yield | print(msg) | panic | kill
 * An action with a count is used N times and then falls through to the next one; an action whose
 * percentage misses falls through too; when nothing applies the point does nothing.
 *
 * Every point is named once in FAILPOINT_LIST so a typo over the bus is refused, and evaluating an
 * unarmed point costs one relaxed atomic load. With -Dfailpoints=false, FAILPOINT() is the constant 0
 * and the registry is not linked into the daemon. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FAILPOINT_LIST(X)                               \
        X(CATALOG_OPEN,    "catalog-open")              \
        X(CATALOG_COMMIT,  "catalog-commit")            \
        X(SCAN_FILE,       "scan-file")                 \
        X(SCAN_BATCH,      "scan-batch")                \
        X(TREE_PUBLISH,    "tree-publish")              \
        X(ORIGIN_OPEN,     "origin-open")               \
        X(ORIGIN_READ,     "origin-read")               \
        X(ORIGIN_STAT,     "origin-stat")               \
        X(FUSE_READ,       "fuse-read")                 \
        X(FUSE_LOOKUP,     "fuse-lookup")               \
        X(FUSE_READDIR,    "fuse-readdir")              \
        X(SHUTDOWN_DRAIN,  "shutdown-drain")          \
        X(CACHE_WRITE,     "cache-write")               \
        X(CACHE_RENAME,    "cache-rename")              \
        X(CACHE_INDEX,     "cache-index")               \
        X(CACHE_INDEX_COMMIT, "cache-index-commit")     \
        X(CACHE_EVICT,     "cache-evict")               \
        X(CACHE_TOUCH,     "cache-touch")               \
        X(CACHE_CHUNK_READ, "cache-chunk-read")

typedef enum FailpointId {
#define FP_ENUM(id, name) FP_##id,
        FAILPOINT_LIST(FP_ENUM)
#undef FP_ENUM
        _FP_MAX,
} FailpointId;

typedef enum FailpointTask {
        FP_TASK_OFF,
        FP_TASK_RETURN,
        FP_TASK_SLEEP,
        FP_TASK_DELAY,
        FP_TASK_PAUSE,
        FP_TASK_YIELD,
        FP_TASK_PRINT,
        FP_TASK_PANIC,
        FP_TASK_KILL,
} FailpointTask;

typedef struct FailpointAction {
        unsigned percent;       /* 1..100; 100 when not given */
        long count;             /* remaining uses; -1 = unlimited */
        FailpointTask task;
        int error;              /* positive errno for return(); EIO when no argument */
        unsigned ms;            /* sleep/delay */
        char *message;          /* print */
} FailpointAction;

typedef struct FailpointInfo {
        const char *name;       /* static */
        char *actions;          /* the armed spec, "" when disarmed */
        uint32_t fired;         /* times a task other than off ran since armed */
} FailpointInfo;

/* Grammar. On -EINVAL, *ret_reason (if given) says what is wrong, for a person. */
int failpoint_parse(const char *spec, FailpointAction **ret, size_t *ret_n, char **ret_reason);
void failpoint_actions_free(FailpointAction *a, size_t n);
int failpoint_errno_from_name(const char *name);        /* "EIO" -> 5, unknown -> -EINVAL */
const char *failpoint_name(FailpointId id);
int failpoint_id_from_name(const char *name);           /* -ENOENT when unknown */

/* Registry. arm: -ENOENT unknown point, -EINVAL bad actions; *ret_reason is set in both cases (NULL
 * otherwise), so free it whatever the result. */
int failpoint_arm(const char *name, const char *actions, char **ret_reason);
int failpoint_disarm(const char *name);
void failpoint_disarm_all(void);
/* All known points in FAILPOINT_LIST order; free with failpoint_info_free(). */
int failpoint_list(FailpointInfo **ret, size_t *ret_n);
void failpoint_info_free(FailpointInfo *a, size_t n);
/* How often the named point ran a task other than off since it was armed; -ENOENT when unknown. */
int failpoint_fired(const char *name, uint32_t *ret);
/* "name=actions;name=actions" as in MUSICFS_FAILPOINTS. Arms nothing unless everything parses;
 * an unknown name is -EINVAL here, with the reason. */
int failpoint_arm_from_string(const char *s, char **ret_reason);

/* Evaluate: 0 to carry on, or a negative errno the caller must return. May block (sleep, pause). */
int failpoint_eval(FailpointId id);
/* Whether the point is armed, without evaluating it: for a fast path that must not skip it. */
bool failpoint_armed(FailpointId id);

#if MUSICFS_FAILPOINTS
#define FAILPOINT(id) failpoint_eval(FP_##id)
#define FAILPOINT_ARMED(id) failpoint_armed(FP_##id)
#else
#define FAILPOINT(id) 0
#define FAILPOINT_ARMED(id) false
#endif
