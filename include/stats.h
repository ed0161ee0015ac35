/* stats: the daemon's counters, gauges and histograms, in one shared-memory region that every
 * process of the daemon maps (mapped before the first fork, so workers inherit it).
 *
 * Each process owns one slot and is the only writer of its counters: an update is a plain
 * load-add-store (no lock, no atomic read-modify-write), so counting costs the hot path a few
 * instructions. Any process can read every slot to answer a scrape. When a worker exits, the
 * master folds its counters into `retired` under a sequence counter, so a sum taken at any time
 * never counts a slot twice or loses it: counters never go backwards while the daemon runs. */
#ifndef CONNECTD_STATS_H
#define CONNECTD_STATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* How a client connection's request ended; each connection counts once, when it is decided. */
enum stat_outcome {
    OUTCOME_ESTABLISHED = 0, /* 200 sent: a tunnel */
    OUTCOME_REFUSED,         /* answered with a 4xx/5xx refusal */
    OUTCOME_ABORTED,         /* the client left, or the connection failed, before an answer */
    OUTCOME_PAC,             /* served the PAC file */
    OUTCOME_N
};

enum stat_hist {
    HIST_CONNECT = 0, /* accept -> 200 queued */
    HIST_DNS,         /* name lookup, cache hits included */
    HIST_DIAL,        /* first connect attempt -> connected */
    HIST_TUNNEL,      /* 200 -> close, established tunnels */
    HIST_N
};
#define HIST_BUCKETS 16 /* upper bounds per histogram at most; one more cell for +Inf */

enum stat_counter {
    C_BYTES_UP = 0,  /* client -> destination, early data included */
    C_BYTES_DOWN,    /* destination -> client, the 200 itself not included */
    C_AUTH_OK,       /* credentials accepted (cache hits included) */
    C_AUTH_MISSING,  /* no usable Proxy-Authorization */
    C_AUTH_BAD,      /* unknown user or wrong password */
    C_AUTH_BUSY,     /* too many verifications waiting */
    C_AUTH_TIMEOUT,  /* not verified within the handshake timeout */
    C_DNS_CACHE_HIT, /* lookups answered from the cache */
    C_DNS_CACHE_MISS,
    C_LIMIT_MAX_CONNECTIONS, /* refused at max_connections */
    C_LIMIT_PER_CLIENT,      /* refused at per_client_connections */
    C_LIMIT_PER_CLIENT_RATE, /* refused at per_client_rate */
    C_LIMIT_REFUSING,        /* closed unanswered: too many refusals already being written */
    C_LIMIT_FDS,             /* accept failed for want of fds or memory (load shed) */
    C_ACCEPTED,              /* client connections accepted on proxy listeners */
    C_PROXY_OK,              /* PROXY headers read (PROXY command) */
    C_PROXY_LOCAL,           /* PROXY headers with the LOCAL command (balancer health checks) */
    C_PROXY_BAD,             /* malformed, truncated or late PROXY headers: closed */
    C_PROXY_DENIED,          /* connections to a proxy-protocol listener from outside
                                proxy_protocol_from: closed unheard */
    C_TLS_FULL,              /* TLS handshakes completed with a new session */
    C_TLS_RESUMED,           /* TLS handshakes that resumed a session (ticket) */
    C_TLS_FAILED,            /* TLS handshakes that failed or timed out */
    C_H2_CONNECTIONS,        /* client connections that chose HTTP/2 (ALPN h2) */
    C_H2_STREAMS,            /* streams they opened (each a request: most become tunnels) */
    C_H2_FLOODS,             /* HTTP/2 connections closed for flooding control frames */
    C_N
};

/* Statuses and Proxy-Status errors a refusal can carry (refusal_error[error][status]). */
#define STATS_CODES       13 /* 12 known statuses + one cell for any other */
#define STATS_ERRORS      12 /* 11 known errors + one cell for any other */
#define STATS_REASONS     40
#define STATS_ADMIN_CODES 12

/* Everything here only grows: summed over slots, folded when a worker retires. uint64_t only
 * (summed as an array). */
struct stats_counters {
    uint64_t outcome[OUTCOME_N];
    uint64_t refusal_reason[STATS_REASONS]; /* refusals by access-log reason */
    uint64_t refusal_error[STATS_ERRORS][STATS_CODES];
    uint64_t closed_reason[STATS_REASONS]; /* established tunnels by close reason */
    uint64_t c[C_N];
    uint64_t hist[HIST_N][HIST_BUCKETS + 1]; /* per-bucket (not cumulative) counts */
    uint64_t hist_sum_us[HIST_N];
    uint64_t admin[STATS_ADMIN_CODES]; /* admin requests by status */
};

