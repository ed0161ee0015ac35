/* master: supervise worker processes that each run their own single-threaded loop.
 *
 * Reload (SIGHUP): the master reads the configuration first. Invalid: it says so and nothing
 * changes. Same listen addresses and worker count: the workers reload in place (each reads the
 * file itself; tunnels keep running). Otherwise a new set of workers starts on the new sockets
 * (sockets for addresses that stay are handed over, so no queued client is lost) and the old
 * workers retire: they stop accepting and exit when their last tunnel ends. */
#include "master.h"

#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "listener.h"
#include "log.h"
#include "server.h"
#include "stats.h"
#include "tls.h"

#define RESTART_DELAY 1.0 /* seconds before restarting a worker that died young */
#define YOUNG         2.0 /* a worker that dies within this many seconds of its start is young */
#define MAX_PROCS     256 /* workers and retiring workers at once (stats slots) */
#define STATUS_EVERY  2.0

struct worker {
    pid_t pid; /* 0 when not running */
    double started;
    double restart_at; /* when a dead worker is due to be started again */
    int counter;       /* its slot in the shared stats, -1 when none */
};

struct master {
    const char *config_path;
    struct config cfg;
    unsigned n;        /* workers */
    struct worker *ws; /* n */
    int *fds;          /* the sockets, as in master_opts */
    size_t nfds;
    bool shared_fds;
    struct worker *retiring; /* old workers finishing their tunnels */
    size_t nretiring;
    struct stats_shm *stats; /* MAX_PROCS slots, shared with the workers */
    bool counter_used[MAX_PROCS];
    sigset_t oldmask;
};

static double now_mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

unsigned master_workers(const struct config *cfg) {
    if (cfg->workers > 0)
        return cfg->workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n <= 64 ? (unsigned)n : 1;
}

static unsigned share_of(const struct config *cfg, unsigned n) {
    return (cfg->max_connections + n - 1) / n;
}

static const int *fds_of(const struct master *m, unsigned w) {
    return m->shared_fds ? m->fds : m->fds + (size_t)w * m->nfds;
}

static size_t total_fds(const struct master *m) {
    return m->shared_fds ? m->nfds : (size_t)m->n * m->nfds;
}

static pid_t spawn(struct master *m, unsigned w) {
    int counter = -1;
    for (int i = 0; i < MAX_PROCS && m->stats; i++) {
        if (!m->counter_used[i]) {
            counter = i;
            /* Zeroed and marked before the fork: the worker may count at once. */
            stats_slot_start(m->stats, (uint32_t)i, (int)w, 0);
            break;
        }
    }
    pid_t pid = fork();
    if (pid == -1) {
        log_error("fork worker %u: %s", w, strerror(errno));
        if (counter >= 0)
            stats_slot_fold(m->stats, (uint32_t)counter, 0);
        return -1;
    }
    if (pid > 0) {
        m->ws[w].counter = counter;
        if (counter >= 0) {
            m->counter_used[counter] = true;
            __atomic_store_n(&m->stats->slots[counter].pid, (int32_t)pid, __ATOMIC_RELAXED);
        }
        return pid;
    }
    stats_attach(m->stats, counter >= 0 ? (uint32_t)counter : UINT32_MAX);
    /* Child: die with the master, keep only this worker's sockets, take signals again. */
    (void)prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() == 1)
        _exit(0); /* the master is already gone */
    if (!m->shared_fds) {
        for (size_t i = 0; i < total_fds(m); i++)
            if (i / m->nfds != w)
                close(m->fds[i]);
    }
    sigprocmask(SIG_SETMASK, &m->oldmask, NULL);
    struct server_opts o = {
        .config_path = m->config_path,
        .cfg = &m->cfg,
        .fds = fds_of(m, w),
        .nfds = m->nfds,
        .max_connections = share_of(&m->cfg, m->n),
        .workers = m->n,
        .own_listeners = false,
        .notify = false,
        .has_master = true,
        .worker = w,
    };
    int rc = server_run(&o);
    log_close();
    _exit(rc);
}

/* A worker has exited: its counts join the retired totals, its slot is free again. */
static void release_counter(struct master *m, int counter, const struct rusage *ru) {
    if (counter >= 0 && counter < MAX_PROCS && m->counter_used[counter]) {
        uint64_t cpu = 0;
        if (ru)
            cpu = (uint64_t)ru->ru_utime.tv_sec * 1000000u + (uint64_t)ru->ru_utime.tv_usec +
                  (uint64_t)ru->ru_stime.tv_sec * 1000000u + (uint64_t)ru->ru_stime.tv_usec;
        stats_slot_fold(m->stats, (uint32_t)counter, cpu);
        m->counter_used[counter] = false;
    }
}

