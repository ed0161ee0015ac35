/* log: error and access logs that never block the event loop.
 *
 * Each sink owns a bounded queue. A line is appended and, when nothing is queued ahead of it,
 * written at once; what the fd does not take (EAGAIN, partial write) stays queued and an ev_io
 * watcher finishes the job. stderr is made non-blocking without touching the file description
 * other processes share: a socket (journald) is written with MSG_DONTWAIT, a pipe or terminal is
 * reopened through /proc/self/fd/2 to get a private description with O_NONBLOCK. Regular files
 * are written directly (they never answer EAGAIN). */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#define LOG_QUEUE_MAX (256 * 1024)
#define LOG_LINE_MAX  2048

struct sink {
    int fd;
    bool is_socket;
    bool owns_fd;
    char *q; /* queued bytes, q[0..qlen) */
    size_t qlen;
    unsigned long dropped;
    ev_io w;
};

static struct sink err_sink = {.fd = -1};
static struct sink acc_sink_store = {.fd = -1};
static struct sink *acc_sink; /* NULL: access log off; may point at err_sink */
static char *acc_path;        /* file path when the access log is a file */
static enum log_level cur_level = LOG_LEVEL_INFO;
static struct ev_loop *log_loop;
static const char *level_names[] = {"error", "warn", "info", "debug"};

static void sink_setup(struct sink *s, int fd, bool owns) {
    struct stat st;
    s->fd = fd;
    s->owns_fd = owns;
    s->is_socket = fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode);
}

/* Write as much of buf as the fd takes now. Returns bytes written, or -1 on a hard error. */
static ssize_t sink_write_now(struct sink *s, const char *buf, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t n;
        if (s->is_socket)
            n = send(s->fd, buf + off, len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        else
            n = write(s->fd, buf + off, len - off);
        if (n == -1) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            return -1;
        }
        off += (size_t)n;
    }
    return (ssize_t)off;
}

static void sink_arm(struct sink *s) {
    if (log_loop && s->qlen > 0 && !ev_is_active(&s->w)) {
        ev_io_set(&s->w, s->fd, EV_WRITE);
        ev_io_start(log_loop, &s->w);
    }
}

static void sink_flush_some(struct sink *s) {
    if (s->qlen == 0)
        return;
    ssize_t n = sink_write_now(s, s->q, s->qlen);
    if (n == -1) {
        s->qlen = 0; /* the fd is broken (reader gone): nothing more can be done */
        return;
    }
    memmove(s->q, s->q + n, s->qlen - (size_t)n);
    s->qlen -= (size_t)n;
}

static void sink_enqueue(struct sink *s, const char *buf, size_t len);

static void sink_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct sink *s = (struct sink *)((char *)w - offsetof(struct sink, w));
    sink_flush_some(s);
    if (s->qlen == 0) {
        ev_io_stop(loop, w);
        if (s->dropped) {
            char note[96];
            int n = snprintf(note, sizeof note,
                             "connectd: %lu log lines dropped (output too slow)\n", s->dropped);
            s->dropped = 0;
            sink_enqueue(s, note, (size_t)n);
        }
    }
}

static void sink_enqueue(struct sink *s, const char *buf, size_t len) {
    if (s->fd == -1)
        return;
    if (s->qlen == 0) {
        ssize_t n = sink_write_now(s, buf, len);
        if (n == -1) {
            s->dropped++;
            return;
        }
        if ((size_t)n == len)
            return;
        buf += n;
        len -= (size_t)n;
    }
    if (!s->q) {
        s->q = malloc(LOG_QUEUE_MAX);
        if (!s->q) {
            s->dropped++;
            return;
        }
    }
    if (len > LOG_QUEUE_MAX - s->qlen) {
        s->dropped++;
        return;
    }
    memcpy(s->q + s->qlen, buf, len);
    s->qlen += len;
    sink_arm(s);
}

/* "2026-11-27T16:40:01.123Z" */
static size_t format_time(char *out, size_t outlen) {
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, outlen, "%Y-%m-%dT%H:%M:%S", &tm);
    int m = snprintf(out + n, outlen - n, ".%03ldZ", ts.tv_nsec / 1000000);
    return n + (m > 0 ? (size_t)m : 0);
}

void log_init(enum log_level level) {
    cur_level = level;
    if (err_sink.fd != -1)
        return;
    struct stat st;
    if (fstat(STDERR_FILENO, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode))) {
        int fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
        if (fd != -1) {
            sink_setup(&err_sink, fd, true);
            return;
        }
    }
    sink_setup(&err_sink, STDERR_FILENO, false);
}

