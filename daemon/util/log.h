/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* Logging to stderr, journald-friendly: "<N>" priority prefixes when stderr is the journal, a plain
 * "level: " prefix otherwise. The only state is the maximum level. log_*_errno() return -|err| so
 * that "return log_error_errno(r, ...)" reads naturally; "%m" in the format expands to strerror(err). */
#include <stdbool.h>
#include <syslog.h>

#include "macro.h"

void log_set_max_level(int level);
int log_get_max_level(void);
int log_level_from_string(const char *s);     /* "debug" -> LOG_DEBUG, -EINVAL when unknown */
/* stderr is the journal (JOURNAL_STREAM names it): lines carry "<N>" priority prefixes. */
bool log_stderr_is_journal(void);

int log_internal(int level, int error, const char *func, const char *format, ...) _printf_(4, 5);

#define log_full_errno(level, error, ...) log_internal((level), (error), __func__, __VA_ARGS__)
#define log_debug(...)   log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...)    log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...)  log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...)   log_full_errno(LOG_ERR, 0, __VA_ARGS__)
#define log_debug_errno(e, ...)   log_full_errno(LOG_DEBUG, (e), __VA_ARGS__)
#define log_info_errno(e, ...)    log_full_errno(LOG_INFO, (e), __VA_ARGS__)
#define log_warning_errno(e, ...) log_full_errno(LOG_WARNING, (e), __VA_ARGS__)
#define log_error_errno(e, ...)   log_full_errno(LOG_ERR, (e), __VA_ARGS__)