static void forward(const struct master *m, int sig) {
    for (unsigned w = 0; w < m->n; w++)
        if (m->ws[w].pid > 0)
            kill(m->ws[w].pid, sig);
    for (size_t i = 0; i < m->nretiring; i++)
        kill(m->retiring[i].pid, sig);
}

static unsigned running(const struct master *m) {
    unsigned k = (unsigned)m->nretiring;
    for (unsigned w = 0; w < m->n; w++)
        k += m->ws[w].pid > 0;
    return k;
}

static bool same_listen(const struct config *a, const struct config *b) {
    if (a->nlisten != b->nlisten)
        return false;
    for (size_t i = 0; i < a->nlisten; i++) {
        bool found = false;
        for (size_t j = 0; j < b->nlisten && !found; j++)
            found = a->listen[i].len == b->listen[j].len &&
                    a->listen[i].admin == b->listen[j].admin &&
                    a->listen[i].proxy_protocol == b->listen[j].proxy_protocol &&
                    a->listen[i].tls == b->listen[j].tls &&
                    memcmp(&a->listen[i].ss, &b->listen[j].ss, a->listen[i].len) == 0;
        if (!found)
            return false;
    }
    return true;
}

/* The socket slot w already has for address la, or -1. */
static int reusable_fd(const struct master *m, unsigned w, const struct listen_addr *la) {
    if (w >= m->n)
        return -1;
    for (size_t i = 0; i < m->nfds; i++) {
        const struct listen_addr *old = &m->cfg.listen[i];
        if (old->len == la->len && memcmp(&old->ss, &la->ss, la->len) == 0)
            return m->fds[(size_t)w * m->nfds + i];
    }
    return -1;
}

/* New workers on new sockets, old ones retire. Returns 0, or -1 with nothing changed. */
static int replace_workers(struct master *m, struct config *nc, unsigned n) {
    char err[256];
    size_t nfds = nc->nlisten, total = (size_t)n * nfds;
    int *fds = calloc(total, sizeof *fds);
    bool *fresh = calloc(total, sizeof *fresh);
    struct worker *ws = calloc(n, sizeof *ws);
    struct worker *ret = realloc(m->retiring, (m->nretiring + m->n) * sizeof *ret);
    if (ret)
        m->retiring = ret;
    if (!fds || !fresh || !ws || !ret) {
        log_error("reload: out of memory");
        goto fail;
    }
    for (unsigned w = 0; w < n; w++) {
        for (size_t i = 0; i < nfds; i++) {
            size_t k = (size_t)w * nfds + i;
            fds[k] = reusable_fd(m, w, &nc->listen[i]);
            if (fds[k] != -1)
                continue;
            struct config one = *nc; /* bind just this address */
            one.listen = &nc->listen[i];
            one.nlisten = 1;
            if (listeners_bind(&one, true, &fds[k], err, sizeof err) != 0) {
                log_error("reload: %s; still serving the previous configuration", err);
                for (size_t j = 0; j < k; j++)
                    if (fresh[j])
                        close(fds[j]);
                goto fail;
            }
            fresh[k] = true;
        }
    }
    /* Old workers retire; the master's copies of sockets that did not carry over go. */
    for (unsigned w = 0; w < m->n; w++) {
        if (m->ws[w].pid > 0) {
            kill(m->ws[w].pid, SIGQUIT);
            if (m->ws[w].counter >= 0)
                stats_slot_retire(m->stats, (uint32_t)m->ws[w].counter);
            m->retiring[m->nretiring++] = m->ws[w];
        } else {
            release_counter(m, m->ws[w].counter, NULL);
        }
    }
    for (size_t i = 0; i < total_fds(m); i++) {
        bool kept = false;
        for (size_t j = 0; j < (size_t)n * nfds && !kept; j++)
            kept = fds[j] == m->fds[i];
        if (!kept)
            close(m->fds[i]);
    }
    free(m->fds);
    free(m->ws);
    free(fresh);
    config_free(&m->cfg);
    m->cfg = *nc;
    memset(nc, 0, sizeof *nc);
    m->fds = fds;
    m->nfds = nfds;
    m->ws = ws;
    m->n = n;
    double now = now_mono();
    for (unsigned w = 0; w < n; w++) {
        ws[w].counter = -1;
        ws[w].started = now;
        ws[w].pid = spawn(m, w);
        if (ws[w].pid == -1) {
            ws[w].pid = 0;
            ws[w].restart_at = now + RESTART_DELAY;
        }
    }
    log_info("master: reloaded %s: %u new workers, %zu retiring", m->config_path, n, m->nretiring);
    return 0;
fail:
    free(fds);
    free(fresh);
    free(ws);
    return -1;
}

