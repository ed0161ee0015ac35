/* auth_service: Proxy-Authorization checks for the loop, which never waits for a hash.
 *
 * Threads: the loop thread owns the service (cache, failure record, the jobs in flight and their
 * waiters). One worker thread runs crypt(3). They share only the job queue and the done list,
 * under mu: a job's input (user, pass) is written before it is queued and then belongs to the
 * worker; its output (ok, idx) is written by the worker before it puts the job on the done list,
 * and the loop thread reads it only after taking the job off that list. The worker wakes the
 * loop with ev_async_send(); done_cb() runs on the loop thread and answers the waiters.
 *
 * Identical values in flight share one job (one hash): a browser opening a hundred tunnels with
 * the same credentials before the first answer costs one verification, not a hundred. */
#include "auth_service.h"

#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "container.h"
#include "log.h"
#include "text.h"

#define AUTH_CACHE_MAX    4096  /* verified credentials remembered */
#define AUTH_CACHE_TTL    300.0 /* seconds a verification is trusted */
#define AUTH_JOBS_MAX     256   /* distinct verifications in flight before AUTH_BUSY */
#define AUTH_FAILURES_MAX 4096  /* client addresses with failures remembered */

struct auth_job;

struct auth_wait {
    struct auth_wait *prev, *next; /* the job's waiters */
    struct auth_job *job;
    auth_done_fn cb;
    void *arg;
};

struct auth_job {
    /* loop thread only */
    struct auth_job *iprev, *inext; /* jobs in flight (queued, running or done, not drained) */
    struct auth_wait *waiters;
    uint8_t key[AUTH_KEY_LEN];
    /* the queue or the done list, under mu */
    struct auth_job *qnext;
    /* input: the worker's from queueing until it puts the job on the done list */
    char user[AUTH_USER_MAX + 1];
    char pass[AUTH_PASS_MAX + 1]; /* wiped by the worker once used */
    /* output: written by the worker before the job is on the done list */
    bool ok;
    size_t idx;     /* into users->v when ok */
    double seconds; /* how long crypt(3) took */
};

struct auth_service {
    struct ev_loop *loop;
    const struct auth_users *users;
    ev_async done_w;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct auth_job *queue, *queue_tail; /* mu */
    struct auth_job *done, *done_tail;   /* mu */
    bool stop;                           /* mu */
    struct crypt_data *scratch;          /* the worker's; large, so on the heap */

    /* loop thread only */
    struct auth_job *inflight;
    size_t ninflight;
    bool loop_ref; /* holding a loop reference while jobs are in flight */
    struct auth_cache *cache;
    struct auth_failures *failures;
    unsigned long hashes;
};

/* ---- worker thread ------------------------------------------------------------------------- */

