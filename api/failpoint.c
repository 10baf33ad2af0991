/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Failpoints (DESIGN.md D14): the fail-rs grammar and the process-wide registry.
 *
 * The registry is one context struct. Each point has an atomic "armed" flag read without the lock,
 * so that an unarmed point costs one relaxed load; everything else (actions, counts, fired, the
 * generation that wakes paused threads) lives under the context mutex. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "failpoint.h"
#include "macro.h"

typedef struct FailpointState {
        atomic_bool armed;
        FailpointAction *actions;
        size_t n_actions;
        char *spec;
        uint32_t fired;
        /* Bumped by every arm and disarm: a paused evaluation waits for it to change. */
        uint64_t generation;
} FailpointState;

static struct {
        pthread_mutex_t lock;
        pthread_cond_t changed;
        uint64_t rng;           /* xorshift64* state, 0 until first seeded */
        FailpointState points[_FP_MAX];
} failpoint_context = {
        .lock = PTHREAD_MUTEX_INITIALIZER,
        .changed = PTHREAD_COND_INITIALIZER,
};

static const char *const failpoint_names[_FP_MAX] = {
#define FP_NAME(id, name) [FP_##id] = name,
        FAILPOINT_LIST(FP_NAME)
#undef FP_NAME
};

static const char *const task_names[] = {
        [FP_TASK_OFF] = "off",
        [FP_TASK_RETURN] = "return",
        [FP_TASK_SLEEP] = "sleep",
        [FP_TASK_DELAY] = "delay",
        [FP_TASK_PAUSE] = "pause",
        [FP_TASK_YIELD] = "yield",
        [FP_TASK_PRINT] = "print",
        [FP_TASK_PANIC] = "panic",
        [FP_TASK_KILL] = "kill",
};

const char *failpoint_name(FailpointId id) {
        if ((int) id < 0 || id >= _FP_MAX)
                return NULL;
        return failpoint_names[id];
}

int failpoint_id_from_name(const char *name) {
        if (!name)
                return -EINVAL;
        for (size_t i = 0; i < _FP_MAX; i++)
                if (strcmp(name, failpoint_names[i]) == 0)
                        return (int) i;
        return -ENOENT;
}

int failpoint_errno_from_name(const char *name) {
        /* strerrorname_np() knows one name per value; these are the other spellings glibc defines. */
        static const struct {
                const char *name;
                int value;
        } aliases[] = {
                { "EWOULDBLOCK", EWOULDBLOCK },
                { "EDEADLOCK", EDEADLOCK },
                { "ENOTSUP", ENOTSUP },
        };

        if (!name || name[0] != 'E')
                return -EINVAL;
        for (int e = 1; e < 4096; e++) {
                const char *n = strerrorname_np(e);
                if (n && strcmp(n, name) == 0)
                        return e;
        }
        for (size_t i = 0; i < ELEMENTSOF(aliases); i++)
                if (strcmp(aliases[i].name, name) == 0)
                        return aliases[i].value;
        return -EINVAL;
}

void failpoint_actions_free(FailpointAction *a, size_t n) {
        if (!a)
                return;
        for (size_t i = 0; i < n; i++)
                free(a[i].message);
        free(a);
}

/* ---- grammar ------------------------------------------------------------------------------- */

typedef struct Parser {
        const char *spec;
        const char *p;
        char *reason;           /* first error, for a person */
        bool oom;
} Parser;

_printf_(2, 3)
static int parser_fail(Parser *ps, const char *format, ...) {
        va_list ap;

        if (ps->reason || ps->oom)
                return -EINVAL;
        va_start(ap, format);
        if (vasprintf(&ps->reason, format, ap) < 0) {
                ps->reason = NULL;
                ps->oom = true;
        }
        va_end(ap);
        return -EINVAL;
}