/* A process's state now: written by its owner (live values or published each second). */
struct stats_gauges {
    int64_t connections_open; /* client connections, handshakes and refusals included */
    int64_t tunnels_open;     /* established tunnels */
    int64_t pipes_pooled;
    int64_t buffers_pooled;
    int64_t open_fds;
    int64_t max_fds;
    int64_t rss_bytes;
    int64_t vsize_bytes;
    uint64_t cpu_usec; /* user + system CPU time of the process */
};

enum stats_slot_state {
    SLOT_FREE = 0,
    SLOT_LIVE,     /* a worker (or the only process) that accepts */
    SLOT_RETIRING, /* a worker replaced by a reload, finishing its tunnels */
};

struct stats_slot {
    struct stats_counters c;
    struct stats_gauges g;
    int32_t state;  /* enum stats_slot_state; set by the master (or the only process) */
    int32_t worker; /* worker index */
    int32_t pid;
} __attribute__((aligned(64)));

struct stats_shm {
    uint32_t seq; /* odd while the master folds a slot into `retired` */
    double start_time;
    /* Reloads, written by the process that decides them (the master, or the only process). */
    uint64_t generation; /* 1 at start, +1 per successful reload */
    uint64_t reloads_ok, reloads_failed;
    double last_reload_time; /* unix seconds: the start, then each reload attempt */
    int32_t last_reload_ok;
    uint64_t worker_restarts;
    uint64_t retired_cpu_usec;  /* CPU of workers that have exited */
    struct stats_gauges master; /* the master's own process figures; zero without one */
    struct stats_counters retired;
    uint32_t nslots;
    struct stats_slot slots[];
};

/* This process's slot and the region; NULL until stats_attach(). */
extern struct stats_slot *stats_me;
extern struct stats_shm *stats_shm;

/* Map a region with nslots slots (before forking workers). NULL when mmap fails. */
struct stats_shm *stats_create(uint32_t nslots);
void stats_destroy(struct stats_shm *s);
/* This process writes slot i from now on. */
void stats_attach(struct stats_shm *s, uint32_t i);
/* Master: a new worker in slot i (zeroed, marked live). */
void stats_slot_start(struct stats_shm *s, uint32_t i, int worker, pid_t pid);
void stats_slot_retire(struct stats_shm *s, uint32_t i);
/* Master: the worker in slot i has exited, having used cpu_usec of CPU in all: fold its
 * counters into retired and free the slot. */
void stats_slot_fold(struct stats_shm *s, uint32_t i, uint64_t cpu_usec);
void stats_reload_result(struct stats_shm *s, bool ok, double now);

/* Read this process's CPU, memory and fd figures into g (a few syscalls; about once a second). */
void stats_read_process(struct stats_gauges *g);

/* A consistent sum: retired + every used slot's counters, and summed gauges. */
struct stats_view {
    struct stats_counters c;
    struct stats_gauges g; /* workers' gauges summed (cpu includes retired and master) */
    uint32_t nlive;        /* workers accepting */
    uint32_t nretiring;
};
void stats_sum(const struct stats_shm *s, struct stats_view *v);

/* ---- updates on the hot path: this process's slot only ---- */

static inline void stats_add(uint64_t *p, uint64_t n) {
    /* Single writer: a relaxed load and store (a plain add), readable without tearing. */
    __atomic_store_n(p, __atomic_load_n(p, __ATOMIC_RELAXED) + n, __ATOMIC_RELAXED);
}

static inline void stats_set(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}

#define STATS_INC(field)    stats_add(&stats_me->c.field, 1)
#define STATS_ADD(field, n) stats_add(&stats_me->c.field, (n))

void stats_observe(enum stat_hist h, double seconds);
/* A refusal answered with status and Proxy-Status error for the access-log reason. */
void stats_refusal(int status, const char *error, const char *reason);
/* An established tunnel ended for reason. */
void stats_closed(const char *reason);
void stats_admin_request(int status);

/* ---- names for rendering (metrics.c) ---- */
const char *stats_reason_name(size_t i); /* NULL past the last */
const char *stats_error_name(size_t i);  /* "other" for the last cell */
int stats_code_value(size_t i);          /* 0 for the "other" cell */
int stats_admin_code_value(size_t i);
/* Bucket upper bounds of histogram h; returns how many. */
size_t stats_hist_bounds(enum stat_hist h, const double **bounds);

#endif
