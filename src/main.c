/* main: command line, configuration, binding; then one server loop or a master with workers. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <systemd/sd-daemon.h>

#include "config.h"
#include "listener.h"
#include "log.h"
#include "master.h"
#include "passwd.h"
#include "privdrop.h"
#include "server.h"
#include "tunnel.h"
#include "tls.h"
#include "version.h"

#define DEFAULT_CONFIG "/etc/connectd/proxy.ini"

/* -t: the user to switch to must exist. */
static int check_user(const struct config *cfg, char *err, size_t errlen) {
    if (!cfg->user || strcmp(cfg->user, "root") == 0)
        return 0;
    errno = 0;
    if (!getpwnam(cfg->user)) {
        snprintf(err, errlen, "[server] user %s: %s", cfg->user,
                 errno ? strerror(errno) : "no such user");
        return -1;
    }
    return 0;
}

/* Listening sockets passed by systemd (socket activation). Returns 1 with *fds set, 0 when
 * there are none, -1 with err when they are not usable. */
static int systemd_sockets(int **fds, size_t *nfds, char *err, size_t errlen) {
    int n = sd_listen_fds(1);
    if (n < 0) {
        snprintf(err, errlen, "socket activation: sd_listen_fds: %s", strerror(-n));
        return -1;
    }
    if (n == 0)
        return 0;
    int *v = calloc((size_t)n, sizeof *v);
    if (!v) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    for (int i = 0; i < n; i++) {
        int fd = SD_LISTEN_FDS_START + i;
        if (sd_is_socket(fd, AF_UNSPEC, SOCK_STREAM, 1) <= 0) {
            snprintf(err, errlen, "socket activation: fd %d is not a listening stream socket", fd);
            free(v);
            return -1;
        }
        int fl = fcntl(fd, F_GETFL);
        if (fl == -1 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) == -1 ||
            fcntl(fd, F_SETFD, FD_CLOEXEC) == -1) {
            snprintf(err, errlen, "socket activation: fd %d: fcntl: %s", fd, strerror(errno));
            free(v);
            return -1;
        }
        v[i] = fd;
    }
    *fds = v;
    *nfds = (size_t)n;
    log_info("socket activation: %d listening sockets from systemd; [server] listen not used", n);
    return 1;
}

static void usage(FILE *out) {
    fprintf(out, "usage: connectd [-t] [-c FILE]\n"
                 "       connectd -H < password\n"
                 "  -c FILE  configuration file (default " DEFAULT_CONFIG ")\n"
                 "  -t       check the configuration (and its policy and users files), exit\n"
                 "  -H       read a password, print its hash for [auth] users_file, exit\n"
                 "  -V       print the version and exit\n"
                 "  -h       print this help and exit\n");
}

/* If the daemon was started with fd 0, 1 or 2 closed, a socket could take that number and log
 * lines would go to a client: keep them occupied. */
static void reserve_std_fds(void) {
    for (int fd = 0; fd < 3; fd++) {
        if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
            int n = open("/dev/null", O_RDWR);
            if (n > 2)
                close(n);
        }
    }
}

