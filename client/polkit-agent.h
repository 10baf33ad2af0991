/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once
/* A polkit authentication agent for the terminal, as timedatectl has (systemd's polkit_agent_open()):
 * when a change may need a password and a person at this terminal is the one to type it, pkttyagent
 * runs, registered for this process, while the call is made. Desktop sessions have their own agent;
 * pkttyagent --fallback then stays out of its way. */
#include <sys/types.h>

#define PKTTYAGENT_PATH "/usr/bin/pkttyagent"

/* Starts the agent when stdin is a terminal, we are not root (root needs no password) and pkttyagent
 * is installed; waits until it has registered or given up. *ret_pid is 0 when none was started.
 * A failure to start it is not an error: polkit then refuses what needed a password. */
void polkit_agent_open(pid_t *ret_pid);
void polkit_agent_close(pid_t pid);
