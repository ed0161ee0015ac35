/* main: command line, configuration, binding; then one server loop or a master with workers. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "listener.h"
#include "log.h"
#include "master.h"
#include "passwd.h"
#include "server.h"

#define CONNECTD_VERSION "0.1.0"
#define DEFAULT_CONFIG   "/etc/connectd/proxy.ini"

/* [server] workers: a number, or auto = one per online CPU. */
static unsigned config_workers(const struct config *cfg) {
    if (cfg->workers > 0)
        return cfg->workers;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 && n <= 64 ? (unsigned)n : 1;
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
    struct config cfg;
    char err[CONFIG_ERR_MAX];
    if (config_load_file(path, &cfg, err, sizeof err) == -1) {
        fprintf(stderr, "connectd: %s\n", err);
        return 1;
    }
    if (check_only) {
        fprintf(stderr, "connectd: %s: configuration ok\n", path);
        config_free(&cfg);
        return 0;
    }

    log_init(cfg.log_level);
    if (log_access_open(cfg.access_log, err, sizeof err) == -1) {
        log_error("%s", err);
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
    sigaddset(&hold, SIGHUP);
    sigaddset(&hold, SIGUSR1);
    sigprocmask(SIG_BLOCK, &hold, NULL);
    unsigned workers = config_workers(&cfg);
    int *fds = calloc((size_t)workers * cfg.nlisten, sizeof *fds);
    if (!fds) {
        log_error("out of memory");
        return 1;
    }
    /* Bind before anything else, so a taken port fails the start at once. With several workers
     * each gets its own socket per address (SO_REUSEPORT), which the master keeps open: a
     * restarted worker takes over its predecessor's socket and backlog. */
    for (unsigned w = 0; w < workers; w++) {
        if (listeners_bind(&cfg, workers > 1, fds + (size_t)w * cfg.nlisten, err, sizeof err) ==
            -1) {
            log_error("%s", err);
            return 1;
        }
    }
    int rc;
    if (workers == 1) {
        log_info("connectd %s starting", CONNECTD_VERSION);
        rc = server_run(&cfg, fds, cfg.max_connections);
    } else {
        log_info("connectd %s starting %u workers", CONNECTD_VERSION, workers);
        rc = master_run(&cfg, workers, fds);
    }
    free(fds);
    log_close();
    config_free(&cfg);
    return rc;
}
