/* metrics: the Prometheus text exposition format (0.0.4) of the shared stats.
 *
 * One scrape shows the whole daemon: every worker's counters, including those of workers that
 * have exited (stats.c folds them), summed. Label values come from fixed tables only (outcomes,
 * statuses, Proxy-Status errors, access-log reasons, worker indexes): no host or client ever
 * becomes a label. */
#include "metrics.h"

#include <inttypes.h>
#include <string.h>

#include "stats.h"
#include "version.h"

static void family(struct obuf *o, const char *name, const char *type, const char *help) {
    obuf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void counter(struct obuf *o, const char *name, const char *help, uint64_t v) {
    family(o, name, "counter", help);
    obuf_printf(o, "%s %" PRIu64 "\n", name, v);
}

static void gauge(struct obuf *o, const char *name, const char *help, double v) {
    family(o, name, "gauge", help);
    obuf_printf(o, "%s %.17g\n", name, v);
}

static void labelled(struct obuf *o, const char *name, const char *label, const char *value,
                     uint64_t v) {
    obuf_printf(o, "%s{%s=\"%s\"} %" PRIu64 "\n", name, label, value, v);
}

static void histogram(struct obuf *o, const struct stats_counters *c, enum stat_hist h,
                      const char *name, const char *help) {
    const double *b;
    size_t n = stats_hist_bounds(h, &b);
    uint64_t cum = 0;
    family(o, name, "histogram", help);
    for (size_t i = 0; i < n; i++) {
        cum += c->hist[h][i];
        obuf_printf(o, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, b[i], cum);
    }
    cum += c->hist[h][n];
    obuf_printf(o, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
    obuf_printf(o, "%s_sum %" PRIu64 ".%06" PRIu64 "\n", name, c->hist_sum_us[h] / 1000000,
                c->hist_sum_us[h] % 1000000);
    obuf_printf(o, "%s_count %" PRIu64 "\n", name, cum);
}

/* The (status, error) pairs the response table can produce: always shown, zero or not. */
static bool known_refusal(int code, const char *error) {
    static const struct {
        int code;
        const char *error;
    } pairs[] = {
        {400, "http_request_error"},
        {403, "http_request_denied"},
        {403, "destination_ip_prohibited"},
        {405, "http_request_denied"},
        {407, "http_request_denied"},
        {408, "http_request_error"},
        {414, "http_request_error"},
        {431, "http_request_error"},
        {500, "proxy_internal_error"},
        {502, "dns_error"},
        {502, "connection_refused"},
        {502, "destination_unavailable"},
        {502, "proxy_loop_detected"},
        {503, "proxy_internal_response"},
        {503, "http_request_denied"},
        {503, "proxy_internal_error"},
        {504, "dns_timeout"},
        {504, "connection_timeout"},
        {505, "http_request_error"},
    };
    for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++)
        if (pairs[i].code == code && strcmp(pairs[i].error, error) == 0)
            return true;
    return false;
}

static void refusals(struct obuf *o, const struct stats_counters *c) {
    family(o, "connectd_refusals_total", "counter",
           "Requests refused, by HTTP status and Proxy-Status error (RFC 9209).");
    for (size_t e = 0; e < STATS_ERRORS; e++) {
        const char *error = stats_error_name(e);
        for (size_t k = 0; k < STATS_CODES; k++) {
            int code = stats_code_value(k);
            uint64_t v = c->refusal_error[e][k];
            if (v == 0 && !known_refusal(code, error))
                continue;
            if (code)
                obuf_printf(o, "connectd_refusals_total{code=\"%d\",error=\"%s\"} %" PRIu64 "\n",
                            code, error, v);
            else
                obuf_printf(o, "connectd_refusals_total{code=\"other\",error=\"%s\"} %" PRIu64 "\n",
                            error, v);
        }
    }
    family(o, "connectd_refusals_by_reason_total", "counter",
           "Requests refused, by the reason the access log gives.");
    for (size_t i = 0; stats_reason_name(i); i++)
        labelled(o, "connectd_refusals_by_reason_total", "reason", stats_reason_name(i),
                 c->refusal_reason[i]);
    family(o, "connectd_tunnels_closed_total", "counter",
           "Established tunnels that ended, by the reason the access log gives.");
    for (size_t i = 0; stats_reason_name(i); i++)
        labelled(o, "connectd_tunnels_closed_total", "reason", stats_reason_name(i),
                 c->closed_reason[i]);
}

/* Gauges per worker: where one worker's view tells something the sum hides (imbalance, a
 * retiring worker still holding tunnels). */
static void per_worker(struct obuf *o, const struct stats_shm *s, const char *name,
                       const char *help, size_t offset) {
    int64_t retiring = 0;
    bool any_retiring = false;
    family(o, name, "gauge", help);
    for (uint32_t i = 0; i < s->nslots; i++) {
        const struct stats_slot *sl = &s->slots[i];
        int32_t state = __atomic_load_n(&sl->state, __ATOMIC_ACQUIRE);
        int64_t v =
            __atomic_load_n((const int64_t *)((const char *)&sl->g + offset), __ATOMIC_RELAXED);
        if (state == SLOT_LIVE)
            obuf_printf(o, "%s{worker=\"%d\"} %" PRId64 "\n", name, sl->worker, v);
        else if (state == SLOT_RETIRING) {
            retiring += v;
            any_retiring = true;
        }
    }
    if (any_retiring)
        obuf_printf(o, "%s{worker=\"retiring\"} %" PRId64 "\n", name, retiring);
}

void metrics_render(const struct stats_shm *s, bool draining, struct obuf *o) {
    struct stats_view v;
    stats_sum(s, &v);
    const struct stats_counters *c = &v.c;

    family(o, "connectd_build_info", "gauge", "Always 1; the version of this connectd.");
    obuf_printf(o, "connectd_build_info{version=\"%s\"} 1\n", CONNECTD_VERSION);
    family(o, "connectd_workers", "gauge",
           "Worker processes: accepting (live), or replaced by a reload and finishing their "
           "tunnels (retiring).");
    obuf_printf(o, "connectd_workers{state=\"live\"} %u\n", v.nlive);
    obuf_printf(o, "connectd_workers{state=\"retiring\"} %u\n", v.nretiring);
    counter(o, "connectd_worker_restarts_total", "Workers restarted after they died.",
            __atomic_load_n(&s->worker_restarts, __ATOMIC_RELAXED));
    gauge(o, "connectd_config_generation",
          "The configuration in use: 1 at start, one more for each successful reload.",
          (double)__atomic_load_n(&s->generation, __ATOMIC_RELAXED));
    family(o, "connectd_reloads_total", "counter", "Configuration reloads (SIGHUP), by result.");
    labelled(o, "connectd_reloads_total", "result", "success",
             __atomic_load_n(&s->reloads_ok, __ATOMIC_RELAXED));
    labelled(o, "connectd_reloads_total", "result", "failure",
             __atomic_load_n(&s->reloads_failed, __ATOMIC_RELAXED));
    double last_reload;
    __atomic_load(&s->last_reload_time, &last_reload, __ATOMIC_RELAXED);
    gauge(o, "connectd_last_reload_timestamp_seconds",
          "When the configuration was last loaded (start or reload attempt), unix time.",
          last_reload);
    gauge(o, "connectd_last_reload_successful",
          "1 when the last reload attempt succeeded (or none was made), else 0.",
          (double)__atomic_load_n(&s->last_reload_ok, __ATOMIC_RELAXED));
    gauge(o, "connectd_draining",
          "1 once a stop signal has arrived (/healthz answers 503), else 0.", draining ? 1 : 0);

    gauge(o, "connectd_connections_open",
          "Client connections open now: handshakes, refusals being written and tunnels.",
          (double)v.g.connections_open);
    gauge(o, "connectd_tunnels_open", "Established tunnels open now.", (double)v.g.tunnels_open);
    per_worker(o, s, "connectd_worker_connections_open", "Client connections open, per worker.",
               offsetof(struct stats_gauges, connections_open));
    per_worker(o, s, "connectd_worker_tunnels_open", "Established tunnels open, per worker.",
               offsetof(struct stats_gauges, tunnels_open));
    per_worker(o, s, "connectd_worker_open_fds", "File descriptors in use, per worker.",
               offsetof(struct stats_gauges, open_fds));
    counter(o, "connectd_connections_accepted_total",
            "Client connections accepted on the proxy listeners.", c->c[C_ACCEPTED]);

    static const char *const outcomes[OUTCOME_N] = {"established", "refused", "aborted", "pac"};
    family(o, "connectd_tunnels_total", "counter",
           "Client connections by how their request ended: established (200), refused "
           "(4xx/5xx), aborted (the client left or the connection failed before an answer), "
           "pac (served the PAC file). Counted when decided.");
    for (size_t i = 0; i < OUTCOME_N; i++)
        labelled(o, "connectd_tunnels_total", "outcome", outcomes[i], c->outcome[i]);
    refusals(o, c);

    family(o, "connectd_bytes_total", "counter",
           "Tunnel bytes relayed, counted as they are written: upstream is client to "
           "destination, downstream is destination to client.");
    labelled(o, "connectd_bytes_total", "direction", "upstream", c->c[C_BYTES_UP]);
    labelled(o, "connectd_bytes_total", "direction", "downstream", c->c[C_BYTES_DOWN]);

    histogram(o, c, HIST_CONNECT, "connectd_connect_duration_seconds",
              "From accepting a client to queuing its 200 (request, auth, DNS, dial).");
    histogram(o, c, HIST_DNS, "connectd_dns_duration_seconds",
              "Name lookups, answers from the cache included.");
    histogram(o, c, HIST_DIAL, "connectd_dial_duration_seconds",
              "From the first connect attempt to an established upstream connection.");
    histogram(o, c, HIST_TUNNEL, "connectd_tunnel_duration_seconds",
              "Lifetime of established tunnels, from the 200 to the close.");

    family(o, "connectd_auth_total", "counter", "Proxy authentication results.");
    labelled(o, "connectd_auth_total", "result", "ok", c->c[C_AUTH_OK]);
    labelled(o, "connectd_auth_total", "result", "missing", c->c[C_AUTH_MISSING]);
    labelled(o, "connectd_auth_total", "result", "bad", c->c[C_AUTH_BAD]);
    labelled(o, "connectd_auth_total", "result", "busy", c->c[C_AUTH_BUSY]);
    labelled(o, "connectd_auth_total", "result", "timeout", c->c[C_AUTH_TIMEOUT]);
    family(o, "connectd_dns_cache_lookups_total", "counter",
           "Name lookups answered from the cache (hit) or sent to a DNS server (miss).");
    labelled(o, "connectd_dns_cache_lookups_total", "result", "hit", c->c[C_DNS_CACHE_HIT]);
    labelled(o, "connectd_dns_cache_lookups_total", "result", "miss", c->c[C_DNS_CACHE_MISS]);
    family(o, "connectd_limit_refusals_total", "counter",
           "Connections refused by a limit: max_connections, per_client_connections, "
           "per_client_rate, refusing (closed unanswered: too many refusals in flight), fds "
           "(accept failed for want of file descriptors or memory).");
    labelled(o, "connectd_limit_refusals_total", "limit", "max_connections",
             c->c[C_LIMIT_MAX_CONNECTIONS]);
    labelled(o, "connectd_limit_refusals_total", "limit", "per_client_connections",
             c->c[C_LIMIT_PER_CLIENT]);
    labelled(o, "connectd_limit_refusals_total", "limit", "per_client_rate",
             c->c[C_LIMIT_PER_CLIENT_RATE]);
    labelled(o, "connectd_limit_refusals_total", "limit", "refusing", c->c[C_LIMIT_REFUSING]);
    labelled(o, "connectd_limit_refusals_total", "limit", "fds", c->c[C_LIMIT_FDS]);
    family(o, "connectd_proxy_headers_total", "counter",
           "PROXY protocol headers from load balancers: proxy (a client named), local (a "
           "health check), bad (malformed, truncated or late: closed), denied (the sender is "
           "not in proxy_protocol_from: closed unheard).");
    labelled(o, "connectd_proxy_headers_total", "result", "proxy", c->c[C_PROXY_OK]);
    labelled(o, "connectd_proxy_headers_total", "result", "local", c->c[C_PROXY_LOCAL]);
    labelled(o, "connectd_proxy_headers_total", "result", "bad", c->c[C_PROXY_BAD]);
    labelled(o, "connectd_proxy_headers_total", "result", "denied", c->c[C_PROXY_DENIED]);
    family(o, "connectd_tls_handshakes_total", "counter",
           "TLS handshakes on tls listeners: full (a new session), resumed (a session ticket), "
           "failed (bad or no TLS, or not done within [timeouts] handshake).");
    labelled(o, "connectd_tls_handshakes_total", "result", "full", c->c[C_TLS_FULL]);
    labelled(o, "connectd_tls_handshakes_total", "result", "resumed", c->c[C_TLS_RESUMED]);
    labelled(o, "connectd_tls_handshakes_total", "result", "failed", c->c[C_TLS_FAILED]);
    counter(o, "connectd_http2_connections_total",
            "Client connections that chose HTTP/2 (ALPN h2) on a tls listener.",
            c->c[C_H2_CONNECTIONS]);
    counter(o, "connectd_http2_streams_total",
            "Streams opened on them: each carries one request (a CONNECT is one tunnel).",
            c->c[C_H2_STREAMS]);
    counter(o, "connectd_http2_floods_total",
            "HTTP/2 connections sent GOAWAY (ENHANCE_YOUR_CALM) for flooding: control frames, "
            "CONTINUATION, rapid reset.",
            c->c[C_H2_FLOODS]);
    gauge(o, "connectd_pipes_pooled", "Empty splice pipes kept for reuse.",
          (double)v.g.pipes_pooled);
    gauge(o, "connectd_buffers_pooled",
          "Free relay buffers kept for reuse (64 KiB; 256 KiB for downloads to TLS clients).",
          (double)v.g.buffers_pooled);
    family(o, "connectd_admin_requests_total", "counter",
           "Requests to the admin listener, by response status.");
    for (size_t i = 0; i < STATS_ADMIN_CODES; i++) {
        int code = stats_admin_code_value(i);
        if (code)
            obuf_printf(o, "connectd_admin_requests_total{code=\"%d\"} %" PRIu64 "\n", code,
                        c->admin[i]);
        else
            obuf_printf(o, "connectd_admin_requests_total{code=\"other\"} %" PRIu64 "\n",
                        c->admin[i]);
    }

    /* The standard process metrics, for the daemon as a whole: master and workers. */
    family(o, "process_cpu_seconds_total", "counter",
           "User and system CPU time of every connectd process, exited workers included.");
    obuf_printf(o, "process_cpu_seconds_total %" PRIu64 ".%06" PRIu64 "\n", v.g.cpu_usec / 1000000,
                v.g.cpu_usec % 1000000);
    gauge(o, "process_resident_memory_bytes",
          "Resident memory of every connectd process, summed (shared pages count in each).",
          (double)v.g.rss_bytes);
    gauge(o, "process_virtual_memory_bytes", "Virtual memory of every connectd process, summed.",
          (double)v.g.vsize_bytes);
    gauge(o, "process_open_fds", "Open file descriptors of every connectd process, summed.",
          (double)v.g.open_fds);
    gauge(o, "process_max_fds", "The open-file limit of one connectd process.",
          (double)v.g.max_fds);
    gauge(o, "process_start_time_seconds", "When connectd started, unix time.", s->start_time);
}