static void *worker_main(void *arg) {
    struct auth_service *s = arg;

    (void)pthread_mutex_lock(&s->mu);
    for (;;) {
        const struct auth_user *u;
        struct auth_job *job;
        bool ok;

        while (!s->queue && !s->stop)
            (void)pthread_cond_wait(&s->cv, &s->mu);
        if (s->stop)
            break;
        job = s->queue;
        s->queue = job->qnext;
        if (!s->queue)
            s->queue_tail = NULL;
        job->qnext = NULL;
        (void)pthread_mutex_unlock(&s->mu);

        /* Unknown names cost a full verification too (against a hash of the same kind), so
         * that timing does not tell which users exist. users is read-only while we live. */
        struct timespec t0, t1;
        (void)clock_gettime(CLOCK_MONOTONIC, &t0);
        u = auth_users_find(s->users, job->user);
        ok = auth_verify(job->pass, u ? u->hash : auth_dummy_hash(s->users), s->scratch);
        (void)clock_gettime(CLOCK_MONOTONIC, &t1);
        explicit_bzero(job->pass, sizeof job->pass);
        explicit_bzero(s->scratch, sizeof *s->scratch); /* crypt's work area saw the password */

        (void)pthread_mutex_lock(&s->mu);
        job->ok = u && ok;
        job->seconds = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        job->idx = u ? (size_t)(u - s->users->v) : 0;
        if (s->done_tail)
            s->done_tail->qnext = job;
        else
            s->done = job;
        s->done_tail = job;
        (void)pthread_mutex_unlock(&s->mu);
        ev_async_send(s->loop, &s->done_w);
        (void)pthread_mutex_lock(&s->mu);
    }
    (void)pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---- loop thread --------------------------------------------------------------------------- */

/* The async watcher does not keep the loop alive on its own (a daemon shutting down should not
 * wait for it), but jobs in flight do: their waiters are owed an answer. */
static void inflight_add(struct auth_service *s, struct auth_job *job) {
    job->iprev = NULL;
    job->inext = s->inflight;
    if (s->inflight)
        s->inflight->iprev = job;
    s->inflight = job;
    if (s->ninflight++ == 0 && !s->loop_ref) {
        ev_ref(s->loop);
        s->loop_ref = true;
    }
}

static void inflight_remove(struct auth_service *s, struct auth_job *job) {
    if (job->iprev)
        job->iprev->inext = job->inext;
    else
        s->inflight = job->inext;
    if (job->inext)
        job->inext->iprev = job->iprev;
    job->iprev = job->inext = NULL;
    if (--s->ninflight == 0 && s->loop_ref) {
        ev_unref(s->loop);
        s->loop_ref = false;
    }
}

static struct auth_job *inflight_find(const struct auth_service *s, const uint8_t *key) {
    for (struct auth_job *j = s->inflight; j; j = j->inext) {
        if (auth_ct_equal(j->key, key, AUTH_KEY_LEN))
            return j;
    }
    return NULL;
}

static void job_free(struct auth_job *job) {
    struct auth_wait *w;

    while ((w = job->waiters)) {
        job->waiters = w->next;
        free(w);
    }
    explicit_bzero(job, sizeof *job);
    free(job);
}

/* Results are in: fill the cache, answer every waiter. Callbacks may call auth_service_check()
 * and auth_service_cancel() (not auth_service_free()): each waiter is unlinked before its call,
 * and the job is out of the in-flight list, so nothing can attach to it meanwhile. */
static void done_cb(struct ev_loop *loop, ev_async *aw, int revents) {
    struct auth_service *s = container_of(aw, struct auth_service, done_w);
    struct auth_job *list, *job;

    (void)loop;
    (void)revents;
    (void)pthread_mutex_lock(&s->mu);
    list = s->done;
    s->done = s->done_tail = NULL;
    (void)pthread_mutex_unlock(&s->mu);

    while ((job = list)) {
        enum auth_result res = job->ok ? AUTH_OK : AUTH_BAD;
        const char *name = job->ok ? s->users->v[job->idx].name : job->user;
        struct auth_wait *w;

        list = job->qnext;
        inflight_remove(s, job);
        s->hashes++;
        char esc[3 * AUTH_USER_MAX + 1];
        log_escape(esc, sizeof esc, job->user, strlen(job->user));
        log_debug("auth: hashed credentials for user '%s': %s (%.0f ms)", esc,
                  job->ok ? "ok" : "wrong", job->seconds * 1000);
        if (job->ok)
            auth_cache_put(s->cache, job->key, job->idx, ev_now(s->loop));
        while ((w = job->waiters)) {
            auth_done_fn cb = w->cb;
            void *arg = w->arg;

            job->waiters = w->next;
            if (job->waiters)
                job->waiters->prev = NULL;
            free(w);
            cb(arg, res, name);
        }
        job_free(job);
    }
}

static int fill_random(uint8_t *buf, size_t len) {
    size_t got = 0;
    int fd;

    while (got < len) {
        ssize_t n = getrandom(buf + got, len - got, 0);

        if (n == -1) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += (size_t)n;
    }
    if (got == len)
        return 0;
    /* getrandom(2) missing (ENOSYS, old kernel or seccomp): the device will do. */
    fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd == -1)
        return -1;
    got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);

        if (n == -1 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    (void)close(fd);
    return got == len ? 0 : -1;
}

struct auth_service *auth_service_new(struct ev_loop *loop, const struct auth_users *users,
                                      char *err, size_t errlen) {
    struct auth_service *s;
    uint8_t secret[32];
    sigset_t all, old;
    int rc;

    s = calloc(1, sizeof *s);
    if (!s) {
        text_seterr(err, errlen, "auth: out of memory");
        return NULL;
    }
    s->loop = loop;
    s->users = users;
    if (fill_random(secret, sizeof secret) != 0) {
        text_seterr(err, errlen, "auth: no random bytes (getrandom, /dev/urandom): %s",
                    strerror(errno));
        free(s);
        return NULL;
    }
    s->cache = auth_cache_new(AUTH_CACHE_MAX, AUTH_CACHE_TTL, secret);
    explicit_bzero(secret, sizeof secret);
    s->failures = auth_failures_new(AUTH_FAILURES_MAX);
    s->scratch = calloc(1, sizeof *s->scratch);
    if (!s->cache || !s->failures || !s->scratch) {
        text_seterr(err, errlen, "auth: out of memory");
        goto fail;
    }
    rc = pthread_mutex_init(&s->mu, NULL);
    if (rc != 0) {
        text_seterr(err, errlen, "auth: pthread_mutex_init: %s", strerror(rc));
        goto fail;
    }
    rc = pthread_cond_init(&s->cv, NULL);
    if (rc != 0) {
        text_seterr(err, errlen, "auth: pthread_cond_init: %s", strerror(rc));
        (void)pthread_mutex_destroy(&s->mu);
        goto fail;
    }
    ev_async_init(&s->done_w, done_cb);
    ev_async_start(loop, &s->done_w);
    ev_unref(loop);

    /* Signals are for the loop thread (its ev_signal watchers): the worker blocks them all. */
    (void)sigfillset(&all);
    (void)pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&s->thread, NULL, worker_main, s);
    (void)pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        text_seterr(err, errlen, "auth: pthread_create: %s", strerror(rc));
        ev_ref(loop);
        ev_async_stop(loop, &s->done_w);
        (void)pthread_cond_destroy(&s->cv);
        (void)pthread_mutex_destroy(&s->mu);
        goto fail;
    }
    return s;
