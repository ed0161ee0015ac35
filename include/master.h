/* master: with [server] workers > 1, a small supervisor process: it holds the listening
 * sockets, forks one worker per socket set, restarts a worker that dies, and forwards SIGTERM,
 * SIGINT, SIGHUP and SIGUSR1 to the workers. It runs no event loop and serves no client. */
#ifndef CONNECTD_MASTER_H
#define CONNECTD_MASTER_H

#include "config.h"

/* fds holds workers x nlisten bound sockets, worker w owning fds[w * nlisten ...]. Returns the
 * process exit status once every worker has exited after a stop signal. */
int master_run(const struct config *cfg, unsigned workers, int *fds);

#endif