void log_attach_loop(struct ev_loop *loop) {
    log_loop = loop;
    ev_init(&err_sink.w, sink_cb);
    ev_init(&acc_sink_store.w, sink_cb);
    sink_arm(&err_sink);
}

void log_msg(enum log_level level, const char *fmt, ...) {
    if (level > cur_level)
        return;
    char line[LOG_LINE_MAX];
    size_t n = format_time(line, sizeof line);
    int m = snprintf(line + n, sizeof line - n, " connectd[%ld]: %s: ", (long)getpid(),
                     level_names[level]);
    if (m > 0)
        n += (size_t)m;
    va_list ap;
    va_start(ap, fmt);
    m = vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
    va_end(ap);
    if (m > 0)
        n += (size_t)m < sizeof line - n - 1 ? (size_t)m : sizeof line - n - 2;
    line[n++] = '\n';
    sink_enqueue(&err_sink, line, n);
}

int log_access_open(const char *spec, char *err, size_t errlen) {
    if (strcmp(spec, "off") == 0) {
        acc_sink = NULL;
        return 0;
    }
    if (strcmp(spec, "stderr") == 0) {
        acc_sink = &err_sink;
        return 0;
    }
    /* O_NONBLOCK: a FIFO without a reader fails at once instead of hanging the start. */
    int fd = open(spec, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0640);
    if (fd == -1) {
        snprintf(err, errlen, "access log %s: open: %s", spec, strerror(errno));
        return -1;
    }
    char *path = strdup(spec);
    if (!path) {
        close(fd);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    free(acc_path);
    acc_path = path;
    sink_setup(&acc_sink_store, fd, true);
    acc_sink = &acc_sink_store;
    return 0;
}

int log_access_reopen(void) {
    if (!acc_path || acc_sink != &acc_sink_store)
        return 0;
    int fd =
        open(acc_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0640);
    if (fd == -1) {
        log_error("access log %s: reopen: %s (still writing to the old file)", acc_path,
                  strerror(errno));
        return -1;
    }
    /* Lines still queued belong to the old file: give them a moment, then switch. */
    sink_flush_some(&acc_sink_store);
    if (log_loop && ev_is_active(&acc_sink_store.w))
        ev_io_stop(log_loop, &acc_sink_store.w);
    close(acc_sink_store.fd);
    acc_sink_store.fd = fd;
    sink_arm(&acc_sink_store);
    return 0;
}

int log_access_enabled(void) {
    return acc_sink != NULL;
}

void log_access(const char *line, size_t len) {
    if (!acc_sink)
        return;
    char out[LOG_LINE_MAX];
    size_t n = format_time(out, sizeof out);
    out[n++] = ' ';
    if (len > sizeof out - n - 1)
        len = sizeof out - n - 1;
    memcpy(out + n, line, len);
    n += len;
    out[n++] = '\n';
    sink_enqueue(acc_sink, out, n);
}

static void sink_drain(struct sink *s, int timeout_ms) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (s->fd != -1 && s->qlen > 0) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long spent = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (spent >= timeout_ms)
            break;
        struct pollfd pfd = {.fd = s->fd, .events = POLLOUT};
        if (poll(&pfd, 1, (int)(timeout_ms - spent)) <= 0)
            break;
        size_t before = s->qlen;
        sink_flush_some(s);
        if (s->qlen == before)
            break;
    }
}

void log_flush(int timeout_ms) {
    sink_drain(&err_sink, timeout_ms);
    sink_drain(&acc_sink_store, timeout_ms);
}

static void sink_close(struct sink *s) {
    if (log_loop && ev_is_active(&s->w))
        ev_io_stop(log_loop, &s->w);
    if (s->owns_fd && s->fd != -1)
        close(s->fd);
    free(s->q);
    s->q = NULL;
    s->qlen = 0;
    s->fd = -1;
}

void log_close(void) {
    log_flush(1000);
    sink_close(&acc_sink_store);
    free(acc_path);
    acc_path = NULL;
    acc_sink = NULL;
    sink_close(&err_sink);
}

size_t log_escape(char *out, size_t outlen, const char *in, size_t inlen) {
    static const char hex[] = "0123456789abcdef";
    size_t o = 0;
    if (outlen == 0)
        return 0;
    for (size_t i = 0; i < inlen; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c > 0x20 && c < 0x7f && c != '"' && c != '\\') {
            if (o + 1 >= outlen)
                break;
            out[o++] = (char)c;
        } else {
            if (o + 4 >= outlen)
                break;
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        }
    }
    out[o] = '\0';
    return o;
}
