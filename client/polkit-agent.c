/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "polkit-agent.h"

/* How long to wait for the agent to register: it talks to polkitd over the system bus. */
#define AGENT_REGISTER_TIMEOUT_MS 5000

void polkit_agent_open(pid_t *ret_pid) {
        char notify_fd[16], process[32];
        int fds[2];
        pid_t pid;

        *ret_pid = 0;
        if (geteuid() == 0 || !isatty(STDIN_FILENO) || access(PKTTYAGENT_PATH, X_OK) < 0)
                return;
        if (pipe2(fds, O_CLOEXEC) < 0)
                return;
        snprintf(notify_fd, sizeof notify_fd, "%d", fds[1]);
        snprintf(process, sizeof process, "%d", (int) getpid());

        pid = fork();
        if (pid < 0) {
                close(fds[0]);
                close(fds[1]);
                return;
        }
        if (pid == 0) {
                /* The agent closes the write end once it is registered: that end must survive exec. */
                if (fcntl(fds[1], F_SETFD, 0) < 0)
                        _exit(EXIT_FAILURE);
                /* Not our signal mask: the agent must die of the SIGTERM we send it. */
                sigset_t none;
                sigemptyset(&none);
                (void) sigprocmask(SIG_SETMASK, &none, NULL);
                execl(PKTTYAGENT_PATH, PKTTYAGENT_PATH, "--notify-fd", notify_fd, "--fallback", "--process", process,
                      (char *) NULL);
                _exit(EXIT_FAILURE);
        }

        close(fds[1]);
        /* End of file: registered, or the agent exited (no polkitd, no terminal) and the call goes on
         * without one. */
        struct pollfd p = { .fd = fds[0], .events = POLLIN };
        while (poll(&p, 1, AGENT_REGISTER_TIMEOUT_MS) < 0 && errno == EINTR)
                ;
        close(fds[0]);
        *ret_pid = pid;
}

void polkit_agent_close(pid_t pid) {
        if (pid <= 0)
                return;
        (void) kill(pid, SIGTERM);
        while (waitpid(pid, NULL, 0) < 0 && errno == EINTR)
                ;
}
