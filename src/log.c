/* log: error and access logs that never block the event loop.
 *
 * Each sink owns a bounded queue. A line is appended and, when nothing is queued ahead of it,
 * written at once; what the fd does not take (EAGAIN, partial write) stays queued and an ev_io
 * watcher finishes the job. stderr is made non-blocking without touching the file description
 * other processes share: a socket (journald) is written with MSG_DONTWAIT, a pipe or terminal is
 * reopened through /proc/self/fd/2 to get a private description with O_NONBLOCK. Regular files
 * are written directly (they never answer EAGAIN).
 *
 * The access log may also be a syslog socket (AF_UNIX datagram, non-blocking): one datagram per
 * line, framed the way glibc's syslog() frames it. Its queue holds length-prefixed records, so a
 * line is sent whole or not at all; a connected datagram socket polls writable again once the
 * reader's queue has room. syslog(3) itself is never called: it blocks when the daemon is slow. */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <ev.h>

#define LOG_QUEUE_MAX (256 * 1024)
#define LOG_LINE_MAX  2048
#define LOG_HEAD_MAX  64 /* the longest prefix format_prefix() writes */

#define SYSLOG_PREFIX       "syslog"
#define SYSLOG_DEFAULT_PATH "/dev/log"
#define SYSLOG_FACILITY     (3 << 3) /* LOG_DAEMON */
#define SYSLOG_RETRY_S      1.0      /* at most one reconnect attempt per second */

/* Severities as syslog numbers them (LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG). */
#define SEV_WARN 4
#define SEV_INFO 6

enum sink_kind {
    SINK_STREAM = 0, /* stderr, a file, a FIFO: bytes, written in any pieces */
    SINK_DGRAM,      /* a syslog socket: each queued record is one datagram */
};

struct sink {
    enum sink_kind kind;
    int fd; /* -1: closed; a syslog sink is then disconnected until next_try */
    bool is_socket;
    bool owns_fd;
    bool journal; /* stderr is journald's stream: "<N>" prefixes, no timestamp of ours */
    char *path;   /* the file (reopened on SIGUSR1) or the syslog socket path */
    char *q;      /* queued bytes, q[0..qlen); SINK_DGRAM: records of uint16_t length + bytes */
    size_t qlen;
    unsigned long dropped;
    double next_try; /* SINK_DGRAM, CLOCK_MONOTONIC seconds */
    ev_io w;
};

static struct sink err_sink = {.fd = -1};
static struct sink *acc_sink;    /* NULL: access log off; may point at err_sink */
static struct sink *acc_retired; /* the previous access sink, finishing its queue */
static enum log_level cur_level = LOG_LEVEL_INFO;
static struct ev_loop *log_loop;
static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const int level_sev[] = {3, 4, 6, 7};
static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                     "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

static void sink_cb(struct ev_loop *loop, ev_io *w, int revents);
static void sink_enqueue(struct sink *s, const char *buf, size_t len);

static double mono_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sink_init(struct sink *s, enum sink_kind kind, int fd, bool owns) {
    struct stat st;
    s->kind = kind;
    s->fd = fd;
    s->owns_fd = owns;
    s->is_socket = kind == SINK_DGRAM || (fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode));
    ev_init(&s->w, sink_cb);
}