fail:
    auth_cache_free(s->cache);
    auth_failures_free(s->failures);
    free(s->scratch);
    free(s);
    return NULL;
}

void auth_service_free(struct auth_service *s) {
    struct auth_job *job;

    if (!s)
        return;
    if (!s->loop_ref)
        ev_ref(s->loop); /* undo the ev_unref() of auth_service_new() before stopping */
    ev_async_stop(s->loop, &s->done_w);
    s->loop_ref = false;

    (void)pthread_mutex_lock(&s->mu);
    s->stop = true;
    (void)pthread_cond_signal(&s->cv);
    (void)pthread_mutex_unlock(&s->mu);
    (void)pthread_join(s->thread, NULL);

    /* Every job, wherever it was (queue, done list), is in the in-flight list. */
    while ((job = s->inflight)) {
        s->inflight = job->inext;
        job_free(job);
    }
    (void)pthread_cond_destroy(&s->cv);
    (void)pthread_mutex_destroy(&s->mu);
    auth_cache_free(s->cache);
    auth_failures_free(s->failures);
    explicit_bzero(s->scratch, sizeof *s->scratch);
    free(s->scratch);
    free(s);
}

enum auth_result auth_service_check(struct auth_service *s, const char *value, size_t len,
                                    const char **user, auth_done_fn cb, void *arg,
                                    struct auth_wait **wait) {
    char name[AUTH_USER_MAX + 1], pass[AUTH_PASS_MAX + 1];
    uint8_t key[AUTH_KEY_LEN];
    struct auth_job *job, *fresh = NULL;
    struct auth_wait *w;
    enum auth_result res;
    long idx;

    *user = NULL;
    if (wait)
        *wait = NULL;
    if (len == 0 || auth_parse_basic(value, len, name, pass) != 0) {
        res = AUTH_MISSING;
        goto out;
    }
    if (auth_cache_key(s->cache, value, len, key) != 0) {
        res = AUTH_BUSY; /* libcrypto out of memory: no key, so no cache and no sharing */
        goto out;
    }
    idx = auth_cache_get(s->cache, key, ev_now(s->loop));
    if (idx >= 0 && (size_t)idx < s->users->n) {
        *user = s->users->v[idx].name;
        res = AUTH_OK;
        goto out;
    }
    job = inflight_find(s, key);
    if (!job) {
        if (s->ninflight >= AUTH_JOBS_MAX) {
            res = AUTH_BUSY;
            goto out;
        }
        job = fresh = calloc(1, sizeof *job);
        if (!fresh) {
            res = AUTH_BUSY;
            goto out;
        }
    }
    w = calloc(1, sizeof *w);
    if (!w) {
        free(fresh);
        res = AUTH_BUSY;
        goto out;
    }
    w->job = job;
    w->cb = cb;
    w->arg = arg;
    w->next = job->waiters;
    if (job->waiters)
        job->waiters->prev = w;
    job->waiters = w;
    if (fresh) {
        memcpy(fresh->key, key, sizeof key);
        memcpy(fresh->user, name, sizeof name);
        memcpy(fresh->pass, pass, sizeof pass);
        inflight_add(s, fresh);
        (void)pthread_mutex_lock(&s->mu);
        if (s->queue_tail)
            s->queue_tail->qnext = fresh;
        else
            s->queue = fresh;
        s->queue_tail = fresh;
        (void)pthread_cond_signal(&s->cv);
        (void)pthread_mutex_unlock(&s->mu);
    }
    if (wait)
        *wait = w;
    res = AUTH_PENDING;
out:
    explicit_bzero(pass, sizeof pass);
    return res;
}

void auth_service_cancel(struct auth_service *s, struct auth_wait *w) {
    struct auth_job *job;

    (void)s;
    if (!w)
        return;
    job = w->job;
    if (w->prev)
        w->prev->next = w->next;
    else
        job->waiters = w->next;
    if (w->next)
        w->next->prev = w->prev;
    free(w);
}

void auth_service_failed(struct auth_service *s, const struct sockaddr *client) {
    auth_failures_add(s->failures, client, ev_now(s->loop));
}

void auth_service_succeeded(struct auth_service *s, const struct sockaddr *client) {
    auth_failures_clear(s->failures, client);
}

double auth_service_penalty(struct auth_service *s, const struct sockaddr *client) {
    return auth_failures_delay(s->failures, client, ev_now(s->loop));
}

unsigned long auth_service_hashes(const struct auth_service *s) {
    return s->hashes;
}