static void reload(struct master *m) {
    char err[CONFIG_ERR_MAX] = "";
    struct config nc;
    sd_notify(0, "RELOADING=1");
    bool ok = false;
    if (config_load_file(m->config_path, &nc, err, sizeof err) != 0) {
        log_error("reload: %s; still serving the previous configuration", err);
        goto done;
    }
    if (tls_keep_key(&nc, &m->cfg) != 0 || tls_check(&nc.tls, err, sizeof err) != 0) {
        if (err[0])
            log_error("reload: %s; still serving the previous configuration", err);
        config_free(&nc);
        goto done;
    }
    unsigned n = master_workers(&nc);
    if (m->shared_fds || (n == m->n && same_listen(&m->cfg, &nc))) {
        if (m->shared_fds && !same_listen(&m->cfg, &nc))
            log_warn("reload: [server] listen changed, but the sockets come from systemd; "
                     "keeping them");
        if (n != m->n)
            log_warn("reload: [server] workers changed; takes effect at the next restart");
        config_free(&m->cfg);
        m->cfg = nc;
        forward(m, SIGHUP); /* each worker reloads in place */
        log_info("master: reloaded %s", m->config_path);
        ok = true;
        goto done;
    }
    ok = replace_workers(m, &nc, n) == 0;
    if (!ok)
        config_free(&nc);
done:;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    stats_reload_result(m->stats, ok, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
    sd_notify(0, "READY=1");
}

static void reap(struct master *m, bool stopping, int *status) {
    pid_t pid;
    int wstatus;
    struct rusage ru;
    double now = now_mono();
    while ((pid = wait4(-1, &wstatus, WNOHANG, &ru)) > 0) {
        bool clean = WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
        for (size_t i = 0; i < m->nretiring; i++) {
            if (m->retiring[i].pid != pid)
                continue;
            release_counter(m, m->retiring[i].counter, &ru);
            m->retiring[i] = m->retiring[--m->nretiring];
            log_info("master: retired worker (pid %ld) has finished", (long)pid);
            if (stopping && !clean)
                *status = 1;
            pid = 0;
            break;
        }
        for (unsigned w = 0; w < m->n && pid > 0; w++) {
            if (m->ws[w].pid != pid)
                continue;
            m->ws[w].pid = 0;
            release_counter(m, m->ws[w].counter, &ru);
            m->ws[w].counter = -1;
            if (stopping) {
                if (!clean)
                    *status = 1;
                break;
            }
            if (m->stats)
                stats_add(&m->stats->worker_restarts, 1);
            if (WIFSIGNALED(wstatus))
                log_error("master: worker %u (pid %ld) killed by %s; restarting", w, (long)pid,
                          strsignal(WTERMSIG(wstatus)));
            else
                log_error("master: worker %u (pid %ld) exited with status %d; restarting", w,
                          (long)pid, WEXITSTATUS(wstatus));
            /* A worker that dies young is restarted after a pause, not in a tight loop. */
            m->ws[w].restart_at = now - m->ws[w].started < YOUNG ? now + RESTART_DELAY : now;
        }
    }
}

static void report_status(const struct master *m) {
    unsigned long open = 0;
    for (int i = 0; i < MAX_PROCS && m->stats; i++)
        if (m->counter_used[i])
            open += (unsigned long)__atomic_load_n(&m->stats->slots[i].g.connections_open,
                                                   __ATOMIC_RELAXED);
    sd_notifyf(0, "STATUS=%lu tunnels open, %u workers%s", open,
               running(m) - (unsigned)m->nretiring, m->nretiring ? " (+ retiring)" : "");
}

int master_run(const struct master_opts *o) {
    struct master m;
    memset(&m, 0, sizeof m);
    m.config_path = o->config_path;
    m.cfg = *o->cfg;
    memset(o->cfg, 0, sizeof *o->cfg);
    m.n = o->workers;
    m.fds = o->fds;
    m.nfds = o->nfds;
    m.shared_fds = o->shared_fds;
    m.ws = calloc(m.n, sizeof *m.ws);
    m.stats = stats_create(MAX_PROCS);
    if (!m.stats)
        log_warn("metrics: cannot map the counters (%s); they stay at zero", strerror(errno));
    if (!m.ws) {
        log_error("out of memory");
        return 1;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGQUIT);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGUSR1);
    sigprocmask(SIG_BLOCK, &set, &m.oldmask);
    /* oldmask still holds the stop and reload signals main blocked: a worker unblocks them
     * once its handlers are in place. */

    double t0 = now_mono();
    for (unsigned w = 0; w < m.n; w++) {
        m.ws[w].counter = -1;
        m.ws[w].pid = spawn(&m, w);
        m.ws[w].started = t0;
        if (m.ws[w].pid == -1) {
            m.ws[w].pid = 0;
            m.ws[w].restart_at = t0 + RESTART_DELAY;
        }
    }
    log_info("master: %u workers, %u connections each", m.n, share_of(&m.cfg, m.n));
    sd_notifyf(0, "READY=1\nSTATUS=0 tunnels open, %u workers", m.n);

    bool stopping = false;
    double stop_deadline = 0, next_status = t0 + STATUS_EVERY;
    int status = 0;
    for (;;) {
        double now = now_mono();
        if (stopping && running(&m) == 0)
            break;
        /* Wake for the next due restart, the stop deadline, or the status report. */
        double wait = next_status - now;
        for (unsigned w = 0; w < m.n && !stopping; w++) {
            if (m.ws[w].pid == 0 && m.ws[w].restart_at - now < wait)
                wait = m.ws[w].restart_at - now;
        }
        if (wait > 1.0)
            wait = 1.0;
        if (wait < 0.01)
            wait = 0.01;
        struct timespec ts = {(time_t)wait, (long)((wait - (double)(time_t)wait) * 1e9)};
        siginfo_t si;
        int sig = sigtimedwait(&set, &si, &ts);
        now = now_mono();
        if (sig == SIGTERM || sig == SIGINT) {
            if (!stopping) {
                log_info("master: received %s, stopping workers", strsignal(sig));
                sd_notify(0, "STOPPING=1");
                /* No worker will be started again: drop the master's copies of the sockets,
                 * so that once a worker closes its own, its SO_REUSEPORT socket really goes
                 * and new clients are refused, instead of waiting in a queue nobody reads. */
                for (size_t i = 0; i < total_fds(&m); i++) {
                    close(m.fds[i]);
                    m.fds[i] = -1;
                }
            }
            stopping = true;
            /* The workers serve on through [timeouts] grace, then drain for shutdown. */
            stop_deadline = now + m.cfg.timeout_grace + m.cfg.timeout_shutdown + 5.0;
            forward(&m, sig);
        } else if (sig == SIGHUP && !stopping) {
            reload(&m);
        } else if (sig == SIGUSR1) {
            forward(&m, sig);
        }
        reap(&m, stopping, &status);
        if (stopping && now >= stop_deadline && running(&m) > 0) {
            log_error("master: workers still running %.0fs after the stop; killing them",
                      m.cfg.timeout_grace + m.cfg.timeout_shutdown + 5.0);
            forward(&m, SIGKILL);
            status = 1;
            stop_deadline = now + 3600; /* reap them on the next rounds */
        }
        for (unsigned w = 0; w < m.n && !stopping; w++) {
            if (m.ws[w].pid == 0 && m.ws[w].restart_at <= now) {
                pid_t p = spawn(&m, w);
                m.ws[w].started = now;
                if (p > 0)
                    m.ws[w].pid = p;
                else
                    m.ws[w].restart_at = now + RESTART_DELAY;
            }
        }
        if (m.stats)
            stats_read_process(&m.stats->master);
        if (now >= next_status) {
            report_status(&m);
            next_status = now + STATUS_EVERY;
        }
    }
    for (size_t i = 0; i < total_fds(&m); i++)
        if (m.fds[i] != -1)
            close(m.fds[i]);
    free(m.fds);
    free(m.ws);
    free(m.retiring);
    config_free(&m.cfg);
    stats_destroy(m.stats);
    log_info("master: stopped");
    return status;
}