static bool is_blank(char c) { return c == ' ' || c == '\t'; }
static bool is_digit(char c) { return c >= '0' && c <= '9'; }
static bool is_word(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_'; }

static void skip_blanks(Parser *ps) {
        while (is_blank(*ps->p))
                ps->p++;
}

/* Length of the action starting at s: up to the next "->" outside parentheses, or the end. */
static size_t action_length(const char *s) {
        int depth = 0;
        const char *p = s;
        for (; *p; p++) {
                if (*p == '(')
                        depth++;
                else if (*p == ')' && depth > 0)
                        depth--;
                else if (depth == 0 && p[0] == '-' && p[1] == '>')
                        break;
        }
        while (p > s && is_blank(p[-1]))
                p--;
        return (size_t) (p - s);
}

/* A decimal number of at most max. */
static int parse_number(Parser *ps, const char *what, unsigned long long max, unsigned long long *ret) {
        const char *start = ps->p;
        unsigned long long v = 0;
        bool overflow = false;

        if (!is_digit(*ps->p))
                return parser_fail(ps, "expected a number for %s at '%.*s'", what,
                                   (int) action_length(ps->p), ps->p);
        for (; is_digit(*ps->p); ps->p++) {
                unsigned d = (unsigned) (*ps->p - '0');
                if (v > (max - d) / 10)
                        overflow = true;
                else
                        v = v * 10 + d;
        }
        if (overflow)
                return parser_fail(ps, "%s '%.*s' is too large (at most %llu)", what,
                                   (int) (ps->p - start), start, max);
        *ret = v;
        return 0;
}

/* The argument between the parentheses, ps->p just after '('. Nested parentheses must balance. */
static int parse_argument(Parser *ps, const char *task_start, char **ret) {
        const char *start = ps->p;
        int depth = 0;

        for (;; ps->p++) {
                if (*ps->p == '\0')
                        return parser_fail(ps, "unbalanced parentheses: missing ')' at '%s'", task_start);
                if (*ps->p == '(')
                        depth++;
                else if (*ps->p == ')') {
                        if (depth == 0)
                                break;
                        depth--;
                }
        }
        char *arg = strndup(start, (size_t) (ps->p - start));
        if (!arg)
                return -ENOMEM;
        ps->p++;        /* ')' */
        *ret = arg;
        return 0;
}

static char *strip_blanks(char *s) {
        while (is_blank(*s))
                s++;
        size_t n = strlen(s);
        while (n > 0 && is_blank(s[n - 1]))
                s[--n] = '\0';
        return s;
}

/* [P "%"][N "*"], both optional. */
static int parse_modifiers(Parser *ps, FailpointAction *a) {
        const char *num = ps->p;
        unsigned long long v;
        int r;

        if (!is_digit(*ps->p))
                return 0;
        r = parse_number(ps, "number", LONG_MAX, &v);
        if (r < 0)
                return r;
        skip_blanks(ps);

        if (*ps->p == '%') {
                if (v < 1 || v > 100)
                        return parser_fail(ps, "percentage must be 1..100, not %llu, at '%.*s'", v,
                                           (int) action_length(num), num);
                a->percent = (unsigned) v;
                ps->p++;
                skip_blanks(ps);
                if (!is_digit(*ps->p))
                        return 0;
                num = ps->p;
                r = parse_number(ps, "count", LONG_MAX, &v);
                if (r < 0)
                        return r;
                skip_blanks(ps);
                if (*ps->p != '*')
                        return parser_fail(ps, "expected '*' after the count at '%.*s'",
                                           (int) action_length(num), num);
        } else if (*ps->p != '*')
                return parser_fail(ps, "expected '%%' or '*' after the number at '%.*s'",
                                   (int) action_length(num), num);

        if (v < 1)
                return parser_fail(ps, "count must be 1 or more at '%.*s'", (int) action_length(num), num);
        a->count = (long) v;
        ps->p++;        /* '*' */
        skip_blanks(ps);
        if (is_digit(*ps->p) && ps->p[strspn(ps->p, "0123456789 \t")] == '%')
                return parser_fail(ps, "the percentage comes before the count, as in 50%%3*return, at '%.*s'",
                                   (int) action_length(num), num);
        return 0;
}

static int parse_action(Parser *ps, FailpointAction *a) {
        unsigned long long v;
        int r;

        *a = (FailpointAction) { .percent = 100, .count = -1 };

        skip_blanks(ps);
        if (ps->p[0] == '-' && ps->p[1] == '>')
                return parser_fail(ps, "missing action before '->'");

        r = parse_modifiers(ps, a);
        if (r < 0)
                return r;

        const char *task_start = ps->p;
        size_t task_len = 0;
        if (!is_digit(*task_start))
                while (is_word(ps->p[task_len]))
                        task_len++;
        if (task_len == 0)
                return parser_fail(ps, "expected a task (off, return, sleep, delay, pause, yield, print, panic, kill) at '%.*s'",
                                   (int) action_length(task_start), task_start);

        size_t t;
        for (t = 0; t < ELEMENTSOF(task_names); t++)
                if (strlen(task_names[t]) == task_len && strncmp(task_names[t], task_start, task_len) == 0)
                        break;
        if (t >= ELEMENTSOF(task_names))
                return parser_fail(ps, "unknown task '%.*s' at '%.*s'", (int) task_len, task_start,
                                   (int) action_length(task_start), task_start);
        a->task = (FailpointTask) t;
        ps->p += task_len;
        skip_blanks(ps);

        _cleanup_free_ char *arg_buf = NULL;
        char *arg = NULL;
        if (*ps->p == '(') {
                ps->p++;
                r = parse_argument(ps, task_start, &arg_buf);
                if (r < 0)
                        return r;
                arg = arg_buf;
        } else if (*ps->p == ')')
                return parser_fail(ps, "unbalanced parentheses: unexpected ')' at '%.*s'",
                                   (int) action_length(task_start), task_start);

        switch (a->task) {
        case FP_TASK_RETURN:
                a->error = EIO;
                if (arg) {
                        char *name = strip_blanks(arg);
                        if (!*name)
                                return parser_fail(ps, "return() needs an errno name such as EIO, or no parentheses at all");
                        int e = failpoint_errno_from_name(name);
                        if (e < 0)
                                return parser_fail(ps, "unknown errno name '%s' in '%.*s'", name,
                                                   (int) action_length(task_start), task_start);
                        a->error = e;
                }
                break;

        case FP_TASK_SLEEP:
        case FP_TASK_DELAY: {
                if (!arg || !*strip_blanks(arg))
                        return parser_fail(ps, "%s needs a time in milliseconds, as in %s(100)",
                                           task_names[t], task_names[t]);
                Parser sub = { .spec = arg, .p = strip_blanks(arg) };
                r = parse_number(&sub, "milliseconds", UINT_MAX, &v);
                if (r >= 0 && *sub.p != '\0')
                        r = parser_fail(&sub, "%s takes whole milliseconds, not '%s'", task_names[t],
                                        strip_blanks(arg));
                if (r < 0) {
                        if (sub.oom)
                                return -ENOMEM;
                        parser_fail(ps, "%s", sub.reason);
                        free(sub.reason);
                        return -EINVAL;
                }
                a->ms = (unsigned) v;
                break;
        }

        case FP_TASK_PRINT:
                if (!arg || arg[strspn(arg, " \t")] == '\0')
                        return parser_fail(ps, "print needs a message, as in print(text)");
                a->message = TAKE_PTR(arg_buf);
                break;

        default:
                if (arg)
                        return parser_fail(ps, "task '%s' takes no argument at '%.*s'", task_names[t],
                                           (int) action_length(task_start), task_start);
        }

        skip_blanks(ps);
        if (*ps->p == ')')
                return parser_fail(ps, "unbalanced parentheses: unexpected ')' at '%.*s'",
                                   (int) action_length(task_start), task_start);
        if (*ps->p != '\0' && !(ps->p[0] == '-' && ps->p[1] == '>'))
                return parser_fail(ps, "unexpected '%.*s' after task '%s'; actions are separated by '->'",
                                   (int) action_length(ps->p), ps->p, task_names[t]);
        return 0;
}

static int check_ascii(Parser *ps, const char *s) {
        for (const unsigned char *c = (const unsigned char *) s; *c; c++) {
                size_t position = (size_t) (c - (const unsigned char *) s) + 1;
                if (*c >= 0x80)
                        return parser_fail(ps, "non-ASCII character at position %zu", position);
                if ((*c < 0x20 && *c != '\t') || *c == 0x7f)
                        return parser_fail(ps, "control character at position %zu", position);
        }
        return 0;
}

int failpoint_parse(const char *spec, FailpointAction **ret, size_t *ret_n, char **ret_reason) {
        Parser ps = { .spec = spec, .p = spec };
        FailpointAction *actions = NULL;
        size_t n = 0;
        int r = 0;

        if (ret_reason)
                *ret_reason = NULL;
        if (!spec || !ret || !ret_n)
                return -EINVAL;

        /* Reasons quote the spec, and they travel over D-Bus, which wants valid UTF-8. */
        r = check_ascii(&ps, spec);
        if (r < 0)
                goto finish;

        skip_blanks(&ps);
        if (*ps.p == '\0') {
                r = parser_fail(&ps, "empty failpoint actions: give at least one task, such as 'off' or 'return(EIO)'");
                goto finish;
        }

        for (;;) {
                FailpointAction *grown = reallocarray(actions, n + 1, sizeof *actions);
                if (!grown) {
                        r = -ENOMEM;
                        goto finish;
                }
                actions = grown;
                r = parse_action(&ps, &actions[n]);
                if (r < 0) {
                        free(actions[n].message);
                        goto finish;
                }
                n++;
                skip_blanks(&ps);
                if (*ps.p == '\0')
                        break;
                ps.p += 2;      /* "->", checked by parse_action() */
                skip_blanks(&ps);
                if (*ps.p == '\0') {
                        r = parser_fail(&ps, "nothing after '->': an action is missing at the end of '%s'", spec);
                        goto finish;
                }
        }

finish:
        if (ps.oom)
                r = -ENOMEM;
        if (r < 0) {
                failpoint_actions_free(actions, n);
                if (r == -EINVAL && ret_reason)
                        *ret_reason = TAKE_PTR(ps.reason);
                free(ps.reason);
                return r;
        }
        *ret = actions;
        *ret_n = n;
        return 0;
}

/* ---- registry ------------------------------------------------------------------------------ */

static char *strdup_trimmed(const char *s) {
        while (is_blank(*s))
                s++;
        size_t n = strlen(s);
        while (n > 0 && is_blank(s[n - 1]))
                n--;
        return strndup(s, n);
}

/* Called with the lock held. Takes ownership of actions and spec. */
static void point_install(FailpointId id, FailpointAction *actions, size_t n, char *spec) {
        FailpointState *st = &failpoint_context.points[id];

        failpoint_actions_free(st->actions, st->n_actions);
        free(st->spec);
        st->actions = actions;
        st->n_actions = n;
        st->spec = spec;
        st->fired = 0;
        st->generation++;
        atomic_store_explicit(&st->armed, actions != NULL, memory_order_relaxed);
        pthread_cond_broadcast(&failpoint_context.changed);
}

_printf_(2, 3)
static void set_reason(char **ret_reason, const char *format, ...) {
        va_list ap;

        if (!ret_reason)
                return;
        va_start(ap, format);
        if (vasprintf(ret_reason, format, ap) < 0)
                *ret_reason = NULL;
        va_end(ap);
}

int failpoint_arm(const char *name, const char *actions, char **ret_reason) {
        FailpointAction *parsed = NULL;
        size_t n = 0;
        int id, r;

        if (ret_reason)
                *ret_reason = NULL;
        id = failpoint_id_from_name(name);
        if (id < 0) {
                set_reason(ret_reason, "unknown failpoint '%s'", strna(name));
                return id;
        }
        r = failpoint_parse(actions, &parsed, &n, ret_reason);
        if (r < 0)
                return r;
        char *spec = strdup_trimmed(actions);
        if (!spec) {
                failpoint_actions_free(parsed, n);
                return -ENOMEM;
        }

        pthread_mutex_lock(&failpoint_context.lock);
        point_install((FailpointId) id, parsed, n, spec);
        pthread_mutex_unlock(&failpoint_context.lock);
        return 0;
}

int failpoint_disarm(const char *name) {
        int id = failpoint_id_from_name(name);
        if (id < 0)
                return id;

        pthread_mutex_lock(&failpoint_context.lock);
        point_install((FailpointId) id, NULL, 0, NULL);
        pthread_mutex_unlock(&failpoint_context.lock);
        return 0;
}

void failpoint_disarm_all(void) {
        pthread_mutex_lock(&failpoint_context.lock);
        for (size_t i = 0; i < _FP_MAX; i++)
                point_install((FailpointId) i, NULL, 0, NULL);
        pthread_mutex_unlock(&failpoint_context.lock);
}

void failpoint_info_free(FailpointInfo *a, size_t n) {
        if (!a)
                return;
        for (size_t i = 0; i < n; i++)
                free(a[i].actions);
        free(a);
}

int failpoint_fired(const char *name, uint32_t *ret) {
        if (!name || !ret)
                return -EINVAL;
        int id = failpoint_id_from_name(name);
        if (id < 0)
                return id;
        pthread_mutex_lock(&failpoint_context.lock);
        *ret = failpoint_context.points[id].fired;
        pthread_mutex_unlock(&failpoint_context.lock);
        return 0;
}

int failpoint_list(FailpointInfo **ret, size_t *ret_n) {
        FailpointInfo *infos;
        int r = 0;

        if (!ret || !ret_n)
                return -EINVAL;
        infos = calloc(_FP_MAX, sizeof *infos);
        if (!infos)
                return -ENOMEM;

        pthread_mutex_lock(&failpoint_context.lock);
        for (size_t i = 0; i < _FP_MAX; i++) {
                const FailpointState *st = &failpoint_context.points[i];
                infos[i].name = failpoint_names[i];
                infos[i].actions = strdup(st->spec ?: "");
                infos[i].fired = st->fired;
                if (!infos[i].actions)
                        r = -ENOMEM;
        }
        pthread_mutex_unlock(&failpoint_context.lock);

        if (r < 0) {
                failpoint_info_free(infos, _FP_MAX);
                return r;
        }
        *ret = infos;
        *ret_n = _FP_MAX;
        return 0;
}

typedef struct PendingArm {
        int id;
        FailpointAction *actions;
        size_t n;
        char *spec;
} PendingArm;

static void pending_free(PendingArm *p, size_t n) {
        for (size_t i = 0; i < n; i++) {
                failpoint_actions_free(p[i].actions, p[i].n);
                free(p[i].spec);
        }
}

int failpoint_arm_from_string(const char *s, char **ret_reason) {
        PendingArm pending[_FP_MAX] = {};
        size_t n_pending = 0;
        _cleanup_free_ char *copy = NULL;
        int r = 0;

        if (ret_reason)
                *ret_reason = NULL;
        if (!s)
                return -EINVAL;
        Parser check = {};
        r = check_ascii(&check, s);
        if (r < 0) {
                if (ret_reason)
                        *ret_reason = TAKE_PTR(check.reason);
                free(check.reason);
                return check.oom ? -ENOMEM : r;
        }
        copy = strdup(s);
        if (!copy)
                return -ENOMEM;

        /* Entries are separated by ';' outside parentheses, so print(a;b) stays one message. */
        char *entry = copy;
        for (bool last = false; !last;) {
                char *end = entry;
                int depth = 0;
                for (; *end && !(*end == ';' && depth == 0); end++)
                        if (*end == '(')
                                depth++;
                        else if (*end == ')' && depth > 0)
                                depth--;
                last = *end == '\0';
                *end = '\0';

                char *e = strip_blanks(entry);
                entry = end + 1;
                if (!*e)
                        continue;

                char *eq = strchr(e, '=');
                if (!eq) {
                        set_reason(ret_reason, "expected NAME=ACTIONS, not '%s'", e);
                        r = -EINVAL;
                        goto fail;
                }
                *eq = '\0';
                char *name = strip_blanks(e), *actions = eq + 1;

                int id = failpoint_id_from_name(name);
                if (id < 0) {
                        set_reason(ret_reason, "unknown failpoint '%s'", name);
                        r = -EINVAL;
                        goto fail;
                }
                for (size_t i = 0; i < n_pending; i++)
                        if (pending[i].id == id) {
                                set_reason(ret_reason, "failpoint '%s' is given twice", name);
                                r = -EINVAL;
                                goto fail;
                        }

                _cleanup_free_ char *reason = NULL;
                PendingArm *p = &pending[n_pending];
                r = failpoint_parse(actions, &p->actions, &p->n, &reason);
                if (r < 0) {
                        if (r == -EINVAL)
                                set_reason(ret_reason, "failpoint '%s': %s", name, strna(reason));
                        goto fail;
                }
                p->id = id;
                p->spec = strdup_trimmed(actions);
                n_pending++;
                if (!p->spec) {
                        r = -ENOMEM;
                        goto fail;
                }
        }

        pthread_mutex_lock(&failpoint_context.lock);
        for (size_t i = 0; i < n_pending; i++) {
                point_install((FailpointId) pending[i].id, pending[i].actions, pending[i].n, pending[i].spec);
                pending[i] = (PendingArm) {};
        }
        pthread_mutex_unlock(&failpoint_context.lock);
        return 0;

fail:
        pending_free(pending, n_pending);
        return r;
}

/* ---- evaluation ---------------------------------------------------------------------------- */

/* Called with the lock held. */
static unsigned random_percent(void) {
        uint64_t x = failpoint_context.rng;

        if (x == 0) {
                struct timespec ts;
                if (getrandom(&x, sizeof x, GRND_NONBLOCK) != (ssize_t) sizeof x || x == 0) {
                        clock_gettime(CLOCK_MONOTONIC, &ts);
                        x = ((uint64_t) ts.tv_sec * 1000000007u) ^ (uint64_t) ts.tv_nsec ^ ((uint64_t) getpid() << 32);
                }
                if (x == 0)
                        x = 0x9e3779b97f4a7c15u;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        failpoint_context.rng = x;
        return (unsigned) (((x * 0x2545f4914f6cdd1du) >> 32) % 100);
}

static struct timespec deadline_after_ms(unsigned ms) {
        struct timespec t;
        clock_gettime(CLOCK_MONOTONIC, &t);
        t.tv_sec += ms / 1000;
        t.tv_nsec += (long) (ms % 1000) * 1000000L;
        if (t.tv_nsec >= 1000000000L) {
                t.tv_sec++;
                t.tv_nsec -= 1000000000L;
        }
        return t;
}

static bool timespec_reached(const struct timespec *now, const struct timespec *deadline) {
        return now->tv_sec > deadline->tv_sec ||
               (now->tv_sec == deadline->tv_sec && now->tv_nsec >= deadline->tv_nsec);
}

bool failpoint_armed(FailpointId id) {
        if ((int) id < 0 || id >= _FP_MAX)
                return false;
        return atomic_load_explicit(&failpoint_context.points[id].armed, memory_order_relaxed);
}

int failpoint_eval(FailpointId id) {
        if ((int) id < 0 || id >= _FP_MAX)
                return 0;

        FailpointState *st = &failpoint_context.points[id];
        if (_likely_(!atomic_load_explicit(&st->armed, memory_order_relaxed)))
                return 0;

        const FailpointAction *chosen = NULL;
        FailpointTask task;
        int error;
        unsigned ms;
        char *message = NULL;

        pthread_mutex_lock(&failpoint_context.lock);
        for (size_t i = 0; i < st->n_actions; i++) {
                FailpointAction *a = &st->actions[i];
                /* fail-rs order: an exhausted count skips; a missed percentage skips without using
                 * up the count. */
                if (a->count == 0)
                        continue;
                if (a->percent < 100 && random_percent() >= a->percent)
                        continue;
                if (a->count > 0)
                        a->count--;
                chosen = a;
                break;
        }
        if (!chosen) {
                pthread_mutex_unlock(&failpoint_context.lock);
                return 0;
        }

        task = chosen->task;
        error = chosen->error;
        ms = chosen->ms;
        if (task != FP_TASK_OFF && st->fired < UINT32_MAX)
                st->fired++;

        switch (task) {
        case FP_TASK_PAUSE: {
                uint64_t generation = st->generation;
                while (st->generation == generation)
                        pthread_cond_wait(&failpoint_context.changed, &failpoint_context.lock);
                pthread_mutex_unlock(&failpoint_context.lock);
                return 0;
        }
        case FP_TASK_PRINT:
                message = strdup(chosen->message);
                if (!message) {
                        /* Print under the lock rather than lose the line. */
                        fprintf(stderr, "musicfsd: failpoint %s: %s\n", failpoint_names[id], chosen->message);
                        pthread_mutex_unlock(&failpoint_context.lock);
                        return 0;
                }
                break;
        default:
                break;
        }
        pthread_mutex_unlock(&failpoint_context.lock);

        switch (task) {
        case FP_TASK_OFF:
        case FP_TASK_PAUSE:
                return 0;

        case FP_TASK_RETURN:
                return -error;

        case FP_TASK_SLEEP: {
                struct timespec deadline = deadline_after_ms(ms);
                while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) == EINTR)
                        ;
                return 0;
        }

        case FP_TASK_DELAY: {
                struct timespec deadline = deadline_after_ms(ms), now;
                do
                        clock_gettime(CLOCK_MONOTONIC, &now);
                while (!timespec_reached(&now, &deadline));
                return 0;
        }

        case FP_TASK_YIELD:
                sched_yield();
                return 0;

        case FP_TASK_PRINT:
                fprintf(stderr, "musicfsd: failpoint %s: %s\n", failpoint_names[id], message);
                free(message);
                return 0;

        case FP_TASK_PANIC:
                fprintf(stderr, "musicfsd: failpoint %s: panic\n", failpoint_names[id]);
                fflush(stderr);
                abort();

        case FP_TASK_KILL:
                fprintf(stderr, "musicfsd: failpoint %s: kill\n", failpoint_names[id]);
                fflush(stderr);
                raise(SIGKILL);
                return -EIO;    /* not reached */
        }
        return 0;
}