int main(int argc, char **argv) {
    const char *path = DEFAULT_CONFIG;
    bool check_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:tHhV")) != -1) {
        switch (opt) {
        case 'c':
            path = optarg;
            break;
        case 't':
            check_only = true;
            break;
        case 'H':
            return optind == argc ? passwd_hash_stdin() : (usage(stderr), 2);
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("connectd %s\n", CONNECTD_VERSION);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc) {
        usage(stderr);
        return 2;
    }

    reserve_std_fds();
    /* The pseudonym in Via: random per start, so two instances never share it (even with the
     * same host name and addresses in other namespaces); the workers inherit it. */
    uint64_t id = 0;
    if (getrandom(&id, sizeof id, GRND_NONBLOCK) != (ssize_t)sizeof id)
        id = (uint64_t)getpid() << 32 ^ (uint64_t)time(NULL);
    char idtext[20];
    snprintf(idtext, sizeof idtext, "%016llx", (unsigned long long)id);
    tunnel_set_via_name(idtext);
    struct config cfg;
    char err[CONFIG_ERR_MAX];
    if (config_load_file(path, &cfg, err, sizeof err) == -1) {
        fprintf(stderr, "connectd: %s\n", err);
        return 1;
    }
    if (check_only) {
        int rc = check_user(&cfg, err, sizeof err);
        if (rc == 0)
            rc = tls_check(&cfg.tls, err, sizeof err);
        if (rc == 0)
            fprintf(stderr, "connectd: %s: configuration ok\n", path);
        else
            fprintf(stderr, "connectd: %s: %s\n", path, err);
        config_free(&cfg);
        return rc == 0 ? 0 : 1;
    }

    log_init(cfg.log_level);
    if (log_access_open(cfg.access_log, err, sizeof err) == -1) {
        log_error("%s", err);
        config_free(&cfg);
        return 1;
    }
    /* The certificate and key are checked here, once, before any worker starts; the ticket
     * secret is made before the fork, so that every worker opens every other's tickets. */
    if (tls_check(&cfg.tls, err, sizeof err) != 0 || tls_global_init(err, sizeof err) != 0) {
        log_error("%s: %s", path, err);
        config_free(&cfg);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    /* Hold stop and reload signals until the loop's handlers are in place: a SIGTERM that
     * arrives once the port is bound must drain, not kill (server_run unblocks them). */
    sigset_t hold;
    sigemptyset(&hold);
    sigaddset(&hold, SIGTERM);
    sigaddset(&hold, SIGINT);
    sigaddset(&hold, SIGQUIT);
    sigaddset(&hold, SIGHUP);
    sigaddset(&hold, SIGUSR1);
    sigprocmask(SIG_BLOCK, &hold, NULL);
    unsigned workers = master_workers(&cfg);
    int *fds = NULL;
    size_t nfds = 0;
    int rc = 1;
    int activated = systemd_sockets(&fds, &nfds, err, sizeof err);
    if (activated == -1)
        goto fail;
    if (!activated) {
        /* Bind before anything else, so a taken port fails the start at once. With several
         * workers each gets its own socket per address (SO_REUSEPORT), which the master keeps
         * open: a restarted worker takes over its predecessor's socket and backlog. */
        nfds = cfg.nlisten;
        fds = calloc((size_t)workers * nfds, sizeof *fds);
        if (!fds) {
            snprintf(err, sizeof err, "out of memory");
            goto fail;
        }
        for (unsigned w = 0; w < workers; w++) {
            /* On failure listeners_bind() closed its own; the process exit closes the rest. */
            if (listeners_bind(&cfg, workers > 1, fds + (size_t)w * nfds, err, sizeof err) == -1)
                goto fail;
        }
    }
    /* The sockets are bound and the files read: root is no longer needed. */
    if (privdrop(cfg.user, err, sizeof err) != 0)
        goto fail;
    if (workers == 1) {
        log_info("connectd %s starting", CONNECTD_VERSION);
        struct server_opts o = {.config_path = path,
                                .cfg = &cfg,
                                .fds = fds,
                                .nfds = nfds,
                                .max_connections = cfg.max_connections,
                                .workers = 1,
                                .own_listeners = !activated,
                                .notify = true,
                                .has_master = false,
                                .worker = 0};
        rc = server_run(&o);
        free(fds);
    } else {
        log_info("connectd %s starting %u workers", CONNECTD_VERSION, workers);
        struct master_opts o = {.config_path = path,
                                .cfg = &cfg,
                                .workers = workers,
                                .fds = fds,
                                .nfds = nfds,
                                .shared_fds = activated};
        rc = master_run(&o);
    }
    goto out;
fail:
    log_error("%s", err);
    sd_notifyf(0, "STATUS=failed to start: %s", err);
    free(fds);
out:
    log_close();
    config_free(&cfg);
    return rc;
}
