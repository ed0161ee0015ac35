/* stats: shared counters (see stats.h for the design). */
#include "stats.h"

#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* A slot for a process that has no region (yet): counts go nowhere, but never crash. */
static struct stats_slot scratch;

struct stats_slot *stats_me = &scratch;
struct stats_shm *stats_shm;

_Static_assert(sizeof(struct stats_counters) % sizeof(uint64_t) == 0, "counters are uint64_t");

static size_t shm_size(uint32_t nslots) {
    return sizeof(struct stats_shm) + (size_t)nslots * sizeof(struct stats_slot);
}

struct stats_shm *stats_create(uint32_t nslots) {
    void *p =
        mmap(NULL, shm_size(nslots), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    struct stats_shm *s = p; /* mmap gives zeroed memory */
    s->nslots = nslots;
    s->generation = 1;
    s->last_reload_ok = 1;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    s->start_time = s->last_reload_time = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    return s;
}

void stats_destroy(struct stats_shm *s) {
    if (!s)
        return;
    if (stats_shm == s) {
        stats_shm = NULL;
        stats_me = &scratch;
    }
    munmap(s, shm_size(s->nslots));
}

void stats_attach(struct stats_shm *s, uint32_t i) {
    stats_shm = s;
    stats_me = s && i < s->nslots ? &s->slots[i] : &scratch;
}

void stats_slot_start(struct stats_shm *s, uint32_t i, int worker, pid_t pid) {
    struct stats_slot *sl = &s->slots[i];
    memset(sl, 0, sizeof *sl);
    sl->worker = worker;
    sl->pid = (int32_t)pid;
    __atomic_store_n(&sl->state, SLOT_LIVE, __ATOMIC_RELEASE);
}

void stats_slot_retire(struct stats_shm *s, uint32_t i) {
    __atomic_store_n(&s->slots[i].state, SLOT_RETIRING, __ATOMIC_RELEASE);
}

void stats_slot_fold(struct stats_shm *s, uint32_t i, uint64_t cpu_usec) {
    struct stats_slot *sl = &s->slots[i];
    uint64_t *dst = (uint64_t *)&s->retired;
    const uint64_t *src = (const uint64_t *)&sl->c;
    /* Readers that overlap this see an odd or changed seq and read again. */
    __atomic_add_fetch(&s->seq, 1, __ATOMIC_ACQ_REL);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    for (size_t k = 0; k < sizeof s->retired / sizeof *dst; k++)
        stats_add(&dst[k], __atomic_load_n(&src[k], __ATOMIC_RELAXED));
    stats_add(&s->retired_cpu_usec, cpu_usec);
    __atomic_store_n(&sl->state, SLOT_FREE, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    __atomic_add_fetch(&s->seq, 1, __ATOMIC_ACQ_REL);
}

void stats_reload_result(struct stats_shm *s, bool ok, double now) {
    if (!s)
        return;
    if (ok) {
        stats_add(&s->reloads_ok, 1);
        stats_add(&s->generation, 1);
    } else {
        stats_add(&s->reloads_failed, 1);
    }
    __atomic_store_n(&s->last_reload_ok, ok ? 1 : 0, __ATOMIC_RELAXED);
    __atomic_store(&s->last_reload_time, &now, __ATOMIC_RELAXED);
}

/* Open fds: /proc/self/fd's size is the count on Linux >= 6.2; count the entries before. */
static int64_t count_fds(void) {
    struct stat st;
    if (stat("/proc/self/fd", &st) == 0 && st.st_size > 0)
        return (int64_t)st.st_size;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return 0;
    int64_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own fd */
}

void stats_read_process(struct stats_gauges *g) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0) {
        uint64_t us = (uint64_t)ru.ru_utime.tv_sec * 1000000u + (uint64_t)ru.ru_utime.tv_usec +
                      (uint64_t)ru.ru_stime.tv_sec * 1000000u + (uint64_t)ru.ru_stime.tv_usec;
        __atomic_store_n(&g->cpu_usec, us, __ATOMIC_RELAXED);
    }
    int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
    if (fd != -1) {
        char buf[128];
        ssize_t n = read(fd, buf, sizeof buf - 1);
        close(fd);
        unsigned long long size, resident;
        if (n > 0) {
            buf[n] = '\0';
            if (sscanf(buf, "%llu %llu", &size, &resident) == 2) {
                long page = sysconf(_SC_PAGESIZE);
                stats_set(&g->vsize_bytes, (int64_t)(size * (unsigned long long)page));
                stats_set(&g->rss_bytes, (int64_t)(resident * (unsigned long long)page));
            }
        }
    }
    stats_set(&g->open_fds, count_fds());
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        stats_set(&g->max_fds, rl.rlim_cur == RLIM_INFINITY ? -1 : (int64_t)rl.rlim_cur);
}