/* A non-blocking datagram socket connected to the syslog socket at path; -1 with err set. */
static int syslog_connect(const char *path, char *err, size_t errlen) {
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    size_t plen = strlen(path);
    if (plen == 0 || plen >= sizeof sa.sun_path) {
        snprintf(err, errlen, "access log syslog:%s: socket path %s", path,
                 plen == 0 ? "is empty" : "is too long");
        return -1;
    }
    memcpy(sa.sun_path, path, plen + 1);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd == -1) {
        snprintf(err, errlen, "access log syslog:%s: socket: %s", path, strerror(errno));
        return -1;
    }
    /* Connecting a datagram socket only records the peer: it neither waits nor hangs. */
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == -1) {
        snprintf(err, errlen, "access log syslog:%s: connect: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

/* Write as much of buf as a stream fd takes now. Returns bytes written, or -1 on a hard error. */
static ssize_t stream_write_now(struct sink *s, const char *buf, size_t len) {
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

/* Send one datagram. 1: done (sent, or dropped and counted because it can never be sent),
 * 0: no room now (EAGAIN), -1: the reader is gone (errno says why). */
static int dgram_send(struct sink *s, const char *buf, size_t len) {
    for (;;) {
        if (send(s->fd, buf, len, MSG_DONTWAIT | MSG_NOSIGNAL) != -1)
            return 1;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        if (errno == EMSGSIZE || errno == ENOBUFS) {
            s->dropped++;
            return 1;
        }
        return -1;
    }
}

/* Lines in the queue: records for a syslog sink, newlines for a stream. */
static unsigned long sink_queued_lines(const struct sink *s) {
    unsigned long lines = 0;
    size_t off = 0;
    while (off < s->qlen) {
        if (s->kind == SINK_DGRAM) {
            uint16_t len;
            memcpy(&len, s->q + off, sizeof len);
            off += sizeof len + len;
        } else {
            const char *nl = memchr(s->q + off, '\n', s->qlen - off);
            off = nl ? (size_t)(nl - s->q) + 1 : s->qlen;
        }
        lines++;
    }
    return lines;
}

static void sink_stop(struct sink *s) {
    if (log_loop && ev_is_active(&s->w))
        ev_io_stop(log_loop, &s->w);
}

static void sink_arm(struct sink *s) {
    if (log_loop && s->fd != -1 && s->qlen > 0 && !ev_is_active(&s->w)) {
        ev_io_set(&s->w, s->fd, EV_WRITE);
        ev_io_start(log_loop, &s->w);
    }
}

/* The syslog reader went away (daemon stopped or restarting): drop and count what is queued,
 * close the socket and reconnect later (dgram_ready), never waiting for it here. */
static void dgram_lost(struct sink *s, int err) {
    s->dropped += sink_queued_lines(s);
    s->qlen = 0;
    sink_stop(s);
    close(s->fd);
    s->fd = -1;
    s->next_try = mono_now() + SYSLOG_RETRY_S;
    log_warn("access log syslog:%s: send: %s; dropping lines, reconnecting", s->path,
             strerror(err));
}

/* "N log lines dropped", queued on s itself once the lines can flow again. */
static void sink_note_drops(struct sink *s) {
    if (s->dropped == 0 || s->fd == -1)
        return;
    char note[LOG_HEAD_MAX + 96];
    int n;
    if (s->kind == SINK_DGRAM) {
        struct tm tm;
        time_t now = time(NULL);
        localtime_r(&now, &tm);
        n = snprintf(note, sizeof note,
                     "<%d>%s %2d %02d:%02d:%02d connectd[%ld]: %lu access log lines dropped "
                     "(syslog too slow or gone)",
                     SYSLOG_FACILITY | SEV_WARN, months[tm.tm_mon], tm.tm_mday, tm.tm_hour,
                     tm.tm_min, tm.tm_sec, (long)getpid(), s->dropped);
    } else {
        n = snprintf(note, sizeof note, "%sconnectd: %lu log lines dropped (output too slow)\n",
                     s->journal ? "<4>" : "", s->dropped);
    }
    unsigned long dropped = s->dropped;
    s->dropped = 0;
    if (n > 0)
        sink_enqueue(s, note, (size_t)n < sizeof note ? (size_t)n : sizeof note - 1);
    if (s->dropped > 0) /* the note itself did not go out: keep the count for the next one */
        s->dropped += dropped - 1;
}

/* A syslog sink that lost its socket tries again, at most once per SYSLOG_RETRY_S. Returns true
 * when the sink has a socket. */
static bool dgram_ready(struct sink *s) {
    if (s->fd != -1)
        return true;
    double now = mono_now();
    if (now < s->next_try)
        return false;
    s->next_try = now + SYSLOG_RETRY_S;
    char err[256];
    int fd = syslog_connect(s->path, err, sizeof err);
    if (fd == -1)
        return false;
    s->fd = fd;
    log_info("access log syslog:%s: reconnected", s->path);
    sink_note_drops(s);
    return true;
}

static void sink_flush_some(struct sink *s) {
    if (s->qlen == 0 || s->fd == -1)
        return;
    size_t off = 0;
    if (s->kind == SINK_DGRAM) {
        while (off < s->qlen) {
            uint16_t len;
            memcpy(&len, s->q + off, sizeof len);
            int r = dgram_send(s, s->q + off + sizeof len, len);
            if (r == 0)
                break;
            if (r == -1) {
                dgram_lost(s, errno);
                return;
            }
            off += sizeof len + len;
        }
    } else {
        ssize_t n = stream_write_now(s, s->q, s->qlen);
        if (n == -1) {
            s->qlen = 0; /* the fd is broken (reader gone): nothing more can be done */
            return;
        }
        off = (size_t)n;
    }
    memmove(s->q, s->q + off, s->qlen - off);
    s->qlen -= off;
}

static void sink_close(struct sink *s) {
    sink_stop(s);
    if (s->owns_fd && s->fd != -1)
        close(s->fd);
    free(s->q);
    s->q = NULL;
    s->qlen = 0;
    s->fd = -1;
}

static void sink_free(struct sink *s) {
    sink_close(s);
    free(s->path);
    s->path = NULL;
    free(s);
}

static void sink_cb(struct ev_loop *loop, ev_io *w, int revents) {
    (void)revents;
    struct sink *s = (struct sink *)((char *)w - offsetof(struct sink, w));
    sink_flush_some(s);
    if (s->qlen > 0)
        return;
    ev_io_stop(loop, w);
    if (s == acc_retired) {
        if (s->dropped)
            log_warn("previous access log: %lu lines dropped (output too slow)", s->dropped);
        acc_retired = NULL;
        sink_free(s); /* stopped above: libev no longer touches w */
        return;
    }
    sink_note_drops(s);
}

/* Append to the queue, within its bound. */
static void sink_queue(struct sink *s, const char *buf, size_t len) {
    if (!s->q) {
        s->q = malloc(LOG_QUEUE_MAX);
        if (!s->q) {
            s->dropped++;
            return;
        }
    }
    size_t need = len + (s->kind == SINK_DGRAM ? sizeof(uint16_t) : 0);
    if (need > LOG_QUEUE_MAX - s->qlen) {
        s->dropped++;
        return;
    }
    if (s->kind == SINK_DGRAM) {
        uint16_t l = (uint16_t)len; /* len <= LOG_HEAD_MAX + LOG_LINE_MAX */
        memcpy(s->q + s->qlen, &l, sizeof l);
        s->qlen += sizeof l;
    }
    memcpy(s->q + s->qlen, buf, len);
    s->qlen += len;
    sink_arm(s);
}

/* Send or queue one line (one datagram for a syslog sink). */
static void sink_enqueue(struct sink *s, const char *buf, size_t len) {
    if (s->kind == SINK_DGRAM) {
        if (!dgram_ready(s)) {
            s->dropped++;
            return;
        }
        if (s->qlen == 0) {
            int r = dgram_send(s, buf, len);
            if (r == 1)
                return;
            if (r == -1) {
                dgram_lost(s, errno);
                s->dropped++;
                return;
            }
        }
        sink_queue(s, buf, len);
        return;
    }
    if (s->fd == -1)
        return;
    if (s->qlen == 0) {
        ssize_t n = stream_write_now(s, buf, len);
        if (n == -1) {
            s->dropped++;
            return;
        }
        if ((size_t)n == len)
            return;
        buf += n;
        len -= (size_t)n;
    }
    sink_queue(s, buf, len);
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

/* What goes before a line of severity sev on s:
 *   syslog:  "<30>Nov 27 18:40:01 connectd[PID]: " (RFC 3164 as glibc sends it, local time)
 *   journal: "<6>" (journald adds its own timestamp)
 *   else:    "2026-11-27T16:40:01.123Z " */
static size_t format_prefix(const struct sink *s, int sev, char *out, size_t outlen) {
    int n;
    if (s->kind == SINK_DGRAM) {
        struct tm tm;
        time_t now = time(NULL);
        localtime_r(&now, &tm);
        n = snprintf(
            out, outlen, "<%d>%s %2d %02d:%02d:%02d connectd[%ld]: ", SYSLOG_FACILITY | sev,
            months[tm.tm_mon], tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)getpid());
    } else if (s->journal) {
        n = snprintf(out, outlen, "<%d>", sev);
    } else {
        size_t t = format_time(out, outlen);
        n = snprintf(out + t, outlen - t, " ");
        if (n >= 0)
            n += (int)t;
    }
    if (n < 0)
        return 0;
    return (size_t)n < outlen ? (size_t)n : outlen - 1;
}

/* JOURNAL_STREAM is "DEV:INO" of the stream systemd connected to our stderr; it only counts
 * when fd 2 still is that stream (not redirected by a wrapper script). */
static bool stderr_is_journal(void) {
    const char *v = getenv("JOURNAL_STREAM");
    if (!v || v[0] < '0' || v[0] > '9')
        return false;
    char *end;
    errno = 0;
    unsigned long long dev = strtoull(v, &end, 10);
    if (errno || *end != ':' || end[1] < '0' || end[1] > '9')
        return false;
    const char *p = end + 1;
    unsigned long long ino = strtoull(p, &end, 10);
    if (errno || *end != '\0')
        return false;
    struct stat st;
    if (fstat(STDERR_FILENO, &st) == -1)
        return false;
    return (unsigned long long)st.st_dev == dev && (unsigned long long)st.st_ino == ino;
}

void log_init(enum log_level level) {
    cur_level = level;
    if (err_sink.fd != -1)
        return;
    tzset(); /* load the zone now: syslog timestamps must not read files later */
    bool journal = stderr_is_journal();
    struct stat st;
    int fd = -1;
    if (fstat(STDERR_FILENO, &st) == 0 && (S_ISFIFO(st.st_mode) || S_ISCHR(st.st_mode)))
        fd = open("/proc/self/fd/2", O_WRONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd != -1)
        sink_init(&err_sink, SINK_STREAM, fd, true);
    else
        sink_init(&err_sink, SINK_STREAM, STDERR_FILENO, false);
    err_sink.journal = journal;
}

void log_set_level(enum log_level level) {
    cur_level = level;
}

void log_attach_loop(struct ev_loop *loop) {
    log_loop = loop;
    sink_arm(&err_sink);
    if (acc_sink && acc_sink != &err_sink)
        sink_arm(acc_sink);
    if (acc_retired)
        sink_arm(acc_retired);
}

void log_msg(enum log_level level, const char *fmt, ...) {
    if (level > cur_level)
        return;
    char line[LOG_LINE_MAX];
    size_t n = format_prefix(&err_sink, level_sev[level], line, sizeof line);
    int m = snprintf(line + n, sizeof line - n, "connectd[%ld]: %s: ", (long)getpid(),
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

/* Hand the old access sink over: what it can write now is written, the rest keeps draining on
 * its own watcher and the sink is freed once empty. Only one sink retires at a time; an older
 * one still stuck is dropped with a warning. */
static void sink_retire(struct sink *s) {
    sink_flush_some(s);
    if (s->qlen == 0 || !log_loop || s->fd == -1) {
        if (s->qlen > 0)
            log_warn("previous access log: %lu queued lines dropped", sink_queued_lines(s));
        sink_free(s);
        return;
    }
    if (acc_retired) {
        log_warn("access log switched again: %lu lines still queued for the one before the "
                 "previous dropped",
                 sink_queued_lines(acc_retired));
        sink_free(acc_retired);
    }
    acc_retired = s;
    sink_arm(s);
}

int log_access_open(const char *spec, char *err, size_t errlen) {
    struct sink *ns = NULL;
    if (strcmp(spec, "off") == 0) {
        ns = NULL;
    } else if (strcmp(spec, "stderr") == 0) {
        ns = &err_sink;
    } else {
        ns = calloc(1, sizeof *ns);
        if (!ns) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        bool is_syslog = strcmp(spec, SYSLOG_PREFIX) == 0 ||
                         strncmp(spec, SYSLOG_PREFIX ":", sizeof SYSLOG_PREFIX) == 0;
        const char *path = spec;
        int fd;
        if (is_syslog) {
            path =
                spec[sizeof SYSLOG_PREFIX - 1] ? spec + sizeof SYSLOG_PREFIX : SYSLOG_DEFAULT_PATH;
            fd = syslog_connect(path, err, errlen);
        } else {
            /* O_NONBLOCK: a FIFO without a reader fails at once instead of hanging the start. */
            fd =
                open(spec, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0640);
            if (fd == -1)
                snprintf(err, errlen, "access log %s: open: %s", spec, strerror(errno));
        }
        if (fd == -1) {
            free(ns);
            return -1;
        }
        sink_init(ns, is_syslog ? SINK_DGRAM : SINK_STREAM, fd, true);
        ns->path = strdup(path);
        if (!ns->path) {
            sink_free(ns);
            snprintf(err, errlen, "out of memory");
            return -1;
        }
    }
    struct sink *old = acc_sink;
    acc_sink = ns;
    if (old && old != &err_sink)
        sink_retire(old);
    return 0;
}

int log_access_reopen(void) {
    struct sink *s = acc_sink;
    if (!s || s == &err_sink)
        return 0;
    int fd;
    if (s->kind == SINK_DGRAM) {
        char err[256];
        fd = syslog_connect(s->path, err, sizeof err);
        if (fd == -1) {
            log_error("%s (reopen; keeping the old socket)", err);
            return -1;
        }
    } else {
        fd = open(s->path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0640);
        if (fd == -1) {
            log_error("access log %s: reopen: %s (still writing to the old file)", s->path,
                      strerror(errno));
            return -1;
        }
        /* Lines still queued belong to the old file: give them a moment, then switch. */
        sink_flush_some(s);
    }
    /* What is still queued goes to the new file or socket. */
    sink_stop(s);
    if (s->fd != -1)
        close(s->fd);
    s->fd = fd;
    if (s->kind == SINK_DGRAM && s->qlen == 0)
        sink_note_drops(s);
    sink_arm(s);
    return 0;
}

int log_access_enabled(void) {
    return acc_sink != NULL;
}

void log_access(const char *line, size_t len) {
    struct sink *s = acc_sink;
    if (!s)
        return;
    char out[LOG_HEAD_MAX + LOG_LINE_MAX];
    size_t n = format_prefix(s, SEV_INFO, out, LOG_HEAD_MAX);
    if (len > sizeof out - n - 1)
        len = sizeof out - n - 1;
    memcpy(out + n, line, len);
    n += len;
    if (s->kind == SINK_STREAM)
        out[n++] = '\n'; /* a datagram is the line: glibc's syslog() sends none either */
    sink_enqueue(s, out, n);
}

static long mono_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Write what s has queued, waiting in poll() until deadline (mono_ms) at the latest. */
static void sink_drain(struct sink *s, long deadline) {
    while (s->fd != -1 && s->qlen > 0) {
        long left = deadline - mono_ms();
        if (left <= 0)
            break;
        struct pollfd pfd = {.fd = s->fd, .events = POLLOUT};
        if (poll(&pfd, 1, (int)left) <= 0)
            break;
        size_t before = s->qlen;
        sink_flush_some(s);
        if (s->qlen == before)
            break;
    }
}

void log_flush(int timeout_ms) {
    long deadline = mono_ms() + timeout_ms; /* one budget for all sinks */
    sink_drain(&err_sink, deadline);
    if (acc_sink && acc_sink != &err_sink)
        sink_drain(acc_sink, deadline);
    if (acc_retired)
        sink_drain(acc_retired, deadline);
}

void log_close(void) {
    log_flush(1000);
    if (acc_retired) {
        sink_free(acc_retired);
        acc_retired = NULL;
    }
    if (acc_sink && acc_sink != &err_sink)
        sink_free(acc_sink);
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
