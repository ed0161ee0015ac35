/* generation: a configuration and the resolver and credential checker built from it, kept
 * alive by the tunnels that use it (see struct gen in server.h). */
#include <stdlib.h>
#include <string.h>

#include "auth_service.h"
#include "dns.h"
#include "log.h"
#include "server.h"
#include "text.h"
#include "tls.h"

struct gen *gen_new(struct ev_loop *loop, struct config *cfg, char *err, size_t errlen) {
    struct gen *g = calloc(1, sizeof *g);

    if (!g) {
        text_seterr(err, errlen, "out of memory");
        config_free(cfg);
        return NULL;
    }
    g->cfg = *cfg;
    memset(cfg, 0, sizeof *cfg);
    g->refs = 1;
    g->parent_down = calloc(g->cfg.nparents ? g->cfg.nparents : 1, sizeof *g->parent_down);
    if (!g->parent_down) {
        text_seterr(err, errlen, "out of memory");
        goto fail;
    }
    struct dns_config dc = {.servers = g->cfg.dns_servers,
                            .timeout = g->cfg.timeout_dns,
                            .cache_size = g->cfg.dns_cache};
    g->dns = dns_new(loop, &dc, err, errlen);
    if (!g->dns)
        goto fail;
    if (g->cfg.tls.certificate) {
        g->tls = tls_ctx_new(&g->cfg.tls, err, errlen);
        if (!g->tls)
            goto fail;
        char about[256];
        tls_ctx_describe(g->tls, about, sizeof about);
        log_info("tls: certificate %s: %s", g->cfg.tls.certificate, about);
    }
    if (g->cfg.users_file) {
        g->auth = auth_service_new(loop, &g->cfg.users, err, errlen);
        if (!g->auth)
            goto fail;
    }
    return g;
fail:
    g->refs = 1;
    gen_unref(g);
    return NULL;
}

void gen_ref(struct gen *g) {
    g->refs++;
}

void gen_unref(struct gen *g) {
    if (!g || --g->refs > 0)
        return;
    auth_service_free(g->auth); /* joins its thread; no tunnel waits on it any more */
    if (g->dns)
        dns_free(g->dns);
    config_free(&g->cfg);
    tls_ctx_free(g->tls);
    free(g->parent_down);
    free(g);
}
