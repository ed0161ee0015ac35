/* log: error log (stderr) with levels, and the access log. Output never blocks the loop:
 * lines go to a bounded in-memory queue per sink that is written when the fd is writable; when
 * the queue is full, lines are dropped and counted, and a "N log lines dropped" line follows once
 * the output drains.
 *
 * Line formats:
 *   error log:           "2026-11-27T16:40:01.123Z connectd[PID]: LEVEL: message"
 *   access log:          "2026-11-27T16:40:01.123Z client=... status=... ..."
 *   stderr on journald:  "<N>connectd[PID]: LEVEL: message", access lines "<6>client=..."
 *                        (N = 3 error, 4 warn, 6 info, 7 debug; no timestamp, journald adds one).
 *                        Used when JOURNAL_STREAM ("DEV:INO") names the file fd 2 refers to.
 *   syslog access log:   one datagram per line, no newline, as glibc's syslog() frames it:
 *                        "<30>Nov 27 18:40:01 connectd[PID]: client=... status=... ..."
 *                        (facility daemon, severity info, local time; PID of the sending
 *                        process, so each worker names itself). */
#ifndef CONNECTD_LOG_H
#define CONNECTD_LOG_H

#include <stddef.h>

#include "config.h"

struct ev_loop;

/* Set up the error log on stderr at level. Before log_attach_loop() output may block. Call once,
 * before any fork: it also reads JOURNAL_STREAM and the local time zone. */
void log_init(enum log_level level);
/* Change the error-log level (configuration reload). */
void log_set_level(enum log_level level);
/* From now on, a full pipe/socket makes lines wait in memory instead of blocking. */
void log_attach_loop(struct ev_loop *loop);

/* Open the access log: "stderr", "off", "syslog" (the socket /dev/log), "syslog:PATH" (an
 * AF_UNIX datagram socket at PATH) or a file path (appended, created 0640). The syslog socket
 * must be there: a missing or refusing socket is an error ("access log syslog:/dev/log:
 * connect: No such file or directory"). Returns 0, or -1 with a message in err.
 * May be called again (reload) to switch to another sink: on failure the previous sink stays
 * in use; on success it is closed once what it has queued is written (without blocking: it keeps
 * draining in the background; whatever a later switch or log_close() finds still queued there is
 * dropped with a warning). */
int log_access_open(const char *spec, char *err, size_t errlen);
/* SIGUSR1: reopen an access-log file by its path (after logrotate moved it), or reconnect a
 * syslog socket (after the syslog daemon restarted). Lines still queued go to the new file or
 * socket. Returns 0 (also when there is nothing to reopen), or -1 after logging why, keeping the
 * old file or socket. Without SIGUSR1, a syslog sink whose reader went away (ECONNREFUSED,
 * ENOTCONN) drops and counts lines, and tries to reconnect at most once a second, when lines
 * arrive. */
int log_access_reopen(void);
/* True when an access log is open (callers skip building lines otherwise). */
int log_access_enabled(void);
/* Write one access-log line; a timestamp and the trailing newline are added. */
void log_access(const char *line, size_t len);

void log_msg(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
#define log_error(...) log_msg(LOG_LEVEL_ERROR, __VA_ARGS__)
#define log_warn(...)  log_msg(LOG_LEVEL_WARN, __VA_ARGS__)
#define log_info(...)  log_msg(LOG_LEVEL_INFO, __VA_ARGS__)
#define log_debug(...) log_msg(LOG_LEVEL_DEBUG, __VA_ARGS__)

/* Write whatever is queued (error log, access log, a previous access log still draining),
 * waiting up to timeout_ms in total (for exit). */
void log_flush(int timeout_ms);
void log_close(void);

/* Copy untrusted bytes for a log line: printable ASCII except space, '"' and '\' as is, the rest
 * as \xHH. Always NUL-terminates; returns the length written (truncated to fit). */
size_t log_escape(char *out, size_t outlen, const char *in, size_t inlen);

#endif
