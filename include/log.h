/* log: error log (stderr) with levels, and the access log. Output never blocks the loop:
 * lines go to a bounded in-memory queue that is written when the fd is writable; when the
 * queue is full, lines are dropped and counted. */
#ifndef CONNECTD_LOG_H
#define CONNECTD_LOG_H

#include <stddef.h>

#include "config.h"

struct ev_loop;

/* Set up the error log on stderr. Before log_attach_loop() output may block. */
void log_init(enum log_level level);
/* From now on, a full pipe/socket makes lines wait in memory instead of blocking. */
void log_attach_loop(struct ev_loop *loop);

/* Open the access log: "stderr", "off" or a file path (appended, created 0640). Returns 0, or -1
 * with a message in err. */
int log_access_open(const char *spec, char *err, size_t errlen);
/* Reopen an access-log file by its path (after logrotate moved it; SIGUSR1). Returns 0, or -1
 * and keeps the old file. */
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

/* Write whatever is queued, waiting up to timeout_ms in total (for exit). */
void log_flush(int timeout_ms);
void log_close(void);

/* Copy untrusted bytes for a log line: printable ASCII except space, '"' and '\' as is, the rest
 * as \xHH. Always NUL-terminates; returns the length written (truncated to fit). */
size_t log_escape(char *out, size_t outlen, const char *in, size_t inlen);

#endif
