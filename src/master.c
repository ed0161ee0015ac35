/* master: supervise worker processes that each run their own single-threaded loop. */
#include "master.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "server.h"

#define RESTART_DELAY 1.0 /* seconds before restarting a worker that died young */
#define YOUNG         2.0 /* a worker that dies within this many seconds of its start is young */

struct worker {
    pid_t pid; /* 0 when not running */
    double started;
    double restart_at; /* when a dead worker is due to be started again */
};

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void close_others(const struct config *cfg, unsigned workers, const int *fds, unsigned me) {
    for (unsigned w = 0; w < workers; w++) {
        if (w == me)
            continue;
        for (size_t i = 0; i < cfg->nlisten; i++)
            close(fds[(size_t)w * cfg->nlisten + i]);
    }
}

static pid_t spawn(const struct config *cfg, unsigned workers, int *fds, unsigned w, unsigned share,
                   const sigset_t *oldmask) {
    pid_t pid = fork();
    if (pid == -1) {
        log_error("fork worker %u: %s", w, strerror(errno));
        return -1;
    }
    if (pid > 0)
        return pid;
    /* Child: die with the master, keep only this worker's sockets, take signals again. */
    (void)prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1)
        _exit(0); /* the master is already gone */
    close_others(cfg, workers, fds, w);
    sigprocmask(SIG_SETMASK, oldmask, NULL);
    int rc = server_run(cfg, fds + (size_t)w * cfg->nlisten, share);
    log_close();
    _exit(rc);
}

static void forward(const struct worker *ws, unsigned n, int sig) {
    for (unsigned w = 0; w < n; w++) {
        if (ws[w].pid > 0)
            kill(ws[w].pid, sig);
    }
}

static unsigned running(const struct worker *ws, unsigned n) {
    unsigned k = 0;
    for (unsigned w = 0; w < n; w++)
        k += ws[w].pid > 0;
    return k;
}

int master_run(const struct config *cfg, unsigned workers, int *fds) {
    struct worker *ws = calloc(workers, sizeof *ws);
    if (!ws) {
        log_error("out of memory");
        return 1;
    }
    /* Each worker serves its share of max_connections. */
    unsigned share = (cfg->max_connections + workers - 1) / workers;
    sigset_t set, oldmask;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, &oldmask);

    double t0 = now_mono();
    for (unsigned w = 0; w < workers; w++) {
        ws[w].pid = spawn(cfg, workers, fds, w, share, &oldmask);
        ws[w].started = t0;
        if (ws[w].pid == -1) {
            ws[w].pid = 0;
            ws[w].restart_at = t0 + RESTART_DELAY;
        }
    }
    log_info("master: %u workers, %u connections each", workers, share);

    bool stopping = false;
    double stop_deadline = 0;
    int status = 0;
    for (;;) {
        double now = now_mono();
        if (stopping && running(ws, workers) == 0)
            break;
        /* Wake for the next due restart, or the stop deadline, or at least once a second. */
        double wait = 1.0;
        for (unsigned w = 0; w < workers && !stopping; w++) {
            if (ws[w].pid == 0 && ws[w].restart_at - now < wait)
                wait = ws[w].restart_at - now;
        }
        if (wait < 0.01)
            wait = 0.01;
        struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &ts);
        now = now_mono();
        if (sig == SIGTERM || sig == SIGINT) {
            if (!stopping)
                log_info("master: received %s, stopping workers", strsignal(sig));
            stopping = true;
            stop_deadline = now + cfg->timeout_shutdown + 5.0;
            forward(ws, workers, sig);
        } else if (sig == SIGHUP || sig == SIGUSR1) {
            forward(ws, workers, sig);
        }
        /* Reap every child that has ended (SIGCHLD may stand for several). */
        pid_t pid;
        int wstatus;
        while ((pid = waitpid(-1, &wstatus, WNOHANG)) > 0) {
            for (unsigned w = 0; w < workers; w++) {
                if (ws[w].pid != pid)
                    continue;
                ws[w].pid = 0;
                bool clean = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
                if (stopping) {
                    if (!clean)
                        status = 1;
                    break;
                }
                if (WIFSIGNALED(wstatus))
                    log_error("master: worker %u (pid %ld) killed by %s; restarting", w, (long)pid,
                              strsignal(WTERMSIG(wstatus)));
                else
                    log_error("master: worker %u (pid %ld) exited with status %d; restarting", w,
                              (long)pid, WEXITSTATUS(wstatus));
                /* A worker that dies young is restarted after a pause, not in a tight loop. */
                ws[w].restart_at = now - ws[w].started < YOUNG ? now + RESTART_DELAY : now;
            }
        }
        if (stopping && now >= stop_deadline && running(ws, workers) > 0) {
            log_error("master: workers still running %.0fs after the stop; killing them",
                      cfg->timeout_shutdown + 5.0);
            forward(ws, workers, SIGKILL);
            status = 1;
            stop_deadline = now + 3600; /* reap them on the next rounds */
        }
        for (unsigned w = 0; w < workers && !stopping; w++) {
            if (ws[w].pid == 0 && ws[w].restart_at <= now) {
                pid_t p = spawn(cfg, workers, fds, w, share, &oldmask);
                ws[w].started = now;
                if (p > 0)
                    ws[w].pid = p;
                else
                    ws[w].restart_at = now + RESTART_DELAY;
            }
        }
    }
    for (size_t i = 0; i < (size_t)workers * cfg->nlisten; i++)
        close(fds[i]);
    free(ws);
    log_info("master: stopped");
    return status;
}