static void add_gauges(struct stats_gauges *to, const struct stats_gauges *g) {
    to->connections_open += __atomic_load_n(&g->connections_open, __ATOMIC_RELAXED);
    to->tunnels_open += __atomic_load_n(&g->tunnels_open, __ATOMIC_RELAXED);
    to->pipes_pooled += __atomic_load_n(&g->pipes_pooled, __ATOMIC_RELAXED);
    to->buffers_pooled += __atomic_load_n(&g->buffers_pooled, __ATOMIC_RELAXED);
    to->open_fds += __atomic_load_n(&g->open_fds, __ATOMIC_RELAXED);
    to->rss_bytes += __atomic_load_n(&g->rss_bytes, __ATOMIC_RELAXED);
    to->vsize_bytes += __atomic_load_n(&g->vsize_bytes, __ATOMIC_RELAXED);
    to->cpu_usec += __atomic_load_n(&g->cpu_usec, __ATOMIC_RELAXED);
    int64_t m = __atomic_load_n(&g->max_fds, __ATOMIC_RELAXED);
    if (m > to->max_fds)
        to->max_fds = m;
}

void stats_sum(const struct stats_shm *s, struct stats_view *v) {
    /* A fold takes microseconds; a reader that keeps losing the race uses its last attempt. */
    for (int attempt = 0; attempt < 1000; attempt++) {
        uint32_t seq = __atomic_load_n(&s->seq, __ATOMIC_ACQUIRE);
        if (seq & 1) {
            sched_yield();
            continue;
        }
        memset(v, 0, sizeof *v);
        uint64_t *dst = (uint64_t *)&v->c;
        const size_t nwords = sizeof v->c / sizeof *dst;
        const uint64_t *ret = (const uint64_t *)&s->retired;
        for (size_t k = 0; k < nwords; k++)
            dst[k] = __atomic_load_n(&ret[k], __ATOMIC_RELAXED);
        v->g.cpu_usec = __atomic_load_n(&s->retired_cpu_usec, __ATOMIC_RELAXED);
        add_gauges(&v->g, &s->master);
        for (uint32_t i = 0; i < s->nslots; i++) {
            const struct stats_slot *sl = &s->slots[i];
            int32_t state = __atomic_load_n(&sl->state, __ATOMIC_ACQUIRE);
            if (state == SLOT_FREE)
                continue;
            v->nlive += state == SLOT_LIVE;
            v->nretiring += state == SLOT_RETIRING;
            const uint64_t *src = (const uint64_t *)&sl->c;
            for (size_t k = 0; k < nwords; k++)
                dst[k] += __atomic_load_n(&src[k], __ATOMIC_RELAXED);
            add_gauges(&v->g, &sl->g);
        }
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
        if (__atomic_load_n(&s->seq, __ATOMIC_RELAXED) == seq)
            return;
    }
}

/* ---- label tables ---- */

static const char *const reasons[STATS_REASONS] = {
    "done",
    "idle_timeout",
    "client_reset",
    "upstream_reset",
    "shutdown",
    "client_eof",
    "client_eof_in_request",
    "bad_request",
    "method_not_allowed",
    "too_large",
    "bad_version",
    "handshake_timeout",
    "denied_client",
    "denied_port",
    "denied_host",
    "denied_private",
    "denied_rule",
    "proxy_loop",
    "auth_required",
    "auth_failed",
    "auth_busy",
    "auth_timeout",
    "auth_error",
    "dns_error",
    "dns_timeout",
    "connect_refused",
    "connect_failed",
    "connect_timeout",
    "overload",
    "client_limit",
    "client_rate",
    "out_of_memory",
    "pac",
    "pac_error",
    "bad_proxy_header",
    "proxy_header_timeout",
    "parent_refused",
    "parent_error",
    "other",
};

