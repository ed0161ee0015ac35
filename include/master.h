/* master: with [server] workers > 1, a small supervisor process: it holds the listening
 * sockets, forks the workers, restarts a worker that dies, reloads (SIGHUP) and stops
 * (SIGTERM/SIGINT) them, and reports to systemd. It runs no event loop and serves no client. */
#ifndef CONNECTD_MASTER_H
#define CONNECTD_MASTER_H

#include <stdbool.h>
#include <stddef.h>

#include "config.h"

struct master_opts {
    const char *config_path; /* read again on SIGHUP */
    struct config *cfg;      /* taken over */
    unsigned workers;
    int *fds; /* shared_fds: nfds sockets every worker accepts on; else workers x nfds,
                 worker w owning fds[w * nfds ...] (SO_REUSEPORT); taken over */
    size_t nfds;
    bool shared_fds; /* sockets from systemd: listen changes need a restart */
};

/* Returns the process exit status once every worker has exited after a stop signal. */
int master_run(const struct master_opts *o);

/* [server] workers as a number: "auto" is one per online CPU. */
unsigned master_workers(const struct config *cfg);

#endif