static const char *const errors[STATS_ERRORS] = {
    "http_request_error",
    "http_request_denied",
    "destination_ip_prohibited",
    "dns_error",
    "dns_timeout",
    "connection_refused",
    "destination_unavailable",
    "connection_timeout",
    "proxy_internal_response",
    "proxy_internal_error",
    "proxy_loop_detected",
    "other",
};

static const int codes[STATS_CODES] = {400, 403, 405, 407, 408, 414, 431,
                                       500, 502, 503, 504, 505, 0};

static const int admin_codes[STATS_ADMIN_CODES] = {200, 400, 401, 403, 404, 405,
                                                   408, 414, 431, 503, 505, 0};

static size_t nreasons(void) {
    size_t n = 0;
    while (n < STATS_REASONS && reasons[n])
        n++;
    return n;
}

/* Reasons are string literals: remember each pointer's index, so the strcmp search runs once
 * per call site, not once per tunnel. */
#define REASON_CACHE 128
static struct {
    const char *p;
    unsigned idx;
} reason_cache[REASON_CACHE];

static size_t reason_index(const char *r) {
    size_t other = nreasons() - 1;
    if (!r)
        return other;
    size_t h = ((uintptr_t)r >> 3) & (REASON_CACHE - 1);
    for (size_t k = 0; k < REASON_CACHE; k++) {
        size_t j = (h + k) & (REASON_CACHE - 1);
        if (reason_cache[j].p == r)
            return reason_cache[j].idx;
        if (!reason_cache[j].p) {
            size_t idx = other;
            for (size_t i = 0; i < other; i++)
                if (strcmp(reasons[i], r) == 0)
                    idx = i;
            reason_cache[j].p = r;
            reason_cache[j].idx = (unsigned)idx;
            return idx;
        }
    }
    return other;
}

static size_t error_index(const char *e) {
    for (size_t i = 0; e && i + 1 < STATS_ERRORS; i++)
        if (strcmp(errors[i], e) == 0)
            return i;
    return STATS_ERRORS - 1;
}

static size_t code_index(const int *v, size_t n, int status) {
    for (size_t i = 0; i + 1 < n; i++)
        if (v[i] == status)
            return i;
    return n - 1;
}

void stats_refusal(int status, const char *error, const char *reason) {
    STATS_INC(outcome[OUTCOME_REFUSED]);
    STATS_INC(refusal_reason[reason_index(reason)]);
    STATS_INC(refusal_error[error_index(error)][code_index(codes, STATS_CODES, status)]);
}

void stats_closed(const char *reason) {
    STATS_INC(closed_reason[reason_index(reason)]);
}

void stats_admin_request(int status) {
    STATS_INC(admin[code_index(admin_codes, STATS_ADMIN_CODES, status)]);
}

const char *stats_reason_name(size_t i) {
    return i < nreasons() ? reasons[i] : NULL;
}

const char *stats_error_name(size_t i) {
    return i < STATS_ERRORS ? errors[i] : NULL;
}

int stats_code_value(size_t i) {
    return i < STATS_CODES ? codes[i] : 0;
}

int stats_admin_code_value(size_t i) {
    return i < STATS_ADMIN_CODES ? admin_codes[i] : 0;
}

/* ---- histograms ---- */

static const double latency_bounds[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                        0.1,    0.25,  0.5,    1,     2.5,  5,     10};
static const double duration_bounds[] = {0.1,  1,    10,   30,    60,    300,  600,
                                         1800, 3600, 7200, 14400, 43200, 86400};

size_t stats_hist_bounds(enum stat_hist h, const double **bounds) {
    if (h == HIST_TUNNEL) {
        *bounds = duration_bounds;
        return sizeof duration_bounds / sizeof duration_bounds[0];
    }
    *bounds = latency_bounds;
    return sizeof latency_bounds / sizeof latency_bounds[0];
}

void stats_observe(enum stat_hist h, double seconds) {
    const double *b;
    size_t n = stats_hist_bounds(h, &b), i = 0;
    if (seconds < 0)
        seconds = 0;
    while (i < n && seconds > b[i])
        i++;
    STATS_INC(hist[h][i]);
    STATS_ADD(hist_sum_us[h], (uint64_t)(seconds * 1e6 + 0.5));
}
